"""Checks of single training-config values, each raising a CosaConfigError that names the key, what it means
and a value that works. `TrainConfig.__post_init__` runs them; a bundle's model config and the teacher screens
of benchmarks/ share some."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cosa_sdk.errors import CosaConfigError

if TYPE_CHECKING:
    from cosa_sdk.training.config import TrainConfig

AMP_MODES = ("off", "bf16", "auto")
CAM_POOLS = ("max", "avg")  # training/model/network.py, image_logits
# how `key=value` overrides (and `amp`) spell a boolean
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
MAX_PSEUDO_SCALE = 4.0


def check_fraction(key: str, value: object, meaning: str) -> None:
    """Reject a config value that is not a number in [0, 1]; the message says what the key means."""
    if not is_number(value) or not 0 <= value <= 1:
        raise CosaConfigError(f"{key} must be {meaning}, got {value!r}")


def check_cam_erase(config: TrainConfig) -> None:
    """The erased-CAM loss's weight, threshold and reach, each with what it means."""
    if not is_number(config.cam_erase) or config.cam_erase < 0:
        raise CosaConfigError(
            f"cam_erase must be a loss weight >= 0 (0: off, 1: as strong as L_cls), got {config.cam_erase!r}"
        )
    threshold = config.cam_erase_threshold
    if not is_number(threshold) or not 0 < threshold <= 1:
        raise CosaConfigError(
            f"cam_erase_threshold must be in (0, 1], the fraction of a class's CAM peak above which its cells are "
            f"erased, got {threshold!r}"
        )
    reach = config.cam_erase_reach
    if not is_number(reach, integer=True) or reach < 0:
        raise CosaConfigError(
            f"cam_erase_reach must be a whole number of CAM cells >= 0 (0: anywhere in the image), got {reach!r}"
        )


def cam_pool_problem(pool: object) -> str | None:
    """What is wrong with a `cam_pool` (None when nothing is); the config and a bundle's model config share it."""
    if pool in CAM_POOLS:
        return None
    return f"cam_pool must be 'max' (the released head) or 'avg' (the mean over the map), got {pool!r}"


def is_number(value: object, *, integer: bool = False) -> bool:
    """An int (or, unless `integer`, a float), and not a bool, which Python counts as an int."""
    kinds = int if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def normalize_amp(value: object) -> str:
    """`amp` as one of AMP_MODES; booleans and on/off words (older configs, `amp=true`) mean "bf16" / "off"."""
    if isinstance(value, bool):
        return "bf16" if value else "off"
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return "bf16"
    if text in FALSE_WORDS or text == "none":
        return "off"
    if text not in AMP_MODES:
        raise CosaConfigError(
            f"amp must be 'off' (float32), 'bf16' (bf16 autocast) or 'auto' (bf16 where this machine computes it "
            f"natively), got {value!r}"
        )
    return text


def pseudo_scales_problem(scales: Any) -> str | None:
    """What is wrong with a teacher's `pseudo_scales` (None when nothing is): it needs at least one
    size, relative to the crop, each in (0, MAX_PSEUDO_SCALE]; larger views cost memory and add no detail."""
    if not isinstance(scales, tuple) or not scales:
        return "give at least one scale, e.g. 1.0 or 1.0,0.5,1.5"
    if any(not is_number(s) or not 0 < s <= MAX_PSEUDO_SCALE for s in scales):
        return f"each scale must be in (0, {MAX_PSEUDO_SCALE:g}], e.g. 1.0,0.5,1.5"
    return None


def check_teacher(config: TrainConfig) -> None:
    """Reject teacher views training cannot run with before any image is loaded."""
    problem = pseudo_scales_problem(config.pseudo_scales)
    if problem:
        raise CosaConfigError(f"pseudo_scales={config.pseudo_scales!r}: {problem}")
    if not isinstance(config.pseudo_flip, bool):
        raise CosaConfigError(f"pseudo_flip must be true or false, got {config.pseudo_flip!r}")


def check_cam_refine(config: TrainConfig) -> None:
    """Reject cam_refine* values the refinement cannot run with, saying which value works."""
    if not isinstance(config.cam_refine, bool):
        raise CosaConfigError(f"cam_refine must be true or false, got {config.cam_refine!r}")
    iters = config.cam_refine_iters
    if not is_number(iters, integer=True) or iters < 1:
        raise CosaConfigError(f"cam_refine_iters must be an integer >= 1 (10 in ToCo), got {iters!r}")
    scale = config.cam_refine_scale
    if not is_number(scale) or not 0 < scale <= 1:
        raise CosaConfigError(
            f"cam_refine_scale must be in (0, 1], the fraction of the crop side to refine at (e.g. 0.5), got {scale!r}"
        )
    dilations = config.cam_refine_dilations
    if (
        not isinstance(dilations, tuple)
        or not dilations
        or any(not is_number(d, integer=True) or d < 1 for d in dilations)
    ):
        raise CosaConfigError(
            f"cam_refine_dilations must be a tuple of positive integers, e.g. cam_refine_dilations=1,2,4,8,12,24; "
            f"got {dilations!r}"
        )
