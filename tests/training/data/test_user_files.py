"""Weakly labelled data as people have it: Excel CSVs, Latin-1 files, phone photos, file-name case, and
dataset files that must never run code (a crafted cls_labels_onehot.npy, checkpoint or label file)."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cosa_sdk
from cosa_sdk.errors import CosaDataError, CosaModelError
from cosa_sdk.inputs import decode_image
from cosa_sdk.training.data import build_dataset, read_index
from cosa_sdk.training.data.common import read_image
from cosa_sdk.training.data.readers.voc import read_label_table
from cosa_sdk.training.engine.checkpoint import load_checkpoint

from .builders import CLASSES, make_custom, make_voc

CUSTOM_WARNING = "cosa_sdk.training.data.readers.custom"


class _WritesMarker:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------------------- pickles
def _malicious_npy(path: Path, marker: Path) -> None:
    table = np.empty((), dtype=object)
    table[()] = {"2007_000001": _WritesMarker(marker)}
    np.save(path, table, allow_pickle=True)


def test_a_crafted_voc_label_file_is_refused_and_never_runs(tmp_path: Path) -> None:
    voc = make_voc(tmp_path)
    marker = tmp_path / "pwned"
    _malicious_npy(voc / "cls_labels_onehot.npy", marker)
    with pytest.raises(
        CosaDataError, match=r"cls_labels_onehot\.npy: refused to load it \(refused global (posix|os)\.system\)"
    ) as info:
        read_index(f"voc:{voc}?split=train", "train")
    assert "delete it" in str(info.value)
    assert not marker.exists()


def test_the_official_shaped_label_file_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "cls_labels_onehot.npy"
    table = {f"2007_{i:06d}": np.eye(20, dtype=np.float32)[i % 20] for i in range(30)}
    np.save(path, table, allow_pickle=True)
    loaded = read_label_table(path)
    assert set(loaded) == set(table) and np.array_equal(loaded["2007_000003"], table["2007_000003"])
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3))  # not an object array: read without any unpickling
    with pytest.raises(CosaDataError, match="name -> one-hot dict"):
        read_label_table(plain)


def test_a_crafted_checkpoint_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"format": "cosa", "online": _WritesMarker(marker)}, path)
    with pytest.raises(CosaModelError, match="not a cosa-sdk checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_raw_pickle_as_label_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "cls_labels_onehot.npy"
    path.write_bytes(pickle.dumps(_WritesMarker(marker)))  # no .npy header at all
    with pytest.raises(CosaDataError, match=r"cls_labels_onehot\.npy"):
        read_label_table(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- encodings
def test_excel_utf8_bom_and_crlf_are_read(tmp_path: Path) -> None:
    root = make_custom(tmp_path / "d")
    for name in ("classes.txt", "labels.csv"):
        text = (root / name).read_text()
        (root / name).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", " \r\n").encode())
    (root / "train.txt").write_bytes(b"\xef\xbb\xbf a.png \r\nb\r\n")
    (root / "val.txt").write_bytes(b"\xef\xbb\xbfc\r\n")
    index = read_index(f"custom:{root}", "train")
    assert index.classes == CLASSES  # no BOM glued to "cat"
    assert [it.name for it in index.items] == ["a", "b"] and index.items[0].labels == (0,)
    assert [it.name for it in read_index(f"custom:{root}", "val").items] == ["c"]


@pytest.mark.parametrize("name", ["classes.txt", "labels.csv", "train.txt", "val.txt"])
def test_a_latin1_byte_names_file_line_and_fix(tmp_path: Path, name: str) -> None:
    root = make_custom(tmp_path / "d")
    if name in ("train.txt", "val.txt"):
        (root / name).write_text("a\n")
    path = root / name
    path.write_bytes(path.read_bytes() + "caf\xe9\n".encode("latin-1"))
    lines = path.read_bytes().count(b"\n")
    split = "val" if name == "val.txt" else "train"
    with pytest.raises(CosaDataError, match=rf"{name}:{lines}: byte 0xe9 is not UTF-8.*save it as UTF-8"):
        read_index(f"custom:{root}", split)


# ----------------------------------------------------------------------------------------- file names
def test_a_name_differing_only_in_case_is_used_with_a_warning(tmp_path: Path, caplog) -> None:
    root = make_custom(tmp_path / "d")
    (root / "images" / "a.png").rename(root / "images" / "a.PNG")
    (root / "images" / "b.png").rename(root / "images" / "B.png")
    with caplog.at_level(logging.WARNING, logger=CUSTOM_WARNING):
        index = read_index(f"custom:{root}", "train")
    assert {it.name: it.image.name for it in index.items}["a"] == "a.PNG"
    assert {it.image.name for it in index.items} >= {"a.PNG", "B.png"}
    assert "2 image names differ from the files only in upper/lower case" in caplog.text
    assert "'a.png' is a.PNG" in caplog.text


def test_a_missing_image_names_the_near_miss(tmp_path: Path) -> None:
    root = make_custom(tmp_path / "d")
    (root / "images" / "a.png").rename(root / "images" / "a.jpg")
    with pytest.raises(CosaDataError, match=r"labels.csv:2: image 'a.png' not found .*a.jpg exists: write 'a.jpg'"):
        read_index(f"custom:{root}", "train")


def test_two_files_differing_only_in_case_are_ambiguous(tmp_path: Path) -> None:
    root = make_custom(tmp_path / "d")
    (root / "images" / "b.png").rename(root / "images" / "A.png")
    (root / "labels.csv").write_text("image,labels\nA.PNG,cat\n")
    with pytest.raises(CosaDataError, match=r"'A.PNG' matches A.png and a.png .* write the exact file name"):
        read_index(f"custom:{root}", "train")


# ------------------------------------------------------------------------------------------ EXIF
def _phone_photo(path: Path) -> np.ndarray:
    """A 40x30 (stored) JPEG tagged 'rotate 90 CW to view' (orientation 6), and its upright mask (30x40)."""
    stored = np.zeros((30, 40, 3), np.uint8)
    stored[:, :10] = 250  # a bright band on the stored left edge: the top of the upright photo
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    upright = np.zeros((40, 30), np.uint8)
    upright[:10, :] = 1  # the band, drawn on the photo as a viewer shows it
    return upright


def test_phone_photos_decode_upright_in_training_eval_and_the_sdk(tmp_path: Path) -> None:
    root = make_custom(tmp_path / "d", rows={"a": "cat", "b": "cat"}, masks=("b",))
    (root / "images" / "a.png").unlink()
    upright = _phone_photo(root / "images" / "a.jpg")
    Image.fromarray(upright, mode="L").save(root / "masks" / "a.png")
    (root / "labels.csv").write_text("image,labels\na.jpg,cat\nb.png,cat\n")
    (root / "val.txt").write_text("a\n")
    (root / "train.txt").write_text("a\nb\n")
    sdk = np.asarray(decode_image(root / "images" / "a.jpg"))
    training = np.asarray(read_image(root / "images" / "a.jpg"))
    assert sdk.shape == (40, 30, 3) and np.array_equal(sdk, training)
    assert sdk[:10].mean() > 200 and sdk[12:].mean() < 30  # upright: the band is on top, where the mask is
    evaluation = build_dataset(f"custom:{root}", "val", eval_size=16)[0]
    assert tuple(evaluation["mask"].shape) == (40, 30)  # the mask matched the upright size (no size error)
    train = build_dataset(f"custom:{root}", "train", crop_size=16)
    sample = train[0]
    assert sample["name"] == "a" and bool(sample["has_mask"])
    assert cosa_sdk.inputs.decode_image is decode_image


# ------------------------------------------------------------------------------- unusual but good
def test_an_excel_phone_photo_dataset_trains_through_cosa_train(tmp_path: Path, monkeypatch) -> None:
    """BOM + CRLF + spaces, an EXIF-rotated photo with its upright mask and a name differing in case: it
    passes the pre-training validation and trains."""
    from tiny_training import TINY_OVERRIDES

    from cosa_sdk.cli import main as cosa_main

    monkeypatch.setenv("COSA_CACHE_DIR", str(tmp_path / "cache"))
    root = make_custom(tmp_path / "d", size=(64, 64))
    upright = _phone_photo(root / "images" / "E.JPG")
    upright[upright == 1] = CLASSES.index("cat") + 1
    Image.fromarray(upright, mode="L").save(root / "masks" / "e.png")
    rows = ["image,labels", "a.png , cat", "b.png,dog bird", "c.png,bird", "d.png,cat dog", "e.jpg,cat"]
    (root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    (root / "classes.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(CLASSES).encode() + b"\r\n")
    run = tmp_path / "run"
    args = ["train", "--data", f"custom:{root}", "--out", str(run), "--iters", "2", *TINY_OVERRIDES]
    assert cosa_main(args) == 0
    assert (run / "last.pt").is_file() and not (run / "validation_report.txt").exists()
