"""`cosa serve --model BUNDLE`: check the bundle loads, then run the BentoML service until SIGTERM/Ctrl-C."""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

from cosa_sdk.backends import check_backend_name
from cosa_sdk.constants import DEFAULT_MAX_LATENCY_MS
from cosa_sdk.errors import CosaError, CosaInputError

from .settings import ServeSettings, read_settings

SERVICE_IMPORT = "cosa_sdk.serving.service:CosaSegmentation"
SERVE_PACKAGES = (("bentoml", "BentoML"), ("python_multipart", "python-multipart"))
SERVE_INSTALL = 'pip install "cosa-sdk[serve,cpu]" (or "cosa-sdk[serve,gpu]" with an NVIDIA GPU)'


def require_serving_packages() -> None:
    """CosaError naming the install command when BentoML or python-multipart is missing.

    Runs before anything is printed, so a machine without the `serve` extra gets one clear line
    instead of a banner followed by an import error.
    """
    missing = []
    for module, package in SERVE_PACKAGES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # installed, but broken: its own traceback says more
                raise
            missing.append(package)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise CosaError(f"`cosa serve` needs {' and '.join(missing)}, which {verb} not installed: {SERVE_INSTALL}")


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """CLI options over the COSA_* environment (upload and pixel limits come from the environment only)."""
    for name in ("max_batch_size", "max_latency_ms", "workers"):
        if getattr(args, name) < 1:
            raise CosaInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.port < 65536:
        raise CosaInputError(f"--port must be 1-65535, got {args.port}")
    max_queue = getattr(args, "max_queue", None)  # None: COSA_MAX_QUEUE, else 0 (sized from throughput)
    if max_queue is not None and max_queue < 0:
        raise CosaInputError(f"--max-queue must be >= 0 (0: sized from the measured throughput), got {max_queue}")
    settings = replace(
        read_settings(),
        model=str(Path(args.model).expanduser().resolve()),
        backend=check_backend_name(args.backend),
        max_batch_size=args.max_batch_size,
        max_latency_ms=args.max_latency_ms,
        workers=args.workers,
    )
    return settings if max_queue is None else replace(settings, max_queue=max_queue)


CPU_LATENCY_HINT_MS = 1000


def listen_address(host: str) -> str:
    """The IP literal BentoML needs ("localhost" is taken as 127.0.0.1); CosaInputError for other names."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise CosaInputError(f"--host {host!r} must be an IP address, e.g. 127.0.0.1 or 0.0.0.0 (all)") from None


def check_port(host: str, port: int) -> None:
    """CosaInputError when nothing can listen on host:port (in use, or an address this machine lacks)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as err:
        message = f"cannot listen on {host}:{port} ({err.strerror}); choose another --port or --host"
        raise CosaInputError(message) from None


def preflight(settings: ServeSettings) -> tuple[str, str]:
    """Load the bundle once here, so a bad bundle fails with its message instead of a worker crash loop.

    Returns a one-line description and the device ("cpu" or "cuda").
    """
    import cosa_sdk

    with cosa_sdk.load(settings.model, backend=settings.backend, max_pixels=settings.max_pixels) as segmenter:
        height, width = segmenter.input_size
        description = (
            f"{segmenter.bundle.name}: {len(segmenter.classes)} classes, input {height}x{width}, "
            f"{segmenter.backend} on {segmenter.device}"
        )
        return description, segmenter.device


def serve_command(args: argparse.Namespace) -> int:
    """Handler of `cosa serve`; returns 0 after a graceful shutdown."""
    require_serving_packages()
    settings = settings_from_args(args)
    host = listen_address(args.host)
    check_port(host, args.port)
    description, device = preflight(settings)
    os.environ.update(settings.to_env())
    batching = f"batching up to {settings.max_batch_size}" if settings.batching else "batching off"
    if settings.max_queue:
        batching += f"; queue up to {settings.max_queue} requests per worker"
    else:
        batching += f"; queue sized to wait at most {settings.max_latency_ms} ms at the measured throughput"
    print(
        f"cosa serve: {description}; {batching}; {settings.workers} worker(s); "
        f"http://{host}:{args.port} (POST /segment /segment_json /segment_hf /overlay /info; API docs: /docs)",
        file=sys.stderr,
        flush=True,
    )
    if device == "cpu" and settings.max_latency_ms < CPU_LATENCY_HINT_MS:
        print(
            f"cosa serve: note: requests that would wait over {settings.max_latency_ms} ms for the model get "
            f"503 with Retry-After; on a CPU consider the default --max-latency-ms {DEFAULT_MAX_LATENCY_MS}",
            file=sys.stderr,
            flush=True,
        )
    if settings.max_latency_ms >= 1000 * settings.timeout_s:
        print(
            f"cosa serve: note: the latency budget ({settings.max_latency_ms} ms) is not below COSA_TIMEOUT_S="
            f"{settings.timeout_s} s, so queued requests may time out (504); raise COSA_TIMEOUT_S",
            file=sys.stderr,
            flush=True,
        )
    import bentoml

    bentoml.serve(SERVICE_IMPORT, host=host, port=args.port, blocking=True)
    return 0
