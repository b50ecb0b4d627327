"""The BentoML service: `CosaSegmentation` (HTTP API) over `CosaModel` (the bundle, with adaptive batching).

Start it with `cosa serve --model BUNDLE`, or `COSA_MODEL=BUNDLE bentoml serve
cosa_sdk.serving.service:CosaSegmentation`. All settings come from environment variables
(`cosa_sdk.serving.settings`); batching is fixed when this module is imported, as BentoML requires.

Split of work: the API service checks and decodes each upload (so hostile bytes never reach the
model) and renders the answer; `CosaModel.infer` is BentoML's batchable API, so concurrent requests
reach the model in batches of up to COSA_MAX_BATCH_SIZE. A request's `drop_absent` option that differs
from the bundle's default goes to `infer_drop_absent` / `infer_keep_absent`, batchable APIs of their own
(BentoML batches one argument only, so the option cannot ride along with each image).
In front of the batcher each API worker keeps an admission queue (`traffic.AdmissionQueue`): a burst
waits in line instead of being refused; only a request that the measured throughput could not serve
within COSA_MAX_LATENCY_MS (or past COSA_MAX_QUEUE) gets a 503 with Retry-After. The model is loaded
once per model worker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from PIL import Image
from starlette.responses import Response

import cosa_sdk
from cosa_sdk.backends import check_backend_name
from cosa_sdk.bundle import read_bundle
from cosa_sdk.result import SegmentationResult

from .docs import docs_app
from .guard import UploadGuard, error_response
from .page import page_app
from .render import HFSegment, drop_absent_option, hf_segments, mask_encoding, mask_png, overlay_jpeg, summary
from .settings import ENV_MODEL, ServeSettings, read_settings
from .traffic import AdmissionQueue, GetAlias, QueueFull
from .uploads import UploadError, decode_upload

SETTINGS = read_settings()
IMAGE_ROUTES = ("/segment", "/segment_json", "/segment_hf", "/overlay")
PUBLIC_INFO_KEYS = (
    "name", "classes", "palette", "input_size", "backend", "device", "dynamic", "tta_sizes", "notes",
    "has_class_scores", "postprocess",
)  # fmt: skip
INFER_APIS = {None: "infer", True: "infer_drop_absent", False: "infer_keep_absent"}
DEFAULT_BUNDLE_DIR = "bundle"
MODEL_CALL_ATTEMPTS = 3
READ_ONLY_ROUTES = ("/info",)  # also answered on GET (BentoML routes APIs as POST only)
BATCHER_RETRY_PAUSE_S = 0.05  # pause before sending again a request BentoML's batcher refused
F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("cosa_sdk.serving")


def model_path(settings: ServeSettings, working_dir: str | None = None) -> str:
    """COSA_MODEL, else the `bundle` folder a Bento built from serving/bentofile.yaml carries in its src."""
    if settings.model:
        return settings.model
    for base in (Path.cwd(), Path(working_dir) if working_dir else None):
        if base is not None and (base / DEFAULT_BUNDLE_DIR / "cosa.json").is_file():
            return str(base / DEFAULT_BUNDLE_DIR)
    raise cosa_sdk.CosaModelError(
        f"no model to serve: set {ENV_MODEL}=/path/to/bundle (or run `cosa serve --model BUNDLE`)"
    )


def load_segmenter(settings: ServeSettings) -> cosa_sdk.Segmenter:
    """The bundle on its backend, warmed up so the first request does not pay for graph set-up."""
    segmenter = cosa_sdk.load(
        model_path(settings), backend=settings.backend, batch_size=settings.max_batch_size,
        max_pixels=settings.max_pixels, threads=settings.threads or None,
    )  # fmt: skip
    height, width = segmenter.input_size
    segmenter.segment(np.zeros((height, width, 3), dtype=np.uint8), keep_image=False)
    return segmenter


def time_one_image(segmenter: cosa_sdk.Segmenter) -> float:
    """Seconds for one warm call at the input size: the admission queue's first throughput estimate."""
    height, width = segmenter.input_size
    start = time.perf_counter()
    segmenter.segment(np.zeros((height, width, 3), dtype=np.uint8), keep_image=False)
    return max(time.perf_counter() - start, 1e-4)


def _model_api(func: F) -> F:
    """BentoML's batchable API when batching is on, a plain API otherwise (max batch size 1)."""
    if SETTINGS.batching:
        decorate = bentoml.api(
            batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms
        )
        return decorate(func)  # type: ignore[return-value]
    return bentoml.api(func)  # type: ignore[return-value]


@bentoml.service(
    name="cosa_model",
    workers=SETTINGS.workers,
    traffic={"timeout": SETTINGS.timeout_s},
    # BentoML 1.4 closes its client session to a dependency every 100 requests / 300 s by default,
    # aborting the requests still in flight on it (bentoml/BentoML#5540, #5544); a local model
    # worker gains nothing from the refresh, so it is pushed out of reach.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
)
class CosaModel:
    """One loaded bundle per worker process."""

    @bentoml.on_deployment
    def check_bundle() -> None:
        """Once, before any worker starts: a missing or malformed bundle stops `bentoml serve` with its message."""
        settings = read_settings()
        check_backend_name(settings.backend)
        read_bundle(model_path(settings, CosaModel.working_dir))

    def __init__(self) -> None:
        self.segmenter = load_segmenter(read_settings())
        self.seconds_per_image = time_one_image(self.segmenter)

    def _infer(self, images: list[np.ndarray], drop_absent: bool | None) -> list[dict[str, Any]]:
        size = max(1, len(images))
        results = self.segmenter.segment(list(images), keep_image=False, batch_size=size, drop_absent=drop_absent)
        return [{"mask": r.mask, "timings": r.timings, "class_scores": r.class_scores} for r in results]

    @_model_api
    def infer(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """Masks (at each image's size), SDK timings and class scores (None without them) for decoded HxWx3
        uint8 RGB images, in order; absent classes dropped as the bundle's postprocess.drop_absent says."""
        return self._infer(images, None)

    @_model_api
    def infer_drop_absent(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """`infer` with the classes the classifier calls absent dropped (needs a model with class scores)."""
        return self._infer(images, True)

    @_model_api
    def infer_keep_absent(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """`infer` with every class allowed, whatever the bundle's default."""
        return self._infer(images, False)

    @bentoml.api
    def info(self) -> dict[str, Any]:
        """What the bundle is and where it runs (no file paths)."""
        details = self.segmenter.info()
        details["palette"] = [list(colour) for colour in self.segmenter.palette]
        public = {key: details[key] for key in PUBLIC_INFO_KEYS if key in details}
        return {**public, "seconds_per_image": self.seconds_per_image}  # taken out by the API service

    @bentoml.on_shutdown
    def close(self) -> None:
        self.segmenter.close()


def _drop_absent(form_value: str | bool | None, ctx: bentoml.Context) -> bool | None:
    """A request's drop_absent option (form field, else query parameter); UploadError 400 when malformed.

    BentoML reads form values as JSON first, so "true" arrives as a bool and "maybe" as a string.
    """
    return drop_absent_option(form_value, ctx.request.query_params.get("drop_absent"))


def _answer_errors(func: F) -> F:
    """Turn an UploadError raised while answering into the service's JSON error response."""

    @functools.wraps(func)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await func(self, *args, **kwargs)
        except UploadError as err:
            ctx = kwargs.get("ctx")
            if ctx is not None:  # BentoML copies the context's status onto any returned response
                ctx.response.status_code = err.status
            response = error_response(err.status, err.message)
            if isinstance(err, QueueFull):
                response.headers["Retry-After"] = str(err.retry_after)
            return response

    return wrapper  # type: ignore[return-value]


@bentoml.service(
    name="cosa_segmentation",
    workers=SETTINGS.workers,
    traffic={"timeout": SETTINGS.timeout_s},
)
class CosaSegmentation:
    """Semantic segmentation of uploaded images (multipart field `image`) with a cosa-sdk bundle."""

    model = bentoml.depends(CosaModel)

    def __init__(self) -> None:
        self.settings = read_settings()
        self._model_info: dict[str, Any] | None = None
        self.queue = AdmissionQueue(
            budget_s=self.settings.max_latency_ms / 1000,
            model_slots=self.settings.model_slots,
            max_queue=self.settings.max_queue,
        )

    async def _info(self) -> dict[str, Any]:
        if self._model_info is None:
            details = dict(await self._call_model("info"))
            seconds = details.pop("seconds_per_image", None)
            if seconds and self.queue.meter.prior_rps is None:
                self.queue.meter.prior_rps = 1.0 / float(seconds)
            self._model_info = details
        return self._model_info

    async def _call_model(self, name: str, *args: Any, deadline: float | None = None) -> Any:
        """Call the model service; its refusals become UploadErrors, a stale pooled connection is retried.

        A 503 from BentoML's batcher is sent again until `deadline` (time.monotonic(): the request's
        admission time plus the latency budget), then answered with a 503 and Retry-After.
        """
        import aiohttp

        attempt = 0
        while attempt < MODEL_CALL_ATTEMPTS:
            attempt += 1
            try:
                return await getattr(self.model.to_async, name)(*args)
            except BentoMLException as err:
                if int(getattr(err, "error_code", 500)) == 503:
                    if deadline is not None and time.monotonic() + BATCHER_RETRY_PAUSE_S < deadline:
                        attempt -= 1  # the batcher's refusal is not a failed attempt
                        await asyncio.sleep(BATCHER_RETRY_PAUSE_S)
                        continue
                    raise self.queue.full(
                        f"the model is busy: this request waited past its latency budget COSA_MAX_LATENCY_MS="
                        f"{self.settings.max_latency_ms} ms (serve with a larger --max-latency-ms to wait longer)"
                    ) from None
                logger.error("model call %s failed: %s", name, err)
                raise UploadError(500, "the model failed on this request; see the server log") from None
            except (aiohttp.ClientConnectionError, RuntimeError) as err:
                # a keep-alive connection the model server already closed (bentoml/BentoML#4971);
                # the calls are idempotent, so sending again is safe
                if isinstance(err, RuntimeError) and "closed" not in str(err).lower():
                    raise
                if attempt == MODEL_CALL_ATTEMPTS:
                    logger.error("model service unreachable: %s", err)
                    raise UploadError(503, "the model worker is unreachable; retry in a moment") from None
                logger.info("model call %s: retrying after %s", name, type(err).__name__)
        raise AssertionError("unreachable")

    def _infer_api(self, info: dict[str, Any], drop_absent: bool | None) -> str:
        """The model API for a request's drop_absent option: `infer` when it is the bundle's default."""
        if drop_absent is None or drop_absent == info["postprocess"]["drop_absent"]:
            return INFER_APIS[None]
        if drop_absent and not info["has_class_scores"]:
            raise UploadError(
                400,
                "drop_absent=true needs the classifier's class scores and this model has none (exported before "
                "they existed); re-export the bundle with `cosa export`, or leave drop_absent out",
            )
        return INFER_APIS[drop_absent]

    async def _segment(self, image: Path, drop_absent: bool | None = None) -> tuple[SegmentationResult, float]:
        """Decode the upload, run it through the model worker, rebuild the SDK result (with the image)."""
        start = time.perf_counter()
        info = await self._info()  # before the first admission: it carries the first throughput estimate
        api = self._infer_api(info, drop_absent)
        async with self.queue.admit() as admitted_at:  # QueueFull (503, Retry-After) when the queue is full
            data = await anyio.to_thread.run_sync(image.read_bytes)
            decoded = await anyio.to_thread.run_sync(
                functools.partial(
                    decode_upload, data, max_pixels=self.settings.max_pixels, max_side=self.settings.max_side
                )
            )
            decode_s = time.perf_counter() - start
            async with self.queue.model_slot():  # FIFO: at most settings.model_slots requests in the model
                deadline = admitted_at + self.queue.budget_s
                (output,) = await self._call_model(api, [np.asarray(decoded)], deadline=deadline)
        result = SegmentationResult(
            mask=output["mask"],
            classes=list(info["classes"]),
            palette=[tuple(colour) for colour in info["palette"]],
            backend=info["backend"],
            timings={**output["timings"], "decode": decode_s},
            image=decoded,
            class_scores=output.get("class_scores"),
        )
        return result, start

    @bentoml.api
    @_answer_errors
    async def segment(self, image: Path, drop_absent: str | bool | None = None, *, ctx: bentoml.Context) -> Image.Image:
        """The mask as a palette PNG at the upload's size: pixel value = class index (see /info).

        `drop_absent` (form field or query parameter, on every image route): "true" lets a pixel take only
        background or a class the classifier scores present, "false" any class; left out, the bundle's default.
        """
        result, _ = await self._segment(image, _drop_absent(drop_absent, ctx))
        return Response(await anyio.to_thread.run_sync(mask_png, result), media_type="image/png")

    @bentoml.api
    @_answer_errors
    async def segment_json(
        self, image: Path, mask: str = "", drop_absent: str | bool | None = None, *, ctx: bentoml.Context
    ) -> dict[str, Any]:
        """Present classes with pixel fractions, size, model, backend, timings, and `class_scores` (the
        classifier's probability per class) when the model gives them.

        `mask` (form field or query parameter): "none" (default), "png" (base64 palette PNG) or "rle".
        `drop_absent`: as for /segment.
        """
        encoding = mask_encoding(mask, ctx.request.query_params.get("mask"))
        result, start = await self._segment(image, _drop_absent(drop_absent, ctx))
        info = await self._info()
        return await anyio.to_thread.run_sync(
            functools.partial(
                summary, result, model_name=info["name"], mask=encoding, total_s=time.perf_counter() - start
            )
        )

    @bentoml.api
    @_answer_errors
    async def segment_hf(
        self, image: Path, drop_absent: str | bool | None = None, *, ctx: bentoml.Context
    ) -> list[HFSegment]:
        """Hugging Face `image-segmentation` output: `[{"score": null, "label": ..., "mask": ...}]`.

        One entry per class present, background included, in class-index order; `mask` is a
        base64-encoded PNG ("L" mode, the upload's size, 255 where the class is, 0 elsewhere), as the
        Hugging Face Inference API sends it. `cosa_sdk.result.decode_hf` turns the list into what
        `pipeline("image-segmentation")` returns (masks as PIL images). `drop_absent`: as for /segment.
        """
        result, _ = await self._segment(image, _drop_absent(drop_absent, ctx))
        return await anyio.to_thread.run_sync(hf_segments, result)

    @bentoml.api
    @_answer_errors
    async def overlay(
        self, image: Path, alpha: float = 0.5, drop_absent: str | bool | None = None, *, ctx: bentoml.Context
    ) -> Image.Image:
        """The upload with class colours blended in at `alpha` (0-1), as JPEG. `drop_absent`: as for /segment."""
        result, _ = await self._segment(image, _drop_absent(drop_absent, ctx))
        body = await anyio.to_thread.run_sync(overlay_jpeg, result, alpha)
        return Response(body, media_type="image/jpeg")

    @bentoml.api
    @_answer_errors
    async def info(self) -> dict[str, Any]:
        """Classes (index = mask value), palette, input size, backend and device, the service limits and
        the admission queue of the API worker that answers (also on GET /info)."""
        return {**await self._info(), "service": self.settings.public(), "queue": self.queue.status()}


CosaSegmentation.add_asgi_middleware(UploadGuard, routes=IMAGE_ROUTES, max_bytes=SETTINGS.max_upload_bytes)
CosaSegmentation.add_asgi_middleware(GetAlias, routes=READ_ONLY_ROUTES)
CosaSegmentation.mount_asgi_app(docs_app, path="/", name="docs")  # GET /docs: Swagger UI of GET /docs.json
CosaSegmentation.mount_asgi_app(page_app, path="/", name="page")  # GET /: the upload page (serving/page.html)

__all__ = ["CosaModel", "CosaSegmentation"]
