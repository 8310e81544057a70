"""ViTMAE (transformers' ViTMAEForPreTraining) specifics: its patch grid, exact patch masks through its
`noise` argument, norm_pix_loss de-normalisation, and patchify/unpatchify back to pixels."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitkit.errors import UsageError

NORM_PIX_EPS = 1.0e-6  # the model's own: target = (x - mean) / (var + 1e-6) ** 0.5
_MAE_PARTS = ("patchify", "unpatchify", "vit", "decoder")


def is_masked_autoencoder(module: Any) -> bool:
    return all(hasattr(module, name) for name in _MAE_PARTS)


@dataclass(frozen=True)
class PatchGrid:
    """The model's input: rows x cols patches of `patch` pixels; the processor stretches images onto it."""

    rows: int
    cols: int
    patch: int

    @property
    def total(self) -> int:
        return self.rows * self.cols


def patch_grid(config: Any, processor: Any) -> PatchGrid:
    """The patch grid, after checking the processor stretches whole images to the model's input size
    (a crop or an aspect-keeping resize would break the mapping from original pixels to patches)."""
    side = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
    height, width = (side, side) if isinstance(side, int) else side
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    size = getattr(processor, "size", None)
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    resized = (get("height"), get("width")) if size is not None else (None, None)
    stretches = getattr(processor, "do_resize", True) and not getattr(processor, "do_center_crop", False)
    if resized != (height, width) or not stretches:
        raise UsageError(f"the model's processor does not resize images to its {width}x{height} input",
                         hint="its preprocessor_config.json should resize to that size, without cropping")
    return PatchGrid(height // patch, width // patch, patch)


# --- exact masks ------------------------------------------------------------------------------------

def masking_noise(patches: np.ndarray) -> torch.Tensor:
    """(rows, cols) bool, True = hidden -> the (N,) noise that hides exactly those patches: 0 visible, 1 hidden.
    random_masking keeps the patches of lowest noise, so these are exactly the visible ones."""
    return torch.from_numpy(patches.reshape(-1).astype(np.float32))


class _NoiseMasking:
    """ViTMAE's random_masking keeps int(N * (1 - config.mask_ratio)) patches: one count for every call.
    In its place on a loaded model, noise made of 0s and 1s (vitkit's masks) keeps exactly the patches
    whose noise is 0, whatever the config says; any other noise, or none, is the model's own masking."""

    def __init__(self, embeddings: torch.nn.Module) -> None:
        self.embeddings = embeddings

    def __call__(self, sequence: torch.Tensor, noise: torch.Tensor | None = None) -> Any:
        own = type(self.embeddings).random_masking
        if noise is None or not bool(((noise == 0) | (noise == 1)).all()):
            return own(self.embeddings, sequence, noise)
        keeps = (noise == 0).sum(dim=1)  # (B,)
        keep, total = int(keeps[0]), noise.shape[1]
        if not bool((keeps == keep).all()):
            raise ValueError("every image in one ViTMAE call must keep as many patches")
        # The model's own code, given a config of its own: a ratio half a patch beyond `keep` makes
        # int(total * (1 - ratio)) == keep whatever the float rounding. The shared config is never touched.
        ratio = SimpleNamespace(config=SimpleNamespace(mask_ratio=(total - keep - 0.5) / total))
        return own(ratio, sequence, noise)


def use_exact_masks(module: Any) -> None:
    """Once, when a task takes the loaded model: let `noise` alone say which patches each image hides."""
    embeddings = module.vit.embeddings
    if not isinstance(embeddings.__dict__.get("random_masking"), _NoiseMasking):
        embeddings.random_masking = _NoiseMasking(embeddings)


@dataclass(frozen=True)
class MaeOutputs:
    pixel_values: torch.Tensor  # (B, 3, S, S), the processor's normalised input
    masked: torch.Tensor  # (B, N) bool, True = hidden
    logits: torch.Tensor  # (B, N, p*p*3) float32, the decoder's prediction of every patch


def predict(module: Any, pixel_values: torch.Tensor, noise: torch.Tensor) -> MaeOutputs:
    """The decoder's logits with exactly the patches of noise 1 hidden (see `use_exact_masks`). The
    encoder sees only visible patches, so images run in groups that keep as many."""
    masked = noise.bool()  # (B, N)
    keeps = (~masked).sum(dim=1)  # (B,)
    parts = []
    for keep in keeps.unique().tolist():
        group = (keeps == keep).nonzero().squeeze(1)
        out = module(pixel_values=pixel_values[group], noise=noise[group])
        if not torch.equal(out.mask.bool(), masked[group]):
            raise RuntimeError("ViTMAE masked other patches than asked; its random_masking has changed")
        parts.append((group, out.logits))
    logits = parts[0][1].new_empty((len(masked), *parts[0][1].shape[1:]))  # (B, N, p*p*3)
    for group, part in parts:
        logits[group] = part
    return MaeOutputs(pixel_values, masked, logits.float())


# --- back to pixels ---------------------------------------------------------------------------------

def denormalise_patches(predicted: torch.Tensor, target: torch.Tensor, masked: torch.Tensor,
                        eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """norm_pix_loss predictions (B, N, D), each patch normalised by its own mean and variance over all its
    D = p*p*C values (channels together, as the model's loss) -> the processor's normalised space.

    Visible patches use their own statistics, taken from `target` (the patchified input). A masked patch's
    are unknown: it gets the image's typical patch statistics, the mean of the visible patches' means and
    the mean of their variances (the square root taken after averaging). Colour lives inside the
    normalised prediction, so one mean and one scale per image, not per channel, avoid applying it twice.
    With no visible patch: mean 0, variance 1, i.e. the dataset statistics the processor normalises by.
    """
    mean = target.mean(dim=-1, keepdim=True)  # (B, N, 1)
    var = target.var(dim=-1, keepdim=True)  # unbiased, as in the model's loss
    visible = (~masked).unsqueeze(-1).to(target.dtype)  # (B, N, 1)
    count = visible.sum(dim=1, keepdim=True)  # (B, 1, 1)
    seen = count > 0
    guess_mean = torch.where(seen, (mean * visible).sum(dim=1, keepdim=True) / count.clamp(min=1), 0.0)
    guess_var = torch.where(seen, (var * visible).sum(dim=1, keepdim=True) / count.clamp(min=1), 1.0 - eps)
    is_masked = masked.unsqueeze(-1)
    mean = torch.where(is_masked, guess_mean, mean)
    var = torch.where(is_masked, guess_var, var)
    return predicted * (var + eps).sqrt() + mean


@dataclass(frozen=True)
class PixelScale:
    """Undoes the processor's rescale and normalisation: model space -> 0..255."""

    mean: torch.Tensor  # (C, 1, 1)
    std: torch.Tensor
    scale: float

    @classmethod
    def from_processor(cls, processor: Any) -> "PixelScale":
        normalise = getattr(processor, "do_normalize", True)
        mean = processor.image_mean if normalise else (0.0, 0.0, 0.0)
        std = processor.image_std if normalise else (1.0, 1.0, 1.0)
        scale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1)  # noqa: E731
        return cls(as_tensor(mean), as_tensor(std), scale)

    def to_image(self, values: torch.Tensor) -> Image.Image:
        """(C, H, W) in model space -> an RGB image."""
        pixels = (values.float().cpu() * self.std + self.mean) / self.scale
        array = pixels.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(np.ascontiguousarray(array), "RGB")


@dataclass(frozen=True)
class Reconstruction:
    """One image's result at the model's resolution."""

    predicted: Image.Image  # every patch as the decoder predicts it
    pasted: Image.Image  # predicted where masked, the model's input where visible
    patches: np.ndarray  # (rows, cols) bool, True = masked


def reconstruct(module: Any, outputs: MaeOutputs, grid: PatchGrid, pixels: PixelScale) -> list[Reconstruction]:
    """The model's outputs -> one reconstruction per image, in fp32 whatever the model ran in."""
    logits, masked = outputs.logits, outputs.masked
    target = module.patchify(outputs.pixel_values.float())  # (B, N, p*p*3)
    if getattr(module.config, "norm_pix_loss", False):
        logits = denormalise_patches(logits, target, masked)
    pasted = torch.where(masked.unsqueeze(-1), logits, target)
    predicted_images, pasted_images = module.unpatchify(logits), module.unpatchify(pasted)  # (B, 3, S, S)
    shape = (grid.rows, grid.cols)
    return [Reconstruction(pixels.to_image(predicted_images[i]), pixels.to_image(pasted_images[i]),
                           masked[i].cpu().numpy().reshape(shape)) for i in range(len(masked))]
