"""The `cosa` command: builds the argument parser and hands over to the chosen sub-command.

Only this parser is imported at start-up, so `cosa segment` never pays for torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cosa_sdk import __version__
from cosa_sdk.backends import REGISTRY as BACKEND_REGISTRY
from cosa_sdk.constants import DEFAULT_MAX_LATENCY_MS, DEMO_BUDGET_MIN
from cosa_sdk.errors import CosaError

HANDLERS = {
    "train": "cosa_sdk.training.cli:train_command",
    "eval": "cosa_sdk.training.cli:eval_command",
    "import-official": "cosa_sdk.training.cli:import_official_command",
    "demo": "cosa_sdk.demo.app:demo_command",
    "export": "cosa_sdk.export.cli:export_command",
    "segment": "cosa_sdk.segment_cli:segment_command",
    "serve": "cosa_sdk.serving.cli:serve_command",
    "data": "cosa_sdk.training.data.cli:data_command",
}

EXTRA_FOR_PACKAGE = {
    "torch": "train",
    "timm": "train",
    "sklearn": "train",
    "onnx": "export",
    "onnxscript": "export",
    "bentoml": "serve",
    "onnxruntime": "cpu",
}


DESCRIPTION = """\
Train a semantic segmenter from image-level labels only (CoSA, ECCV 2024), export it as a model
bundle (ONNX, INT8, TensorRT), then segment images with it or serve it over HTTP."""

EPILOG = """\
typical use:
  cosa demo                                                          all of it on a built-in benchmark
  cosa data import labels.csv --out pets/                            bring your labelled images
  cosa data check pets/                                              validate and describe them
  cosa train --data custom:pets/ --preset tiny --out runs/pets       train from image labels
  cosa eval runs/pets/best.pt                                        score it (mIoU)
  cosa export runs/pets/best.pt --out bundles/pets --int8            write a model bundle
  cosa segment photos/ --model bundles/pets --out masks/ --overlay   segment images
  cosa serve --model bundles/pets --port 3000                        HTTP API (BentoML)
  cosa import-official best_seg.pth --out runs/cosa-voc              start from the paper's weights

`cosa COMMAND --help` lists a command's options. From Python: cosa_sdk.load("bundles/pets").segment("photo.jpg")"""

SYNTHETIC_FORM = (
    "synthetic[:key=value,...] (the built-in benchmark; keys n_train, n_val, size, seed, version (1-4, "
    "default 2), e.g. synthetic:n_train=200,n_val=50,size=128 or synthetic:version=3)"
)
DATA_FORMS = f"voc:PATH | coco:PATH | custom:PATH | {SYNTHETIC_FORM}"
BACKEND_HELP = (
    "auto (the fastest the bundle and this machine allow: TensorRT, then ONNX Runtime CUDA, then CPU) | "
    f"{' | '.join(BACKEND_REGISTRY)} (default: %(default)s)"
)


def _add_train(sub: argparse._SubParsersAction) -> None:
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
        "code path, quirks included) | tiny (minutes on a CPU) (default: tiny; with --resume: the run's)",
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


def _add_eval(sub: argparse._SubParsersAction) -> None:
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
        "--network",
        choices=["auto", "online", "assignment"],
        default="auto",
        help="which of the two networks to score (auto: the one the checkpoint selected)",
    )
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when present)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", dest="json_out", default=None, help="write the scores as JSON")


def _add_import_official(sub: argparse._SubParsersAction) -> None:
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


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="turn a checkpoint's segmentation stream into a model bundle",
        description="Turn a checkpoint's segmentation stream into a model bundle (cosa.json + model.onnx, "
        "optionally INT8 and TensorRT), verified against torch before it is written.",
    )
    p.add_argument("checkpoint", help="RUN_DIR/best.pt")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--onnx", action="store_true", help="export ONNX (the default artifact; always on)")
    p.add_argument(
        "--dynamic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dynamic H/W in the ONNX graph (needed for multi-scale TTA; default: on for imported "
        "official checkpoints, off otherwise; the batch is always dynamic)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="H [W] of the exported graph (default: the training crop)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version of the graph (default: %(default)s)")
    p.add_argument("--int8", action="store_true", help="also write an INT8 ONNX model for CPUs")
    p.add_argument(
        "--calibration",
        choices=["dynamic", "static"],
        default="static",
        help="INT8 quantisation mode (static uses training images for calibration)",
    )
    p.add_argument("--tensorrt", action="store_true", help="also build a TensorRT engine (needs a GPU)")
    p.add_argument("--fp16", action="store_true", help="TensorRT FP16 precision")
    p.add_argument(
        "--data",
        metavar="SPEC",
        default=None,
        help=f"dataset whose images calibrate INT8 and check parity: {DATA_FORMS} (default: the run's)",
    )
    p.add_argument(
        "--network",
        choices=["auto", "online", "assignment"],
        default="auto",
        help="which of the two networks to export (auto: the one the checkpoint selected)",
    )
    p.add_argument("--skip-parity", action="store_true", help="do not verify ONNX against torch")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment images with a bundle",
        description="Segment images with a bundle: one palette PNG mask per image (pixel value = class index).",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--model", required=True, help="bundle directory (or a .onnx file)")
    p.add_argument("--out", required=True, help="output folder for <stem>.png masks")
    p.add_argument("--backend", default="auto", help=BACKEND_HELP)
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.jpg")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip fusion")
    p.add_argument("--batch-size", type=int, default=8, help="images per model call (default: %(default)s)")
    p.add_argument("--json", dest="json_out", default=None, help="write per-image summaries as JSON")


SERVE_EPILOG = """\
endpoints (the POST ones take the image as the multipart form field `image`):
  POST /segment        the mask as a palette PNG (pixel value = class index)
  POST /segment_json   classes present with pixel fractions, timings (mask=png|rle adds the mask)
  POST /segment_hf     Hugging Face image-segmentation format: [{score, label, mask (base64 PNG)}]
  POST /overlay        the image with the class colours blended in, as JPEG
  GET  /info           classes, palette, backend and the service limits (POST works too)
  GET  /               a page to try the model in a browser
  GET  /docs           the OpenAPI (Swagger) page; the spec itself is GET /docs.json
  GET  /metrics        Prometheus metrics
example:
  cosa serve --model bundles/pets --port 3000
  curl -F image=@photo.jpg http://127.0.0.1:3000/segment -o mask.png"""


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a bundle over HTTP (BentoML)",
        description="Serve a bundle over HTTP with BentoML (needs cosa-sdk[serve]) until Ctrl-C or SIGTERM.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="bundle directory")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="IP address to listen on; 0.0.0.0 accepts connections from other machines (default: %(default)s)",
    )
    p.add_argument("--port", type=int, default=3000, help="TCP port to listen on (default: %(default)s)")
    p.add_argument("--backend", default="auto", help=BACKEND_HELP)
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help="most concurrent requests the model runs as one batch; 1 turns batching off (default: %(default)s)",
    )
    p.add_argument(
        "--max-latency-ms",
        type=int,
        default=DEFAULT_MAX_LATENCY_MS,
        help="latency budget: the queue admits what the measured throughput serves within it (requests wait "
        "rather than fail); past it, 503 with Retry-After (default: %(default)s)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="fixed limit of queued requests per worker instead of throughput x latency budget "
        "(default: COSA_MAX_QUEUE, else 0: sized from the throughput)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes, each with its own copy of the model (default: %(default)s)",
    )


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train, evaluate, export and segment on the embedded benchmark",
        description="Train, evaluate, export and segment on the embedded benchmark (CPU, about 10 minutes); "
        "writes OUT/report.html.",
    )
    p.add_argument("--out", default="demo_out", help="folder for the run, bundle and report (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="start over instead of reusing demo_out")
    p.add_argument(
        "--budget",
        type=float,
        default=DEMO_BUDGET_MIN,
        metavar="MINUTES",
        help="time the demo may take on this machine: a few timed steps size the training schedule to fit "
        "(default: %(default)s; 0 trains the tiny preset's full schedule however long it takes)",
    )
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: sized by --budget)")
    p.add_argument(
        "--data",
        metavar="SPEC",
        default="synthetic",
        help=f"{SYNTHETIC_FORM} or custom:PATH (default: synthetic, the embedded benchmark)",
    )
    p.add_argument(
        "--screenshot",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="render report.html in headless Chromium and save report.png (default: when Chromium is found)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override tiny-preset values")


def _add_data_check(dsub: argparse._SubParsersAction) -> None:
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


def _add_data_import(dsub: argparse._SubParsersAction) -> None:
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


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="check a dataset, or import one into the custom format",
        description="Dataset tools: `cosa data check` validates and describes, `cosa data import` converts.",
    )
    dsub = p.add_subparsers(
        dest="data_command", required=True, metavar="ACTION", title="actions", help="check or import"
    )
    _add_data_check(dsub)
    _add_data_import(dsub)


def build_parser() -> argparse.ArgumentParser:
    """The full `cosa` parser; sub-command handlers are imported only when chosen."""
    parser = argparse.ArgumentParser(
        prog="cosa", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"cosa-sdk {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands", help="one of these (cosa COMMAND --help):"
    )
    for add in (
        _add_data,
        _add_train,
        _add_eval,
        _add_import_official,
        _add_export,
        _add_segment,
        _add_serve,
        _add_demo,
    ):
        add(sub)
    return parser


def _resolve(target: str):
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        handler = _resolve(HANDLERS[args.command])
        return int(handler(args) or 0)
    except CosaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        extra = EXTRA_FOR_PACKAGE.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f'error: `cosa {args.command}` needs {err.name}: pip install "cosa-sdk[{extra}]"', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
