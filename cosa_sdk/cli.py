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
from cosa_sdk.cli_training import (
    DATA_FORMS,
    SYNTHETIC_FORM,
    add_data,
    add_eval,
    add_import_official,
    add_train,
)
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
  cosa train --data custom:pets/ --preset cpu --out runs/pets        train from image labels
  cosa eval runs/pets/best.pt                                        score it (mIoU)
  cosa export runs/pets/best.pt --out bundles/pets --int8            write a model bundle
  cosa segment photos/ --model bundles/pets --out masks/ --overlay   segment images
  cosa serve --model bundles/pets --port 3000                        HTTP API (BentoML)
  cosa import-official best_seg.pth --out runs/cosa-voc              start from the paper's weights

`cosa COMMAND --help` lists a command's options. From Python: cosa_sdk.load("bundles/pets").segment("photo.jpg")"""

BACKEND_HELP = (
    "auto (the fastest the bundle and this machine allow: TensorRT, then ONNX Runtime CUDA, then CPU) | "
    f"{' | '.join(BACKEND_REGISTRY)} (default: %(default)s)"
)


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
        "--drop-absent",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="record in cosa.json that the SDK, by default, lets pixels take only background or the classes the "
        "classifier scores present (default: on when the model gives class scores, i.e. weakly supervised runs; "
        "`cosa segment --drop-absent/--keep-absent` overrides per call)",
    )
    p.add_argument(
        "--edge-aware",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="record in cosa.json that the SDK, by default, snaps the upsampled class maps to the image's edges "
        "with a guided filter (default: %(default)s; `cosa segment --edge-aware/--bilinear` overrides)",
    )
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
    absent = p.add_mutually_exclusive_group()
    absent.add_argument(
        "--drop-absent",
        dest="drop_absent",
        action="store_true",
        default=None,
        help="pixels take only background or the classes the classifier scores present (default: the bundle's)",
    )
    absent.add_argument(
        "--keep-absent",
        dest="drop_absent",
        action="store_false",
        default=None,
        help="every class may take pixels (default: the bundle's)",
    )
    upsample = p.add_mutually_exclusive_group()
    upsample.add_argument(
        "--edge-aware",
        dest="edge_aware",
        action="store_true",
        default=None,
        help="snap the upsampled class maps to the image's edges with a guided filter (default: the bundle's)",
    )
    upsample.add_argument(
        "--bilinear",
        dest="edge_aware",
        action="store_false",
        default=None,
        help="resize the class maps to the image bilinearly (default: the bundle's)",
    )
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
        add_data,
        add_train,
        add_eval,
        add_import_official,
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
