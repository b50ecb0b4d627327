"""Serving parts that need no running server: settings, upload checks, the ASGI guard, the bentofile, imports."""

from __future__ import annotations

import argparse
import ast
import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from toy_bundle import cached_toy_bundle

import cosa_sdk
from cosa_sdk.cli import main as cosa_main
from cosa_sdk.errors import CosaInputError
from cosa_sdk.result import SegmentationResult
from cosa_sdk.serving.cli import settings_from_args
from cosa_sdk.serving.guard import UploadGuard, check_multipart
from cosa_sdk.serving.render import drop_absent_option, mask_encoding, summary
from cosa_sdk.serving.settings import ServeSettings, read_settings
from cosa_sdk.serving.uploads import UploadError, check_header, decode_upload

from .helpers import multipart, png_header_only, scene

REPO = Path(__file__).resolve().parents[2]


# -- settings -------------------------------------------------------------------------------------
def test_settings_defaults_and_round_trip() -> None:
    defaults = read_settings({})
    assert defaults == ServeSettings()
    assert defaults.batching and defaults.max_upload_bytes == 20 * 1024 * 1024
    custom = ServeSettings(model="/m", backend="onnxruntime", max_batch_size=1, max_latency_ms=50, workers=2,
                           max_upload_mb=0.5, max_pixels=10, max_side=7, timeout_s=9, threads=1)  # fmt: skip
    assert read_settings(custom.to_env()) == custom
    assert not custom.batching
    assert "model" not in custom.public() and custom.public()["batching"] is False


@pytest.mark.parametrize(
    ("key", "value"),
    [("COSA_MAX_BATCH_SIZE", "0"), ("COSA_MAX_LATENCY_MS", "soon"), ("COSA_MAX_UPLOAD_MB", "-1"),
     ("COSA_MAX_UPLOAD_MB", "nan"), ("COSA_MAX_PIXELS", "1.5"), ("COSA_WORKERS", "0")],
)  # fmt: skip
def test_bad_settings_name_the_variable(key: str, value: str) -> None:
    with pytest.raises(CosaInputError, match=key):
        read_settings({key: value})


def _serve_args(**overrides: object) -> argparse.Namespace:
    values = {"model": "bundle", "host": "127.0.0.1", "port": 3000, "backend": "auto", "max_batch_size": 8,
              "max_latency_ms": 200, "workers": 1}  # fmt: skip
    return argparse.Namespace(**{**values, **overrides})


def test_cli_options_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSA_MAX_UPLOAD_MB", "3")
    settings = settings_from_args(_serve_args(max_batch_size=1, backend="ONNXRuntime"))
    assert settings.max_upload_mb == 3.0 and not settings.batching and settings.backend == "onnxruntime"
    assert Path(settings.model).is_absolute()
    for bad in ({"port": 70000}, {"max_batch_size": 0}, {"workers": 0}, {"backend": "tpu"}):
        with pytest.raises(CosaInputError):
            settings_from_args(_serve_args(**bad))


def test_cosa_serve_refuses_a_bad_bundle_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cosa_main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cosa_main(["serve", "--model", str(cached_toy_bundle()), "--backend", "tensorrt"]) == 2
    assert "tensorrt" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert cosa_main(["serve", "--model", str(cached_toy_bundle()), "--port", port]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert cosa_main(["serve", "--model", str(cached_toy_bundle()), "--host", "my-laptop"]) == 2
    assert "must be an IP address" in capsys.readouterr().err


# -- uploads --------------------------------------------------------------------------------------
def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "status"),
    [(b"", 400), (b"plain text, no pixels", 415), (png_header_only(50000, 50000), 413),
     (png_header_only(9000, 10), 413), (png_header_only(2000, 2000), 413), (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, 415)],
)  # fmt: skip
def test_check_header_refuses_with_the_right_status(data: bytes, status: int) -> None:
    with pytest.raises(UploadError) as err:
        check_header(data, max_pixels=1_000_000, max_side=8192)
    assert err.value.status == status and err.value.message


def test_decode_upload_is_the_sdk_decode() -> None:
    data = _png(scene(30, 50))
    image = decode_upload(data, max_pixels=10_000, max_side=100)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(cosa_sdk.inputs.decode_image(data)))
    truncated = _png(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))[:3000]
    with pytest.raises(UploadError) as err:
        decode_upload(truncated, max_pixels=10**6, max_side=1000)
    assert err.value.status == 400 and "truncated" in err.value.message


def test_mask_option() -> None:
    assert mask_encoding(None, None) is None
    assert mask_encoding("", "RLE") == "rle"
    assert mask_encoding("png", "rle") == "png"
    with pytest.raises(UploadError, match="none, png, rle"):
        mask_encoding("gif", None)


def test_drop_absent_option() -> None:
    assert drop_absent_option(None, None) is None and drop_absent_option("", "") is None  # the bundle's default
    assert drop_absent_option("true", None) is True and drop_absent_option("", "0") is False
    assert drop_absent_option("Off", "true") is False  # the form field comes first
    assert drop_absent_option(True, None) is True  # BentoML hands JSON-looking form values over parsed
    with pytest.raises(UploadError, match="use true or false") as err:
        drop_absent_option("maybe", None)
    assert err.value.status == 400


def test_json_summary_carries_class_scores_when_the_model_has_them() -> None:
    def result(scores: dict[str, float] | None) -> SegmentationResult:
        mask = np.zeros((2, 3), dtype=np.uint8)
        palette = [(0, 0, 0), (200, 0, 0)]
        return SegmentationResult(
            mask, ["background", "red"], palette, "onnxruntime", {"model": 0.1}, class_scores=scores
        )

    body = summary(result({"red": 0.1234567}), model_name="toy", mask=None, total_s=0.2)
    assert body["class_scores"] == {"red": 0.123457} and body["model"] == "toy"
    assert "class_scores" not in summary(result(None), model_name="toy", mask=None, total_s=0.2)


# -- multipart checks and the ASGI guard ----------------------------------------------------------
def test_check_multipart() -> None:
    body, content_type = multipart({"image": ("a.png", b"123", "image/png")}, {"mask": "rle"})
    boundary = content_type.split("boundary=")[1].encode()
    assert check_multipart(body, boundary, "image") is None
    assert "missing field 'photo' (got ['image', 'mask'])" in check_multipart(body, boundary, "photo")
    assert "incomplete" in check_multipart(body[:-10], boundary, "image")
    text_body, text_type = multipart({}, {"image": "https://example.com/a.jpg"})
    assert "text value" in check_multipart(text_body, text_type.split("boundary=")[1].encode(), "image")
    assert "incomplete" in check_multipart(b"", boundary, "image")
    many, many_type = multipart({"image": ("a.png", b"1", "image/png")}, {f"f{i}": "x" for i in range(2000)})
    assert "too many form fields (2001)" in check_multipart(many, many_type.split("boundary=")[1].encode(), "image")
    garbage = check_multipart(b"--" + boundary + b"\r\nno headers here", boundary, "image")
    assert garbage is not None


@pytest.fixture
def guarded() -> TestClient:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"length": len(body), "path": request.url.path})

    app = Starlette(routes=[Route("/segment", echo, methods=["POST"]), Route("/info", echo, methods=["POST"])])
    return TestClient(UploadGuard(app, routes={"/segment"}, max_bytes=10_000))


def test_guard_replays_a_good_body_untouched(guarded: TestClient) -> None:
    body, content_type = multipart({"image": ("a.png", b"x" * 5000, "image/png")})
    reply = guarded.post("/segment", content=body, headers={"Content-Type": content_type})
    assert reply.status_code == 200 and reply.json()["length"] == len(body)
    assert guarded.post("/info", content=b"anything at all").json()["length"] == 15  # other routes pass through


def test_guard_refusals(guarded: TestClient) -> None:
    assert guarded.post("/segment", json={"image": "x"}).status_code == 415
    big, content_type = multipart({"image": ("a.png", b"x" * 20_000, "image/png")})
    reply = guarded.post("/segment", content=big, headers={"Content-Type": content_type})
    assert reply.status_code == 413 and "limit" in reply.json()["error"]
    chunked = guarded.post("/segment", content=iter([big[:8000], big[8000:]]), headers={"Content-Type": content_type})
    assert chunked.status_code == 413
    expect = guarded.post("/segment", content=big, headers={"Content-Type": content_type, "Expect": "100-continue"})
    assert expect.status_code == 413 and expect.headers["connection"] == "close"
    missing, content_type = multipart({"file": ("a.png", b"x", "image/png")})
    reply = guarded.post("/segment", content=missing, headers={"Content-Type": content_type})
    assert reply.status_code == 400 and set(reply.json()) == {"error"}


# -- packaging ------------------------------------------------------------------------------------
def test_bentofile_names_the_service_and_carries_the_bundle() -> None:
    from bentoml._internal.bento.build_config import BentoBuildConfig

    with (REPO / "serving" / "bentofile.yaml").open() as stream:
        config = BentoBuildConfig.from_yaml(stream)
    module_name, class_name = config.service.split(":")
    assert module_name == "cosa_sdk.serving.service" and class_name == "CosaSegmentation"
    import importlib

    service = getattr(importlib.import_module(module_name), class_name)
    assert service.name == "cosa_segmentation" and "model" in service.dependencies
    assert "bundle/**" in config.include
    assert {env.name: env.value for env in config.envs} == {"COSA_MODEL": "bundle"}
    assert config.python.wheels == [f"dist/cosa_sdk-{cosa_sdk.__version__}-py3-none-any.whl"]


def test_batching_is_bentomls_batchable_api() -> None:
    from cosa_sdk.serving.service import SETTINGS, CosaModel, CosaSegmentation

    for name in ("infer", "infer_drop_absent", "infer_keep_absent"):  # one batcher per drop_absent setting
        infer = CosaModel.apis[name]
        assert infer.batchable is SETTINGS.batching
        assert infer.max_batch_size == SETTINGS.max_batch_size and infer.max_latency_ms == SETTINGS.max_latency_ms
    assert set(CosaSegmentation.apis) == {"segment", "segment_json", "segment_hf", "overlay", "info"}


def test_serving_imports_the_sdk_only() -> None:
    code = (
        "import sys, json, cosa_sdk.serving.service, cosa_sdk.serving.cli, cosa_sdk.serving.launcher\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'onnx') "
        "or m.startswith(('cosa_sdk.training', 'cosa_sdk.export')))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    forbidden = ("cosa_sdk.training", "cosa_sdk.export", "torch", "timm", "onnx")
    for source in sorted((REPO / "serving").glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else [f"cosa_sdk.serving.{node.module}"]
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{source.name}: {name}"
