"""Dataset validation before training and `cosa data check` (training/data/check/validate.py)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cosa_sdk.cli import main
from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.check import validate as check_mod
from cosa_sdk.training.data.check.validate import (
    describe_dataset,
    format_stats,
    validate_dataset,
    validate_for_training,
)

CLASSES = ["cat", "dog", "bird"]


def _image(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_dataset(root: Path, rows: dict[str, str], masks: dict[str, str] | None = None, size=(40, 30)) -> Path:
    """A custom folder: png images (distinct content), labels.csv, index masks painted from `masks` labels."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    lines = ["image,labels"]
    for i, (stem, labels) in enumerate(rows.items()):
        _image(i, size).save(root / "images" / f"{stem}.png")
        lines.append(f"{stem}.png,{labels}")
    for stem, labels in (masks or {}).items():
        mask = np.zeros((size[1], size[0]), np.uint8)
        for j, name in enumerate(labels.split()):
            mask[2 + j * 8 : 8 + j * 8, 5:30] = CLASSES.index(name) + 1
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{stem}.png")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def good_dataset(root: Path) -> Path:
    rows = {f"t{i}": ["cat", "dog", "bird", "cat dog"][i % 4] for i in range(8)}
    rows.update({"v0": "cat", "v1": "dog bird"})
    make_dataset(root, rows, masks={"v0": "cat", "v1": "dog bird"})
    (root / "val.txt").write_text("v0\nv1\n")
    return root


def broken_dataset(root: Path) -> Path:
    good_dataset(root)
    # truncated JPEG (listed in labels.csv, trains)
    buffer = io.BytesIO()
    _image(99, (64, 48)).save(buffer, format="JPEG")
    (root / "images" / "trunc.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    # wrong-size mask on a val image
    _image(50).save(root / "images" / "wrong.png")
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(root / "masks" / "wrong.png")
    # RGB colour mask with out-of-range values
    _image(51).save(root / "images" / "rgb.png")
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(root / "masks" / "rgb.png")
    # mask value >= number of classes + 1
    _image(52).save(root / "images" / "range.png")
    Image.fromarray(np.full((30, 40), 7, np.uint8), mode="L").save(root / "masks" / "range.png")
    with (root / "labels.csv").open("a") as handle:
        handle.write("trunc.jpg,cat\nwrong.png,cat\nrgb.png,dog\nrange.png,bird\nmissing.png,cat\n")
    (root / "val.txt").write_text("v0\nv1\nwrong\nrgb\nrange\n")
    return root


def test_good_dataset_passes(tmp_path: Path, cache: Path) -> None:
    report = validate_dataset(f"custom:{good_dataset(tmp_path / 'ds')}", cache_dir=cache)
    assert report.ok and not report.problems, report.format()
    assert report.counts()["train_items"] == 8 and report.counts()["val_items"] == 2


def test_every_breakage_in_one_report(tmp_path: Path, cache: Path) -> None:
    root = broken_dataset(tmp_path / "ds")
    report = validate_dataset(f"custom:{root}", cache_dir=cache)
    text = report.format()
    assert not report.ok
    assert "trunc.jpg" in text and "truncated" in text
    assert "mask is 10x10 but its image is 40x30" in text
    assert "mode RGB" in text and "convert the colour mask" in text
    assert "value(s) 7" in text and "3 classes" in text
    missing = [p for p in report.problems if "missing.png" in p.what]
    assert missing and missing[0].file.endswith("labels.csv") and missing[0].line == 16
    assert all(p.fix for p in report.problems)
    assert len(report.problems) == 5, text


def test_train_refuses_a_broken_dataset_and_writes_only_the_report(tmp_path: Path, cache, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COSA_CACHE_DIR", str(cache))
    root = broken_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    code = main(["train", "--data", f"custom:{root}", "--out", str(run), "--iters", "1", "--device", "cpu"])
    assert code == 2
    assert sorted(p.name for p in run.iterdir()) == ["validation_report.txt"]
    text = (run / "validation_report.txt").read_text()
    assert "truncated" in text and "10x10" in text and "--skip-bad-images" in text
    assert "problem(s)" in capsys.readouterr().err


def test_skip_bad_images_lists_and_excludes(tmp_path: Path, cache: Path) -> None:
    root = good_dataset(tmp_path / "ds")
    (root / "images" / "t3.png").write_bytes(b"not an image")
    with pytest.raises(CosaDataError, match="--skip-bad-images"):
        validate_for_training(f"custom:{root}", tmp_path / "run")
    report = validate_for_training(f"custom:{root}", tmp_path / "run2", skip_bad=True)
    assert report.ok and report.bad_items("train") == {"t3"}
    assert "left out" in (tmp_path / "run2" / "validation_report.txt").read_text()

    fake = argparse.Namespace(items=[argparse.Namespace(name="t3"), argparse.Namespace(name="t4")])
    assert check_mod.exclude_bad_items(fake, report.bad_items("train")) == 1 and len(fake.items) == 1


def test_index_problems_are_not_skippable(tmp_path: Path, cache: Path) -> None:
    root = good_dataset(tmp_path / "ds")
    with (root / "labels.csv").open("a") as handle:
        handle.write("t1.png,cat,dog\n")
    with pytest.raises(CosaDataError, match="cannot skip"):
        validate_for_training(f"custom:{root}", tmp_path / "run", skip_bad=True)


def test_exif_rotated_photo_matches_upright_mask(tmp_path: Path, cache: Path) -> None:
    root = good_dataset(tmp_path / "ds")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 40x30, displayed 30x40
    _image(7).save(root / "images" / "v1.jpg", exif=exif)
    (root / "images" / "v1.png").unlink()
    (root / "labels.csv").write_text((root / "labels.csv").read_text().replace("v1.png", "v1.jpg"))
    Image.fromarray(np.zeros((40, 30), np.uint8), mode="L").save(root / "masks" / "v1.png")
    report = validate_dataset(f"custom:{root}", cache_dir=cache)
    assert report.ok, report.format()
    Image.fromarray(np.zeros((30, 40), np.uint8), mode="L").save(root / "masks" / "v1.png")
    report = validate_dataset(f"custom:{root}", cache_dir=cache)
    assert "after EXIF" in report.format()


def test_second_run_reads_nothing_unchanged(tmp_path: Path, cache: Path, monkeypatch) -> None:
    root = good_dataset(tmp_path / "ds")
    first = validate_dataset(f"custom:{root}", cache_dir=cache)
    assert first.files_read == 12 and first.files_cached == 0
    opened = []
    real = check_mod.check_image_file
    monkeypatch.setattr(check_mod, "check_image_file", lambda p: opened.append(p) or real(p))
    second = validate_dataset(f"custom:{root}", cache_dir=cache)
    assert second.files_read == 0 and second.files_cached == 12 and not opened
    _image(123).save(root / "images" / "t0.png")  # content (size/mtime) changed: read again
    third = validate_dataset(f"custom:{root}", cache_dir=cache)
    assert third.files_read == 1 and [p.name for p in opened] == ["t0.png"]
    assert validate_dataset(f"custom:{root}", cache_dir=cache, use_cache=False).files_read == 12


def test_statistics_warn_about_cooccurring_pair_rare_class_and_duplicates(tmp_path: Path, cache: Path) -> None:
    rows = {f"cd{i}": "cat dog" for i in range(12)}
    rows.update({f"c{i}": "cat" for i in range(3)})
    rows["b0"] = "bird"
    rows["v0"] = "cat dog"
    root = make_dataset(tmp_path / "ds", rows, masks={"v0": "cat dog"})
    (root / "val.txt").write_text("v0\n")
    (root / "images" / "c2.png").write_bytes((root / "images" / "c1.png").read_bytes())
    report = validate_dataset(f"custom:{root}", cache_dir=cache)
    stats = describe_dataset(report)
    assert stats.images_per_class["train"] == [15, 12, 1]
    assert stats.cooccurring_pairs[0][:4] == ("cat", "dog", 12, 12)
    assert ("bird", 1) in stats.rare_classes
    assert len(stats.duplicates) == 1 and len(stats.duplicates[0]) == 2
    assert stats.instances_per_class["val"][:2] == [1, 1]
    text = format_stats(stats)
    assert "cat and dog nearly always appear together" in text and "label_set_balance" in text
    assert "never appear apart" in text
    assert "class bird is on only 1" in text and "byte-identical" in text
    assert "val mask coverage" in text


def test_cosa_data_check_command_and_html(tmp_path: Path, cache: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COSA_CACHE_DIR", str(cache))
    root = good_dataset(tmp_path / "ds")
    page = tmp_path / "check.html"
    assert main(["data", "check", str(root), "--report", str(page)]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "label sets" in out and "co-occurrence" in out
    text = page.read_text()
    assert "imagesLoaded" in text and text.count("<img") >= 3 and "http" not in text.replace("http-equiv", "")
    broken = broken_dataset(tmp_path / "bad")
    assert main(["data", "check", f"custom:{broken}"]) == 2
    assert "truncated" in capsys.readouterr().out


def test_html_report_renders_in_headless_chromium(tmp_path: Path, cache: Path) -> None:
    pytest.importorskip("matplotlib")
    from cosa_sdk.demo.browser import check_report, find_browser
    from cosa_sdk.training.data.check.report import write_check_report

    if find_browser() is None:
        pytest.skip("no Chromium here (apt-get install chromium)")
    report = validate_dataset(f"custom:{broken_dataset(tmp_path / 'ds')}", cache_dir=cache)
    page = write_check_report(tmp_path / "check.html", report, describe_dataset(report))
    result = check_report(page, screenshot=tmp_path / "check.png")
    assert result.ok and result.images_total >= 3, result
