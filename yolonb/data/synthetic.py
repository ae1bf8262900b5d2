"""Embedded default data set: drawn shapes for a study of focal losses, in the Pascal VOC layout.

The generator draws 7 classes of shapes with a long-tailed frequency: the rarest class is
a quarter as frequent as the most frequent one. Shapes span about 8 to 110 pixels on
images of 128 to 192 pixels, so a detector resized to 160 to 224 pixels needs its stride 8,
16 and 32 levels. Images carry 1 to 8 objects on textured backgrounds (gradients, stripes,
smooth blotches, pixel noise) with clutter. Unlabelled look-alike distractors resemble the
classes (an ellipse beside discs, a pentagon beside stars, a T beside crosses), and shapes
occlude each other and are truncated at the image border. Tiny and heavily hidden objects
are marked difficult. An object takes its class's base colour with probability
class_colour_probability and a random colour otherwise, so colour hints at the class and
the shape decides it.

The output is a VOC year folder (Annotations/, JPEGImages/, ImageSets/Main/) read by the
same reader as real VOC data. Everything is a function of the seed and the parameters:
the same call writes the same bytes to every file.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# Part of the cache folder name: raise it whenever a change alters the generated files, so
# a cache written by an older generator is never reused.
GENERATOR_VERSION = 4

# Sorted, so the class list that a VOC reader discovers from the annotations (sorted names)
# is this tuple in the same order.
SYNTHETIC_CLASSES: tuple[str, ...] = ("arrow", "cross", "disc", "ring", "square", "star", "triangle")

# Relative frequencies: a long tail from disc (1.0) down to arrow (0.25). A 10-to-1 tail
# left about 50 arrows in the training split, and the quick profile's arrow AP near 0.01.
DEFAULT_CLASS_WEIGHTS: dict[str, float] = {
    "disc": 1.0,
    "square": 0.75,
    "triangle": 0.6,
    "ring": 0.5,
    "cross": 0.4,
    "star": 0.3,
    "arrow": 0.25,
}

# One base colour per class (RGB). Objects take it with probability
# class_colour_probability, so colour helps a detector trained for a minute on a CPU
# without deciding the class on its own.
CLASS_PALETTE: dict[str, np.ndarray] = {
    name: np.array(rgb, dtype=np.float32)
    for name, rgb in {
        "disc": (220, 50, 50),
        "square": (50, 90, 220),
        "triangle": (230, 210, 40),
        "ring": (40, 190, 80),
        "cross": (200, 60, 200),
        "star": (60, 210, 220),
        "arrow": (240, 140, 30),
    }.items()
}

# Unlabelled shapes that each resemble a class: ellipse and disc, bar and square, frame and
# ring or square, pentagon and star, tee and cross, chevron and arrow, trapezoid and triangle.
DISTRACTOR_KINDS: tuple[str, ...] = ("ellipse", "bar", "frame", "pentagon", "tee", "chevron", "trapezoid")

CACHE_ENV = "YOLONB_CACHE"
DEFAULT_CACHE_DIR = Path(".cache") / "yolonb"
MANIFEST_NAME = "synthetic.json"

# Shapes are drawn at this many times the image resolution and reduced with a box filter,
# which gives anti-aliased edges and fractional coverage (alpha) at each pixel.
_SUPERSAMPLE = 4
# A pixel belongs to a shape's visible area when its coverage reaches _AREA_ALPHA. The box
# spans the pixels covered by more than _BOX_ALPHA, so thin outlines keep their extent. PIL
# fills polygons edge-inclusive, one supersampled column too many (0.25 of a pixel, stored
# as 64/255), and the threshold leaves that column out, so a square over [5, 15] gets the
# box [5, 15].
_AREA_ALPHA = 0.5
_BOX_ALPHA = 0.3
_PLACEMENT_TRIES = 25


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of one generated data set; each knob that sets its difficulty is here.

    Sizes are in pixels, ranges are inclusive (low, high) pairs and fractions are of the
    shape's own area (including the part outside the image).
    """

    n_trainval: int = 480
    n_test: int = 120
    seed: int = 0
    val_fraction: float = 0.2
    image_size: tuple[int, int] = (128, 192)
    object_size: tuple[float, float] = (10.0, 80.0)
    objects_per_image: tuple[int, int] = (1, 6)
    class_weights: tuple[tuple[str, float], ...] = tuple(DEFAULT_CLASS_WEIGHTS.items())
    distractors_per_image: tuple[int, int] = (0, 1)
    clutter_per_image: tuple[int, int] = (1, 6)
    truncation_probability: float = 0.12
    min_visible: float = 0.3
    difficult_visible: float = 0.5
    difficult_size: float = 12.0
    min_contrast: float = 60.0
    class_colour_probability: float = 0.8
    noise_sigma: tuple[float, float] = (2.0, 6.0)
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        _check_range("image_size", self.image_size, minimum=16)
        _check_range("object_size", self.object_size, minimum=4)
        _check_range("objects_per_image", self.objects_per_image, minimum=1)
        _check_range("distractors_per_image", self.distractors_per_image, minimum=0)
        _check_range("clutter_per_image", self.clutter_per_image, minimum=0)
        _check_range("noise_sigma", self.noise_sigma, minimum=0)

        if self.n_trainval < 2 or self.n_test < 1:
            raise ValueError(
                f"n_trainval={self.n_trainval} and n_test={self.n_test} are invalid: "
                "use n_trainval >= 2 (train and val each need an image) and n_test >= 1"
            )
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction} is invalid: use a value between 0 and 1")
        if not 0 <= self.min_visible <= self.difficult_visible <= 1:
            raise ValueError(
                f"min_visible={self.min_visible} and difficult_visible={self.difficult_visible} are invalid: "
                "use 0 <= min_visible <= difficult_visible <= 1"
            )
        if not 0 <= self.class_colour_probability <= 1:
            raise ValueError(
                f"class_colour_probability={self.class_colour_probability} is invalid: use a value between 0 and 1"
            )
        if not 0 <= self.truncation_probability <= 1:
            raise ValueError(
                f"truncation_probability={self.truncation_probability} is invalid: use a value between 0 and 1"
            )
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality={self.jpeg_quality} is invalid: use 1 to 95")

        names = [name for name, _ in self.class_weights]
        unknown = sorted(set(names) - set(SYNTHETIC_CLASSES))
        if unknown or len(names) != len(set(names)) or not names:
            raise ValueError(
                f"class_weights names {names} are invalid: give each of {SYNTHETIC_CLASSES} at most once"
            )
        if any(not weight > 0 for _, weight in self.class_weights):
            raise ValueError(f"class_weights {self.class_weights} are invalid: every weight must be > 0")

    def to_dict(self) -> dict:
        """Return the parameters as JSON-ready values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def fingerprint(self) -> str:
        """Return 12 hex digits of the SHA-256 of the generator version and the parameters."""
        payload = json.dumps({"version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def _check_range(name: str, value: tuple, minimum: float) -> None:
    if len(value) != 2 or not minimum <= value[0] <= value[1]:
        raise ValueError(f"{name}={value} is invalid: use a (low, high) pair with {minimum} <= low <= high")


def _make_config(seed: int, params: dict) -> SyntheticConfig:
    names = {f.name for f in dataclasses.fields(SyntheticConfig)} - {"seed"}
    unknown = sorted(set(params) - names)
    if unknown:
        raise TypeError(f"unknown synthetic data parameter(s) {unknown}; valid names: {sorted(names)}")

    # Lists (from JSON or a command line) and a class-weight dict become the frozen tuple form,
    # so equal parameters always hash to the same cache folder.
    normalized = {}
    for name, value in params.items():
        if name == "class_weights" and isinstance(value, dict):
            value = tuple(value.items())
        elif name == "class_weights":
            value = tuple((str(n), float(w)) for n, w in value)
        elif isinstance(value, list):
            value = tuple(value)
        normalized[name] = value
    return SyntheticConfig(seed=seed, **normalized)


# ---------------------------------------------------------------------------------------
# Shape geometry. Each shape is a list of (polygon, fill) pairs in unit coordinates, where
# the unrotated shape spans about [-1, 1] on its longer axis. A polygon with fill 0 cuts a hole.
# ---------------------------------------------------------------------------------------


def _regular_polygon(n: int, radius: float = 1.0, start: float = math.pi / 2) -> np.ndarray:
    angles = start + np.arange(n) * 2 * math.pi / n
    return np.stack([radius * np.cos(angles), -radius * np.sin(angles)], axis=1)


def _rectangle(half_w: float, half_h: float) -> np.ndarray:
    return np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])


def _class_shape(name: str, rng: np.random.Generator, size: float) -> list[tuple[np.ndarray, int]]:
    if name == "disc":
        return [(_regular_polygon(64), 255)]

    if name == "ring":
        # At least 1.5 pixels of stroke, or a small ring would vanish after resizing.
        thickness = max(rng.uniform(0.25, 0.4), 3.0 / size)
        return [(_regular_polygon(64), 255), (_regular_polygon(64, 1.0 - min(thickness, 0.6)), 0)]

    if name == "square":
        return [(_rectangle(1.0, rng.uniform(0.85, 1.0)), 255)]

    if name == "triangle":
        triangle = _regular_polygon(3)
        triangle[:, 1] -= 0.25  # centre the box, which spans y in [-1, 0.5] before the shift
        return [(triangle, 255)]

    if name == "cross":
        w = rng.uniform(0.22, 0.34)
        cross = np.array(
            [[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]]
        )
        return [(cross, 255)]

    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        outer_points = _regular_polygon(5)
        inner_points = _regular_polygon(5, inner, start=math.pi / 2 + math.pi / 5)
        star = np.empty((10, 2))
        star[0::2] = outer_points
        star[1::2] = inner_points
        return [(star, 255)]

    if name == "arrow":
        shaft = rng.uniform(0.16, 0.24)
        head = rng.uniform(0.5, 0.62)
        neck = rng.uniform(0.0, 0.3)
        arrow = np.array([[-1, -shaft], [neck, -shaft], [neck, -head], [1, 0], [neck, head], [neck, shaft], [-1, shaft]])
        return [(arrow, 255)]

    raise ValueError(f"unknown class {name!r}; expected one of {SYNTHETIC_CLASSES}")


def _distractor_shape(kind: str, rng: np.random.Generator, size: float) -> list[tuple[np.ndarray, int]]:
    if kind == "ellipse":
        circle = _regular_polygon(64)
        circle[:, 1] /= rng.uniform(1.8, 3.0)
        return [(circle, 255)]

    if kind == "bar":
        return [(_rectangle(1.0, 1.0 / rng.uniform(2.2, 4.0)), 255)]

    if kind == "frame":
        thickness = max(rng.uniform(0.2, 0.35), 3.0 / size)
        inner = 1.0 - min(thickness, 0.6)
        return [(_rectangle(1.0, 1.0), 255), (_rectangle(inner, inner), 0)]

    if kind == "pentagon":
        return [(_regular_polygon(5), 255)]

    if kind == "tee":
        w = rng.uniform(0.2, 0.3)
        tee = np.array([[-1, -1], [1, -1], [1, -1 + 2 * w], [w, -1 + 2 * w], [w, 1], [-w, 1], [-w, -1 + 2 * w], [-1, -1 + 2 * w]])
        return [(tee, 255)]

    if kind == "chevron":
        w = rng.uniform(0.25, 0.4)
        chevron = np.array([[-1, -1], [-1 + w, -1], [1, 0], [-1 + w, 1], [-1, 1], [1 - 2 * w, 0]])
        return [(chevron, 255)]

    if kind == "trapezoid":
        top = rng.uniform(0.3, 0.6)
        return [(np.array([[-top, -0.7], [top, -0.7], [1, 0.7], [-1, 0.7]]), 255)]

    raise ValueError(f"unknown distractor {kind!r}; expected one of {DISTRACTOR_KINDS}")


@dataclass
class _Raster:
    """A shape's coverage on its own canvas, placed at pixel (x0, y0) of the image."""

    alpha: np.ndarray  # (h, w) float32 coverage in [0, 1], may extend past the image
    x0: int
    y0: int
    full_area: int = field(init=False)

    def __post_init__(self) -> None:
        self.full_area = int((self.alpha >= _AREA_ALPHA).sum())

    def clip(self, width: int, height: int) -> tuple[slice, slice, np.ndarray] | None:
        """Return the image slices and the part of alpha inside a width x height image, or None."""
        h, w = self.alpha.shape
        left, top = max(self.x0, 0), max(self.y0, 0)
        right, bottom = min(self.x0 + w, width), min(self.y0 + h, height)
        if right <= left or bottom <= top:
            return None
        crop = self.alpha[top - self.y0 : bottom - self.y0, left - self.x0 : right - self.x0]
        return slice(top, bottom), slice(left, right), crop


def _rasterize(polygons: list[tuple[np.ndarray, int]], center: tuple[float, float], scale: tuple[float, float], angle: float) -> _Raster:
    """Scale, rotate and place unit polygons, then draw them anti-aliased.

    Args:
        polygons: (polygon (K, 2) unit coordinates, fill 255 or 0) pairs, drawn in order.
        center: (x, y) in continuous image pixels.
        scale: half extent in pixels along the shape's x and y axes.
        angle: rotation in radians.

    Returns:
        The coverage raster, which is not clipped to the image.
    """
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    placed = [((points * np.asarray(scale)) @ rotation.T + np.asarray(center), fill) for points, fill in polygons]

    all_points = np.concatenate([points for points, _ in placed])
    x0, y0 = np.floor(all_points.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(all_points.max(axis=0)).astype(int) + 1
    canvas = Image.new("L", ((x1 - x0) * _SUPERSAMPLE, (y1 - y0) * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for points, fill in placed:
        local = (points - [x0, y0]) * _SUPERSAMPLE
        draw.polygon([tuple(p) for p in local.tolist()], fill=fill)

    alpha = np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32) / 255.0
    return _Raster(alpha, int(x0), int(y0))


# ---------------------------------------------------------------------------------------
# Backgrounds, colours and clutter.
# ---------------------------------------------------------------------------------------


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Draw a textured background (height, width, 3) float32 in [0, 255]."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    along = (xs * math.cos(direction) + ys * math.sin(direction)) / max(width, height)

    # A gradient between two colours is the base of every background.
    start, end = _random_colour(rng), _random_colour(rng)
    t = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    image = start + (end - start) * t[..., None]

    kind = rng.choice(["gradient", "stripes", "blotches", "stripes+blotches"])
    if "stripes" in kind:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(5, 30)
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period
        image += rng.uniform(10, 35) * np.sin(phase)[..., None] * rng.uniform(0.5, 1.0, size=3)
    if "blotches" in kind:
        grid = rng.uniform(-1, 1, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
        low = Image.fromarray(((grid + 1) * 127.5).astype(np.uint8), "RGB").resize((width, height), Image.BICUBIC)
        image += (np.asarray(low, dtype=np.float32) - 127.5) * rng.uniform(0.2, 0.5)
    return image


def _object_colour(
    rng: np.random.Generator,
    background_luminance: float,
    min_contrast: float,
    palette_colour: np.ndarray | None = None,
) -> np.ndarray:
    """Draw a colour whose luminance differs from the background by min_contrast.

    With ``palette_colour`` the colour is that one, jittered by up to 30 per channel;
    otherwise it has any hue.
    """
    for _ in range(20):
        if palette_colour is not None:
            colour = np.clip(palette_colour + rng.uniform(-30, 30, size=3), 0, 255).astype(np.float32)
        else:
            colour = _random_colour(rng)
        if abs(float(_luminance(colour)) - background_luminance) >= min_contrast:
            return colour
    return np.full(3, 0.0 if background_luminance > 127.5 else 255.0, dtype=np.float32)


def _draw_clutter(rng: np.random.Generator, image: np.ndarray, count: int) -> np.ndarray:
    """Draw thin lines, dots and arcs: texture that resembles no class."""
    height, width = image.shape[:2]
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        kind = rng.choice(["line", "dots", "arc"])
        if kind == "line":
            points = rng.uniform(0, 1, size=(int(rng.integers(2, 5)), 2)) * [width, height]
            draw.line([tuple(p) for p in points.tolist()], fill=colour, width=int(rng.integers(1, 3)))
        elif kind == "dots":
            for x, y in (rng.uniform(0, 1, size=(int(rng.integers(3, 12)), 2)) * [width, height]).tolist():
                radius = rng.uniform(0.8, 2.0)
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        else:
            x, y = rng.uniform(0, 1, size=2) * [width, height]
            radius = rng.uniform(10, 60)
            start = rng.uniform(0, 360)
            draw.arc([x - radius, y - radius, x + radius, y + radius], start, start + rng.uniform(40, 150), fill=colour, width=int(rng.integers(1, 3)))
    return np.asarray(canvas, dtype=np.float32)


# ---------------------------------------------------------------------------------------
# One image: placement with occlusion control, then the annotations.
# ---------------------------------------------------------------------------------------


@dataclass
class _Placed:
    name: str
    raster: _Raster
    visible: int  # pixels of this object still visible (not covered, inside the image)


@dataclass(frozen=True)
class SyntheticObject:
    """One labelled object as written to the annotation file."""

    name: str
    box: tuple[int, int, int, int]  # continuous 0-based xyxy pixels; integers (pixel edges)
    difficult: bool
    truncated: bool
    occluded: bool
    visible_fraction: float


def _sample_size(rng: np.random.Generator, config: SyntheticConfig, width: int, height: int) -> float:
    # Log-uniform: each octave of sizes gets the same share, so strides 8, 16 and 32 all see objects.
    low, high = config.object_size
    high = min(high, 0.9 * min(width, height))
    low = min(low, high)
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _sample_center(rng: np.random.Generator, config: SyntheticConfig, size: float, width: int, height: int) -> tuple[float, float]:
    if rng.uniform() < config.truncation_probability:
        # Straddle a random border: the centre lies within half a size of the edge.
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        offset = rng.uniform(-0.35, 0.25) * size
        side = int(rng.integers(4))
        if side == 0:
            x = offset
        elif side == 1:
            x = width - offset
        elif side == 2:
            y = offset
        else:
            y = height - offset
        return float(x), float(y)
    margin = size / 2
    return float(rng.uniform(margin, width - margin)), float(rng.uniform(margin, height - margin))


def _try_place(
    rng: np.random.Generator,
    config: SyntheticConfig,
    owner: np.ndarray,
    placed: list[_Placed],
    polygons: list[tuple[np.ndarray, int]],
    size: float,
    aspect: float,
) -> tuple[_Raster, tuple[slice, slice, np.ndarray], np.ndarray] | None:
    """Find a position where the new shape leaves every labelled object min_visible of its area."""
    height, width = owner.shape
    for _ in range(_PLACEMENT_TRIES):
        center = _sample_center(rng, config, size, width, height)
        angle = rng.uniform(0, 2 * math.pi)
        raster = _rasterize(polygons, center, (size / 2, size / 2 / aspect), angle)
        clipped = raster.clip(width, height)
        if clipped is None:
            continue
        rows, cols, alpha = clipped
        covered = alpha >= _AREA_ALPHA
        if not covered.any():
            continue

        # The new shape itself, when labelled, must show min_visible of its area inside the image.
        if covered.sum() < config.min_visible * max(raster.full_area, 1):
            continue

        # Each labelled object under the new shape loses the pixels it covers.
        under = owner[rows, cols][covered]
        losses = np.bincount(under[under >= 0], minlength=len(placed))
        if all(p.visible - lost >= config.min_visible * p.raster.full_area for p, lost in zip(placed, losses)):
            return raster, clipped, losses
    return None


def _composite(image: np.ndarray, clipped: tuple[slice, slice, np.ndarray], colour: np.ndarray, rng: np.random.Generator) -> None:
    rows, cols, alpha = clipped

    # A soft linear shading across the shape, so a fill is not one flat colour.
    h, w = alpha.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(h, w, 1)
    shade = 1.0 + rng.uniform(-0.25, 0.25) * (ramp - ramp.mean())
    fill = np.clip(colour * shade[..., None], 0, 255)

    a = alpha[..., None]
    image[rows, cols] = image[rows, cols] * (1 - a) + fill * a


def _render_image(config: SyntheticConfig, index: int) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Draw image number `index` of the data set and its objects; a pure function of both."""
    rng = np.random.default_rng([config.seed, index])
    width = int(rng.integers(config.image_size[0], config.image_size[1] + 1))
    height = int(rng.integers(config.image_size[0], config.image_size[1] + 1))

    image = _background(rng, width, height)
    image = _draw_clutter(rng, image, int(rng.integers(config.clutter_per_image[0], config.clutter_per_image[1] + 1)))
    background_luminance = _luminance(image)

    # Labelled objects and distractors are drawn in one shuffled order, so each can hide the other.
    names = [n for n, _ in config.class_weights]
    weights = np.array([w for _, w in config.class_weights], dtype=np.float64)
    n_objects = int(rng.integers(config.objects_per_image[0], config.objects_per_image[1] + 1))
    n_distractors = int(rng.integers(config.distractors_per_image[0], config.distractors_per_image[1] + 1))
    queue = [("object", names[i]) for i in rng.choice(len(names), size=n_objects, p=weights / weights.sum())]
    queue += [("distractor", DISTRACTOR_KINDS[i]) for i in rng.integers(len(DISTRACTOR_KINDS), size=n_distractors)]
    order = rng.permutation(len(queue))

    owner = np.full((height, width), -1, dtype=np.int32)  # index into `placed`, -1 for none
    placed: list[_Placed] = []
    for position in order:
        role, name = queue[position]
        size = _sample_size(rng, config, width, height)
        if role == "object":
            polygons = _class_shape(name, rng, size)
            # Discs and rings stay round: an elongated one is the ellipse distractor.
            aspect = 1.0 if name in ("disc", "ring") else rng.uniform(0.85, 1.15)
        else:
            polygons = _distractor_shape(name, rng, size)
            aspect = 1.0

        found = _try_place(rng, config, owner, placed, polygons, size, aspect)
        if found is None:
            logger.debug("image %d: no room for a %s of %.0f px", index, name, size)
            continue
        raster, clipped, losses = found

        rows, cols, alpha = clipped
        local_luminance = float(np.median(background_luminance[rows, cols][alpha >= _AREA_ALPHA])) if (alpha >= _AREA_ALPHA).any() else 127.5
        # A class colour is a hint, not the label, because distractors wear the class colours as
        # often as objects do, so colour alone never separates a class from a look-alike.
        palette_colour = None
        if rng.uniform() < config.class_colour_probability:
            palette_name = name if role == "object" else names[int(rng.integers(len(names)))]
            palette_colour = CLASS_PALETTE[palette_name]
        _composite(image, clipped, _object_colour(rng, local_luminance, config.min_contrast, palette_colour), rng)

        for p, lost in zip(placed, losses):
            p.visible -= int(lost)
        covered = alpha >= _AREA_ALPHA
        region = owner[rows, cols]
        if role == "object":
            region[covered] = len(placed)
            placed.append(_Placed(name, raster, int(covered.sum())))
        else:
            region[covered] = -2  # hides objects below it, but is no object itself

    sigma = rng.uniform(*config.noise_sigma)
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * np.float32(sigma)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return pixels, _annotate(config, placed, width, height)


def _pixel_box(raster: _Raster, width: int, height: int) -> tuple[int, int, int, int]:
    """Return the box (continuous 0-based xyxy pixels) of the raster's pixels inside the image.

    The box of a shape is its amodal extent within the image: occlusion does not shrink it,
    the image border does.
    """
    rows, cols, alpha = raster.clip(width, height)
    ys, xs = np.nonzero(alpha > _BOX_ALPHA)
    # Pixel columns c0..c1 (0-based) span the continuous interval [c0, c1 + 1].
    return (
        int(xs.min()) + cols.start,
        int(ys.min()) + rows.start,
        int(xs.max()) + 1 + cols.start,
        int(ys.max()) + 1 + rows.start,
    )


def _annotate(config: SyntheticConfig, placed: list[_Placed], width: int, height: int) -> list[SyntheticObject]:
    objects = []
    for p in placed:
        rows, cols, alpha = p.raster.clip(width, height)
        box = _pixel_box(p.raster, width, height)

        full_h, full_w = p.raster.alpha.shape
        truncated = int((alpha > _BOX_ALPHA).sum()) < int((p.raster.alpha > _BOX_ALPHA).sum())
        inside = int((alpha >= _AREA_ALPHA).sum())
        visible_fraction = p.visible / max(p.raster.full_area, 1)
        occluded = p.visible < inside

        # The full extent (before clipping) decides "tiny": a truncated large object is not tiny.
        full_size = max(full_w, full_h) - 2  # the canvas has a 1-pixel margin on each side
        difficult = full_size < config.difficult_size or visible_fraction < config.difficult_visible
        objects.append(SyntheticObject(p.name, box, bool(difficult), bool(truncated), bool(occluded), round(visible_fraction, 4)))
    return objects


# ---------------------------------------------------------------------------------------
# Writing the VOC layout.
# ---------------------------------------------------------------------------------------


def _annotation_xml(image_id: str, width: int, height: int, objects: list[SyntheticObject]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "synthetic"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "yolonb synthetic shapes"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"

    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "occluded").text = str(int(obj.occluded))
        ET.SubElement(node, "difficult").text = str(int(obj.difficult))
        box = ET.SubElement(node, "bndbox")
        # VOC stores 1-based inclusive pixel indices: continuous [x_min, x_max] covers the
        # 1-based pixels x_min + 1 .. x_max.
        x_min, y_min, x_max, y_max = obj.box
        ET.SubElement(box, "xmin").text = str(x_min + 1)
        ET.SubElement(box, "ymin").text = str(y_min + 1)
        ET.SubElement(box, "xmax").text = str(x_max)
        ET.SubElement(box, "ymax").text = str(y_max)

    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _write_split(path: Path, ids: list[str]) -> None:
    path.write_text("".join(f"{image_id}\n" for image_id in ids), encoding="utf-8")


def generate(out_dir: str | os.PathLike, *, n_trainval: int = 480, n_test: int = 120, seed: int = 0, **params) -> Path:
    """Generate the data set into out_dir as a VOC year folder.

    Writes Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/{trainval,train,val,test}.txt
    and synthetic.json (parameters, classes and object counts). Ids are six digits: the
    trainval images come first, then the test images. Each image depends only on the seed
    and its index, so a larger data set starts with the images of a smaller one.

    Args:
        out_dir: folder to write into; created if missing, and it must not contain a data set yet.
        n_trainval: images in trainval (split into train and val by val_fraction).
        n_test: images in test.
        seed: the random seed; the same seed and parameters give byte-identical files.
        **params: further fields of SyntheticConfig (image_size, object_size, class_weights, ...).

    Returns:
        out_dir as a Path.
    """
    config = _make_config(seed, {"n_trainval": n_trainval, "n_test": n_test, **params})
    out = Path(out_dir)
    if (out / "Annotations").exists() or (out / "JPEGImages").exists():
        raise FileExistsError(f"{out} already contains a data set; remove it or choose an empty folder")
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    total = config.n_trainval + config.n_test
    ids = [f"{index:06d}" for index in range(total)]
    counts = {split: dict.fromkeys(SYNTHETIC_CLASSES, 0) for split in ("trainval", "test")}
    difficult = {"trainval": 0, "test": 0}
    # disable=None hides the bar when the output is not a terminal (logs, papermill, CI).
    for index in tqdm(range(total), desc="synthetic images", unit="img", leave=False, disable=None):
        pixels, objects = _render_image(config, index)
        height, width = pixels.shape[:2]
        Image.fromarray(pixels, "RGB").save(out / "JPEGImages" / f"{ids[index]}.jpg", quality=config.jpeg_quality)
        (out / "Annotations" / f"{ids[index]}.xml").write_bytes(_annotation_xml(ids[index], width, height, objects))

        split = "trainval" if index < config.n_trainval else "test"
        for obj in objects:
            counts[split][obj.name] += 1
            difficult[split] += obj.difficult

    # The val images are a seeded random sample of trainval, independent of the image content.
    trainval = ids[: config.n_trainval]
    n_val = min(max(1, round(config.val_fraction * len(trainval))), len(trainval) - 1)
    val_index = np.random.default_rng([config.seed, 2**31 - 1]).permutation(len(trainval))[:n_val]
    val = sorted(trainval[i] for i in val_index)
    train = sorted(set(trainval) - set(val))
    main = out / "ImageSets" / "Main"
    _write_split(main / "trainval.txt", trainval)
    _write_split(main / "train.txt", train)
    _write_split(main / "val.txt", val)
    _write_split(main / "test.txt", ids[config.n_trainval :])

    manifest = {
        "generator_version": GENERATOR_VERSION,
        "fingerprint": config.fingerprint(),
        "parameters": config.to_dict(),
        "classes": list(SYNTHETIC_CLASSES),
        "images": {"trainval": len(trainval), "train": len(train), "val": len(val), "test": config.n_test},
        "objects": counts,
        "difficult_objects": difficult,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def default_cache_dir() -> Path:
    """Return $YOLONB_CACHE when set, else ./.cache/yolonb."""
    return Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else DEFAULT_CACHE_DIR


def ensure_synthetic(cache_dir: str | os.PathLike | None = None, *, seed: int = 0, **size) -> Path:
    """Generate the data set once into the cache and return its year folder on every call.

    The folder is cache_dir/synthetic-<12 hex digits of the generator version and the
    parameters>. Generation writes into a temporary folder beside it and renames it at the
    end, so a killed generation leaves no folder that a later call would reuse.

    Args:
        cache_dir: parent folder; default $YOLONB_CACHE or ./.cache/yolonb.
        seed: the random seed.
        **size: n_trainval, n_test and any other field of SyntheticConfig.

    Returns:
        The year folder (Annotations/, JPEGImages/, ImageSets/Main/).
    """
    config = _make_config(seed, size)
    parent = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = parent / f"synthetic-{config.fingerprint()}"
    if (target / MANIFEST_NAME).is_file():
        logger.debug("reusing the synthetic data set in %s", target)
        return target

    parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=parent))
    logger.info("generating the synthetic data set (%d + %d images) into %s", config.n_trainval, config.n_test, target)
    try:
        params = {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"}
        generate(temporary, seed=seed, **params)
        os.rename(temporary, target)
    except OSError:
        # Another process finished the same data set first: its copy is identical, so keep it.
        if not (target / MANIFEST_NAME).is_file():
            raise
        logger.debug("%s was generated by another process; discarding this copy", target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------
# Preview and command line.
# ---------------------------------------------------------------------------------------


def preview(root: str | os.PathLike, out_png: str | os.PathLike, *, count: int = 12, image_set: str = "trainval", columns: int = 4) -> Path:
    """Draw a grid of the first `count` images of an image set with their boxes and class names.

    Difficult objects get dashed boxes. The annotations go through the VOC reader, so the
    preview also shows what a training run reads.

    Args:
        root: a year folder written by generate or ensure_synthetic.
        out_png: the PNG file to write.
        count: number of images to draw.
        image_set: the image set file name (without .txt) under ImageSets/Main.
        columns: images per row.

    Returns:
        out_png as a Path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from yolonb.data.voc import load_voc, read_image

    split = load_voc(root, [image_set])
    records = split.records[:count]
    if not records:
        raise ValueError(f"image set {image_set!r} in {root} is empty; generate a data set with images first")
    colours = plt.get_cmap("tab10")
    rows = math.ceil(len(records) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")

    for axis, record in zip(axes.flat, records):
        axis.imshow(np.asarray(read_image(record.image_path)))
        for box, label, is_difficult in zip(record.boxes, record.labels, record.difficult):
            x_min, y_min, x_max, y_max = (float(v) for v in box)
            colour = colours(int(label) % 10)
            axis.add_patch(
                Rectangle((x_min, y_min), x_max - x_min, y_max - y_min, fill=False, edgecolor=colour,
                          linewidth=1.4, linestyle="--" if is_difficult else "-")
            )
            # A label above a box at the top edge would cover the title, so it goes inside, and
            # a label of a box near the right edge ends at the box's right side to stay visible.
            above = y_min >= 12
            right = x_min > record.width - 50
            axis.text(x_max if right else x_min, y_min - 1 if above else y_min + 1, split.classes[int(label)],
                      color="white", fontsize=6.5, va="bottom" if above else "top", ha="right" if right else "left",
                      clip_on=True, bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "linewidth": 0})
        axis.set_title(f"{record.image_id}  {record.width}x{record.height}  {len(record.labels)} objects", fontsize=8)

    figure.suptitle(f"{Path(root).name}: {image_set}, dashed = difficult", fontsize=10)
    figure.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m yolonb.data.synthetic",
        description="Generate the embedded synthetic detection data set (VOC layout) and optionally draw a preview.",
    )
    parser.add_argument("--preview", type=Path, metavar="OUT.png", help="write a grid of annotated images to this PNG file")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the data set (default 0)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help=f"cache folder that receives the data set (default ${CACHE_ENV} or {DEFAULT_CACHE_DIR})")
    parser.add_argument("--count", type=int, default=12, help="images in the preview (default 12)")
    parser.add_argument("--split", default="trainval", help="image set drawn in the preview (default trainval)")
    parser.add_argument("--n-trainval", type=int, default=SyntheticConfig.n_trainval, help="trainval images (default 480)")
    parser.add_argument("--n-test", type=int, default=SyntheticConfig.n_test, help="test images (default 120)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.count < 1:
        print(f"error: --count {args.count} is invalid; use 1 or more", file=sys.stderr)
        return 2
    root = ensure_synthetic(args.out, seed=args.seed, n_trainval=args.n_trainval, n_test=args.n_test)
    print(root)
    if args.preview is not None:
        print(preview(root, args.preview, count=args.count, image_set=args.split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
