"""`amp`: what the training forward passes compute in, decided from the machine for "auto" (both answers are
tested with given CPU flags, whatever this machine has), and losses that stay float32 under bf16 autocast."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from cosa_sdk.errors import CosaConfigError  # noqa: E402
from cosa_sdk.training.config import TrainConfig, apply_overrides, preset  # noqa: E402
from cosa_sdk.training.engine import precision  # noqa: E402
from cosa_sdk.training.engine.iteration import TrainingIteration  # noqa: E402
from cosa_sdk.training.model.network import CoSANetwork  # noqa: E402

CPU = torch.device("cpu")
WITH_BF16 = {"sse4_2", "avx2", "avx512f", "avx512_vnni", "avx512_bf16"}
WITH_AMX = {"avx2", "avx512f", "amx_tile", "amx_bf16"}
AVX2_ONLY = {"sse4_2", "avx2", "fma"}


@pytest.mark.parametrize(
    ("given", "mode"),
    [(True, "bf16"), (False, "off"), ("true", "bf16"), ("off", "off"), ("AUTO", "auto"), ("bf16", "bf16")],
)
def test_amp_reads_booleans_of_older_configs_and_words(given, mode):
    assert dataclasses.replace(preset("voc"), amp=given).amp == mode


def test_an_unknown_amp_names_the_choices():
    with pytest.raises(CosaConfigError, match=r"amp must be 'off'.*'bf16'.*'auto'"):
        apply_overrides(preset("tiny"), ["amp=fp16"])


def test_a_run_saved_with_amp_false_reads_back_as_off_and_resumes_under_auto():
    saved = {**preset("tiny").to_dict(), "amp": False}
    config = TrainConfig.from_dict(saved)
    assert config.amp == "off"
    assert config.differences(preset("tiny")) == {}  # amp is how the machine computes, not what


@pytest.mark.parametrize(
    ("flags", "dtype"),
    [(WITH_BF16, torch.bfloat16), (WITH_AMX, torch.bfloat16), (AVX2_ONLY, None), (set(), None)],
)
def test_auto_takes_bf16_only_where_the_cpu_computes_it_natively(flags, dtype):
    chosen, note = precision.autocast_dtype("auto", CPU, flags=flags)
    assert chosen == dtype
    if dtype is None:
        assert note.startswith("precision: float32") and "no native bf16" in note and "amp=bf16" in note
    else:
        assert note.startswith("precision: bf16 autocast") and ("avx512_bf16" in note or "amx_bf16" in note)


@pytest.mark.parametrize("flags", [WITH_BF16, AVX2_ONLY])
def test_explicit_modes_do_not_depend_on_the_cpu(flags):
    assert precision.autocast_dtype("off", CPU, flags=flags)[0] is None
    assert precision.autocast_dtype("bf16", CPU, flags=flags)[0] == torch.bfloat16


def test_this_machines_flags_are_read_from_proc_cpuinfo():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        assert flags == frozenset()
        return
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), None)
    assert flags == (frozenset(line.partition(":")[2].split()) if line else frozenset())


def _small_config(amp: str) -> TrainConfig:
    return apply_overrides(
        preset("tiny"),
        [
            "backbone=vit_small_patch14_dinov2",
            "backbone_weights=none",
            'backbone_kwargs={"embed_dim": 48, "depth": 3, "num_heads": 3}',
            "freeze_blocks=1",
            "decoder_channels=8",
            "crop_size=56",
            "batch_size=2",
            "iters=4",
            "loss_warmup_iters=1",
            "lr_warmup_iters=1",
            f"amp={amp}",
        ],
    )


def _batch(size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "weak": torch.randn(2, 3, size, size, generator=g),
        "strong": torch.randn(2, 3, size, size, generator=g),
        "labels": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
        "box": torch.tensor([[0, size, 0, size], [0, size, 0, size]]),
    }


@pytest.mark.parametrize(("flags", "forward_dtype"), [(WITH_BF16, torch.bfloat16), (AVX2_ONLY, torch.float32)])
def test_the_iteration_autocasts_as_auto_decides_and_keeps_losses_in_float32(monkeypatch, flags, forward_dtype):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    cfg = _small_config("auto")
    torch.manual_seed(0)
    online = CoSANetwork.from_train_config(cfg, num_classes=3)
    iteration = TrainingIteration.build(cfg, online)
    seen: list[torch.dtype] = []
    online.decoder.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    batch = _batch(cfg.crop_size)
    results = [iteration(batch, step) for step in range(3)]
    assert set(seen) == {forward_dtype}
    result = results[-1]
    assert {"c2s", "s2c"} <= set(result.terms)
    # the losses, not only the weights, are float32 under autocast: the warm-up's too, which has no seg loss
    assert [r.loss.dtype for r in results] == [torch.float32] * 3
    assert result.pseudo.cpl.dtype == torch.long and result.pseudo.valid_cam.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in online.parameters())
