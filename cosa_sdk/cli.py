"""The `cosa` command: builds the argument parser and hands over to the chosen sub-command.

Only this parser is imported at start-up, so `cosa segment` never pays for torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cosa_sdk import __version__
from cosa_sdk.errors import CosaError

HANDLERS = {
    "train": "cosa_sdk.training.cli:train_command",
    "eval": "cosa_sdk.training.cli:eval_command",
    "import-official": "cosa_sdk.training.cli:import_official_command",
    "demo": "cosa_sdk.training.demo:demo_command",
    "export": "cosa_sdk.export.cli:export_command",
    "segment": "cosa_sdk.segment_cli:segment_command",
    "serve": "cosa_sdk.serving.cli:serve_command",
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


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train CoSA from image-level labels")
    p.add_argument(
        "--data",
        default="synthetic",
        help="voc:PATH | coco:PATH | custom:PATH | synthetic; PATH?split=NAME pins the training split "
        "(VOC default: train_aug when present, else train)",
    )
    p.add_argument("--preset", default="tiny", help="voc | coco | official | tiny")
    p.add_argument("--out", required=True, help="run directory (config.json, last.pt, best.pt, ...)")
    p.add_argument("--iters", type=int, default=None, help="total iterations (default: the preset's)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--force", action="store_true", help="start over in a non-empty run directory")
    p.add_argument(
        "--supervision",
        choices=["weak", "full"],
        default="weak",
        help="weak: image-level labels (CoSA); full: ground-truth masks (upper bound)",
    )
    p.add_argument(
        "--backbone-weights",
        default=None,
        help="timm | PATH | pkg:NAME: where the backbone's pretrained weights come from",
    )
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when present)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any preset value")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure a checkpoint: CAM and segmentation mIoU")
    p.add_argument("checkpoint", help="RUN_DIR/best.pt (or last.pt)")
    p.add_argument("--data", default=None, help="dataset spec (default: the one the run trained on)")
    p.add_argument("--split", default="val")
    p.add_argument("--tta", action="store_true", help="5 scales + flip, as the official evaluation")
    p.add_argument("--crf", action="store_true", help="dense CRF post-processing (needs cosa-sdk[crf])")
    p.add_argument(
        "--network",
        choices=["auto", "online", "assignment"],
        default="auto",
        help="which of the two networks to score (auto: the one the checkpoint selected)",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", dest="json_out", default=None, help="write the scores as JSON")


def _add_import_official(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-official", help="convert a released CoSA checkpoint into a cosa-sdk run")
    p.add_argument("checkpoint", help="official best_seg.pth / voc_weights.pth / coco_weights.pth")
    p.add_argument(
        "--dataset",
        choices=["voc", "coco"],
        default=None,
        help="class table (default: inferred from the number of classes)",
    )
    p.add_argument("--out", required=True, help="run directory to write (best.pt, config.json)")
    p.add_argument("--network", choices=["auto", "teacher", "student"], default="auto")
    p.add_argument("--force", action="store_true")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="turn a checkpoint's segmentation stream into a model bundle")
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
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--int8", action="store_true", help="also write an INT8 ONNX model for CPUs")
    p.add_argument(
        "--calibration",
        choices=["dynamic", "static"],
        default="static",
        help="INT8 quantisation mode (static uses training images for calibration)",
    )
    p.add_argument("--tensorrt", action="store_true", help="also build a TensorRT engine (needs a GPU)")
    p.add_argument("--fp16", action="store_true", help="TensorRT FP16 precision")
    p.add_argument("--data", default=None, help="dataset for calibration and parity images")
    p.add_argument("--network", choices=["auto", "online", "assignment"], default="auto")
    p.add_argument("--skip-parity", action="store_true", help="do not verify ONNX against torch")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment images with a bundle")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--model", required=True, help="bundle directory (or a .onnx file)")
    p.add_argument("--out", required=True, help="output folder for <stem>.png masks")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime | onnxruntime-int8 | tensorrt | torch")
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.jpg")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip fusion")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", dest="json_out", default=None, help="write per-image summaries as JSON")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a bundle over HTTP (BentoML)")
    p.add_argument("--model", required=True, help="bundle directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--backend", default="auto")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument(
        "--max-latency-ms",
        type=int,
        default=2000,
        help="longest a request may wait for a batch before a 503 (CPU inference needs seconds)",
    )
    p.add_argument("--workers", type=int, default=1)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, evaluate, export and segment on the embedded benchmark")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--force", action="store_true", help="start over instead of reusing demo_out")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the tiny preset's)")
    p.add_argument(
        "--data",
        default="synthetic",
        help="synthetic[:n_train=N,n_val=N,size=PX,seed=S] or custom:PATH (default: the embedded benchmark)",
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
    parser = argparse.ArgumentParser(prog="cosa", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cosa-sdk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_eval, _add_import_official, _add_export, _add_segment, _add_serve, _add_demo):
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
