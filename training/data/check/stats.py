"""Statistics of a validated dataset (`describe_dataset`) and their terminal summary (`format_stats`):
images and instances per class, label sets, co-occurrence, rare classes, duplicates, sizes, val coverage."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from cosa_sdk.training.data.check.problems import ROLES, CheckedItem, ValidationReport
from cosa_sdk.training.data.common import IGNORE_INDEX

# Statistics thresholds (documented in the report text).
RARE_IMAGES = 10  # a class on fewer training images than this is too rare to learn reliably
COOCCUR_SHARE = 0.9  # a pair is flagged when the rarer class appears with the other in >= 90 % of its images
COOCCUR_MIN = 5  # ... and they share at least this many images


@dataclass
class DatasetStats:
    classes: list[str]
    split_sizes: dict[str, int]
    images_per_class: dict[str, list[int]]  # role -> per class
    instances_per_class: dict[str, list[int]]  # role -> per class, counted in masks (None where no mask)
    label_sets: list[tuple[tuple[str, ...], int]]  # training label sets, most frequent first
    cooccurrence: list[list[int]]  # training images holding both classes (diagonal: images per class)
    cooccurring_pairs: list[tuple[str, str, int, int, float]]  # a, b, together, images of the rarer, share
    rare_classes: list[tuple[str, int]]
    duplicates: list[list[str]]  # groups of image paths with identical bytes
    cross_split_duplicates: int
    sizes: list[tuple[int, int]]  # (w, h) of every distinct good image
    val_coverage: dict[str, float]  # class (and background/ignore) -> share of val mask pixels
    val_with_mask: int
    warnings: list[str]


def describe_dataset(report: ValidationReport) -> DatasetStats:
    """Statistics of the good items of a validated dataset (bad ones are left out)."""
    classes, n = report.classes, len(report.classes)
    good = [c for c in report.items if c.ok]
    split_sizes = {role: sum(1 for c in good if c.split == role) for role in ROLES}
    images = {role: [0] * n for role in ROLES}
    instances = {role: [0] * n for role in ROLES}
    for c in good:
        for k in c.labels:
            if 0 <= k < n:
                images[c.split][k] += 1
        if c.mask and "values" in c.mask:
            for v, inst in zip(c.mask["values"], c.mask.get("instances", [])):
                if 0 < v <= n:
                    instances[c.split][v - 1] += inst
    train = [c for c in good if c.split == "train"]
    sets = Counter(tuple(classes[k] for k in c.labels if 0 <= k < n) for c in train)
    co = np.zeros((n, n), dtype=np.int64)
    for c in train:
        ks = [k for k in c.labels if 0 <= k < n]
        for a in ks:
            for b in ks:
                co[a, b] += 1
    pairs = []
    for a in range(n):
        for b in range(a + 1, n):
            together = int(co[a, b])
            rarer = int(min(co[a, a], co[b, b]))
            if together >= COOCCUR_MIN and rarer and together / rarer >= COOCCUR_SHARE:
                pairs.append((classes[a], classes[b], together, rarer, together / rarer))
    pairs.sort(key=lambda p: (-p[4], -p[2]))
    rare = [(classes[k], images["train"][k]) for k in range(n) if images["train"][k] < RARE_IMAGES] if train else []
    by_hash: dict[str, list[CheckedItem]] = defaultdict(list)
    seen_paths: set[str] = set()
    for c in good:
        if str(c.item.image) in seen_paths:
            continue
        seen_paths.add(str(c.item.image))
        if c.image and c.image.get("sha1"):
            by_hash[c.image["sha1"]].append(c)
    groups = [g for g in by_hash.values() if len(g) > 1]
    cross = sum(1 for g in groups if len({c.split for c in g}) > 1)
    sizes = [tuple(by_hash[h][0].image["size"]) for h in by_hash if by_hash[h][0].image.get("size")]
    pixels = Counter()
    val_with_mask = 0
    for c in good:
        if c.split == "val" and c.mask and "values" in c.mask:
            val_with_mask += 1
            for v, p in zip(c.mask["values"], c.mask["pixels"]):
                pixels[v] += p
    total = sum(pixels.values()) or 1
    coverage = {"background": pixels[0] / total}
    coverage.update({classes[k]: pixels[k + 1] / total for k in range(n)})
    coverage["ignore (255)"] = pixels[IGNORE_INDEX] / total
    stats = DatasetStats(
        classes=classes,
        split_sizes=split_sizes,
        images_per_class=images,
        instances_per_class=instances,
        label_sets=sets.most_common(),
        cooccurrence=co.tolist(),
        cooccurring_pairs=pairs,
        rare_classes=rare,
        duplicates=[[str(c.item.image) for c in g] for g in groups],
        cross_split_duplicates=cross,
        sizes=sizes,
        val_coverage=coverage,
        val_with_mask=val_with_mask,
        warnings=[],
    )
    stats.warnings = _warnings(stats)
    return stats


def _warnings(s: DatasetStats) -> list[str]:
    out = []
    for a, b, together, rarer, share in s.cooccurring_pairs:
        out.append(
            f"{a} and {b} nearly always appear together ({together} of the {rarer} training images of the rarer "
            f"one, {share:.0%}): from image-level labels alone the network cannot tell which pixels are which, "
            "and the CAMs of one spread onto the other (the classic weak-supervision failure). "
            "label_set_balance=0.5 (cosa train ... label_set_balance=0.5) draws images with weight "
            "count(label set)^-0.5, so the images that show them apart are seen more often; it cannot help "
            + (
                "when they never appear apart: add such images."
                if share >= 1.0
                else "much when such images are few: add more."
            )
        )
    for name, count in s.rare_classes:
        out.append(
            f"class {name} is on only {count} training image(s) (fewer than {RARE_IMAGES}): too rare to learn; "
            "add images of it or merge/drop the class"
        )
    if s.duplicates:
        extra = (
            f", {s.cross_split_duplicates} of them shared between train and val (leaks into the evaluation)"
            if s.cross_split_duplicates
            else ""
        )
        out.append(f"{len(s.duplicates)} group(s) of byte-identical images{extra}: keep one of each")
    if s.split_sizes.get("val", 0) == 0:
        out.append("no val split (no masks): training runs, but no mIoU can be measured")
    small = [wh for wh in s.sizes if min(wh) < 224]
    if small:
        out.append(f"{len(small)} image(s) have a side under 224 px: they are upscaled for training crops")
    return out


def _bar(value: float, top: float, width: int = 24) -> str:
    return "#" * (round(width * value / top) if top else 0)


def format_stats(s: DatasetStats, *, top_sets: int = 10) -> str:
    """The terminal summary of `describe_dataset`."""
    lines = [f"classes: {len(s.classes)}; good images: train {s.split_sizes['train']}, val {s.split_sizes['val']}"]
    tr, va = s.images_per_class["train"], s.images_per_class["val"]
    inst = s.instances_per_class
    width = max([len(c) for c in s.classes] + [5])
    top = max([*tr, 1])
    lines.append(f"\n{'class':<{width}}  train imgs  val imgs  instances(masks)")
    for k, name in enumerate(s.classes):
        count_inst = inst["train"][k] + inst["val"][k]
        lines.append(f"{name:<{width}}  {tr[k]:>10}  {va[k]:>8}  {count_inst:>16}  {_bar(tr[k], top)}")
    lines.append(f"\nlabel sets (training, {len(s.label_sets)} distinct):")
    for names, count in s.label_sets[:top_sets]:
        lines.append(f"  {count:>6}  {' + '.join(names) or '(none)'}")
    if len(s.label_sets) > top_sets:
        lines.append(f"  ... {len(s.label_sets) - top_sets} more")
    if len(s.classes) <= 20:
        lines.append("\nco-occurrence (training images with both classes):")
        short = [c[:6] for c in s.classes]
        lines.append(" " * (width + 2) + " ".join(f"{c:>6}" for c in short))
        for name, row in zip(s.classes, s.cooccurrence):
            lines.append(f"{name:<{width}}  " + " ".join(f"{v:>6}" for v in row))
    if s.sizes:
        ws, hs = [w for w, _ in s.sizes], [h for _, h in s.sizes]
        lines.append(
            f"\nimage sizes: width {min(ws)}..{max(ws)} (median {int(np.median(ws))}), "
            f"height {min(hs)}..{max(hs)} (median {int(np.median(hs))})"
        )
    if s.val_with_mask:
        cov = ", ".join(f"{k} {v:.1%}" for k, v in s.val_coverage.items() if v > 0)
        lines.append(f"val mask coverage ({s.val_with_mask} masks): {cov}")
    for group in s.duplicates[:5]:
        lines.append("duplicate: " + " = ".join(group))
    if s.warnings:
        lines.append("")
        lines += [f"warning: {w}" for w in s.warnings]
    return "\n".join(lines)
