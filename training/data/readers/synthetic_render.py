"""Rendering of one image of the embedded synthetic benchmark (see `synthetic.py` for the design).

Pure numpy + PIL + scipy; every random choice comes from the generator passed in, so an image is a
function of its (seed, split, index) only.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

CLASS_NAMES = ("disk", "star", "ring", "cross", "crescent", "triangle")
COOCCURRING_PAIR = ("crescent", "star")  # like a moon and a star: most images with one hold both
CONTEXT_CLASS = "triangle"  # always framed by a dark band that is background in the ground truth
PAIR_PROB = 0.8
CONTEXT_PROB = 0.9
LABEL_COUNT_PROBS = (0.5, 0.35, 0.15)  # 1, 2 or 3 classes per image
# Object extent as a fraction of the image side: from OBJECT_MIN up to a top that shrinks with the
# number of objects. Objects span several cells of a stride-14/16 CAM grid at the CPU preset's input.
OBJECT_MIN = 0.28
OBJECT_TOP = {1: 0.7, 2: 0.6, 3: 0.52}
DISTRACTOR_COUNT_PROBS = (0.45, 0.4, 0.15)  # 0, 1 or 2 unlabelled blobs
DISTRACTOR_SIZE = (0.08, 0.2)
SUPERSAMPLE = 4
MIN_VISIBLE = 0.45

# Class-specific two-colour patterns, painted on one part of the object only.
PART_COLOURS = {
    "disk": ((220, 40, 40), (250, 215, 50)),
    "star": ((30, 60, 200), (235, 235, 235)),
    "ring": ((40, 165, 60), (20, 20, 20)),
    "cross": ((200, 40, 180), (40, 200, 210)),
    "crescent": ((245, 140, 20), (105, 40, 150)),
    "triangle": ((240, 240, 240), (35, 35, 35)),
}


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


# Each shape: polygons in the unit circle, drawn in order with their fill (255 adds, 0 cuts a hole).
SHAPES = {
    "disk": [(_circle(0.95), 255)],
    "star": [(_star(), 255)],
    "ring": [(_circle(1.0), 255), (_circle(0.55), 0)],
    "cross": [(_cross(), 255)],
    "crescent": [(_circle(1.0), 255), (_circle(0.82, cx=0.42), 0)],
    "triangle": [(_circle(1.05, n=3), 255)],
}


@functools.lru_cache(maxsize=1)
def background_photos() -> tuple[np.ndarray, ...]:
    """Real photographs shipped inside scikit-image and scikit-learn (no download), as uint8 RGB."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [
        data.astronaut(),
        data.coffee(),
        data.chelsea(),
        data.rocket(),
        data.stereo_motorcycle()[0],
        data.immunohistochemistry(),
        data.hubble_deep_field(),
        data.camera(),
        data.grass(),
        data.gravel(),
        data.brick(),
        *load_sample_images().images,
    ]
    out = []
    for photo in photos:
        img = Image.fromarray(np.asarray(photo, dtype=np.uint8)).convert("RGB")
        img.thumbnail((640, 640), Image.BILINEAR)
        out.append(np.asarray(img))
    return tuple(out)


def sample_labels(rng: np.random.Generator) -> list[int]:
    """0-based class indices of one image: 1-3 classes, with the co-occurring pair mostly together."""
    count = int(rng.choice(3, p=LABEL_COUNT_PROBS)) + 1
    chosen = [int(c) for c in rng.choice(len(CLASS_NAMES), size=count, replace=False)]
    pair = [CLASS_NAMES.index(name) for name in COOCCURRING_PAIR]
    present = [c for c in pair if c in chosen]
    add_partner = rng.random() < PAIR_PROB
    if len(present) == 1 and add_partner:
        partner = pair[1 - pair.index(present[0])]
        if len(chosen) < 3:
            chosen.append(partner)
        else:
            others = [c for c in chosen if c not in pair]
            chosen[chosen.index(others[int(rng.integers(len(others)))])] = partner
    return sorted(chosen)


def _jitter_background(rng: np.random.Generator, size: int) -> np.ndarray:
    photos = background_photos()
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.3, 1.0))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    img = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    hsv = np.asarray(img.convert("HSV")).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-20, 20)) % 256
    hsv[..., 1] *= rng.uniform(0.6, 1.4)
    if hsv[..., 1].mean() < 8:  # grey photographs get a random duotone tint
        hsv[..., 0] = rng.uniform(0, 256)
        hsv[..., 1] = rng.uniform(30, 110)
    rgb = np.asarray(Image.fromarray(np.clip(hsv, 0, 255).astype(np.uint8), "HSV").convert("RGB"))
    rgb = rgb.astype(np.float32)
    mean = rgb.mean()
    rgb = (rgb - mean) * rng.uniform(0.7, 1.2) + mean * rng.uniform(0.75, 1.2)
    return np.clip(rgb, 0, 255)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    grid = rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((shape[1], shape[0]), Image.BICUBIC))


@dataclass
class Placement:
    """Where one layer sits: centre, radius (pixels), rotation, aspect."""

    cx: float
    cy: float
    radius: float
    angle: float
    aspect: float

    def to_image(self, points: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = points[:, 0] * self.radius * self.aspect, points[:, 1] * self.radius / self.aspect
        return np.stack([self.cx + c * u - s * v, self.cy + s * u + c * v], axis=1)

    def to_local(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = xs - self.cx, ys - self.cy
        return (c * dx + s * dy) / (self.radius * self.aspect), (-s * dx + c * dy) * self.aspect / self.radius


def _window(place: Placement, size: int, pad: float) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the image region a layer can touch (shapes lie in the unit circle)."""
    extent = place.radius * 1.06 * max(place.aspect, 1 / place.aspect) + pad
    y0, x0 = max(0, int(place.cy - extent)), max(0, int(place.cx - extent))
    y1, x1 = min(size, math.ceil(place.cy + extent)), min(size, math.ceil(place.cx + extent))
    return y0, y1, x0, x1


def _coverage(polygons: list, place: Placement, window: tuple[int, int, int, int]) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the polygons inside a window, by 4x supersampled drawing."""
    y0, y1, x0, x1 = window
    big = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    for points, fill in polygons:
        xy = ((place.to_image(points) - np.array([x0, y0])) * SUPERSAMPLE).ravel().tolist()
        draw.polygon(xy, fill=fill)
    return np.asarray(big.resize((x1 - x0, y1 - y0), Image.BOX), dtype=np.float32) / 255.0


def _blob(rng: np.random.Generator) -> list:
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    radii = np.ones_like(angles)
    for k in (2, 3, 4):
        radii += rng.uniform(-0.15, 0.15) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    radii *= 0.9
    return [(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1), 255)]


def _pattern(name: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Two-colour mixing weight in [0, 1] of the class pattern, in object coordinates."""
    w = 2 * np.pi / period
    if name == "disk":
        wave = np.sin(w * u)
    elif name == "star":
        wave = np.sin(w * u) * np.sin(w * v) * 2
    elif name == "ring":
        fu, fv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        wave = (0.09 - fu**2 - fv**2) * 20
    elif name == "cross":
        wave = np.sin(w * (u + v) / math.sqrt(2))
    elif name == "crescent":
        wave = np.sin(w * np.hypot(u - 0.5, v))
    else:
        zig = np.abs((u / period) % 1 - 0.5) * period
        wave = np.sin(w * (v + zig))
    return np.clip(0.5 + 2.5 * wave, 0, 1)


def _body_colour(rng: np.random.Generator) -> np.ndarray:
    hue, sat, val = rng.random(), rng.uniform(0.25, 0.6), rng.uniform(0.45, 0.85)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255


def _paint_body(place: Placement, rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
    """The texture every class (and distractor) shares: a colour with blotches, grain and shading."""
    ys, xs = grid
    direction = rng.uniform(0, 2 * np.pi)
    shade = 1 + 0.18 * ((xs - place.cx) * math.cos(direction) + (ys - place.cy) * math.sin(direction)) / place.radius
    blotch = _smooth_noise(rng, xs.shape, 7)[..., None] * 18 + 6 * rng.standard_normal((*xs.shape, 1), dtype=np.float32)
    return _body_colour(rng)[None, None] * shade[..., None] + blotch


def _composite(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    canvas *= 1 - alpha[..., None]
    canvas += colour * alpha[..., None]


def _place_layer(
    rng: np.random.Generator,
    polygons: list,
    radius: float,
    size: int,
    owner: np.ndarray,
    visible: dict[int, int],
    areas: dict[int, int],
) -> tuple[Placement, tuple[int, int, int, int], np.ndarray]:
    """Draw a placement that leaves every earlier object at least MIN_VISIBLE of its area in view."""
    for attempt in range(40):
        if attempt and attempt % 10 == 0:
            radius *= 0.85
        margin = radius * 0.6
        place = Placement(
            cx=rng.uniform(margin, size - margin),
            cy=rng.uniform(margin, size - margin),
            radius=radius,
            angle=rng.uniform(0, 2 * np.pi),
            aspect=rng.uniform(0.85, 1.15),
        )
        window = _window(place, size, pad=0.4 * radius + 3)
        alpha = _coverage(polygons, place, window)
        hard = alpha >= 0.5
        if hard.sum() < 4:
            continue
        y0, y1, x0, x1 = window
        covered = np.bincount(owner[y0:y1, x0:x1][hard] + 1, minlength=len(areas) + 2)
        if all(visible[i] - covered[i + 1] >= MIN_VISIBLE * areas[i] for i in visible):
            break
    return place, window, alpha


def _object_size(rng: np.random.Generator, count: int) -> float:
    """Object extent as a fraction of the side, between OBJECT_MIN and OBJECT_TOP[count]."""
    return OBJECT_MIN + (OBJECT_TOP[count] - OBJECT_MIN) * math.sqrt(rng.random())


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One image: uint8 HxWx3 RGB, uint8 HxW mask (0 bg, i = class i, 255 boundary band), 0-based labels."""
    canvas = _jitter_background(rng, size)
    labels = sample_labels(rng)
    n_distractors = int(rng.choice(3, p=DISTRACTOR_COUNT_PROBS))
    on_top = [bool(rng.random() < 0.4) for _ in range(n_distractors)]
    objects = [labels[i] for i in rng.permutation(len(labels))]
    layers = [-1] * on_top.count(False) + objects + [-1] * on_top.count(True)

    owner = np.full((size, size), -1, dtype=np.int32)  # index of the object seen at each pixel
    visible: dict[int, int] = {}
    areas: dict[int, int] = {}
    mask = np.zeros((size, size), dtype=np.uint8)
    for cls in layers:
        polygons = SHAPES[CLASS_NAMES[cls]] if cls >= 0 else _blob(rng)
        frac = _object_size(rng, len(labels)) if cls >= 0 else rng.uniform(*DISTRACTOR_SIZE)
        place, (y0, y1, x0, x1), alpha = _place_layer(rng, polygons, frac * size / 2, size, owner, visible, areas)
        hard = alpha >= 0.5
        region = canvas[y0:y1, x0:x1]
        if cls >= 0 and CLASS_NAMES[cls] == CONTEXT_CLASS and rng.random() < CONTEXT_PROB:
            dist = ndimage.distance_transform_edt(~hard)
            width = place.radius * rng.uniform(0.22, 0.35)
            band = np.clip(width + 0.5 - dist, 0, 1) * np.clip(dist, 0, 1) * 0.85
            grain = rng.standard_normal((*hard.shape, 1), dtype=np.float32)
            frame = np.array([25, 35, 60], dtype=np.float32) + 8 * grain
            _composite(region, frame, band)
        grid = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        colour = _paint_body(place, rng, grid)
        if cls >= 0 or rng.random() < 0.4:
            colour = _paint_part(colour, cls, place, rng, grid)
        _composite(region, colour, alpha)
        covered = np.bincount(owner[y0:y1, x0:x1][hard] + 1, minlength=len(areas) + 1)
        for i in visible:
            visible[i] -= int(covered[i + 1])
        if cls >= 0:
            new_id = len(areas)
            areas[new_id] = visible[new_id] = int(hard.sum())
            owner[y0:y1, x0:x1][hard] = new_id
            mask[y0:y1, x0:x1][hard] = cls + 1
        else:
            owner[y0:y1, x0:x1][hard] = -1
            mask[y0:y1, x0:x1][hard] = 0
    boundary = ndimage.maximum_filter(mask, size=3) != ndimage.minimum_filter(mask, size=3)
    mask[boundary] = 255
    image = np.clip(canvas + 3 * rng.standard_normal(canvas.shape, dtype=np.float32), 0, 255).astype(np.uint8)
    return image, mask, labels


def _paint_part(
    colour: np.ndarray, cls: int, place: Placement, rng: np.random.Generator, grid: np.ndarray
) -> np.ndarray:
    """Overlay the class pattern on one side of the object (a half-plane in object coordinates).

    Distractors (cls < 0) sometimes get a plain grey stripe part, so "has a pattern" is not a class cue.
    """
    ys, xs = grid
    u, v = place.to_local(xs, ys)
    side = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(0.1, 0.35)
    along = u * math.cos(side) + v * math.sin(side) - offset
    part = np.clip(0.5 + along * place.radius, 0, 1)
    period = rng.uniform(0.26, 0.36)
    if cls >= 0:
        name = CLASS_NAMES[cls]
        first, second = (np.array(c, dtype=np.float32) + rng.normal(0, 10, 3) for c in PART_COLOURS[name])
        weight = _pattern(name, u, v, period)
    else:
        grey = rng.uniform(60, 200)
        first, second = np.full(3, grey, np.float32), np.full(3, 255 - grey, np.float32)
        weight = _pattern("disk", u, v, period)
    pattern = first * weight[..., None] + second * (1 - weight[..., None])
    return colour * (1 - part[..., None]) + pattern * part[..., None]
