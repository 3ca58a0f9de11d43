"""Downloads against a real HTTP server on 127.0.0.1: integrity, clear errors, no half files, resume."""

import hashlib
import http.server
import os
import re
import socket
import threading

import pytest
from model_helpers import make_small_checkpoint, serve_directory, small_config

from freestems.models import CheckpointError, ModelInfo, ModelNotAvailable, cached_file, default_cache_dir
from freestems.models.download import cache_path, download, verify_cached
from freestems.models.loading import ensure_weights

DATA = os.urandom(3 * 1024 * 1024 + 12345)  # a few chunks and a ragged tail
DIGEST = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "weights.ckpt").write_bytes(DATA)
    with serve_directory(root) as base_url:
        yield base_url


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_download_lands_the_file_and_nothing_else(served, tmp_path):
    dest = tmp_path / "cache" / "weights.ckpt"
    result = download(f"{served}/weights.ckpt", dest, sha256=DIGEST, size=len(DATA), progress=False)
    assert result == dest
    assert dest.read_bytes() == DATA
    assert leftovers(dest.parent) == ["weights.ckpt"]


def test_checksum_mismatch_keeps_nothing_and_names_both_hashes(served, tmp_path):
    dest = tmp_path / "cache" / "weights.ckpt"
    wrong = "0" * 64
    with pytest.raises(ModelNotAvailable) as caught:
        download(f"{served}/weights.ckpt", dest, sha256=wrong, progress=False)
    message = str(caught.value)
    assert "checksum mismatch" in message and wrong in message and DIGEST in message
    assert f"{served}/weights.ckpt" in message and str(dest) in message
    assert "\n" not in message
    assert leftovers(dest.parent) == []


def test_http_404_names_url_status_and_manual_path(served, tmp_path):
    dest = tmp_path / "cache" / "missing.ckpt"
    url = f"{served}/missing.ckpt"
    with pytest.raises(ModelNotAvailable) as caught:
        download(url, dest, progress=False)
    message = str(caught.value)
    assert "HTTP 404" in message and url in message and str(dest) in message
    assert leftovers(dest.parent) == []


def test_offline_connection_refused(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/weights.ckpt"
    dest = tmp_path / "cache" / "weights.ckpt"
    with pytest.raises(ModelNotAvailable) as caught:
        download(url, dest, progress=False)
    message = str(caught.value)
    assert "cannot reach 127.0.0.1 (offline?)" in message and "refused" in message.lower()
    assert url in message and str(dest) in message
    assert leftovers(dest.parent) == []


def test_silent_server_times_out(tmp_path):
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/weights.ckpt"
        dest = tmp_path / "cache" / "weights.ckpt"
        with pytest.raises(ModelNotAvailable) as caught:
            download(url, dest, progress=False, timeout=0.5)
    assert "no answer from 127.0.0.1 within 0.5 s" in str(caught.value)
    assert leftovers(dest.parent) == []


def test_expected_size_differs_from_the_server(served, tmp_path):
    dest = tmp_path / "cache" / "weights.ckpt"
    with pytest.raises(ModelNotAvailable) as caught:
        download(f"{served}/weights.ckpt", dest, size=len(DATA) + 1, progress=False)
    assert f"size mismatch: expected {len(DATA) + 1} bytes, the server has {len(DATA)}" in str(caught.value)
    assert leftovers(dest.parent) == []


def flaky_handler(data: bytes, *, cut: int, honour_range: bool = True):
    """A handler serving ``data`` whose first ``cut`` responses stop half-way (the connection then closes)."""
    requests: list[str | None] = []
    lock = threading.Lock()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            asked = self.headers.get("Range")
            with lock:
                requests.append(asked)
                count = len(requests)
            start = int(re.match(r"bytes=(\d+)-", asked).group(1)) if asked and honour_range else 0
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if count <= cut else body)

        def log_message(self, format, *args):
            pass

    return Handler, requests


def test_truncated_body_without_retries_is_a_size_mismatch(tmp_path):
    handler, requests = flaky_handler(DATA, cut=99)
    dest = tmp_path / "cache" / "weights.ckpt"
    with serve_directory(tmp_path, handler) as base_url, pytest.raises(ModelNotAvailable) as caught:
        download(f"{base_url}/weights.ckpt", dest, retries=0, progress=False)
    assert f"size mismatch: expected {len(DATA)} bytes, got {len(DATA) // 2} (truncated download)" in str(
        caught.value
    )
    assert requests == [None]
    assert leftovers(dest.parent) == []


def test_dropped_connection_resumes_with_range_requests(tmp_path):
    handler, requests = flaky_handler(DATA, cut=2)
    dest = tmp_path / "cache" / "weights.ckpt"
    with serve_directory(tmp_path, handler) as base_url:
        download(f"{base_url}/weights.ckpt", dest, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == DATA
    first = len(DATA) // 2
    second = first + (len(DATA) - first) // 2
    assert requests == [None, f"bytes={first}-", f"bytes={second}-"]
    assert leftovers(dest.parent) == ["weights.ckpt"]


def test_server_ignoring_range_restarts_cleanly(tmp_path):
    handler, requests = flaky_handler(DATA, cut=1, honour_range=False)
    dest = tmp_path / "cache" / "weights.ckpt"
    with serve_directory(tmp_path, handler) as base_url:
        download(f"{base_url}/weights.ckpt", dest, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == DATA
    assert requests == [None, f"bytes={len(DATA) // 2}-"]


def test_progress_bar_goes_to_stderr_only_when_asked(served, tmp_path, capsys):
    download(f"{served}/weights.ckpt", tmp_path / "a" / "weights.ckpt", progress=False)
    assert capsys.readouterr() == ("", "")
    download(f"{served}/weights.ckpt", tmp_path / "b" / "weights.ckpt", progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "downloading weights.ckpt" in err


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, CheckpointError])
def test_failing_validation_or_ctrl_c_leaves_nothing(served, tmp_path, interruption):
    dest = tmp_path / "cache" / "weights.ckpt"
    seen = []

    def validate(candidate):
        seen.append(candidate.read_bytes() == DATA and candidate.match(".weights.ckpt.*.part"))
        raise interruption("stop")

    with pytest.raises(interruption):
        download(f"{served}/weights.ckpt", dest, progress=False, validate=validate)
    assert seen == [True]
    assert leftovers(dest.parent) == []


def test_existing_file_is_replaced_only_by_a_complete_one(served, tmp_path):
    dest = tmp_path / "cache" / "weights.ckpt"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(ModelNotAvailable):
        download(f"{served}/weights.ckpt", dest, sha256="f" * 64, progress=False)
    assert dest.read_bytes() == b"old"
    download(f"{served}/weights.ckpt", dest, sha256=DIGEST.upper(), progress=False)
    assert dest.read_bytes() == DATA


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FREESTEMS_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FREESTEMS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "freestems"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "freestems"


def small_info(base_url: str, filename: str = "small.ckpt", **changes) -> ModelInfo:
    """A catalog entry for the small test model served at ``base_url`` (test data, not a mock)."""
    config = small_config()
    fields = dict(
        name="small-test",
        title="small test model",
        architecture="scnet",
        config=config,
        sources=tuple(config["sources"]),
        url=f"{base_url}/{filename}",
        config_url=f"{base_url}/small.yaml",
        segment=44100 * 2,
    )
    return ModelInfo(**{**fields, **changes})


def test_ensure_weights_downloads_once_then_uses_the_cache(tmp_path):
    root = tmp_path / "www"
    checkpoint = make_small_checkpoint(root / "small.ckpt", seed=1)
    cache = tmp_path / "cache"
    with serve_directory(root) as base_url:
        info = small_info(base_url, size=checkpoint.stat().st_size)
        assert cached_file(info, cache) is None
        path = ensure_weights(info, cache, progress=False)
    assert path == cache_path(info, cache) == cache / "small.ckpt"
    assert path.read_bytes() == checkpoint.read_bytes()
    assert leftovers(cache) == ["small.ckpt", "small.ckpt.sha256"]
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert (cache / "small.ckpt.sha256").read_text() == f"{digest}  small.ckpt\n"
    assert cached_file(info, cache) == path
    assert ensure_weights(info, cache, progress=False) == path  # the server is gone: served from the cache


def test_cached_file_with_the_wrong_size_is_not_used(tmp_path):
    info = small_info("http://127.0.0.1:9", size=1000)
    path = cache_path(info, tmp_path)
    path.write_bytes(b"x" * 999)
    assert cached_file(info, tmp_path) is None
    path.write_bytes(b"x" * 1000)
    assert cached_file(info, tmp_path) == path


@pytest.mark.parametrize("content", ["garbage", "wrong-config"])
def test_unusable_download_is_discarded(tmp_path, content):
    root = tmp_path / "www"
    root.mkdir()
    if content == "garbage":
        (root / "small.ckpt").write_bytes(b"<html>not a checkpoint</html>" * 100)
    else:
        make_small_checkpoint(root / "small.ckpt")
    cache = tmp_path / "cache"
    with serve_directory(root) as base_url:
        info = small_info(base_url)
        if content == "wrong-config":
            info = small_info(base_url, config={**info.config, "dims": [4, 8, 16, 32]})
        with pytest.raises(CheckpointError) as caught:
            ensure_weights(info, cache, progress=False)
    message = str(caught.value)
    assert info.url in message and "discarded" in message and "\n" not in message
    if content == "wrong-config":
        assert "dims=[4, 8, 16, 24]" in message
    assert leftovers(cache) == []


def test_a_cached_file_that_changed_after_its_download_is_refused(tmp_path):
    root = tmp_path / "www"
    checkpoint = make_small_checkpoint(root / "small.ckpt", seed=1)
    cache = tmp_path / "cache"
    with serve_directory(root) as base_url:
        info = small_info(base_url)  # no sha256 published: the first download pins one
        path = ensure_weights(info, cache, progress=False)
    pinned = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError) as caught:
        ensure_weights(info, cache, progress=False)
    message = str(caught.value)
    actual = hashlib.sha256(bytes(damaged)).hexdigest()
    assert str(path) in message and pinned in message and actual in message and "\n" not in message


def test_a_file_copied_in_by_hand_is_pinned_on_first_use(tmp_path):
    info = small_info("http://127.0.0.1:9")  # never contacted
    path = cache_path(info, tmp_path)
    path.write_bytes(b"weights")
    assert verify_cached(info, path) == path
    assert (tmp_path / "small.ckpt.sha256").read_text().split()[0] == hashlib.sha256(b"weights").hexdigest()
    path.write_bytes(b"other weights")
    with pytest.raises(CheckpointError, match="pinned in"):
        verify_cached(info, path)


def test_the_catalog_sha256_is_checked_on_every_load(tmp_path):
    info = small_info("http://127.0.0.1:9", sha256=hashlib.sha256(b"weights").hexdigest())
    path = cache_path(info, tmp_path)
    path.write_bytes(b"weights")
    assert verify_cached(info, path) == path
    assert leftovers(tmp_path) == ["small.ckpt"]  # a published digest needs no pin
    path.write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="the catalog's sha256 for model"):
        verify_cached(info, path)


def test_a_fresh_download_replaces_a_stale_pin(tmp_path):
    root = tmp_path / "www"
    checkpoint = make_small_checkpoint(root / "small.ckpt", seed=1)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "small.ckpt.sha256").write_text("0" * 64 + "  small.ckpt\n")  # left from a deleted file
    with serve_directory(root) as base_url:
        path = ensure_weights(small_info(base_url), cache, progress=False)
    assert (cache / "small.ckpt.sha256").read_text().split()[0] == hashlib.sha256(
        checkpoint.read_bytes()
    ).hexdigest()
    assert verify_cached(small_info(base_url), path) == path
