"""Which INT8 model the SDK runs on which CPU: both CPU answers are taken on every machine (COSA_CPU_FEATURES).

8-bit weights need VNNI (elsewhere ONNX Runtime's u8 x s8 kernels saturate): they are never chosen on a CPU
without it; 7-bit weights run everywhere; `auto` takes an INT8 model only when it passed its agreement gate.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from toy_bundle import FakeSession, cached_toy_bundle

import cosa_sdk
from cosa_sdk import cpu
from cosa_sdk.backends import choose_int8
from cosa_sdk.bundle import read_bundle
from cosa_sdk.errors import CosaModelError

NO_VNNI = "fpu sse4_2 avx avx2 fma avx512f avx512bw"  # AVX2 and AVX-512 but no VNNI
VNNI = NO_VNNI + " avx512_vnni"
FILES = {"onnx_int8": "model.int8.onnx", "onnx_int8_vnni": "model.int8-vnni.onnx"}


def gated(bits: int, validation: float = 0.99, photos: float = 0.985) -> dict:
    """A cosa.json "int8" entry as export writes it."""
    return {"weight_bits": bits, "agreement": {"validation": validation, "photos": photos}, "min_agreement": 0.98}


def int8_bundle(tmp_path: Path, keys: tuple[str, ...], *, int8: dict | None = None, metrics: dict | None = None):
    """The toy colour bundle with INT8 files under `keys` (copies of one quantised model) and the given metadata."""
    root = Path(shutil.copytree(cached_toy_bundle(int8=True), tmp_path / "bundle"))
    config = json.loads((root / "cosa.json").read_text())
    config["artifacts"] = {"onnx": "model.onnx", **{key: FILES[key] for key in keys}}
    for key in keys:
        if FILES[key] != "model.int8.onnx":
            shutil.copy(root / "model.int8.onnx", root / FILES[key])
    if "onnx_int8" not in keys:
        (root / "model.int8.onnx").unlink()
    if int8 is not None:
        config["int8"] = int8
    if metrics is not None:
        config["metrics"] = metrics
    (root / "cosa.json").write_text(json.dumps(config))
    return root


@pytest.fixture
def cpu_says(monkeypatch):
    """Set what the SDK believes about the CPU (COSA_CPU_FEATURES); the hardware stays as it is."""
    return lambda flags: monkeypatch.setenv(cpu.ENV_VAR, flags)


# -- CPU features -----------------------------------------------------------------------------------


def test_flags_come_from_cpuinfo_or_the_override(tmp_path: Path, monkeypatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 AVX512_VNNI\nbugs\t\t: spectre\n")
    assert cpu.read_cpuinfo(str(info)) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu.read_cpuinfo(str(tmp_path / "absent")) is None
    assert (
        cpu.CpuInfo(cpu.parse_flags("avx2,avx_vnni"), "x").vnni and not cpu.CpuInfo(cpu.parse_flags(NO_VNNI), "x").vnni
    )
    monkeypatch.setenv(cpu.ENV_VAR, "avx2, avx512_vnni")
    assert cpu.current().vnni and cpu.current().source == f"{cpu.ENV_VAR}=avx2, avx512_vnni"
    assert cpu.current().describe() == f"VNNI (avx512_vnni; {cpu.ENV_VAR}=avx2, avx512_vnni)"
    monkeypatch.setenv(cpu.ENV_VAR, "  ")
    assert cpu.current() == cpu.hardware()  # an empty override is no override


@pytest.mark.parametrize(
    ("machine", "cpuinfo", "source"),
    [("aarch64", {"avx512_vnni"}, "not x86"), ("x86_64", None, "flags unknown"), ("AMD64", None, "flags unknown")],
)
def test_where_flags_cannot_be_read_the_answer_is_no_vnni(machine, cpuinfo, source, monkeypatch) -> None:
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda path=cpu.CPUINFO: cpuinfo)
    cpu.hardware.cache_clear()
    try:
        assert not cpu.hardware().vnni and source in cpu.hardware().source
        assert cpu.exact_kernels_needed(8) and not cpu.exact_kernels_needed(7)
    finally:
        cpu.hardware.cache_clear()


# -- the choice -------------------------------------------------------------------------------------


def test_both_variants_each_cpu_gets_its_own(tmp_path: Path, cpu_says) -> None:
    root = int8_bundle(
        tmp_path, ("onnx_int8", "onnx_int8_vnni"), int8={"onnx_int8": gated(7), "onnx_int8_vnni": gated(8)}
    )
    cpu_says(VNNI)
    seg = cosa_sdk.load(root)
    assert seg.backend == "onnxruntime-int8" and seg.device == "cpu" and seg.notes == []
    info = seg.info()["int8"]
    assert (info["artifact"], info["file"], info["weight_bits"], info["needs_vnni"]) == (
        "onnx_int8_vnni",
        "model.int8-vnni.onnx",
        8,
        True,
    )
    assert info["cpu"]["vnni"] is True and "this CPU has VNNI (avx512_vnni" in info["reason"]
    assert seg.info()["path"].endswith("model.int8-vnni.onnx")
    cpu_says(NO_VNNI)
    seg = cosa_sdk.load(root)
    info = seg.info()["int8"]
    assert seg.backend == "onnxruntime-int8" and (info["artifact"], info["weight_bits"]) == ("onnx_int8", 7)
    assert info["reason"].startswith("model.int8.onnx (7-bit weights): safe on every CPU, 98.50 % agreement")
    assert "not model.int8-vnni.onnx has 8-bit weights, which need a CPU with VNNI" in info["reason"]
    assert cosa_sdk.load(root, backend="onnxruntime-int8").info()["int8"]["artifact"] == "onnx_int8"


def test_eight_bit_only_bundle_never_runs_without_vnni(tmp_path: Path, cpu_says) -> None:
    root = int8_bundle(tmp_path, ("onnx_int8_vnni",), int8={"onnx_int8_vnni": gated(8)})
    cpu_says(NO_VNNI)
    seg = cosa_sdk.load(root)
    assert seg.backend == "onnxruntime" and "int8" not in seg.info()
    (note,) = seg.notes
    assert note.startswith("onnxruntime-int8: model.int8-vnni.onnx has 8-bit weights, which need a CPU with VNNI")
    assert f"no VNNI ({cpu.ENV_VAR}=" in note and "would saturate" in note
    with pytest.raises(CosaModelError, match=r"no INT8 model of .* can run on this CPU: .*8-bit weights"):
        cosa_sdk.load(root, backend="onnxruntime-int8")
    cpu_says(VNNI)
    assert cosa_sdk.load(root).backend == "onnxruntime-int8"


def test_lone_eight_bit_file_follows_the_same_rule(tmp_path: Path, cpu_says) -> None:
    import onnx

    root = int8_bundle(tmp_path, ("onnx_int8_vnni",), int8={"onnx_int8_vnni": gated(8)})
    proto = onnx.load(str(root / "model.int8-vnni.onnx"))
    config = json.loads((root / "cosa.json").read_text())
    for entry in proto.metadata_props:
        if entry.key == "cosa.json":
            entry.value = json.dumps(config)
    proto.metadata_props.add(key="cosa.artifact", value="onnx_int8_vnni")
    onnx.save(proto, str(tmp_path / "renamed.onnx"))  # the metadata names the artifact, not the file name
    cpu_says(NO_VNNI)
    for backend in ("auto", "onnxruntime", "onnxruntime-int8"):
        with pytest.raises(CosaModelError, match=r"renamed\.onnx cannot run on this CPU: .*8-bit weights"):
            cosa_sdk.load(tmp_path / "renamed.onnx", backend=backend)
    cpu_says(VNNI)
    seg = cosa_sdk.load(tmp_path / "renamed.onnx")
    assert seg.backend == "onnxruntime-int8" and seg.info()["int8"]["artifact"] == "onnx_int8_vnni"


def test_old_bundles_keep_loading(tmp_path: Path, cpu_says) -> None:
    """Bundles from before the "int8" key: metrics.int8.needs_vnni gives the width; no photo gate, so not auto."""
    old = {"int8": {"needs_vnni": True, "reduce_range": False, "argmax_agreement": 0.985}}
    root = int8_bundle(tmp_path / "a", ("onnx_int8",), metrics=old)
    assert read_bundle(root).int8_variant("onnx_int8").weight_bits == 8
    cpu_says(NO_VNNI)
    with pytest.raises(CosaModelError, match="8-bit weights, which need a CPU with VNNI"):
        cosa_sdk.load(root, backend="onnxruntime-int8")
    cpu_says(VNNI)
    assert cosa_sdk.load(root, backend="onnxruntime-int8").info()["int8"]["weight_bits"] == 8
    seg = cosa_sdk.load(root)
    assert seg.backend == "onnxruntime" and "no recorded agreement gate" in seg.notes[0]
    old["int8"]["needs_vnni"] = False
    root = int8_bundle(tmp_path / "b", ("onnx_int8",), metrics=old)
    cpu_says(NO_VNNI)
    assert cosa_sdk.load(root, backend="onnxruntime-int8").info()["int8"]["weight_bits"] == 7
    assert cosa_sdk.load(root).backend == "onnxruntime"


def test_no_metadata_runs_as_before_but_never_on_saturating_kernels(tmp_path: Path, cpu_says, monkeypatch) -> None:
    root = cached_toy_bundle(int8=True)  # hand-made: no "int8" key, no metrics
    cpu_says(NO_VNNI)
    seg = cosa_sdk.load(root, backend="onnxruntime-int8")
    info = seg.info()["int8"]
    assert info["weight_bits"] is None and "older cosa-sdk" in info["reason"]
    assert info["exact_kernels"] is (not cpu.hardware().vnni)
    assert cosa_sdk.load(root).backend == "onnxruntime"  # no gate recorded: auto keeps fp32
    monkeypatch.setattr(cpu, "hardware", lambda: cpu.CpuInfo(cpu.parse_flags(NO_VNNI), "test"))
    assert cosa_sdk.load(root, backend="onnxruntime-int8").info()["int8"]["exact_kernels"] is True


@pytest.mark.parametrize(
    ("entry", "note"),
    [
        ({"weight_bits": 7, "agreement": {"validation": 0.99}, "min_agreement": 0.98}, "did not pass"),  # no photos
        (gated(7, photos=0.97), "did not pass its agreement gate"),
        ({"weight_bits": 7}, "no recorded agreement gate"),
    ],
)
def test_auto_needs_a_passed_gate(entry: dict, note: str, tmp_path: Path, cpu_says) -> None:
    root = int8_bundle(tmp_path, ("onnx_int8",), int8={"onnx_int8": entry})
    cpu_says(VNNI)
    seg = cosa_sdk.load(root)
    assert seg.backend == "onnxruntime" and note in seg.notes[0]
    assert cosa_sdk.load(root, backend="onnxruntime-int8").backend == "onnxruntime-int8"  # asked for: runs


def test_choice_as_a_function(tmp_path: Path) -> None:
    root = int8_bundle(
        tmp_path, ("onnx_int8", "onnx_int8_vnni"), int8={"onnx_int8": gated(7), "onnx_int8_vnni": gated(8)}
    )
    bundle = read_bundle(root)
    with_vnni = cpu.CpuInfo(cpu.parse_flags(VNNI), "test")
    without = cpu.CpuInfo(cpu.parse_flags(NO_VNNI), "test")
    assert choose_int8(bundle, with_vnni, gated_only=True).key == "onnx_int8_vnni"
    assert choose_int8(bundle, without, gated_only=True).key == "onnx_int8"
    (root / "model.int8.onnx").unlink()
    choice = choose_int8(read_bundle(root), without)
    assert choice.key is None and "model.int8.onnx is missing" in choice.reason and "8-bit weights" in choice.reason
    assert choose_int8(read_bundle(cached_toy_bundle()), with_vnni).reason.startswith("the bundle has no INT8 model")


def test_malformed_int8_key_is_refused(tmp_path: Path) -> None:
    root = int8_bundle(tmp_path / "a", ("onnx_int8",), int8={"onnx_int8": {"weight_bits": 16}})
    with pytest.raises(CosaModelError, match="'int8' entry 'onnx_int8': 'weight_bits' must be 7 or 8"):
        cosa_sdk.load(root)
    root = int8_bundle(tmp_path / "b", ("onnx_int8",), int8={"onnx_int8": 7})
    with pytest.raises(CosaModelError, match="'int8' must map INT8 artifacts"):
        cosa_sdk.load(root)


@pytest.mark.parametrize(
    ("fp32_providers", "backend"),
    [
        (["CUDAExecutionProvider", "CPUExecutionProvider"], "onnxruntime"),
        (["CPUExecutionProvider"], "onnxruntime-int8"),
    ],
)
def test_auto_prefers_fp32_on_cuda_and_int8_on_cpu(fp32_providers, backend, tmp_path: Path, cpu_says, monkeypatch):
    from cosa_sdk.backends import onnxruntime as ort_backend

    root = int8_bundle(tmp_path, ("onnx_int8",), int8={"onnx_int8": gated(7)})
    cpu_says(VNNI)
    original = ort_backend.create_session

    def fake_create(path, *, providers=None, threads=None, exact_int8=False):
        session = original(path, providers=["CPUExecutionProvider"], exact_int8=exact_int8)
        cuda_asked = "CUDAExecutionProvider" in (providers or ort_backend.default_providers())
        return FakeSession(session, fp32_providers if cuda_asked else ["CPUExecutionProvider"])

    monkeypatch.setattr(ort_backend, "create_session", fake_create)
    monkeypatch.setattr(
        "onnxruntime.get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    seg = cosa_sdk.load(root)
    assert seg.backend == backend and seg.device == ("cuda" if backend == "onnxruntime" else "cpu")
    if backend == "onnxruntime":
        assert seg.notes == ["onnxruntime-int8: not used: the fp32 model runs on CUDA"]


def test_int8_masks_match_fp32(tmp_path: Path, cpu_says) -> None:
    root = int8_bundle(tmp_path, ("onnx_int8",), int8={"onnx_int8": gated(7)})
    cpu_says(NO_VNNI)
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :20] = (230, 20, 20)
    image[:, 40:] = (20, 220, 30)
    fp32 = cosa_sdk.load(root, backend="onnxruntime").segment(image).mask
    result = cosa_sdk.load(root).segment(image)
    assert result.backend == "onnxruntime-int8" and (result.mask == fp32).mean() > 0.97
