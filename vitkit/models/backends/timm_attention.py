"""Self-attention weights of a timm ViT, from each block's own q/k, and where its eval transform looks.

timm's `Attention` calls fused scaled_dot_product_attention, which returns no weights. A forward hook
on each block's `attn.qkv` linear takes the q/k that block computed anyway and applies the block's
own `q_norm`, `k_norm` and `scale` to them: the weights are those the model used, without running
anything twice and without a second implementation of the model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from vitkit.errors import ModelTaskMismatchError, UsageError

if TYPE_CHECKING:
    import torch

_HINT = ("attention maps need a timm vision transformer with a class token, e.g. --model dino-s16, "
         "dinov2-s14 or vit-s16")


@dataclass(frozen=True)
class VitLayout:
    """What the attention maps need to know of a ViT: its blocks' attention modules and its tokens."""

    attentions: tuple[Any, ...]  # timm.layers.Attention of every block, first to last
    num_prefix_tokens: int  # class token first, then registers (and DeiT's distillation token)
    patch_size: tuple[int, int]  # (height, width) in input pixels


def vit_layout(module: Any, model_id: str) -> VitLayout:
    """The model's ViT structure, or ModelTaskMismatchError for a model without one (a ResNet, a
    ConvNeXt, a ViT whose attention is not timm's standard `Attention`, or one without a class token)."""
    from timm.layers import Attention

    blocks = getattr(module, "blocks", None)
    attentions = tuple(getattr(block, "attn", None) for block in blocks) if blocks is not None else ()
    kind = type(module).__name__
    if not attentions or any(a is None for a in attentions):
        raise ModelTaskMismatchError(f"model {model_id!r} ({kind}) is not a vision transformer with "
                                     "self-attention blocks", hint=_HINT)
    if other := {type(a).__name__ for a in attentions if not isinstance(a, Attention)}:
        # rotary (EVA) or windowed attention: the plain q.k of timm's Attention is not what those blocks use
        raise ModelTaskMismatchError(f"model {model_id!r} ({kind}) uses {', '.join(sorted(other))}, not timm's "
                                     "standard Attention, whose weights vitkit reads", hint=_HINT)
    if getattr(module, "cls_token", None) is None:
        raise ModelTaskMismatchError(f"model {model_id!r} ({kind}) has no class token to take attention from",
                                     hint=_HINT)
    patch = module.patch_embed.patch_size
    return VitLayout(attentions, int(module.num_prefix_tokens), (int(patch[0]), int(patch[1])))


def attention_weights(attn: Any, qkv: "torch.Tensor", rows: slice | None = None) -> "torch.Tensor":
    """The softmax attention of timm `Attention` module `attn`, from its `qkv` projection's output
    (B, N, 3 * heads * head_dim) -> (B, heads, R, N) float32 for query rows `rows` (all by default)."""
    batch, tokens, _ = qkv.shape
    q, k, _v = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)  # (B, heads, N, head_dim)
    if rows is not None:
        q = q[:, :, rows]
    # fp32 whatever the autocast: a softmax over hundreds of tokens in bf16 loses the small weights
    return ((q.float() * attn.scale) @ k.float().transpose(-2, -1)).softmax(dim=-1)


@dataclass
class Captured:
    """What one forward pass leaves behind: the class token's attention in the last block and,
    for rollout, the product of every block's head-averaged attention plus identity."""

    last: "torch.Tensor | None" = None  # (B, heads, N): row 0 of the last block's attention
    rollout: "torch.Tensor | None" = None  # (B, N, N)
    hooks: list[Any] = field(default_factory=list)


@contextlib.contextmanager
def capture_attention(layout: VitLayout, rollout: bool) -> Iterator[Captured]:
    """Hooks on the blocks' qkv projections while the block runs; removed on leaving, so the cached
    model shared with other commands never keeps them."""
    captured = Captured()
    last = len(layout.attentions) - 1
    for index, attn in enumerate(layout.attentions):
        if index == last:
            captured.hooks.append(attn.qkv.register_forward_hook(_last_block_hook(attn, captured)))
        if rollout:
            captured.hooks.append(attn.qkv.register_forward_hook(_rollout_hook(attn, captured)))
    try:
        yield captured
    finally:
        for hook in captured.hooks:
            hook.remove()


def _last_block_hook(attn: Any, captured: Captured) -> Callable[..., None]:
    def hook(_module: Any, _inputs: Any, qkv: "torch.Tensor") -> None:
        captured.last = attention_weights(attn, qkv, slice(0, 1))[:, :, 0]  # (B, heads, N)
    return hook


def _rollout_hook(attn: Any, captured: Captured) -> Callable[..., None]:
    def hook(_module: Any, _inputs: Any, qkv: "torch.Tensor") -> None:
        captured.rollout = rollout_step(attention_weights(attn, qkv).mean(dim=1), captured.rollout)
    return hook


def rollout_step(averaged: "torch.Tensor", joint: "torch.Tensor | None") -> "torch.Tensor":
    """Abnar & Zuidema (2020): the residual connection as identity, rows re-normalised, then this
    block's (B, N, N) applied after the blocks before it (`joint`, None before the first)."""
    import torch

    with_residual = averaged + torch.eye(averaged.shape[-1], device=averaged.device, dtype=averaged.dtype)
    with_residual = with_residual / with_residual.sum(dim=-1, keepdim=True)
    return with_residual if joint is None else with_residual @ joint


# Steps of an eval transform that change values, not geometry.
_PIXEL_STEPS = ("ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor", "Normalize", "ConvertImageDtype")


def seen_region(transform: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """The part of a (width x height) image that timm's eval transform hands the model, as fractions
    (x0, y0, x1, y1) of the image: the inverse of its aspect guard, resize and centre crop (or pad,
    where the box extends past the image). The model's input grid spans this box evenly."""
    from vitkit.models.backends.aspect import AspectCapped, crop_long_side

    extent = [0.0, 0.0, float(width), float(height)]  # the current image, in the original's pixels
    size = [width, height]
    steps = list(getattr(transform, "transforms", [transform]))
    if isinstance(transform, AspectCapped):
        cropped = crop_long_side(_Sized(width, height, (0, 0, width, height)), transform.max_ratio)
        extent, size = list(cropped.box), [cropped.width, cropped.height]
        steps = transform.transforms
    for step in steps:
        name = type(step).__name__
        if name in _PIXEL_STEPS:
            continue
        if name == "Resize":
            size = _resized(step.size, size)
        elif name == "ResizeKeepRatio":
            size = _kept_ratio(step, size)
        elif name in ("CenterCrop", "CenterCropOrPad"):
            extent, size = _centre_crop(step.size, extent, size)
        else:
            raise UsageError(f"cannot place attention maps: the model's eval transform has a {name} step",
                             hint="use a model whose transform resizes and centre-crops (all timm ViTs do)")
    return extent[0] / width, extent[1] / height, extent[2] / width, extent[3] / height


@dataclass(frozen=True)
class _Sized:
    """Enough of a PIL image for `crop_long_side`, which only reads the size and crops."""

    width: int
    height: int
    box: tuple[int, int, int, int]  # where it lies in the original

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def crop(self, box: tuple[int, int, int, int]) -> "_Sized":
        return _Sized(box[2] - box[0], box[3] - box[1], box)


def _resized(target: Any, size: list[int]) -> list[int]:
    """torchvision Resize: an int (or one-item list) sets the shorter side, (h, w) both."""
    if isinstance(target, int) or len(target) == 1:
        short = target if isinstance(target, int) else target[0]
        width, height = size
        if width <= height:
            return [short, int(short * height / width)]
        return [int(short * width / height), short]
    return [int(target[1]), int(target[0])]


def _kept_ratio(step: Any, size: list[int]) -> list[int]:
    """timm ResizeKeepRatio's eval-time size (no random scale or aspect)."""
    (target_h, target_w), (width, height) = step.size, size
    ratio_h, ratio_w = height / target_h, width / target_w
    ratio = max(ratio_h, ratio_w) * step.longest + min(ratio_h, ratio_w) * (1.0 - step.longest)
    return [round(width / ratio), round(height / ratio)]


def _centre_crop(target: Any, extent: list[float], size: list[int]) -> tuple[list[float], list[int]]:
    """torchvision's centre crop offsets (negative where it pads), mapped back onto the original."""
    crop_h, crop_w = (target, target) if isinstance(target, int) else (target[0], target[-1])
    width, height = size
    left, top = int(round((width - crop_w) / 2.0)), int(round((height - crop_h) / 2.0))
    scale_x, scale_y = (extent[2] - extent[0]) / width, (extent[3] - extent[1]) / height
    x0, y0 = extent[0] + left * scale_x, extent[1] + top * scale_y
    return [x0, y0, x0 + crop_w * scale_x, y0 + crop_h * scale_y], [crop_w, crop_h]
