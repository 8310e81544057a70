"""Drawing poses on images: each person's limbs and keypoints, sized to the image."""

from __future__ import annotations

from typing import Any, Sequence

from PIL import Image, ImageDraw

from vitkit.outputs.boxes import colour_for

KEYPOINT_FILL = (255, 255, 255)


def draw_poses(image: Image.Image, people: Sequence[dict[str, Any]], skeleton: Sequence[tuple[int, int]],
               kpt_threshold: float) -> Image.Image:
    """A copy of `image` (the displayed size) with each person's box, limbs and keypoints in one colour per
    person; a keypoint scoring under `kpt_threshold` is left out, with the limbs that end at it."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    short_side = min(canvas.size)
    line = max(1, round(short_side / 200))
    radius = max(1, round(short_side / 150))
    for number, person in enumerate(people):
        colour = colour_for(number)
        draw.rectangle(person["box"], outline=colour, width=max(1, line // 2))
        points = [(k["x"], k["y"]) if k["score"] >= kpt_threshold else None for k in person["keypoints"]]
        for start, end in skeleton:
            if max(start, end) < len(points) and points[start] and points[end]:
                draw.line([points[start], points[end]], fill=colour, width=line)
        for point in points:
            if point:
                x, y = point
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=KEYPOINT_FILL, outline=colour)
    return canvas
