"""Batched augmentation of uint8 image batches on the device (GPU, or the CPU).

With an image store the loader only gathers uint8 `[B, 1, S, S]` rows; `BatchAugment` does on
the device what `data.build_transforms` does per sample on the CPU, drawing the same random
parameters from the same distributions:

    horizontal flip (p = hflip_p)
    ColorJitter(brightness, contrast) in a random order per image, as torchvision defines them:
        brightness multiplies, contrast blends with the image's mean grey, both clamp to [0, 1]
    RandomAffine(degrees, translate, scale) about the image centre, whole-pixel translation,
        black fill, nearest-neighbour sampling (torchvision's default)
    RandomCrop(image_size)
    ToDtype(float, scale) -> Normalize(preset mean, std) -> repeat to 3 channels

Flip, affine and crop are one coordinate map, so they run as ONE `affine_grid` + `grid_sample`
call. The jitter runs before it, on the S x S input, because on the CPU it comes before the
affine: the contrast mean is taken over the whole image and the black fill stays black.
Evaluation (or the preset 'none') is a centre crop and the normalisation only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medclip_nb.data.images import AUGMENT_PRESETS
from medclip_nb.errors import DataError


class BatchAugment(nn.Module):
    """uint8 `[B, 1, S, S]` (any device) -> float32 `[B, 3, image_size, image_size]`, normalised.

    `preset` is a key of `data.images.AUGMENT_PRESETS` ('seed', 'medclip', 'none'); `train` turns the
    random ops on (for presets that have them). The affine warp samples nearest pixels, as
    torchvision's RandomAffine does by default on the CPU path.
    """

    def __init__(self, image_size: int, preset: str, train: bool):
        super().__init__()
        if preset not in AUGMENT_PRESETS:
            raise DataError(f"config key 'augment': unknown preset {preset!r} (one of {', '.join(AUGMENT_PRESETS)})")
        settings = AUGMENT_PRESETS[preset]
        self.image_size = int(image_size)
        self.preset = preset
        self.random = bool(train and settings["random"])
        self.mean, self.std = float(settings["mean"]), float(settings["std"])
        self.hflip_p = float(settings["hflip_p"])
        self.brightness, self.contrast = float(settings["brightness"]), float(settings["contrast"])
        self.degrees, self.translate = float(settings["degrees"]), float(settings["translate"])
        self.scale_range = tuple(float(s) for s in settings["scale"])

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, preset={self.preset!r}, random={self.random}"

    # ---- random parameters --------------------------------------------------------------------
    def sample_params(self, batch: int, source_size: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Per-image parameters, drawn as torchvision draws them: flip (bool), brightness and
        contrast factors, brightness_first (bool: the jitter order), angle (degrees), scale,
        translate (whole pixels, [B, 2]), crop_top / crop_left (pixels). Drawn on the
        generator's device (else `device`)."""
        draw_device = generator.device if generator is not None else torch.device(device)

        def uniform(low: float, high: float, *shape: int) -> Tensor:
            u = torch.rand(batch, *shape, generator=generator, device=draw_device)
            return low + (high - low) * u

        max_shift = self.translate * source_size
        span = source_size - self.image_size + 1
        return {
            "flip": torch.rand(batch, generator=generator, device=draw_device) < self.hflip_p,
            "brightness": uniform(1 - self.brightness, 1 + self.brightness),
            "contrast": uniform(1 - self.contrast, 1 + self.contrast),
            "brightness_first": torch.rand(batch, generator=generator, device=draw_device) < 0.5,
            "angle": uniform(-self.degrees, self.degrees),
            "scale": uniform(*self.scale_range),
            "translate": torch.round(uniform(-max_shift, max_shift, 2)),
            "crop_top": torch.randint(0, span, (batch,), generator=generator, device=draw_device),
            "crop_left": torch.randint(0, span, (batch,), generator=generator, device=draw_device),
        }

    # ---- the pieces ---------------------------------------------------------------------------
    def _jitter(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Brightness then contrast, or contrast then brightness, per image; x in [0, 1]."""
        b = params["brightness"].view(-1, 1, 1, 1)
        c = params["contrast"].view(-1, 1, 1, 1)

        def brightness(t: Tensor) -> Tensor:
            return (t * b).clamp_(0.0, 1.0)

        def contrast(t: Tensor) -> Tensor:
            grey = t.mean(dim=(1, 2, 3), keepdim=True)
            return (c * t + (1.0 - c) * grey).clamp_(0.0, 1.0)

        first = params["brightness_first"].view(-1, 1, 1, 1)
        return torch.where(first, contrast(brightness(x)), brightness(contrast(x)))

    def _theta(self, params: dict[str, Tensor], source_size: int) -> Tensor:
        """[B, 2, 3] map from normalised output-crop coordinates to normalised input coordinates:
        crop offset -> inverse affine about the centre (torchvision's matrix) -> flip."""
        angle = torch.deg2rad(params["angle"])
        cos, sin = torch.cos(angle), torch.sin(angle)
        inv_scale = 1.0 / params["scale"]
        # Inverse rotation-scale, in pixel units about the image centre (y pointing down).
        a = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2) * inv_scale.view(-1, 1, 1)
        flip = torch.where(params["flip"], -1.0, 1.0).to(a.dtype)
        a = a * torch.stack([flip, torch.ones_like(flip)], -1).unsqueeze(-1)  # flip negates input x
        half_gap = (self.image_size - source_size) / 2.0
        offset = torch.stack([params["crop_left"], params["crop_top"]], -1).to(a.dtype) + half_gap
        shift = offset - params["translate"].to(a.dtype)  # crop centre relative to the affine output's centre
        linear = a * (self.image_size / source_size)
        bias = (a @ shift.unsqueeze(-1)).squeeze(-1) * (2.0 / source_size)
        return torch.cat([linear, bias.unsqueeze(-1)], dim=-1)

    def _normalise(self, x: Tensor) -> Tensor:
        return ((x - self.mean) / self.std).repeat(1, 3, 1, 1)

    # ---- forward ------------------------------------------------------------------------------
    def apply(self, images: Tensor, params: dict[str, Tensor] | None) -> Tensor:
        """Augment with the given parameters (None: the deterministic centre crop)."""
        x = images.to(torch.float32).div_(255.0)
        source_size = images.shape[-1]
        if params is None:
            top = int(round((source_size - self.image_size) / 2.0))
            x = x[..., top:top + self.image_size, top:top + self.image_size]
            return self._normalise(x)
        params = {k: v.to(images.device) for k, v in params.items()}
        x = self._jitter(x, params)
        theta = self._theta(params, source_size)
        grid = F.affine_grid(theta, [images.shape[0], 1, self.image_size, self.image_size], align_corners=False)
        x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return self._normalise(x)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a uint8 `[B, 1, S, S]` batch with S >= image_size; returns float32
        `[B, 3, image_size, image_size]` on the same device. `generator` (on any device) makes
        the random draws reproducible."""
        if images.shape[0] == 0:  # a batch whose images were all unreadable
            return torch.zeros((0, 3, self.image_size, self.image_size), device=images.device)
        square_gray = images.ndim == 4 and images.shape[1] == 1 and images.shape[2] == images.shape[3]
        if images.dtype != torch.uint8 or not square_gray:
            raise ValueError(f"BatchAugment expects uint8 [B, 1, S, S], got {images.dtype} {list(images.shape)}")
        source_size = images.shape[-1]
        if source_size < self.image_size:
            raise DataError(f"image store images are {source_size} px, smaller than image_size {self.image_size}")
        params = None
        if self.random:
            params = self.sample_params(images.shape[0], source_size, generator, device=images.device)
        return self.apply(images, params)


def augment_on_device(batch: dict, augment: BatchAugment, device: torch.device,
                      generator: torch.Generator | None = None) -> Tensor:
    """Move a batch's uint8 `pixel_values` to `device` and augment them there (the training
    loop's one call when images come from the store)."""
    pixels = batch["pixel_values"].to(device, non_blocking=True)
    return augment(pixels, generator=generator)


__all__ = ["BatchAugment", "augment_on_device"]
