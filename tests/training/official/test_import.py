"""`cosa import-official`: official CoSA checkpoints become cosa-sdk runs computing what the official network computes.

The synthetic official files have the real layout (a dict with an argparse.Namespace holding a PosixPath,
the 157 keys and shapes) and random weights. To keep each file near 40 MB instead of 370 MB, every tensor
is a window at its own offset into one shared random pool: torch.save writes the pool once, and still
every key holds different values.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from cosa_sdk.errors import CosaConfigError, CosaModelError
from cosa_sdk.training.data.classes import COCO_CLASSES, VOC_CLASSES
from cosa_sdk.training.engine.checkpoint import build_network, load_checkpoint
from cosa_sdk.training.model.official import (
    import_official_checkpoint,
    import_official_command,
    map_official_state,
    official_shapes,
)

# the official network's state-dict keys and shapes, dumped from the released checkpoints' network
TESTS = Path(__file__).resolve().parents[2]
KEYS_LISTING = TESTS / "data" / "official-checkpoint-keys.json"


class _Pools:
    """Random pools that synthetic state dicts take windows from (std 0.02 weights, ~1 LayerNorm scales)."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.weights = torch.randn(4_000_000, generator=gen) * 0.02
        self.scales = 1.0 + 0.1 * torch.randn(20_000, generator=gen)
        self.gen = gen

    def window(self, shape: tuple[int, ...], *, scale: bool = False) -> torch.Tensor:
        pool = self.scales if scale else self.weights
        numel = math.prod(shape)
        offset = int(torch.randint(0, pool.numel() - numel + 1, (1,), generator=self.gen))
        strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
        return pool.as_strided(shape, strides, offset)


def official_state(num_classes: int, pools: _Pools, prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        prefix + key: pools.window(shape, scale="norm" in key and key.endswith("weight"))
        for key, shape in official_shapes(num_classes).items()
    }


def official_file(path: Path, state: dict[str, torch.Tensor], **meta: Any) -> Path:
    torch.save({**meta, "model": state}, path)
    return path


def official_args(**fields: Any) -> argparse.Namespace:
    defaults = {
        "dataset": "VOC12",
        "backbone": "vit_base_patch16_224",
        "crop_size": 448,
        "output_dir": pathlib.PosixPath("/runs/voc"),
        "scales": (1.0, 0.5, 1.5),
    }
    return argparse.Namespace(**{**defaults, **fields})


@pytest.fixture(scope="module")
def pools() -> _Pools:
    return _Pools()


@pytest.fixture(scope="module")
def voc_state(pools: _Pools) -> dict[str, torch.Tensor]:
    return official_state(20, pools)


@pytest.fixture(scope="module")
def voc_file(tmp_path_factory: pytest.TempPathFactory, voc_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path_factory.mktemp("official") / "best_seg.pth"
    return official_file(path, voc_state, s_or_t="t", epoch=24000, args=official_args(aux_layer=-4), result=75.72)


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory: pytest.TempPathFactory, voc_file: Path) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cosa-voc"
    assert import_official_command(_cli_args(voc_file, out)) == 0
    return out


@pytest.fixture(scope="module")
def voc_network(voc_run: Path) -> torch.nn.Module:
    return build_network(load_checkpoint(voc_run / "best.pt"))


def _cli_args(checkpoint: Path, out: Path, *extra: str) -> argparse.Namespace:
    from cosa_sdk.cli import build_parser

    return build_parser().parse_args(["import-official", str(checkpoint), "--out", str(out), *extra])


# ----------------------------------------------------------------- an independent official forward


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * weight + bias


def reference_forward(sd: dict[str, torch.Tensor], images: torch.Tensor, aux_layer: int) -> dict[str, torch.Tensor]:
    """The official CoSA forward written from the method notes with plain torch ops on the raw official tensors.

    Besides the official outputs it returns `aux_cam_by_block`: the aux CAM read after every block.
    """
    batch, _, height, width = images.shape
    h, w = height // 16, width // 16
    e = "encoder."
    patches = F.conv2d(images, sd[e + "patch_embed.proj.weight"], sd[e + "patch_embed.proj.bias"], stride=16)
    tokens = patches.flatten(2).transpose(1, 2)
    pos = sd[e + "pos_embed"]
    grid = pos[:, 1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
    pos = torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    x = torch.cat([sd[e + "cls_token"].expand(batch, 1, 768), tokens], dim=1) + pos
    block_outputs = []
    for i in range(12):
        b = f"{e}blocks.{i}."
        y = _layer_norm(x, sd[b + "norm1.weight"], sd[b + "norm1.bias"])
        qkv = y @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]
        q, k, v = (part.reshape(batch, -1, 12, 64).transpose(1, 2) for part in qkv.split(768, dim=-1))
        attn = torch.softmax(q @ k.transpose(-2, -1) / 8.0, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, -1, 768)
        x = x + out @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        y = _layer_norm(x, sd[b + "norm2.weight"], sd[b + "norm2.bias"])
        y = y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]
        y = 0.5 * y * (1.0 + torch.erf(y / math.sqrt(2.0)))
        x = x + y @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        block_outputs.append(x)
    features = _layer_norm(x, sd[e + "norm.weight"], sd[e + "norm.bias"])

    def to_map(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].transpose(1, 2).reshape(batch, 768, h, w)

    fmap, aux_map = to_map(features), to_map(block_outputs[aux_layer % 12])
    seg = F.relu(F.conv2d(fmap, sd["decoder.conv6.weight"], padding=5, dilation=5))
    seg = F.relu(F.conv2d(seg, sd["decoder.conv7.weight"], padding=5, dilation=5))
    seg = F.conv2d(seg, sd["decoder.conv8.weight"])
    cls, aux_cls = sd["classifier.weight"], sd["aux_classifier.weight"]
    return {
        "logits": F.conv2d(fmap.amax((2, 3), keepdim=True), cls).flatten(1),
        "aux_logits": F.conv2d(aux_map.amax((2, 3), keepdim=True), aux_cls).flatten(1),
        "seg": seg,
        "cam": F.conv2d(fmap, cls),
        "aux_cam": F.conv2d(aux_map, aux_cls),
        "aux_cam_by_block": [F.conv2d(to_map(t), aux_cls) for t in block_outputs],
    }


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def test_imported_network_computes_the_official_forward(voc_network: torch.nn.Module, voc_state: dict) -> None:
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = voc_network(images)
        seg_stream = voc_network.seg_stream()(images)
        ref = reference_forward(voc_state, images, aux_layer=-4)
    assert ours.seg.shape == (2, 21, 2, 3) and ours.cam.shape == (2, 20, 2, 3)
    for name in ("seg", "cam", "aux_cam", "logits", "aux_logits"):
        assert _relative_error(getattr(ours, name), ref[name]) < 1e-4, name
    upsampled = F.interpolate(ref["seg"], size=(32, 48), mode="bilinear", align_corners=False)
    assert _relative_error(seg_stream, upsampled) < 1e-4
    # the aux layer comes from the file's args (-4: block 8); the default block 9 would give other aux CAMs
    errors = [_relative_error(ours.aux_cam, cam) for cam in ref["aux_cam_by_block"]]
    assert errors[8] < 1e-4 and min(errors[:8] + errors[9:]) > 1e-2


def test_run_directory_holds_a_loadable_checkpoint_and_config(
    voc_run: Path, voc_file: Path, voc_network: torch.nn.Module
) -> None:
    record = load_checkpoint(voc_run / "best.pt")
    assert record["model_config"] == voc_network.model_config()
    assert record["preset"] == "official" and record["selected"] == "assignment" and record["online"] is None
    assert record["s_or_t"] == "t" and record["iteration"] == 24000 and record["result"] == pytest.approx(75.72)
    assert record["classes"] == list(VOC_CLASSES) and len(record["palette"]) == 21
    assert record["palette"][:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert record["model_config"]["aux_layer"] == -4 and record["model_config"]["num_classes"] == 20
    assert record["config"] == {"input_size": [448, 448], "tta_scales": [1.0, 0.5, 1.5, 0.75, 1.25]}
    assert record["data"]["mean"] == [0.485, 0.456, 0.406] and record["data"]["crop_size"] == 448
    assert record["official_args"]["output_dir"] == "/runs/voc" and record["official_args"]["scales"] == [1.0, 0.5, 1.5]
    assert record["source"]["file"] == voc_file.name and len(record["source"]["sha256"]) == 64
    assert record["metrics"] == {"official_best_miou": pytest.approx(75.72)} and record["data"]["spec"] is None
    assert not any(k.startswith("backbone.model.head") for k in record["assignment"])
    config = json.loads((voc_run / "config.json").read_text())
    assert config["classes"] == list(VOC_CLASSES) and "assignment" not in config and config["preset"] == "official"


def test_key_listing_matches_the_official_network() -> None:
    voc, coco = official_shapes(20), official_shapes(80)
    assert len(voc) == len(coco) == 157
    assert sum(math.prod(s) for s in voc.values()) == 92_507_368
    assert sum(math.prod(s) for s in coco.values()) == 92_630_248
    listing = json.loads(KEYS_LISTING.read_text())
    for name, table in (("voc", voc), ("coco", coco)):
        assert list(listing[name]) == list(table)
        assert {k: tuple(v) for k, v in listing[name].items()} == table


def test_coco_student_file(tmp_path: Path, pools: _Pools) -> None:
    path = official_file(
        tmp_path / "coco.pth",
        official_state(80, pools),
        s_or_t="s",
        epoch=30000,
        args=official_args(aux_layer=-3, dataset="COCO"),
        result=50.87,
    )
    record = import_official_checkpoint(path)
    assert record["classes"] == list(COCO_CLASSES) and len(record["palette"]) == 81
    assert record["selected"] == "online" and record["assignment"] is None
    assert record["online"]["decoder.conv8.weight"].shape == (81, 512, 1, 1)
    assert record["source"]["dataset"] == "coco" and record["source"]["network"] == "student"


def test_other_class_count_gets_generic_names(tmp_path: Path, pools: _Pools) -> None:
    path = official_file(tmp_path / "five.pth", official_state(5, pools), args=official_args(dataset="shapes"))
    record = import_official_checkpoint(path)
    assert record["classes"] == ["class_1", "class_2", "class_3", "class_4", "class_5"]
    assert record["model_config"]["num_classes"] == 5 and record["data"]["dataset"] == "shapes"


def test_ddp_prefix_and_bare_state_dict_map_to_the_same_tensors(tmp_path: Path, voc_state: dict) -> None:
    expected = map_official_state(voc_state)
    prefixed = official_file(tmp_path / "ddp.pth", {f"module.{k}": v for k, v in voc_state.items()}, s_or_t="t")
    bare = tmp_path / "bare.pth"
    torch.save(voc_state, bare)
    records = [import_official_checkpoint(path) for path in (prefixed, bare)]
    for record in records:
        state = record[record["selected"]]
        assert list(state) == list(expected)
        assert all(torch.equal(state[k], expected[k]) for k in expected)
    record = records[1]
    assert record["s_or_t"] == "unknown" and record["selected"] == "assignment"  # released runs saved the teacher
    assert record["model_config"]["aux_layer"] == -3 and record["iteration"] is None and record["result"] is None


def test_linear_classifiers_and_network_override(tmp_path: Path, voc_state: dict) -> None:
    state = dict(voc_state)
    state["classifier.weight"] = voc_state["classifier.weight"].reshape(20, 768)
    path = official_file(tmp_path / "linear.pth", state, s_or_t="t")
    record = import_official_checkpoint(path, network="student", dataset="voc")
    assert record["selected"] == "online" and record["assignment"] is None
    assert torch.equal(record["online"]["classifier.weight"], voc_state["classifier.weight"])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.pop("encoder.blocks.3.attn.qkv.bias"), r"1 missing: encoder\.blocks\.3\.attn\.qkv\.bias"),
        (
            lambda s: s.__setitem__("decoder.conv8.weight", torch.zeros(22, 512, 1, 1)),
            r"decoder\.conv8\.weight \[22, 512, 1, 1\] \(expected \[21, 512, 1, 1\]\).*C\+1 = 21",
        ),
        (
            lambda s: s.__setitem__("encoder.blocks.12.norm1.weight", torch.zeros(768)),
            r"1 unexpected: encoder\.blocks\.12\.norm1\.weight",
        ),
    ],
    ids=["missing", "mis-shaped", "unexpected"],
)
def test_state_that_is_not_the_official_network_is_refused(
    tmp_path: Path, voc_state: dict, change: Any, expected: str
) -> None:
    state = dict(voc_state)
    change(state)
    path = official_file(tmp_path / "bad.pth", state)
    with pytest.raises(CosaModelError, match=expected):
        import_official_checkpoint(path)


def test_dataset_that_contradicts_the_weights_is_refused(voc_file: Path) -> None:
    with pytest.raises(CosaConfigError, match="--dataset coco has 80 classes but the checkpoint has 20"):
        import_official_checkpoint(voc_file, dataset="coco")


def test_truncated_and_foreign_files_are_refused(tmp_path: Path, voc_file: Path) -> None:
    data = voc_file.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    for path in (truncated, text):
        with pytest.raises(CosaModelError, match="truncated or not a torch checkpoint"):
            import_official_checkpoint(path)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(CosaModelError, match="not an official CoSA checkpoint"):
        import_official_checkpoint(other)
    with pytest.raises(CosaConfigError, match="not found"):
        import_official_checkpoint(tmp_path / "missing.pth")


_MARKER: list[Path] = []


def _side_effect(path: str) -> None:
    Path(path).write_text("code from the checkpoint ran")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _side_effect, (str(self.marker),)


def test_pickle_with_a_disallowed_object_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.pth"
    torch.save({"model": _Payload(marker), "epoch": 1}, path)
    with pytest.raises(CosaModelError, match=r"refused to load .*_side_effect.*nothing in it was executed"):
        import_official_checkpoint(path)
    assert not marker.exists()


def test_out_directory_needs_force_when_not_empty(tmp_path: Path, voc_file: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(CosaConfigError, match=r"not empty .*notes\.txt.*--force"):
        import_official_command(_cli_args(voc_file, out))
    assert not (out / "best.pt").exists()
    assert import_official_command(_cli_args(voc_file, out, "--force", "--network", "student")) == 0
    assert load_checkpoint(out / "best.pt")["selected"] == "online"
    assert (out / "notes.txt").read_text() == "keep me"
    target_file = tmp_path / "file.txt"
    target_file.write_text("")
    with pytest.raises(CosaConfigError, match="is a file"):
        import_official_command(_cli_args(voc_file, target_file, "--force"))
