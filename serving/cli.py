"""`cosa serve --model BUNDLE`: check the bundle loads, then run the BentoML service until SIGTERM/Ctrl-C."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

from cosa_sdk.backends import check_backend_name
from cosa_sdk.errors import CosaInputError

from .settings import ServeSettings, read_settings

SERVICE_IMPORT = "cosa_sdk.serving.service:CosaSegmentation"


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """CLI options over the COSA_* environment (upload and pixel limits come from the environment only)."""
    for name in ("max_batch_size", "max_latency_ms", "workers"):
        if getattr(args, name) < 1:
            raise CosaInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.port < 65536:
        raise CosaInputError(f"--port must be 1-65535, got {args.port}")
    return replace(
        read_settings(),
        model=str(Path(args.model).expanduser().resolve()),
        backend=check_backend_name(args.backend),
        max_batch_size=args.max_batch_size,
        max_latency_ms=args.max_latency_ms,
        workers=args.workers,
    )


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
    settings = settings_from_args(args)
    host = listen_address(args.host)
    check_port(host, args.port)
    description, device = preflight(settings)
    os.environ.update(settings.to_env())
    batching = (
        f"batching up to {settings.max_batch_size} within {settings.max_latency_ms} ms"
        if settings.batching
        else "batching off"
    )
    print(
        f"cosa serve: {description}; {batching}; {settings.workers} worker(s); "
        f"http://{host}:{args.port} (POST /segment /segment_json /overlay /info)",
        file=sys.stderr,
        flush=True,
    )
    if settings.batching and device == "cpu" and settings.max_latency_ms < CPU_LATENCY_HINT_MS:
        print(
            f"cosa serve: note: BentoML answers 503 when a request would wait over {settings.max_latency_ms} ms "
            "for the model; on a CPU under load consider --max-latency-ms 2000 or more",
            file=sys.stderr,
            flush=True,
        )
    import bentoml

    bentoml.serve(SERVICE_IMPORT, host=host, port=args.port, blocking=True)
    return 0
