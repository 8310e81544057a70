"""Drawing detections on images: colours per class, line and text sizes that scale with the image."""

from __future__ import annotations

from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

# Tableau-10: distinct, readable on photos, and fine for the common forms of colour blindness.
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def colour_for(class_id: int) -> tuple[int, int, int]:
    return PALETTE[class_id % len(PALETTE)]


# Opacity of a detection's class colour over its mask (detect --masks).
MASK_ALPHA = 0.45


def tint_masks(canvas: Image.Image, detections: Sequence[dict[str, Any]]) -> None:
    """Each detection's `mask` (COCO RLE) tinted in its class colour, in place; one mask decoded at a time."""
    from vitkit.outputs.rle import decode_mask

    for detection in detections:
        if "mask" not in detection:
            continue
        mask = Image.fromarray(decode_mask(detection["mask"]))  # mode "1": where to tint
        if mask.size != canvas.size:  # a thumbnail: the mask is at the image's full size
            mask = mask.resize(canvas.size, Image.Resampling.NEAREST)
        solid = Image.new("RGB", canvas.size, colour_for(int(detection.get("class_id", 0))))
        canvas.paste(Image.blend(canvas, solid, MASK_ALPHA), (0, 0), mask)


def draw_detections(image: Image.Image, detections: Sequence[dict[str, Any]]) -> Image.Image:
    """A copy of `image` with each box outlined and labelled 'label 0.93' on a filled tab (masks tinted
    first, when detections carry them)."""
    canvas = image.convert("RGB").copy()
    tint_masks(canvas, detections)
    draw = ImageDraw.Draw(canvas)
    short_side = min(canvas.size)
    line = max(2, round(short_side / 300))
    font = ImageFont.load_default(size=max(12, short_side // 40))
    for detection in detections:
        x0, y0, x1, y1 = detection["box"]
        colour = colour_for(int(detection.get("class_id", 0)))
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        text = f"{detection['label']} {detection['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tab_height = bottom - top + 2 * line
        # The tab sits above the box, or inside it when the box touches the top edge.
        tab_y = y0 - tab_height if y0 - tab_height >= 0 else y0
        draw.rectangle((x0, tab_y, x0 + right - left + 2 * line, tab_y + tab_height), fill=colour)
        draw.text((x0 + line, tab_y + line - top), text, fill=_text_colour(colour), font=font)
    return canvas


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)
