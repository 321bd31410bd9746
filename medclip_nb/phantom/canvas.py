"""Geometry of one phantom image: pixel grids in the patient's frame, the two hemithoraces, and
the soft shapes (steps, noise, blobs, segments) the anatomy and the findings are drawn with."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from medclip_nb.phantom.anatomy import Anatomy


def soft_step(z: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 where z < -width/2, 1 where z > width/2, smooth between."""
    t = np.clip(z * (1.0 / width) + 0.5, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Zero-mean smooth noise of shape (h, w), about `cells` blobs along the height."""
    ch = max(2, min(cells, h))
    cw = max(2, round(ch * w / h))
    small = rng.standard_normal((ch, cw)).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)


class Canvas:
    """Coordinate grids of one image, in units of its height, in the patient's frame."""

    def __init__(self, h: int, w: int, anatomy: Anatomy):
        self.h, self.w = h, w
        self.mid = 0.5 * w / h
        angle = math.radians(anatomy.rotation_deg)
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.shift = (anatomy.shift_x, anatomy.shift_y)
        xs = ((np.arange(w, dtype=np.float32) + 0.5) / h - self.mid)[None, :]
        ys = ((np.arange(h, dtype=np.float32) + 0.5) / h - 0.5)[:, None]
        # patient coordinates of each pixel: rotate about the centre, then shift
        self.x = self.cos * xs + self.sin * ys + self.mid - anatomy.shift_x
        self.y = -self.sin * xs + self.cos * ys + 0.5 - anatomy.shift_y

    def to_pixels(self, x: float, y: float) -> tuple[float, float]:
        """Pixel position of a point given in patient coordinates."""
        px, py = x - self.mid + self.shift[0], y - 0.5 + self.shift[1]
        xs = self.cos * px - self.sin * py
        ys = self.sin * px + self.cos * py
        return (xs + self.mid) * self.h, (ys + 0.5) * self.h


@dataclass
class Hemithorax:
    sign: float  # -1 for the patient's right (image left), +1 for the left
    u: np.ndarray  # distance from the midline towards this side
    t: np.ndarray  # 0 at the apex, 1 at the costophrenic angle
    lateral: np.ndarray  # lateral lung border at each height
    medial: np.ndarray
    dome: np.ndarray  # diaphragm height below each point
    lung: np.ndarray  # soft lung mask
    base: float
    apex: float


def hemithorax(c: Canvas, a: Anatomy, sign: float, base: float, dome_height: float) -> Hemithorax:
    u = sign * (c.x - c.mid)
    t = (c.y - a.apex) / (base - a.apex)
    tt = np.clip(t, 0.0, 1.0)
    lx = a.half_width
    # lateral border: a rounded apex widening to the costophrenic angle
    lateral = lx * (0.3 + 0.7 * np.sqrt(1.0 - (1.0 - tt) ** 2))
    medial = a.mediastinum + 0.012 * tt
    q = np.clip(1.0 - ((u - 0.5 * lx) / (0.58 * lx)) ** 2, 0.0, 1.0)
    dome = base - dome_height * q
    edge = 0.008
    lung = soft_step(lateral - u, edge) * soft_step(u - medial, edge) * soft_step(dome - c.y, edge) * soft_step(t, 0.03)
    return Hemithorax(sign, u, t, lateral, medial, dome, lung, base, a.apex)


def zone_height(zone: str) -> float:
    """Height within the lung (0 apex, 1 base) of a zone's centre."""
    return {"apical": 0.12, "upper": 0.3, "mid": 0.52, "lower": 0.68, "base": 0.8, "retrocardiac": 0.84}[zone]


def lung_point(c: Canvas, side: Hemithorax, lx: float, t: float, u_frac: float) -> tuple[float, float]:
    """Patient coordinates of a point at lung height t, u_frac of the way to the ribs."""
    y = side.apex + t * (side.base - side.apex)
    return c.mid + side.sign * u_frac * lx, y


def blob_patch(c: Canvas, rng, cx: float, cy: float, radius: float, n: int) -> np.ndarray:
    """Irregular patch: the union of a few Gaussian blobs around (cx, cy), in [0, 1]."""
    acc = np.zeros_like(c.x)
    for _ in range(n):
        bx = cx + float(rng.normal(0, radius * 0.45))
        by = cy + float(rng.normal(0, radius * 0.35))
        r = radius * float(rng.uniform(0.55, 0.85))
        acc = np.maximum(acc, np.exp(-(((c.x - bx) ** 2 + (c.y - by) ** 2) * (1.0 / (r * r)))))
    return np.clip((acc - 0.3) * 2.5, 0.0, 1.0)


def segment_distance(c: Canvas, x0, y0, x1, y1) -> np.ndarray:
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    s = np.clip(((c.x - x0) * dx + (c.y - y0) * dy) * (1.0 / length2), 0.0, 1.0)
    return np.hypot(c.x - (x0 + s * dx), c.y - (y0 + s * dy))
