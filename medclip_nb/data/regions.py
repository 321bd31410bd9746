"""Where each finding of an image is: region files, box tables, and a region on the model's input.

Two sources, one `Region` (a finding, its pixels or its box, and the text that names it):

- **region files** (`<image>.regions.json` beside an image; the phantom writes one beside each frontal
  image): a JSON object `{"format": "medclip-nb-regions", "version": 1, "width": W, "height": H,
  "regions": [{"finding", "box": [x, y, w, h], "area", "mask": {"size": [H, W], "counts": [...]}, ...}]}`;
  a mask is COCO's uncompressed run-length encoding (column-major runs, the first of zeros), so
  `pycocotools.mask.frPyObjects` reads it too. `prepare` carries a record's file as its `regions` field.
- **box tables** (a CSV, config key `localisation_boxes`): one row per box, for real data with expert
  boxes (MS-CXR's `MS_CXR_Local_Alignment_v1.*.csv` reads as it is; RSNA pneumonia boxes with a
  finding column added; docs/localisation.md).

`mask_on_input` maps a region at the image's own size onto the model's input (pad to a square, resize,
centre crop: the evaluation transform's geometry), where the maps are scored. NumPy only (no torch):
the phantom's writer processes import this module.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medclip_nb.errors import DataError, quote
from medclip_nb.files import read_text_limited

REGIONS_FORMAT = "medclip-nb-regions"
REGIONS_VERSION = 1
REGIONS_SUFFIX = ".regions.json"
MAX_REGIONS_BYTES = 16 * 2**20  # a region file is a few kB; anything far larger is not one
MAX_REGION_SIDE = 12_000  # images.MAX_PADDED_SIDE: no image larger than this is decoded either

# Box-table columns: the name used here first, then the names MS-CXR (and others) give it.
BOX_COLUMNS: dict[str, tuple[str, ...]] = {
    "image": ("image_path", "path", "dicom_id"),
    "finding": ("finding", "category_name"),
    "x": ("x",),
    "y": ("y",),
    "width": ("width", "w"),
    "height": ("height", "h"),
}
OPTIONAL_BOX_COLUMNS: dict[str, tuple[str, ...]] = {
    "text": ("text", "label_text"),
    "image_width": ("image_width",),
    "image_height": ("image_height",),
}


@dataclass
class Region:
    """One finding's region on one image: a boolean `mask` (height x width of the image), or
    `boxes` (x, y, width, height in pixels of a `frame` (width, height), None = the image's own:
    the region is their union), and the `text` whose map is scored on it (None: the finding's phrase)."""

    finding: str
    mask: np.ndarray | None = None
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    text: str | None = None
    frame: tuple[float, float] | None = None
    info: dict | None = None  # what a region file adds: box, area, grade, sides, zone, how it was drawn

    def pixels(self, width: int, height: int) -> np.ndarray:
        """The region as a boolean [height, width] array of the image (a box: the pixels whose
        centres lie inside it, scaled from its frame to the image)."""
        if self.mask is not None:
            if self.mask.shape != (height, width):
                raise DataError(f"region of {self.finding!r}: mask of {self.mask.shape[1]} x {self.mask.shape[0]} "
                                f"pixels on an image of {width} x {height}")
            return self.mask
        sx, sy = (width / self.frame[0], height / self.frame[1]) if self.frame else (1.0, 1.0)
        cols, rows = np.arange(width) + 0.5, np.arange(height) + 0.5
        mask = np.zeros((height, width), dtype=bool)
        for x, y, w, h in self.boxes:
            inside_x = (cols >= x * sx) & (cols <= (x + w) * sx)
            inside_y = (rows >= y * sy) & (rows <= (y + h) * sy)
            mask |= inside_y[:, None] & inside_x[None, :]
        return mask


# ---- run-length encoding -----------------------------------------------------------------------------
def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a boolean [H, W] mask: {"size": [H, W], "counts": [...]}, runs
    in column-major order, the first run of zeros (0 when the first pixel is set)."""
    mask = np.asarray(mask, dtype=bool)
    flat = mask.ravel(order="F")
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], starts, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: Any, where: str = "mask") -> np.ndarray:
    """The boolean [H, W] mask of `rle_encode`'s output; a DataError naming `where` when it is not one."""
    if not isinstance(rle, dict) or not isinstance(rle.get("size"), list) or not isinstance(rle.get("counts"), list):
        raise DataError(f"{where}: must be {{'size': [height, width], 'counts': [...]}} (COCO's uncompressed RLE)")
    size, counts = rle["size"], rle["counts"]
    if len(size) != 2 or not all(_whole(v) and 0 < v <= MAX_REGION_SIDE for v in size):
        raise DataError(f"{where}: size {quote(size)} is not [height, width] of 1..{MAX_REGION_SIDE} pixels")
    if not all(_whole(c) and c >= 0 for c in counts):
        raise DataError(f"{where}: counts must be whole numbers of at least 0")
    height, width = size
    if sum(counts) != height * width:
        raise DataError(f"{where}: counts add up to {sum(counts)} pixels, the size to {height * width}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((height, width), order="F")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def mask_box(mask: np.ndarray) -> list[int]:
    """[x, y, width, height] of the smallest box holding every set pixel ([0, 0, 0, 0] for none)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


# ---- region files ------------------------------------------------------------------------------------
def regions_file(image_path: str | os.PathLike) -> Path:
    """The region file beside an image: `<dicom_id>.jpg` -> `<dicom_id>.regions.json`."""
    path = Path(image_path)
    return path.with_name(path.stem + REGIONS_SUFFIX)


def regions_document(width: int, height: int, regions: Sequence[dict], rule: str) -> dict[str, Any]:
    """The JSON object of a region file: each of `regions` is {"finding", "mask": bool array, ...}
    (other keys kept as they are); the box and area are computed from the mask."""
    entries = []
    for region in regions:
        mask = np.asarray(region["mask"], dtype=bool)
        extra = {k: v for k, v in region.items() if k not in ("finding", "mask")}
        entries.append({"finding": region["finding"], "box": mask_box(mask), "area": int(mask.sum()),
                        "mask": rle_encode(mask), **extra})
    return {"format": REGIONS_FORMAT, "version": REGIONS_VERSION, "width": int(width), "height": int(height),
            "mask_rule": rule, "regions": entries}


def read_regions_file(path: str | os.PathLike) -> tuple[tuple[int, int], list[Region]]:
    """((width, height), regions) of a region file; a DataError naming the file for anything else."""
    path = Path(path)
    text = read_text_limited(path, MAX_REGIONS_BYTES, what="region file", error=DataError)  # never a FIFO's hang
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise DataError(f"{path}: not a JSON region file") from None
    if not isinstance(data, dict) or data.get("format") != REGIONS_FORMAT:
        raise DataError(f"{path}: not a region file (its 'format' is not {REGIONS_FORMAT!r})")
    if data.get("version") != REGIONS_VERSION:
        raise DataError(f"{path}: region file version {quote(data.get('version'))}; this code reads {REGIONS_VERSION}")
    width, height = data.get("width"), data.get("height")
    if not (_whole(width) and _whole(height) and 0 < width <= MAX_REGION_SIDE and 0 < height <= MAX_REGION_SIDE):
        raise DataError(f"{path}: 'width' and 'height' must be whole numbers of 1..{MAX_REGION_SIDE} pixels")
    entries = data.get("regions")
    if not isinstance(entries, list):
        raise DataError(f"{path}: 'regions' must be a list")
    regions = []
    for i, entry in enumerate(entries):
        where = f"{path}: regions[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("finding"), str) or not entry["finding"].strip():
            raise DataError(f"{where}: needs a 'finding' name")
        mask = rle_decode(entry.get("mask"), f"{where}.mask")
        if mask.shape != (height, width):
            raise DataError(f"{where}.mask: {mask.shape[1]} x {mask.shape[0]} pixels, the image {width} x {height}")
        info = {k: v for k, v in entry.items() if k not in ("finding", "mask")}
        regions.append(Region(entry["finding"], mask=mask, info=info))
    return (width, height), regions


# ---- box tables --------------------------------------------------------------------------------------
def image_key(path_or_id: str) -> str:
    """How a box table's row finds its image: the file name without its extension (MIMIC's dicom_id)."""
    name = Path(str(path_or_id).strip().replace("\\", "/")).name
    return name.split(".", 1)[0] if "." in name else name


def _column(frame, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in frame.columns), None)


def read_box_table(path: str | os.PathLike) -> dict[str, list[Region]]:
    """{image key: its regions} from a CSV of boxes (module docstring; docs/localisation.md): columns
    image (`image_path`, `path` or `dicom_id`), finding (`finding` or `category_name`), `x`, `y`,
    width (`width` or `w`), height (`height` or `h`) in pixels from the top left; optional text
    (`text` or `label_text`: the phrase scored instead of the finding's name) and the pixel frame of
    the box (`image_width`, `image_height`; default the image file's size). Several boxes of one
    finding (and text) on an image form one region."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"localisation_boxes {path}: no such file") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"localisation_boxes {path}: not a readable CSV ({reason})") from None
    columns = {key: _column(frame, names) for key, names in {**BOX_COLUMNS, **OPTIONAL_BOX_COLUMNS}.items()}
    missing = [f"{key} ({' or '.join(BOX_COLUMNS[key])})" for key in BOX_COLUMNS if columns[key] is None]
    if missing:
        raise DataError(f"localisation_boxes {path}: no column for {', '.join(missing)}")
    grouped: dict[tuple[str, str, str], Region] = {}
    for row_number, row in enumerate(frame.to_dict("records"), start=2):  # line 1 is the header
        where = f"localisation_boxes {path}: line {row_number}"
        key, region = _box_row(row, columns, where)
        previous = grouped.setdefault((key, region.finding, region.text or ""), region)
        if previous is not region:  # another box of the same finding (and text) on the same image
            if previous.frame != region.frame:
                raise DataError(f"{where}: image_width/image_height differ from an earlier box of the same image")
            previous.boxes += region.boxes
    table: dict[str, list[Region]] = {}
    for (key, _finding, _text), region in grouped.items():
        table.setdefault(key, []).append(region)
    return table


def _box_row(row: dict, columns: dict[str, str | None], where: str) -> tuple[str, Region]:
    values = {key: str(row[name]).strip() for key, name in columns.items() if name is not None}
    if not values["image"] or not values["finding"]:
        raise DataError(f"{where}: the image and the finding must not be empty")
    numbers = {}
    for key in ("x", "y", "width", "height", "image_width", "image_height"):
        if key in values and (values[key] or key in BOX_COLUMNS):
            try:
                numbers[key] = float(values[key])
            except ValueError:
                raise DataError(f"{where}: {columns[key]} {quote(values[key])} is not a number") from None
            if not math.isfinite(numbers[key]) or numbers[key] < 0:
                raise DataError(f"{where}: {columns[key]} {quote(values[key])} must be a finite number >= 0")
    if numbers["width"] <= 0 or numbers["height"] <= 0:
        raise DataError(f"{where}: a box needs a width and a height above 0")
    frame = None
    if "image_width" in numbers or "image_height" in numbers:
        if not numbers.get("image_width") or not numbers.get("image_height"):
            raise DataError(f"{where}: give both image_width and image_height (above 0), or neither")
        frame = (numbers["image_width"], numbers["image_height"])
    box = (numbers["x"], numbers["y"], numbers["width"], numbers["height"])
    return image_key(values["image"]), Region(values["finding"], boxes=[box], text=values.get("text") or None,
                                              frame=frame)


# ---- onto the model's input --------------------------------------------------------------------------
def _nearest_index(source: int, target: int) -> np.ndarray:
    """Source pixel of each target pixel when `source` pixels are resized to `target`, pixel centres
    aligned (torch's 'nearest-exact')."""
    return np.minimum(((np.arange(target) + 0.5) * (source / target)).astype(np.int64), source - 1)


def mask_on_input(mask: np.ndarray, resize_size: int, image_size: int) -> np.ndarray:
    """A boolean [H, W] mask of an image as the evaluation transform places that image on the
    model's input: padded with zeros to a centred square, resized to `resize_size` (nearest pixel
    centre), centre-cropped to `image_size` (data.images.build_transforms' geometry)."""
    height, width = mask.shape
    side = max(height, width)
    square = np.zeros((side, side), dtype=bool)
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = mask
    index = _nearest_index(side, resize_size)
    resized = square[index][:, index]
    offset = int(round((resize_size - image_size) / 2.0))  # torchvision's centre crop
    return resized[offset:offset + image_size, offset:offset + image_size]


# ---- prepare ---------------------------------------------------------------------------------------
def attach_regions(records: Sequence[dict], base: str | os.PathLike) -> int:
    """Give each record whose image has a region file beside it the optional fields `regions` (that
    file, written as its `image_path` is: relative paths from `base`) and `boxes` ({finding: [x, y,
    width, height]}, {} for an image without findings); returns how many records have them. A region
    file that cannot be read is a DataError naming it."""
    count = 0
    for record in records:
        image_path = record.get("image_path")
        if not image_path:
            continue
        path = regions_file(image_path)
        full = path if path.is_absolute() else Path(base) / path
        if not full.is_file():
            continue
        _size, regions = read_regions_file(full)
        record["regions"] = path.as_posix()
        record["boxes"] = {r.finding: list(r.info.get("box", mask_box(r.mask))) for r in regions}
        count += 1
    return count
