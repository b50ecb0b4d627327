"""Rendering of one image of the embedded synthetic benchmark (see `synthetic.py` for the design).

Pure numpy + PIL + scipy; every random choice comes from the generator passed in, so an image is a
function of its (seed, split, index) and its benchmark profile (`synthetic_profiles.py`) only. Draws that
only some profiles make (image sides, instances per class) come where they change nothing for the others:
versions 1 and 2 consume the generator exactly as their original code did.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from cosa_sdk.training.data.readers.synthetic_profiles import (
    DEFAULT_VERSION,
    PART_COLOURS,
    PROFILES,
    SHAPES,
    BenchmarkProfile,
    pattern_weight,
)

_DEFAULT = PROFILES[DEFAULT_VERSION]
CLASS_NAMES = _DEFAULT.classes  # the default benchmark's classes, pair and context class
COOCCURRING_PAIR = _DEFAULT.cooccurring_pair
CONTEXT_CLASS = _DEFAULT.context_class
SUPERSAMPLE = 4
MIN_VISIBLE = 0.45


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


def sample_labels(rng: np.random.Generator, profile: BenchmarkProfile = _DEFAULT) -> list[int]:
    """0-based class indices of one image: 1-3 classes, with the co-occurring pair mostly together."""
    probs = profile.label_count_probs
    count = int(rng.choice(len(probs), p=probs)) + 1
    chosen = [int(c) for c in rng.choice(len(profile.classes), size=count, replace=False)]
    pair = [profile.classes.index(name) for name in profile.cooccurring_pair]
    present = [c for c in pair if c in chosen]
    add_partner = rng.random() < profile.pair_prob
    if len(present) == 1 and add_partner:
        partner = pair[1 - pair.index(present[0])]
        if len(chosen) < profile.max_labels:
            chosen.append(partner)
        else:
            others = [c for c in chosen if c not in pair]
            chosen[chosen.index(others[int(rng.integers(len(others)))])] = partner
    return sorted(chosen)


def _jitter_background(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A random crop of a photograph with the image's aspect ratio, resized to `shape` and recoloured."""
    photos = background_photos()
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    height, width = shape
    scale = rng.uniform(0.3, 1.0)
    if height == width:
        crop_h = crop_w = int(min(h, w) * scale)
    else:
        fit = min(h / height, w / width)  # the largest crop of this aspect ratio, as a factor of `shape`
        crop_h, crop_w = max(1, int(height * fit * scale)), max(1, int(width * fit * scale))
    y, x = int(rng.integers(0, h - crop_h + 1)), int(rng.integers(0, w - crop_w + 1))
    img = Image.fromarray(photo[y : y + crop_h, x : x + crop_w]).resize((width, height), Image.BILINEAR)
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


def _window(place: Placement, shape: tuple[int, int], pad: float) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the image region a layer can touch (shapes lie in the unit circle)."""
    extent = place.radius * 1.06 * max(place.aspect, 1 / place.aspect) + pad
    y0, x0 = max(0, int(place.cy - extent)), max(0, int(place.cx - extent))
    y1, x1 = min(shape[0], math.ceil(place.cy + extent)), min(shape[1], math.ceil(place.cx + extent))
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
    shape: tuple[int, int],
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
            cx=rng.uniform(margin, shape[1] - margin),
            cy=rng.uniform(margin, shape[0] - margin),
            radius=radius,
            angle=rng.uniform(0, 2 * np.pi),
            aspect=rng.uniform(0.85, 1.15),
        )
        window = _window(place, shape, pad=0.4 * radius + 3)
        alpha = _coverage(polygons, place, window)
        hard = alpha >= 0.5
        if hard.sum() < 4:
            continue
        y0, y1, x0, x1 = window
        covered = np.bincount(owner[y0:y1, x0:x1][hard] + 1, minlength=len(areas) + 2)
        if all(visible[i] - covered[i + 1] >= MIN_VISIBLE * areas[i] for i in visible):
            break
    return place, window, alpha


@dataclass
class Scene:
    """One rendered image: uint8 HxWx3 RGB, uint8 HxW mask (0 bg, i = class i, 255 boundary band), the
    0-based labels of the classes visible in the mask and the drawn objects as (class, extent), the
    extent being the object's diameter as a fraction of the shorter side."""

    image: np.ndarray
    mask: np.ndarray
    labels: list[int]
    objects: list[tuple[int, float]]


def render_image(
    rng: np.random.Generator, size: int | tuple[int, int], profile: BenchmarkProfile = _DEFAULT
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One image of `size` (a side, or (height, width)): RGB image, mask and labels (see `Scene`)."""
    scene = render_scene(rng, size, profile)
    return scene.image, scene.mask, scene.labels


def render_scene(rng: np.random.Generator, size: int | tuple[int, int], profile: BenchmarkProfile = _DEFAULT) -> Scene:
    """Draw one image of a profile; every random choice comes from `rng`."""
    shape = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    side = min(shape)
    classes = profile.classes
    canvas = _jitter_background(rng, shape)
    labels = sample_labels(rng, profile)
    instances = profile.instance_probs
    counts = [int(rng.choice(len(instances), p=instances)) + 1 for _ in labels] if len(instances) > 1 else None
    pool = [c for c, n in zip(labels, counts, strict=True) for _ in range(n)] if counts else labels
    n_distractors = int(rng.choice(len(profile.distractor_probs), p=profile.distractor_probs))
    on_top = [bool(rng.random() < 0.4) for _ in range(n_distractors)]
    objects = [pool[i] for i in rng.permutation(len(pool))]
    layers = [-1] * on_top.count(False) + objects + [-1] * on_top.count(True)

    owner = np.full(shape, -1, dtype=np.int32)  # index of the object seen at each pixel
    visible: dict[int, int] = {}
    areas: dict[int, int] = {}
    drawn: list[tuple[int, float]] = []
    mask = np.zeros(shape, dtype=np.uint8)
    for cls in layers:
        polygons = SHAPES[classes[cls]] if cls >= 0 else _blob(rng)
        frac = profile.object_size(rng, len(objects)) if cls >= 0 else rng.uniform(*profile.distractor_size)
        place, (y0, y1, x0, x1), alpha = _place_layer(rng, polygons, frac * side / 2, shape, owner, visible, areas)
        hard = alpha >= 0.5
        region = canvas[y0:y1, x0:x1]
        if cls >= 0 and classes[cls] == profile.context_class and rng.random() < profile.context_prob:
            dist = ndimage.distance_transform_edt(~hard)
            width = place.radius * rng.uniform(0.22, 0.35)
            band = np.clip(width + 0.5 - dist, 0, 1) * np.clip(dist, 0, 1) * 0.85
            grain = rng.standard_normal((*hard.shape, 1), dtype=np.float32)
            frame = np.array([25, 35, 60], dtype=np.float32) + 8 * grain
            _composite(region, frame, band)
        grid = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        colour = _paint_body(place, rng, grid)
        if cls >= 0 or rng.random() < 0.4:
            colour = _paint_part(colour, classes[cls] if cls >= 0 else None, place, rng, grid)
        _composite(region, colour, alpha)
        covered = np.bincount(owner[y0:y1, x0:x1][hard] + 1, minlength=len(areas) + 1)
        for i in visible:
            visible[i] -= int(covered[i + 1])
        if cls >= 0:
            new_id = len(areas)
            areas[new_id] = visible[new_id] = int(hard.sum())
            owner[y0:y1, x0:x1][hard] = new_id
            mask[y0:y1, x0:x1][hard] = cls + 1
            drawn.append((cls, 2 * place.radius / side))
        else:
            owner[y0:y1, x0:x1][hard] = -1
            mask[y0:y1, x0:x1][hard] = 0
    boundary = ndimage.maximum_filter(mask, size=3) != ndimage.minimum_filter(mask, size=3)
    mask[boundary] = 255
    image = np.clip(canvas + 3 * rng.standard_normal(canvas.shape, dtype=np.float32), 0, 255).astype(np.uint8)
    # An object hidden by later layers (placement gives up after 40 tries) or thinner than the boundary
    # band is not in the mask, so its class is not an image label either.
    shown = {int(v) - 1 for v in np.unique(mask) if 0 < v < 255}
    labels = [c for c in labels if c in shown]
    if not labels:  # nothing labelled stayed visible: draw the image again (rare; never in versions 1-2)
        return render_scene(rng, shape, profile)
    return Scene(image, mask, labels, drawn)


def _paint_part(
    colour: np.ndarray, name: str | None, place: Placement, rng: np.random.Generator, grid: np.ndarray
) -> np.ndarray:
    """Overlay the class pattern on one side of the object (a half-plane in object coordinates).

    Distractors (name None) sometimes get a plain grey stripe part, so "has a pattern" is not a class cue.
    """
    ys, xs = grid
    u, v = place.to_local(xs, ys)
    side = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(0.1, 0.35)
    along = u * math.cos(side) + v * math.sin(side) - offset
    part = np.clip(0.5 + along * place.radius, 0, 1)
    period = rng.uniform(0.26, 0.36)
    if name is not None:
        first, second = (np.array(c, dtype=np.float32) + rng.normal(0, 10, 3) for c in PART_COLOURS[name])
        weight = pattern_weight(name, u, v, period)
    else:
        grey = rng.uniform(60, 200)
        first, second = np.full(3, grey, np.float32), np.full(3, 255 - grey, np.float32)
        weight = pattern_weight("disk", u, v, period)
    pattern = first * weight[..., None] + second * (1 - weight[..., None])
    return colour * (1 - part[..., None]) + pattern * part[..., None]
