"""The embedded synthetic benchmarks: seeded, offline WSSS datasets written in the custom format.

Benchmark v2 (the default): six shape classes (disk, star, ring, cross, crescent, triangle) pasted on
crops of real photographs that ship with scikit-image and scikit-learn. It carries the classic
weak-supervision confounders:
- every object has a body texture shared by all classes and a class-specific two-colour pattern on
  one side only, so a CAM that fires on the discriminative part alone loses IoU;
- 1-3 classes per image, 28-70 % of the side (each spans several cells of a CAM grid), objects
  occluding each other;
- unlabelled distractor blobs with the shared body texture (background in the masks);
- a co-occurring pair (crescent + star appear together in most images holding either);
- a context class (triangle) framed by a dark band that is background in the masks.
Masks carry a 255 band of about 2 px along every boundary. Only the image labels are meant for
training; masks evaluate (and train with `supervision="full"`).

`synthetic:version=N` picks another benchmark (`synthetic_profiles.PROFILES`) with the same confounders
and other classes, object sizes and image sizes: v1 (objects 12-60 %, more clutter), v3 (six other
shapes, 1-2 instances per class, objects 15-55 % of 128 px images) and v4 (images of 96-512 px per
side, not square, objects 10-70 %). A preset is judged on all of them (benchmarks/ablation.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cosa_sdk.errors import CosaConfigError, CosaDataError
from cosa_sdk.training.data.common import cache_dir
from cosa_sdk.training.data.readers.synthetic_profiles import DEFAULT_VERSION, PROFILES, BenchmarkProfile
from cosa_sdk.training.data.readers.synthetic_render import background_photos, render_image

logger = logging.getLogger(__name__)
# size 0: the benchmark's own image size (224 px for v1 and v2, 128 for v3, 96-512 per image for v4)
SYNTHETIC_DEFAULTS = {"n_train": 800, "n_val": 200, "size": 0, "seed": 0, "version": DEFAULT_VERSION}
COMPLETE_MARKER = ".complete"
_SPLIT_CODES = {"train": 0, "val": 1}


def profile_for(version: int) -> BenchmarkProfile:
    """The benchmark profile of a version; a CosaConfigError naming the valid versions otherwise."""
    if version not in PROFILES:
        valid = ", ".join(str(v) for v in PROFILES)
        raise CosaConfigError(f"synthetic version {version} does not exist; valid versions: {valid}.")
    return PROFILES[version]


def resolve_params(params: dict[str, int] | None = None) -> dict[str, int]:
    """Every parameter with its default; size 0 becomes the benchmark's own side (stays 0 if it varies)."""
    params = {**SYNTHETIC_DEFAULTS, **(params or {})}
    unknown = set(params) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise CosaConfigError(f"unknown synthetic parameters {sorted(unknown)}; known: {list(SYNTHETIC_DEFAULTS)}.")
    params["size"] = params["size"] or profile_for(params["version"]).size
    return params


def _check_params(n_train: int, n_val: int, size: int, seed: int, version: int) -> BenchmarkProfile:
    profile = profile_for(version)
    if n_train < 1 or n_val < 1:
        raise CosaConfigError(f"synthetic needs n_train >= 1 and n_val >= 1, got {n_train} and {n_val}.")
    if size and size < 32:
        raise CosaConfigError(f"synthetic size must be at least 32 pixels (0: the benchmark's own), got {size}.")
    if seed < 0:
        raise CosaConfigError(f"synthetic seed must be non-negative, got {seed}.")
    return profile


def _render_one(job: tuple[str, str, int, int, int, int]) -> tuple[str, list[int]]:
    """Render and write one image and its mask; returns (stem, labels)."""
    out, split, index, size, seed, version = job
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
    profile = PROFILES[version]
    image, mask, labels = render_image(rng, profile.image_shape(rng, size), profile)
    stem = f"{split}_{index:05d}"
    Image.fromarray(image).save(Path(out) / "images" / f"{stem}.jpg", quality=90)
    Image.fromarray(mask, mode="L").save(Path(out) / "masks" / f"{stem}.png", optimize=False)
    return stem, labels


def _write_tree(
    out: Path, *, n_train: int, n_val: int, size: int, seed: int, version: int, workers: int
) -> dict[str, list[tuple[str, list[int]]]]:
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    results: dict[str, list[tuple[str, list[int]]]] = {}
    for split, count in (("train", n_train), ("val", n_val)):
        jobs = [(str(out), split, i, size, seed, version) for i in range(count)]
        if workers > 1 and count >= 64:
            background_photos()  # decode once in the parent; forked workers inherit it
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results[split] = list(pool.map(_render_one, jobs, chunksize=16))
        else:
            results[split] = [_render_one(job) for job in jobs]
    return results


def generate_synthetic(
    out_dir: str | Path,
    *,
    n_train: int = SYNTHETIC_DEFAULTS["n_train"],
    n_val: int = SYNTHETIC_DEFAULTS["n_val"],
    size: int = SYNTHETIC_DEFAULTS["size"],
    seed: int = SYNTHETIC_DEFAULTS["seed"],
    version: int = SYNTHETIC_DEFAULTS["version"],
    workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write benchmark `version` into out_dir in the custom format (atomically: temp folder, then rename).

    Files: classes.txt, images/*.jpg (quality 90), masks/*.png, labels.csv, train.txt, val.txt,
    meta.json (benchmark version and profile, parameters, confounders) and a `.complete` marker. The
    output depends only on the parameters: masks and labels are byte-identical for a given seed. size 0
    gives the benchmark's own image size.
    """
    profile = _check_params(n_train, n_val, size, seed, version)
    size = size or profile.size
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CosaConfigError(f"{out} exists and is not empty; choose another folder or pass overwrite=True.")
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-tmp-", dir=out.parent))
    try:
        start = time.perf_counter()
        params = {"n_train": n_train, "n_val": n_val, "size": size, "seed": seed, "version": version}
        results = _write_tree(tmp, **params, workers=workers)
        classes = profile.classes
        (tmp / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
        rows = ["image,labels"]
        for split in ("train", "val"):
            rows += [f"{stem}.jpg,{' '.join(classes[c] for c in labels)}" for stem, labels in results[split]]
            (tmp / f"{split}.txt").write_text("\n".join(s for s, _ in results[split]) + "\n", encoding="utf-8")
        (tmp / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        meta = {
            "generator": "cosa-sdk synthetic",
            "generator_version": version,
            "params": params,
            "classes": list(classes),
            "cooccurring_pair": list(profile.cooccurring_pair),
            "context_band_class": profile.context_class,
            "benchmark": profile.summary(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
        logger.info("generated %d synthetic images in %.1f s at %s", n_train + n_val, time.perf_counter() - start, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def synthetic_name(params: dict[str, int]) -> str:
    """Cache folder name for one parameter set: changes with the benchmark version and every parameter.

    Benchmark v2 keeps the name its generator always had (synthetic-v2-train800-val200-size224-seed0)."""
    p = resolve_params(params)
    size = p["size"] or "{}to{}".format(*profile_for(p["version"]).sides)
    return f"synthetic-v{p['version']}-train{p['n_train']}-val{p['n_val']}-size{size}-seed{p['seed']}"


def ensure_synthetic(params: dict[str, int] | None = None, *, root: Path | None = None) -> Path:
    """Path of the generated benchmark for these parameters, generating it into the cache the first time."""
    params = resolve_params(params)
    base = Path(root) if root is not None else cache_dir()
    target = base / synthetic_name(params)
    if (target / COMPLETE_MARKER).is_file():
        return target
    if target.exists():  # left over without its marker: never trust a partial tree
        shutil.rmtree(target, ignore_errors=True)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CosaDataError(
            f"cannot create the cache folder {base} ({exc}); set COSA_CACHE_DIR to a writable folder."
        ) from exc
    logger.info("generating the synthetic benchmark into %s (once)", target)
    try:
        generate_synthetic(target, **params)
    except (OSError, CosaConfigError):
        if not (target / COMPLETE_MARKER).is_file():  # another process may have won the race
            raise
    return target
