"""The synthetic benchmarks: shapes, class patterns and one `BenchmarkProfile` per generator version.

A profile holds everything that differs between benchmark versions (classes, how many of them an
image holds, object and image sizes, distractors, the co-occurring pair and the context class); the
rendering in `synthetic_render.py` is shared. `PROFILES` maps the version (`synthetic:version=N`) to
its profile:

  1  the first benchmark: the six v2 classes, objects 12-60 % of the side, more clutter, 224 px
  2  the default: six classes, objects 28-70 % of the side, 224 px
  3  small objects, unseen shapes: six other classes, 1-2 instances per class, objects 15-55 %, 128 px
  4  varied sizes: the v2 classes on images of 96-512 px per side (not square), objects 10-70 %

Versions 1 and 2 reproduce the images of the generators that bore those numbers bit for bit. A change
that alters what an existing version draws needs a new version instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def _circle(radius: float, cx: float = 0.0, cy: float = 0.0, n: int = 72) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(arm: float = 0.2) -> np.ndarray:
    a = arm
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        dtype=float,
    )


def _fit(points: np.ndarray | list, reach: float = 0.97) -> np.ndarray:
    """Centre a polygon on its bounding box and scale it so its farthest vertex lies at `reach`."""
    points = np.asarray(points, dtype=float)
    points = points - (points.min(axis=0) + points.max(axis=0)) / 2
    return points * (reach / np.hypot(points[:, 0], points[:, 1]).max())


def _heart(n: int = 96) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # image y points down
    return _fit(np.stack([x, y], axis=1))


# Each shape: polygons in the unit circle, drawn in order with their fill (255 adds, 0 cuts a hole).
SHAPES = {
    # versions 1, 2 and 4
    "disk": [(_circle(0.95), 255)],
    "star": [(_star(), 255)],
    "ring": [(_circle(1.0), 255), (_circle(0.55), 0)],
    "cross": [(_cross(), 255)],
    "crescent": [(_circle(1.0), 255), (_circle(0.82, cx=0.42), 0)],
    "triangle": [(_circle(1.05, n=3), 255)],
    # version 3
    "hexagon": [(_circle(0.97, n=6), 255)],
    "heart": [(_heart(), 255)],
    "arrow": [(_fit([(-1, -0.2), (0.15, -0.2), (0.15, -0.6), (1, 0), (0.15, 0.6), (0.15, 0.2), (-1, 0.2)]), 255)],
    "chevron": [(_fit([(-0.8, -0.9), (-0.1, -0.9), (0.8, 0), (-0.1, 0.9), (-0.8, 0.9), (0.1, 0)]), 255)],
    "ellipse": [(_circle(1.0) * np.array([0.97, 0.5]), 255)],
    "bar": [(_fit([(-1, -0.24), (1, -0.24), (1, 0.24), (-1, 0.24)]), 255)],
}

# Class-specific two-colour patterns, painted on one part of the object only.
PART_COLOURS = {
    "disk": ((220, 40, 40), (250, 215, 50)),
    "star": ((30, 60, 200), (235, 235, 235)),
    "ring": ((40, 165, 60), (20, 20, 20)),
    "cross": ((200, 40, 180), (40, 200, 210)),
    "crescent": ((245, 140, 20), (105, 40, 150)),
    "triangle": ((240, 240, 240), (35, 35, 35)),
    "hexagon": ((250, 200, 30), (30, 30, 120)),
    "heart": ((230, 30, 90), (250, 250, 250)),
    "arrow": ((20, 120, 230), (250, 150, 20)),
    "chevron": ((90, 200, 40), (120, 20, 40)),
    "ellipse": ((160, 80, 230), (240, 240, 120)),
    "bar": ((20, 200, 170), (230, 60, 30)),
}


def _dots(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    fu, fv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
    return (0.09 - fu**2 - fv**2) * 20


def _zigzag(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    zig = np.abs((u / period) % 1 - 0.5) * period
    return np.sin(2 * np.pi / period * (v + zig))


def _squares(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    fu, fv = np.abs((u / period) % 1 - 0.5), np.abs((v / period) % 1 - 0.5)
    return (0.25 - np.maximum(fu, fv)) * 8


# The wave of each class pattern in object coordinates (u, v) for a period; `pattern_weight` maps it to [0, 1].
PATTERNS = {
    "disk": lambda u, v, p: np.sin(2 * np.pi / p * u),
    "star": lambda u, v, p: np.sin(2 * np.pi / p * u) * np.sin(2 * np.pi / p * v) * 2,
    "ring": _dots,
    "cross": lambda u, v, p: np.sin(2 * np.pi / p * (u + v) / math.sqrt(2)),
    "crescent": lambda u, v, p: np.sin(2 * np.pi / p * np.hypot(u - 0.5, v)),
    "triangle": _zigzag,
    "hexagon": lambda u, v, p: np.sin(2 * np.pi / p * (np.abs(u) + np.abs(v))),
    "heart": _squares,
    "arrow": lambda u, v, p: np.sin(2 * np.pi / p * v),
    "chevron": lambda u, v, p: np.sin(2 * np.pi / p * (u - v) / math.sqrt(2)),
    "ellipse": lambda u, v, p: np.sin(9 * np.arctan2(v, u)),
    "bar": lambda u, v, p: np.sin(2 * np.pi / p * 0.6 * u),
}


def pattern_weight(name: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Two-colour mixing weight in [0, 1] of the class pattern, in object coordinates."""
    return np.clip(0.5 + 2.5 * PATTERNS[name](u, v, period), 0, 1)


@dataclass(frozen=True)
class BenchmarkProfile:
    """What one benchmark version draws. Extents are fractions of the image's shorter side."""

    version: int
    title: str
    classes: tuple[str, ...]  # shape names (keys of SHAPES), in class-index order
    cooccurring_pair: tuple[str, str]  # most images holding one of them hold both
    context_class: str  # framed by a dark band that is background in the masks
    label_count_probs: tuple[float, ...]  # P(1, 2, ... classes in an image)
    object_min: float  # smallest object extent
    object_top: tuple[float, ...]  # largest extent with 1, 2, ... objects in the image (the last: more)
    distractor_probs: tuple[float, ...]  # P(0, 1, ... unlabelled blobs)
    distractor_size: tuple[float, float]
    size: int  # the image side in pixels; 0: drawn per image from `sides` (the size parameter overrides)
    sides: tuple[int, int] = (0, 0)  # range of each image side when size is 0
    max_aspect: float = 1.0  # width / height (or its inverse) up to this when size is 0
    instance_probs: tuple[float, ...] = (1.0,)  # P(1, 2, ... instances of each present class)
    object_draw: str = "sqrt"  # "sqrt": extents lean towards the top; "log": log-uniform, small ones common
    pair_prob: float = 0.8
    context_prob: float = 0.9

    def __post_init__(self) -> None:
        names = set(self.classes)
        if len(names) != len(self.classes) or not names <= set(SHAPES) or not names <= set(PART_COLOURS):
            raise ValueError(f"profile v{self.version}: classes must be unique names of SHAPES")
        if not {*self.cooccurring_pair, self.context_class} <= names:
            raise ValueError(f"profile v{self.version}: the pair and the context class must be classes")
        for probs in (self.label_count_probs, self.distractor_probs, self.instance_probs):
            if abs(sum(probs) - 1) > 1e-9:
                raise ValueError(f"profile v{self.version}: probabilities {probs} do not sum to 1")
        if len(self.label_count_probs) > len(self.classes) or self.object_draw not in ("sqrt", "log"):
            raise ValueError(f"profile v{self.version}: bad label counts or object_draw")
        if self.size == 0 and not 32 <= self.sides[0] <= self.sides[1]:
            raise ValueError(f"profile v{self.version}: size 0 needs sides (lo, hi) with 32 <= lo <= hi")

    @property
    def max_labels(self) -> int:
        return len(self.label_count_probs)

    def object_size(self, rng: np.random.Generator, count: int) -> float:
        """Extent of one object as a fraction of the side, between object_min and the top for `count` objects."""
        top = self.object_top[min(count, len(self.object_top)) - 1]
        if self.object_draw == "log":
            return math.exp(math.log(self.object_min) + (math.log(top) - math.log(self.object_min)) * rng.random())
        return self.object_min + (top - self.object_min) * math.sqrt(rng.random())

    def image_shape(self, rng: np.random.Generator, size: int) -> tuple[int, int]:
        """(height, width) of one image: size x size when a size is given (or the profile's own), else drawn."""
        side = size or self.size
        if side:
            return side, side
        lo, hi = self.sides
        short = round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        aspect = math.exp(rng.uniform(-math.log(self.max_aspect), math.log(self.max_aspect)))
        other = min(hi, max(lo, round(short * aspect)))
        return (short, other) if rng.random() < 0.5 else (other, short)

    def summary(self) -> dict:
        """The profile as plain JSON values (meta.json's "benchmark")."""
        out = asdict(self)
        out["object_extent"] = [self.object_min, max(self.object_top)]
        out["instances_per_class"] = [1, len(self.instance_probs)]
        out["image_sides"] = [self.size, self.size] if self.size else list(self.sides)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in out.items()}


V2_CLASSES = ("disk", "star", "ring", "cross", "crescent", "triangle")

PROFILES: dict[int, BenchmarkProfile] = {
    1: BenchmarkProfile(
        version=1,
        title="first benchmark: small to mid objects, more clutter",
        classes=V2_CLASSES,
        cooccurring_pair=("crescent", "star"),
        context_class="triangle",
        label_count_probs=(0.45, 0.35, 0.2),
        object_min=0.12,
        object_top=(0.6, 0.55, 0.5),
        distractor_probs=(0.35, 0.4, 0.25),
        distractor_size=(0.08, 0.25),
        size=224,
    ),
    2: BenchmarkProfile(
        version=2,
        title="default: large objects spanning several CAM cells",
        classes=V2_CLASSES,
        cooccurring_pair=("crescent", "star"),
        context_class="triangle",
        label_count_probs=(0.5, 0.35, 0.15),
        object_min=0.28,
        object_top=(0.7, 0.6, 0.52),
        distractor_probs=(0.45, 0.4, 0.15),
        distractor_size=(0.08, 0.2),
        size=224,
    ),
    3: BenchmarkProfile(
        version=3,
        title="small objects, unseen shapes: 1-2 instances per class, 128 px",
        classes=("hexagon", "heart", "arrow", "chevron", "ellipse", "bar"),
        cooccurring_pair=("heart", "arrow"),
        context_class="hexagon",
        label_count_probs=(0.5, 0.35, 0.15),
        instance_probs=(0.6, 0.4),
        object_min=0.15,
        object_top=(0.55, 0.5, 0.45, 0.4, 0.36, 0.33),
        object_draw="log",
        distractor_probs=(0.3, 0.4, 0.3),
        distractor_size=(0.06, 0.2),
        size=128,
    ),
    4: BenchmarkProfile(
        version=4,
        title="varied sizes: 96-512 px images, not square, objects 10-70 %",
        classes=V2_CLASSES,
        cooccurring_pair=("crescent", "star"),
        context_class="triangle",
        label_count_probs=(0.5, 0.35, 0.15),
        instance_probs=(0.8, 0.2),
        object_min=0.1,
        object_top=(0.7, 0.6, 0.52, 0.45, 0.4, 0.36),
        object_draw="log",
        distractor_probs=(0.4, 0.4, 0.2),
        distractor_size=(0.06, 0.2),
        size=0,
        sides=(96, 512),
        max_aspect=1.6,
    ),
}
DEFAULT_VERSION = 2
