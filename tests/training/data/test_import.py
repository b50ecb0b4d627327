"""`cosa data import`: each source format round-trips into the custom format; errors; overwrite safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cosa_sdk.cli import main as cosa_main
from cosa_sdk.errors import CosaDataError
from cosa_sdk.training.data.build import read_index
from cosa_sdk.training.data.importers import FORMATS, detect_format, import_dataset, read_source
from cosa_sdk.training.data.importers.rle import (
    counts_to_string,
    decode_counts,
    decode_segmentation,
    encode_counts,
    string_to_counts,
)


def _image(path: Path, colour=(200, 30, 30), size=(24, 16), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def _labels(out: Path) -> dict[str, set[str]]:
    classes = (out / "classes.txt").read_text().split()
    index = read_index(f"custom:{out}", "train")
    return {item.name: {classes[i] for i in item.labels} for item in index.items}


def _rows(out: Path) -> dict[str, str]:
    lines = (out / "labels.csv").read_text().splitlines()
    assert lines[0] == "image,labels"
    return {line.rsplit(",", 1)[0].rsplit(".", 1)[0]: line.rsplit(",", 1)[1] for line in lines[1:]}


def _check(out: Path) -> None:
    """`cosa data check` on an imported folder, when the check command (another module) is present."""
    import importlib

    from cosa_sdk.training.data.cli import ACTIONS

    module, func = ACTIONS["check"].split(":")
    try:
        getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError):
        return
    assert cosa_main(["data", "check", str(out)]) == 0


# ------------------------------------------------------------------------------------------- formats
def test_imagefolder_round_trip_with_colliding_names(tmp_path) -> None:
    src = tmp_path / "tree"
    _image(src / "cat" / "001.jpg")
    _image(src / "cat" / "002.png")
    _image(src / "dog" / "001.jpg")
    _image(src / "dog" / "003.jpeg")
    (src / "dog" / "notes.txt").write_text("x")
    assert detect_format(src) == "imagefolder"
    summary = import_dataset(src, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "classes.txt").read_text().split() == ["cat", "dog"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["001.jpg", "001_2.jpg", "002.png", "003.jpeg"]
    labels = _labels(out)
    assert sorted(map(tuple, map(sorted, labels.values()))) == [("cat",), ("cat",), ("dog",), ("dog",)]
    assert labels["001"] == {"cat"} and labels["001_2"] == {"dog"}
    assert summary.images == 4 and summary.train == 4 and summary.val == 0 and summary.masks == 0
    assert "1 files that are not images were skipped" in summary.notes[0]
    _check(out)


def test_imagefolder_train_val_folders_keep_their_split(tmp_path) -> None:
    src = tmp_path / "tree"
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("a", "b"):
            for i in range(n):
                _image(src / split / cls / f"{split}_{cls}_{i}.png")
    summary = import_dataset(src, tmp_path / "out")
    assert summary.train == 6 and summary.held_out == 2
    train = (tmp_path / "out" / "train.txt").read_text().split()
    assert len(train) == 6 and all(s.startswith("train_") for s in train)


def test_csv_any_columns_and_separator(tmp_path) -> None:
    _image(tmp_path / "pics" / "a.jpg")
    _image(tmp_path / "pics" / "b.jpg")
    _image(tmp_path / "pics" / "c.png")
    table = tmp_path / "meta.tsv"
    table.write_text("Filename\tnotes\tTags\na.jpg\tx\tcat;big dog\nb\ty\tbig dog\nc.png\tz\t\n")
    summary = import_dataset(
        table, tmp_path / "out", image_col="Filename", labels_col="Tags", sep=";", images_dir=tmp_path / "pics"
    )
    out = tmp_path / "out"
    assert (out / "classes.txt").read_text().split() == ["big_dog", "cat"]
    assert _labels(out) == {"a": {"cat", "big_dog"}, "b": {"big_dog"}}
    assert _rows(out)["c"] == ""  # kept, unlabelled, not trained on
    assert summary.unlabelled == 1 and summary.train == 2
    _check(out)


def test_csv_default_columns_list_cells_and_one_hot(tmp_path) -> None:
    for name in ("x", "y"):
        _image(tmp_path / "images" / f"{name}.jpg")
    (tmp_path / "l.csv").write_text("image,labels\nx.jpg,\"['cat', 'dog']\"\ny.jpg,dog\n")
    assert detect_format(tmp_path / "l.csv") == "csv"
    import_dataset(tmp_path / "l.csv", tmp_path / "out1")
    assert _labels(tmp_path / "out1") == {"x": {"cat", "dog"}, "y": {"dog"}}
    (tmp_path / "h.csv").write_text("id,cat,dog\nx,1,0\ny,1,1\n")
    import_dataset(tmp_path / "h.csv", tmp_path / "out2")
    assert (tmp_path / "out2" / "classes.txt").read_text().split() == ["cat", "dog"]
    assert _labels(tmp_path / "out2") == {"x": {"cat"}, "y": {"cat", "dog"}}


def _coco(tmp_path: Path) -> Path:
    """Three 20x16 images: a polygon square, an uncompressed-RLE blob plus a crowd RLE (compressed), none."""
    h, w = 16, 20
    for name in ("one", "two", "three"):
        _image(tmp_path / "coco" / "images" / f"{name}.jpg", size=(w, h))
    blob = np.zeros((h, w), dtype=bool)
    blob[2:6, 3:9] = True
    crowd = np.zeros((h, w), dtype=bool)
    crowd[10:14, 10:18] = True
    data = {
        "images": [
            {"id": 1, "file_name": "one.jpg", "height": h, "width": w},
            {"id": 2, "file_name": "two.jpg", "height": h, "width": w},
            {"id": 3, "file_name": "three.jpg", "height": h, "width": w},
        ],
        "categories": [{"id": 7, "name": "traffic light"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 3,
                "iscrowd": 0,
                "area": 64,
                "segmentation": [[4, 4, 12, 4, 12, 12, 4, 12]],
            },
            {
                "id": 2,
                "image_id": 2,
                "category_id": 7,
                "iscrowd": 0,
                "area": 24,
                "segmentation": {"size": [h, w], "counts": encode_counts(blob)},
            },
            {
                "id": 3,
                "image_id": 2,
                "category_id": 3,
                "iscrowd": 1,
                "area": 32,
                "segmentation": {"size": [h, w], "counts": counts_to_string(encode_counts(crowd))},
            },
        ],
    }
    path = tmp_path / "coco" / "annotations" / "instances.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return path


def test_coco_round_trip_labels_and_masks(tmp_path) -> None:
    path = _coco(tmp_path)
    assert detect_format(path) == "coco"
    out = tmp_path / "out"
    summary = import_dataset(path, out, val_fraction=0.34, seed=1)
    assert (out / "classes.txt").read_text().split() == ["cat", "traffic_light"]  # category id order
    assert _rows(out) == {"one": "cat", "two": "traffic_light cat", "three": ""}
    assert summary.masks == 3 and summary.val == 1
    one = np.array(Image.open(out / "masks" / "one.png"))
    assert one.shape == (16, 20) and one[8, 8] == 1 and one[0, 0] == 0 and one[1, 15] == 0
    two = np.array(Image.open(out / "masks" / "two.png"))
    assert (two[2:6, 3:9] == 2).all() and (two[10:14, 10:18] == 255).all()
    assert int((two == 2).sum()) == 24 and int((two == 255).sum()) == 32
    assert not np.array(Image.open(out / "masks" / "three.png")).any()
    val = read_index(f"custom:{out}", "val")
    assert len(val.items) == 1 and val.items[0].mask is not None
    train = read_index(f"custom:{out}", "train")
    assert {i.name for i in train.items} | {val.items[0].name} >= {"one", "two"}
    _check(out)


def test_rle_codec_matches_pycocotools_layout() -> None:
    # Known pycocotools pair: a 3x3 mask with a vertical bar in the middle column.
    mask = np.zeros((3, 3), dtype=bool)
    mask[:, 1] = True
    assert encode_counts(mask) == [3, 3, 3]
    assert (decode_counts([3, 3, 3], 3, 3) == mask).all()
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rng.random((13, 9)) > 0.6
        counts = encode_counts(m)
        assert string_to_counts(counts_to_string(counts)) == counts
        assert (decode_segmentation({"size": [13, 9], "counts": counts_to_string(counts)}, 13, 9) == m).all()
    # A string pycocotools writes for [0, 5, 1000, 2] (first mask pixel set; delta coding from i > 2).
    assert string_to_counts(counts_to_string([0, 5, 1000, 2])) == [0, 5, 1000, 2]
    assert counts_to_string([3, 3, 3]) == "333"


def test_voc_xml_round_trip_with_imagesets(tmp_path) -> None:
    root = tmp_path / "VOC"
    objects = {"a": ["dog", "person"], "b": ["person"], "c": ["cat", "cat"]}
    for stem, names in objects.items():
        _image(root / "JPEGImages" / f"{stem}.jpg")
        objs = "".join(
            f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
            f"<xmax>5</xmax><ymax>5</ymax></bndbox></object>"
            for n in names
        )
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><folder>VOC</folder><filename>{stem}.jpg</filename>{objs}</annotation>"
        )
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("c\n")
    assert detect_format(root) == "voc-xml"
    summary = import_dataset(root, tmp_path / "out")
    assert (tmp_path / "out" / "classes.txt").read_text().split() == ["cat", "dog", "person"]
    assert _labels(tmp_path / "out") == {"a": {"dog", "person"}, "b": {"person"}}
    assert _rows(tmp_path / "out")["c"] == "cat"
    assert summary.train == 2 and summary.held_out == 1
    _check(tmp_path / "out")


def test_label_studio_full_and_min_exports(tmp_path) -> None:
    _image(tmp_path / "media" / "cat1.jpg")
    _image(tmp_path / "media" / "both.png")
    _image(tmp_path / "media" / "skip.jpg")
    tasks = [
        {
            "id": 1,
            "data": {"image": "/data/upload/3/1a2b3c4d-cat1.jpg"},
            "annotations": [
                {
                    "was_cancelled": False,
                    "result": [
                        {"type": "choices", "from_name": "choice", "to_name": "image", "value": {"choices": ["Cat"]}}
                    ],
                }
            ],
        },
        {
            "id": 2,
            "data": {"img": "/data/local-files/?d=media/both.png"},
            "annotations": [
                {"was_cancelled": False, "result": [{"type": "choices", "value": {"choices": ["Dog"]}}]},
                {"was_cancelled": False, "result": [{"type": "choices", "value": {"choices": ["Cat", "Dog"]}}]},
                {"was_cancelled": True, "result": []},
            ],
        },
        {"id": 3, "data": {"image": "/data/upload/3/skip.jpg"}, "annotations": []},
    ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    assert detect_format(export) == "label-studio"
    summary = import_dataset(export, tmp_path / "out", images_dir=tmp_path / "media")
    assert (tmp_path / "out" / "classes.txt").read_text().split() == ["Cat", "Dog"]
    assert _labels(tmp_path / "out") == {"cat1": {"Cat"}, "both": {"Cat", "Dog"}}
    assert any("1 tasks without" in n for n in summary.notes)
    _check(tmp_path / "out")

    mini = [
        {"image": "/data/upload/1/cat1.jpg", "id": 1, "choice": "Cat"},
        {"image": "/data/upload/1/both.png", "id": 2, "choice": {"choices": ["Cat", "Dog"]}},
    ]
    (tmp_path / "media" / "min.json").write_text(json.dumps(mini))
    assert detect_format(tmp_path / "media" / "min.json") == "label-studio"
    import_dataset(tmp_path / "media" / "min.json", tmp_path / "out2")
    assert _labels(tmp_path / "out2") == {"cat1": {"Cat"}, "both": {"Cat", "Dog"}}


# ------------------------------------------------------------------------------ writer and safety
def test_link_seeded_split_and_overwrite_rules(tmp_path) -> None:
    path = _coco(tmp_path)
    out = tmp_path / "out"
    import_dataset(path, out, link=True, val_fraction=0.5, seed=3)
    first = (out / "val.txt").read_text()
    src = tmp_path / "coco" / "images" / "one.jpg"
    dst = out / "images" / "one.jpg"
    assert dst.samefile(src)
    with pytest.raises(CosaDataError, match="--force"):
        import_dataset(path, out, val_fraction=0.5, seed=3)
    import_dataset(path, out, val_fraction=0.5, seed=3, force=True)
    assert (out / "val.txt").read_text() == first  # same seed, same split
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp folders left
    other = tmp_path / "precious"
    (other / "keep.txt").parent.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(CosaDataError, match="not a custom-format folder"):
        import_dataset(path, other, force=True)
    assert (other / "keep.txt").exists()
    with pytest.raises(CosaDataError, match="overlaps"):
        import_dataset(tmp_path / "coco", tmp_path / "coco" / "sub", fmt="imagefolder")


@pytest.mark.parametrize(
    "content, options, message",
    [
        ("image,labels\nmissing.jpg,cat\n", {}, r"l\.csv:2: image 'missing.jpg' not found"),
        ("file,what,other\na.jpg,cat,x\n", {}, "no labels column found"),
        ("image,labels\na.jpg,cat\n", {"labels_col": "tags"}, "no column 'tags'"),
        ("image,labels\na.jpg,\n", {}, "every labels cell"),
        ("image,labels\na.jpg,cat\na.jpg,dog\n", {}, "listed twice"),
    ],
)
def test_csv_errors_name_file_and_fix(tmp_path, content, options, message) -> None:
    _image(tmp_path / "a.jpg")
    (tmp_path / "l.csv").write_text(content)
    with pytest.raises(CosaDataError, match=message):
        import_dataset(tmp_path / "l.csv", tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_detection_and_format_errors(tmp_path) -> None:
    assert set(FORMATS) == {"imagefolder", "csv", "coco", "voc-xml", "label-studio"}
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(CosaDataError, match="--format"):
        detect_format(tmp_path / "x.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CosaDataError, match="--format"):
        detect_format(tmp_path / "empty")
    path = _coco(tmp_path)
    with pytest.raises(CosaDataError, match="--images-dir"):
        read_source(path, "coco", images_dir=tmp_path)
    bad = json.loads(path.read_text())
    bad["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(bad))
    with pytest.raises(CosaDataError, match="category_id 99"):
        read_source(path)


# ------------------------------------------------------------------------------------- end to end
def test_cli_import_check_and_train(tmp_path, capsys, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("COSA_CACHE_DIR", str(tmp_path / "cache"))
    path = _coco(tmp_path)
    for i in range(3):  # a few more labelled images so training has batches
        _image(tmp_path / "coco" / "images" / f"extra{i}.png", colour=(10, 90 * i, 40), size=(20, 16))
    data = json.loads(path.read_text())
    for i in range(3):
        data["images"].append({"id": 10 + i, "file_name": f"extra{i}.png", "height": 16, "width": 20})
        data["annotations"].append(
            {
                "id": 10 + i,
                "image_id": 10 + i,
                "category_id": 3 if i else 7,
                "iscrowd": 0,
                "area": 16,
                "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]],
            }
        )
    path.write_text(json.dumps(data))
    out = tmp_path / "imported"
    assert cosa_main(["data", "import", str(path), "--out", str(out), "--val-fraction", "0.3", "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert "6 images, 2 classes, 6 masks" in printed and "cosa data check" in printed
    assert cosa_main(["data", "import", str(path), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    _check(out)
    from tiny_training import TINY_OVERRIDES

    run = tmp_path / "run"
    code = cosa_main(
        ["train", "--data", f"custom:{out}", "--preset", "tiny", "--out", str(run), "--iters", "2", *TINY_OVERRIDES]
    )
    assert code == 0
    assert (run / "last.pt").exists()
    del torch
