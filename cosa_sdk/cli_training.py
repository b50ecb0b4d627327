"""Arguments of the training-side `cosa` commands (train, eval, import-official, data); the `cosa` shell
(`cosa_sdk/cli.py`) builds them, the handlers live in `cosa_sdk.training`. Only argparse: nothing here
imports torch."""

from __future__ import annotations

import argparse

SYNTHETIC_FORM = (
    "synthetic[:key=value,...] (the built-in benchmark; keys n_train, n_val, size, seed, version (1-4, "
    "default 2), e.g. synthetic:n_train=200,n_val=50,size=128 or synthetic:version=3)"
)
DATA_FORMS = f"voc:PATH | coco:PATH | custom:PATH | {SYNTHETIC_FORM}"


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train CoSA from image-level labels",
        description="Train CoSA from image-level labels (or masks, --supervision full). Writes RUN_DIR/config.json, "
        "last.pt and best.pt; `cosa export RUN_DIR/best.pt` turns the result into a bundle.",
    )
    p.add_argument(
        "--data",
        metavar="SPEC",
        default=None,
        help=f"dataset: {DATA_FORMS}; PATH?split=NAME pins the training split "
        "(VOC default: train_aug when present, else train) (default: synthetic; with --resume: the run's)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="hyper-parameters to start from: voc | coco (the paper's recipes) | official (the released VOC "
        "code path, quirks included) | tiny (the 10-minute CPU demo) | cpu (your own data on a CPU, 30-60 "
        "minutes) (default: tiny; with --resume: the run's)",
    )
    p.add_argument("--out", required=True, help="run directory (config.json, last.pt, best.pt, ...)")
    p.add_argument("--iters", type=int, default=None, help="total iterations (default: the preset's)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue RUN_DIR from last.pt with the run's own settings (data, preset, overrides, supervision); "
        "options given must match them. A run that died before its first checkpoint restarts from step 0",
    )
    p.add_argument("--force", action="store_true", help="start over in a non-empty run directory")
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="the dataset is validated before training (every image decodes, every mask fits its image); "
        "by default any problem stops the run with exit 2 and RUN_DIR/validation_report.txt. With this flag "
        "unreadable images and bad masks are left out (listed in that report) and training goes on",
    )
    p.add_argument(
        "--supervision",
        choices=["weak", "full"],
        default=None,
        help="weak: image-level labels (CoSA); full: ground-truth masks (upper bound) (default: weak; with "
        "--resume: the run's)",
    )
    p.add_argument(
        "--backbone-weights",
        default=None,
        help="timm | PATH | pkg:NAME: where the backbone's pretrained weights come from",
    )
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when present)")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed for initialisation, data order and augmentation (default: the preset's seed)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any preset value")


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure a checkpoint: CAM and segmentation mIoU",
        description="Measure a checkpoint: per-class IoU, label-free and GT-filtered segmentation mIoU, CAM mIoU.",
    )
    p.add_argument("checkpoint", help="RUN_DIR/best.pt (or last.pt)")
    p.add_argument(
        "--data",
        metavar="SPEC",
        default=None,
        help=f"dataset: {DATA_FORMS} (default: the one the run trained on)",
    )
    p.add_argument(
        "--split",
        default="val",
        help="split to score: val, train (the training split) or a split of the dataset such as train_aug "
        "(default: %(default)s)",
    )
    p.add_argument("--tta", action="store_true", help="5 scales + flip, as the official evaluation")
    p.add_argument("--crf", action="store_true", help="dense CRF post-processing (needs cosa-sdk[crf])")
    p.add_argument(
        "--postprocess",
        action="store_true",
        help="also score the SDK's post-processing: drop classes the classifier scores absent, edge-aware "
        "upsampling, and both (label-free)",
    )
    p.add_argument(
        "--network",
        choices=["auto", "online", "assignment"],
        default="auto",
        help="which of the two networks to score (auto: the one the checkpoint selected)",
    )
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when present)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", dest="json_out", default=None, help="write the scores as JSON")


def add_import_official(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-official",
        help="convert a released CoSA checkpoint into a cosa-sdk run",
        description="Convert a checkpoint released with the CoSA paper into a cosa-sdk run directory, "
        "ready for `cosa eval` and `cosa export`.",
    )
    p.add_argument("checkpoint", help="official best_seg.pth / voc_weights.pth / coco_weights.pth")
    p.add_argument(
        "--dataset",
        choices=["voc", "coco"],
        default=None,
        help="class table (default: inferred from the number of classes)",
    )
    p.add_argument("--out", required=True, help="run directory to write (best.pt, config.json)")
    p.add_argument(
        "--network",
        choices=["auto", "teacher", "student"],
        default="auto",
        help="which network the file holds: teacher (the EMA assignment network the paper evaluates) or "
        "student (the online network) (auto: as the file records, else teacher)",
    )
    p.add_argument("--force", action="store_true", help="overwrite best.pt and config.json in a non-empty --out")


def add_data_check(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "check",
        help="validate a dataset and describe it before training",
        description="Validate every image and mask of a dataset and describe it (classes, label sets, "
        "co-occurrence) before spending GPU hours on it.",
    )
    p.add_argument("data", metavar="DIR|SPEC", help=f"a custom-format folder or {DATA_FORMS}")
    p.add_argument("--report", metavar="FILE", default=None, help="also write a self-contained HTML page with plots")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="re-read every file (by default files unchanged in size and mtime since the last check are skipped; "
        "the cache lives in $COSA_CACHE_DIR/checks, default ~/.cache/cosa-sdk/checks)",
    )
    p.add_argument(
        "--max-problems", type=int, default=None, metavar="N", help="print at most N problems (default: all)"
    )


def add_data_import(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "import",
        help="convert a dataset into the custom format",
        description="Convert images with labels in a common format into cosa-sdk's custom format.",
    )
    p.add_argument("source", metavar="SOURCE", help="the folder or annotation file to import")
    p.add_argument("--out", required=True, help="the custom-format folder to write")
    p.add_argument(
        "--format",
        choices=("imagefolder", "csv", "coco", "voc-xml", "label-studio"),
        default=None,
        help="the source format (default: detected from SOURCE)",
    )
    p.add_argument("--image-col", default=None, help="CSV: the image column; Label Studio: the data key of the image")
    p.add_argument("--labels-col", default=None, help="CSV: the labels column (default: labels, label, tags, ...)")
    p.add_argument("--sep", default=None, help="CSV: the label separator (default: spaces, commas, ; or |)")
    p.add_argument("--images-dir", default=None, help="CSV/JSON/XML: the folder image paths are relative to")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="share of images held out for validation (default: 0.2 of the images with masks; 0 without masks)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default: %(default)s)")
    p.add_argument("--link", action="store_true", help="hard-link (else symlink) the images instead of copying")
    p.add_argument("--force", action="store_true", help="replace an existing custom-format --out folder")


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="check a dataset, or import one into the custom format",
        description="Dataset tools: `cosa data check` validates and describes, `cosa data import` converts.",
    )
    dsub = p.add_subparsers(
        dest="data_command", required=True, metavar="ACTION", title="actions", help="check or import"
    )
    add_data_check(dsub)
    add_data_import(dsub)
