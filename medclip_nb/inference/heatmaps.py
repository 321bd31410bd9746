"""Where a pretrained model looks in a user's images: one overlay image per input image (`predict --heatmap DIR`).

Each PNG shows the model's input (the image padded to a square, resized and centre-cropped as the
evaluation transform does) and, for each class of the prediction, the map of that class's text over it
(model/maps.py: the similarity map, or Grad-CAM of the image-text similarity), titled with the class's
probability. A class's text is its prompts' mean embedding (the 'mean' ensemble `classify` scores).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from medclip_nb.errors import UserError
from medclip_nb.files import write_atomic
from medclip_nb.model import MAP_METHODS, text_to_region_maps


def heatmap_names(ids: Sequence[str]) -> list[str]:
    """A PNG name per image id: its file stem, '-2', '-3', ... added where two images share one."""
    names, used = [], set()
    for image_id in ids:
        stem = Path(str(image_id)).stem or "image"
        name, n = f"{stem}.png", 1
        while name in used:
            n += 1
            name = f"{stem}-{n}.png"
        used.add(name)
        names.append(name)
    return names


def heatmap_targets(folder: str | os.PathLike, method: str, files: Sequence, force: bool = False) -> dict[str, Path]:
    """{image id: its PNG in `folder`} for the files given, checked before any model is loaded: the
    method, the folder (not a file), no PNG that is one of the input images (even with `force`), and
    no PNG already there unless `force`."""
    if method not in MAP_METHODS:
        raise UserError(f"--heatmap-method: {method!r} is not one of {', '.join(MAP_METHODS)}")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--heatmap {folder}: exists and is not a folder")
    ids = [str(f) for f in files]
    targets = {image_id: folder / name for image_id, name in zip(ids, heatmap_names(ids))}
    images = {Path(f).resolve() for f in files}
    inputs = [p for p in targets.values() if p.resolve() in images]
    if inputs:  # never replaced, --force or not: an overlay must not destroy the image it shows
        raise UserError(f"--heatmap {inputs[0]}: is one of the command's input images ({len(inputs)} of the "
                        f"{len(targets)} overlays would replace one); choose another folder")
    existing = [p for p in targets.values() if p.exists()]
    if existing and not force:
        raise UserError(f"--heatmap {existing[0]}: exists ({len(existing)} of the {len(targets)} overlays would "
                        f"replace files); pass --force to replace them, or choose another folder")
    return targets


def class_text_embeddings(pretrained, class_prompts: Mapping[str, Sequence[str]]) -> torch.Tensor:
    """[C, D]: each class's prompts' mean embedding, L2-normalised."""
    rows = [torch.from_numpy(pretrained.embed_texts(list(prompts))).mean(dim=0) for prompts in class_prompts.values()]
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def image_maps(pretrained, image, text_embeds: torch.Tensor, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(the model's input as a grey [S, S] image, [C, S, S] maps of each text over it) of one image."""
    pixels = pretrained.preprocess(image).unsqueeze(0).to(pretrained.device)
    repeated = pixels.expand(len(text_embeds), *pixels.shape[1:])
    maps = text_to_region_maps(pretrained.model.eval(), repeated, text_embeds.to(pretrained.device), method)
    return pixels[0, 0].float().cpu().numpy(), maps.float().cpu().numpy()


def heatmap_figure(grey: np.ndarray, maps: np.ndarray, titles: Sequence[str], method: str, image_name: str):
    """The input image, then one overlay per class with its colour bar."""
    import matplotlib.pyplot as plt

    panels = 1 + len(maps)
    columns = math.ceil(math.sqrt(panels))
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].axis("on")
    axes[0, 0].imshow(grey, cmap="gray")
    short = image_name if len(image_name) <= 28 else image_name[:25] + "..."
    axes[0, 0].set_title(f"{short}\n(the model's input)", fontsize=8)
    label = "cosine similarity share" if method == "similarity" else "Grad-CAM (0-1)"
    for i, (heatmap, title) in enumerate(zip(maps, titles), start=1):
        ax = axes[i // columns, i % columns]
        ax.axis("on")
        ax.imshow(grey, cmap="gray")
        shown = ax.imshow(heatmap, cmap="jet", alpha=0.5)
        ax.set_title(title, fontsize=8)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04).set_label(label, fontsize=7)
    for ax in axes.ravel():
        if ax.axison:
            ax.set_xlabel("x (input pixels)", fontsize=7)
            ax.set_ylabel("y (input pixels)", fontsize=7)
    fig.tight_layout()
    return fig


def write_heatmaps(pretrained, table, class_prompts: Mapping[str, Sequence[str]], targets: Mapping[str, Path],
                   method: str = "similarity") -> list[Path]:
    """One PNG per classified image (the rows of `table`, a classify / classify_multilabel result whose
    ids are file paths) at its `targets` path (heatmap_targets). Returns the paths written."""
    import matplotlib.pyplot as plt

    text_embeds = class_text_embeddings(pretrained, class_prompts)
    written = []
    for image_id, row in table.iterrows():
        grey, maps = image_maps(pretrained, Path(str(image_id)), text_embeds, method)
        titles = [f"{name} p={row[name]:.3f}" for name in class_prompts]
        fig = heatmap_figure(grey, maps, titles, method, Path(str(image_id)).name)
        try:
            written.append(write_atomic(targets[str(image_id)],
                                        lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100), what="--heatmap"))
        finally:
            plt.close(fig)
    return written
