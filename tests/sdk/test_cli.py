"""`cosa segment` on files and folders: masks, overlays, JSON, summary, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toy_bundle import cached_toy_bundle

from cosa_sdk.cli import main
from cosa_sdk.segment_cli import collect_images


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (48, 36)) -> Path:
    """A half-coloured, half-gray image (width, height) = size."""
    pixels = np.full((size[1], size[0], 3), 128, dtype=np.uint8)
    pixels[:, : size[0] // 2] = colour
    Image.fromarray(pixels).save(path, quality=95)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "b_red.png", (230, 20, 20))
    write_image(images / "a_green.jpg", (20, 220, 30), size=(61, 29))
    write_image(images / "c_gray.bmp", (128, 128, 128))
    (images / "notes.txt").write_text("not an image")
    (images / "sub").mkdir()
    return images


def test_segments_a_folder_with_overlays_and_json(folder: Path, tmp_path: Path, capsys) -> None:
    out, report = tmp_path / "out", tmp_path / "report.json"
    code = main(
        [
            "segment",
            str(folder),
            "--model",
            str(cached_toy_bundle()),
            "--out",
            str(out),
            "--overlay",
            "--batch-size",
            "2",
            "--json",
            str(report),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a_green.png",
        "a_green_overlay.jpg",
        "b_red.png",
        "b_red_overlay.jpg",
        "c_gray.png",
        "c_gray_overlay.jpg",
    ]
    with Image.open(out / "a_green.png") as mask:
        assert mask.mode == "P" and mask.size == (61, 29)
        values = np.asarray(mask)
    assert (values[:, :20] == 2).all() and (values[:, 45:] == 0).all()
    with Image.open(out / "b_red_overlay.jpg") as overlay:
        assert overlay.size == (48, 36)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("segmented 3 images in ") and "images/s" in line
    assert "green (1)" in line and "red (1)" in line and "background" not in line
    records = json.loads(report.read_text())["images"]
    assert [Path(r["input"]).name for r in records] == ["a_green.jpg", "b_red.png", "c_gray.bmp"]
    assert records[2]["present"] == {"background": 1.0}


def test_collects_image_files_sorted_and_deduplicated(folder: Path) -> None:
    found = collect_images([folder, folder / "b_red.png"])
    assert [p.name for p in found] == ["a_green.jpg", "b_red.png", "c_gray.bmp"]


def test_bad_images_are_skipped_and_reported(folder: Path, tmp_path: Path, capsys) -> None:
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code = main(["segment", str(folder), "--model", str(cached_toy_bundle()), "--out", str(tmp_path / "out")])
    assert code == 1
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "broken.png" in captured.err
    assert "segmented 3 images, 1 failed" in captured.out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_green.png", "b_red.png", "c_gray.png"]


def test_never_overwrites_an_input(folder: Path, capsys) -> None:
    before = (folder / "b_red.png").read_bytes()
    code = main(["segment", str(folder), "--model", str(cached_toy_bundle()), "--out", str(folder)])
    assert code == 2
    assert "would overwrite an input image" in capsys.readouterr().err
    assert (folder / "b_red.png").read_bytes() == before
    assert not (folder / "a_green.png").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--backend", "openvino"], "unknown backend"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_options_exit_2(folder: Path, tmp_path: Path, capsys, extra: list[str], needle: str) -> None:
    args = ["segment", str(folder), "--model", str(cached_toy_bundle()), "--out", str(tmp_path / "o"), *extra]
    assert main(args) == 2
    assert needle in capsys.readouterr().err


def test_missing_inputs_name_clashes_and_bad_bundles(folder: Path, tmp_path: Path, capsys) -> None:
    bundle = str(cached_toy_bundle())
    assert main(["segment", str(tmp_path / "nope.jpg"), "--model", bundle, "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    write_image(other / "b_red.jpg", (230, 20, 20))
    assert main(["segment", str(folder), str(other), "--model", bundle, "--out", str(tmp_path / "o")]) == 2
    assert "share the name 'b_red'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["segment", str(empty), "--model", bundle, "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err
    assert main(["segment", str(folder), "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "cosa.json" in capsys.readouterr().err
