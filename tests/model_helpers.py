"""Helpers for model tests: the small reference config, seeded checkpoints and a local HTTP server."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from reference import SCNET_FIXTURES

from freestems.models import ModelSpec, build_model, save_checkpoint

SMALL_CONFIG = SCNET_FIXTURES / "small_config.json"
SMALL_STATE = SCNET_FIXTURES / "small_state.pt"


def small_config() -> dict:
    """The constructor arguments of the small reference model."""
    return json.loads(SMALL_CONFIG.read_text())


def small_spec(name: str = "small", *, normalize: bool = False, segment: int = 44100 * 2) -> ModelSpec:
    """A spec of the small reference config (MSST behaviour: no spectrogram normalisation)."""
    config = small_config()
    return ModelSpec(
        name=name,
        config=config,
        sources=tuple(config["sources"]),
        spec_norm=False,
        normalize=normalize,
        segment=segment,
    )


def make_small_checkpoint(
    path: str | Path, seed: int = 0, normalize: bool = False, segment: int = 44100 * 2
) -> Path:
    """Write a freestems checkpoint of the small config with seeded random weights."""
    torch.manual_seed(seed)
    spec = small_spec(Path(path).stem, normalize=normalize, segment=segment)
    return save_checkpoint(path, build_model(spec), spec)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up early (a test of an aborted download) is expected: stay quiet about it.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve_directory(path: str | Path, handler: type | None = None) -> Iterator[str]:
    """Serve ``path`` over HTTP on 127.0.0.1 (a free port) in a thread; yields the base URL (no slash)."""
    handler_class = functools.partial(handler or _QuietHandler, directory=str(path))
    server = _Server(("127.0.0.1", 0), handler_class)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
