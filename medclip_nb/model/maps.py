"""Where a model looks: maps of the image-text similarity over the image, at input resolution.

    maps = similarity_maps(model, pixels, text_embeds)   # [B, H, W]: one text embedding per image
    cams = gradcam_maps(model, pixels, text_embeds)      # [B, H, W] in [0, 1]

- `similarity_maps`: the vision tower's last spatial features (the grid its global average pooling
  averages, `SPATIAL_LAYERS`), each location through the image head into the joint space, dotted with
  the text embedding and divided by the norm of the pooled image feature. The pooling and the head are
  linear, so the grid's mean is exactly the image-text cosine similarity the model scores: the map
  splits that score over the image (GLoRIA's and BioViL's patch-text similarity, with the global
  embedding as the patches' mean). Every backbone here has such a grid (torchvision's ResNets,
  MobileNet and Swin, small_cnn, the seed's simple model).
- `gradcam_maps`: Grad-CAM (Selvaraju et al. 2017; the `pytorch-grad-cam` library, `grad-cam` on PyPI)
  of the same cosine similarity, at the same layer unless `layer` names another module, ReLU'd and scaled
  to [0, 1] per image as the library does.

Both are bilinearly resized from the feature grid to the input (`pixels`' height and width); the maps
lie on the model's input, the padded, resized and cropped image (data.images.build_transforms).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The module whose output is the spatial grid the backbone pools into its image feature.
SPATIAL_LAYERS = {
    "resnet18": "vision.layer4",
    "resnet34": "vision.layer4",
    "resnet50": "vision.layer4",
    "small_cnn": "vision.features",
    "mobilenet_v3_small": "vision.features",
    "swin_t": "vision.permute",  # after the final norm, channels first: [B, C, H, W]
}
MAP_METHODS = ("similarity", "gradcam")


def spatial_layer(model: nn.Module) -> str:
    """Name of the module (model.get_submodule) whose output the model's image feature pools."""
    backbone = getattr(model, "vision_backbone_name", None)
    if backbone in SPATIAL_LAYERS:
        return SPATIAL_LAYERS[backbone]
    vision = getattr(model, "vision", None)
    if isinstance(vision, nn.Sequential):  # the seed's simple model: conv blocks, pool, flatten, linear
        pools = [i for i, m in enumerate(vision) if isinstance(m, nn.AdaptiveAvgPool2d)]
        if pools and pools[-1] > 0:
            return f"vision.{pools[-1] - 1}"
    raise ValueError(f"no spatial feature layer known for {type(model).__name__} (backbone {backbone!r})")


def image_head(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The linear map from pooled vision features to the joint space (before normalisation)."""
    projection = getattr(model, "vision_projection", None)
    if projection is not None:
        return projection
    vision = getattr(model, "vision", None)
    if isinstance(vision, nn.Sequential) and isinstance(vision[-1], nn.Linear):
        return vision[-1]
    raise ValueError(f"no image head known for {type(model).__name__}")


def spatial_features(model: nn.Module, pixels: Tensor, layer: str | None = None) -> Tensor:
    """The output of `layer` (default `spatial_layer(model)`) while the model embeds `pixels`: [B, C, h, w]."""
    module = model.get_submodule(layer or spatial_layer(model))
    captured: list[Tensor] = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        model.encode_image(pixels)
    finally:
        handle.remove()
    return captured[-1]


def _to_input_size(maps: Tensor, pixels: Tensor) -> Tensor:
    return F.interpolate(maps[:, None].float(), size=tuple(pixels.shape[-2:]), mode="bilinear",
                         align_corners=False)[:, 0]


@torch.no_grad()
def similarity_maps(model: nn.Module, pixels: Tensor, text_embeds: Tensor, *, grid: bool = False) -> Tensor:
    """[B, H, W] maps of image i against text i (`text_embeds` [B, D], L2-normalised, as encode_text
    gives them) over the input `pixels` [B, 3, H, W]; with `grid`, the [B, h, w] feature-grid maps
    whose mean is each pair's cosine similarity (module docstring). Call in eval mode."""
    features = spatial_features(model, pixels)
    head = image_head(model)
    projected = head(features.permute(0, 2, 3, 1).float())  # [B, h, w, D]
    pooled = head(features.float().mean(dim=(2, 3)))  # [B, D]: the image feature before normalisation
    maps = torch.einsum("bhwd,bd->bhw", projected, text_embeds.float()) / pooled.norm(dim=-1)[:, None, None]
    return maps if grid else _to_input_size(maps, pixels)


class _ImageEmbedding(nn.Module):
    """The image tower as a module of its own: what Grad-CAM differentiates."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model.encode_image(pixels)


class _Similarity:
    """A Grad-CAM target: the cosine similarity of one image's embedding to one text embedding."""

    def __init__(self, text_embed: Tensor):
        self.text_embed = text_embed

    def __call__(self, image_embed: Tensor) -> Tensor:
        return image_embed @ self.text_embed


def gradcam_maps(model: nn.Module, pixels: Tensor, text_embeds: Tensor, *, layer: str | None = None) -> Tensor:
    """[B, H, W] Grad-CAM maps (in [0, 1] per image) of the cosine similarity of image i and text i at
    `layer` (default `spatial_layer(model)`), computed in eval mode with gradients; the model's mode is
    restored and its parameters' gradients cleared afterwards."""
    from pytorch_grad_cam import GradCAM  # optional until a map is asked for: it imports OpenCV

    was_training = model.training
    target_layer = model.get_submodule(layer or spatial_layer(model))
    targets = [_Similarity(t.detach().float()) for t in text_embeds]
    try:
        with torch.enable_grad(), GradCAM(_ImageEmbedding(model), [target_layer]) as cam:
            maps = cam(input_tensor=pixels, targets=targets)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))


def text_to_region_maps(model: nn.Module, pixels: Tensor, text_embeds: Tensor, method: str) -> Tensor:
    """`similarity_maps` or `gradcam_maps` by name (MAP_METHODS)."""
    if method == "similarity":
        return similarity_maps(model, pixels, text_embeds)
    if method == "gradcam":
        return gradcam_maps(model, pixels, text_embeds)
    raise ValueError(f"map method {method!r} is not one of {', '.join(MAP_METHODS)}")
