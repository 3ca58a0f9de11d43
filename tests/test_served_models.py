"""Several models on one server: chosen per request, loaded on first use, kept under a memory budget, and a
finished job's song separated again with another model without a second upload.

The models are the real catalog entries ``scnet``, ``mel-roformer-kim`` and ``bs-roformer-4stem`` with small
seeded weights of their own families (``served_helpers``), downloaded from 127.0.0.1 by the real code path.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import one_torch_thread
from model_helpers import make_small_checkpoint
from served_helpers import BS4, KIM, SCNET, STAND_INS, stand_in_catalog
from service_helpers import (
    error_of,
    form,
    job_status,
    leftover_files,
    open_session,
    post_job,
    running_server,
    small_settings,
    wait_for_message,
    wait_for_state,
    wait_until,
)

import freestems
from freestems.cli import build_parser, served_model_choice
from freestems.executors import LocalExecutor
from freestems.models import ModelChoiceError
from freestems.models.served import LoadedModels, model_bytes, serve_models
from freestems.service import Settings, SettingsError
from freestems.service.paths import Paths


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Iterator[dict]:
    """The stand-in entries in the catalog, and a weights cache filled once for the module."""
    folder = tmp_path_factory.mktemp("catalog")
    with stand_in_catalog(folder) as entries, one_torch_thread():
        serve_models(list(STAND_INS), cache_dir=folder / "cache")  # downloads and pins every file once
        yield {"entries": entries, "cache": folder / "cache"}


@contextlib.contextmanager
def models_server(tmp_path, catalog, names, budget_mb: float = 0.0, **overrides):
    """A real server serving ``names`` (the first is the default) from the filled cache."""
    settings = small_settings(tmp_path / "data", models=tuple(names), model_memory=budget_mb, **overrides)
    executor = LocalExecutor(
        lambda: serve_models(names, cache_dir=catalog["cache"], budget=settings.model_memory_bytes),
        Paths(settings.data_dir).work,
        workers=settings.workers,
        warm_up=False,  # the default model is loaded at start only to warm it up; here every load is counted
    )
    with running_server(settings, executor) as server:
        yield server, executor
    assert leftover_files(settings.data_dir) == []


def stems_of(server, job: dict) -> list[str]:
    response = httpx.get(f"{server.url}/jobs/{job['id']}/result", params={"token": job["token"]}, timeout=30)
    assert response.status_code == 200, response.text
    return sorted(zipfile.ZipFile(io.BytesIO(response.content)).namelist())


def text_form(**fields) -> dict:
    """httpx arguments for a multipart form of text fields only (no file part at all)."""
    return {"files": {name: (None, str(value)) for name, value in fields.items()}}


def rerun(server, job: dict, key: str | None, **fields) -> httpx.Response:
    """``POST /jobs`` naming an earlier job instead of carrying a file (the form has no file part)."""
    headers = {"X-Session-Key": key} if key else {}
    body = text_form(from_job=job["id"], from_token=job["token"], **fields)
    return httpx.post(server.url + "/jobs", headers=headers, timeout=60, **body)


# ------------------------------------------------------------------------------------------------ settings


def test_serve_takes_several_models_from_options_or_the_environment(tmp_path):
    parser = build_parser()
    args = parser.parse_args(
        ["serve", "-m", "scnet", "-m", "mel-roformer-kim", "--model-file", "a.pt", "--model-config", "a.yaml"]
    )
    settings = Settings(data_dir=tmp_path)
    assert served_model_choice(args, settings) == (
        ["scnet", "mel-roformer-kim"],
        [(Path("a.pt"), Path("a.yaml"))],
    )
    from_env = Settings.from_env(
        {"FREESTEMS_MODELS": "scnet, mel-roformer-kim", "FREESTEMS_MODEL_MEMORY": "512"}
    )
    assert from_env.served_models == ("scnet", "mel-roformer-kim")
    assert from_env.model_memory_bytes == 512_000_000
    assert served_model_choice(parser.parse_args(["serve"]), from_env) == (["scnet", "mel-roformer-kim"], [])
    assert Settings(data_dir=tmp_path).served_models == ("scnet",) and Settings().model_memory_bytes is None
    with pytest.raises(SettingsError, match="FREESTEMS_MODELS .* or FREESTEMS_MODEL .*not both"):
        Settings.from_env({"FREESTEMS_MODELS": "scnet", "FREESTEMS_MODEL": "scnet-large"})
    with pytest.raises(SettingsError, match="FREESTEMS_MODEL_MEMORY: must be at least 0"):
        Settings.from_env({"FREESTEMS_MODEL_MEMORY": "-1"})
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--model-config", "a.yaml"])  # a config without its file


# ------------------------------------------------------------------------------------------------ service


def test_config_lists_the_served_models_and_a_request_picks_one(tmp_path, catalog, songs):
    with models_server(tmp_path, catalog, [SCNET, KIM]) as (server, executor):
        config = httpx.get(server.url + "/config").json()
        assert config["model"] == SCNET
        assert [model["name"] for model in config["models"]] == [SCNET, KIM]
        scnet, kim = config["models"]
        assert scnet == {
            "name": SCNET,
            "title": "SCNet (authors' base)",
            "stems": ["drums", "bass", "other", "vocals"],
            "sdr": {"avg": 9.03, "bass": 8.89, "drums": 10.44, "vocals": 9.9, "other": 6.89},
            "sdr_set": "MUSDB18-HQ",
            "relative_cost": 1.0,
            "license": "MIT (authors: starrytong/SCNet#35)",
            "jobs": ["four-stems", "acapella", "karaoke"],
            "default": True,
        }
        assert kim["stems"] == ["vocals", "no_vocals"] and kim["sdr"] == {"vocals": 10.98}
        assert kim["sdr_set"] == "Multisong" and kim["relative_cost"] == 15.4 and kim["default"] is False
        assert kim["title"] == "Mel-Band RoFormer vocals (Kimberley Jensen)"
        assert executor.loaded.loaded() == {}  # nothing is loaded before it is asked for

        with open_session(server) as (ws, key):
            # A model that is not served: 422 naming the served ones; the key stays usable.
            refused = post_job(server, songs["wav"], key, model="htdemucs")
            assert refused.status_code == 422
            error = error_of(refused)
            assert error["code"] == "model_not_served" and error["field"] == "model"
            assert SCNET in error["message"] and KIM in error["message"]

            created = post_job(server, songs["wav"], key, model=KIM)
            assert created.status_code == 202, created.text
            job = created.json()
            assert job["model"] == KIM
            message = wait_for_message(ws, lambda m: m["type"] == "job" and m["state"] == "running")
            assert message["model"] == KIM  # socket job messages say the model too
        wait_for_state(server, job, "done")
        assert stems_of(server, job) == ["no_vocals.mp3", "vocals.mp3"]
        assert list(executor.loaded.loaded()) == [KIM]  # loaded on first use: SCNet still is not


def test_a_rerun_separates_the_kept_song_with_another_model_without_an_upload(tmp_path, catalog, songs):
    with models_server(tmp_path, catalog, [SCNET, KIM], auth="none") as (server, executor):
        first = post_job(server, songs["wav"], None).json()  # the default model
        assert first["model"] == SCNET
        assert wait_for_state(server, first, "done")["model"] == SCNET

        again = rerun(server, first, None, model=KIM, format="flac")
        assert again.status_code == 202, again.text
        second = again.json()
        assert second["model"] == KIM and second["id"] != first["id"] and second["cache"] == "miss"
        assert wait_for_state(server, second, "done")["options"]["format"] == "flac"
        assert stems_of(server, second) == ["no_vocals.flac", "vocals.flac"]
        assert stems_of(server, first) == ["bass.mp3", "drums.mp3", "other.mp3", "vocals.mp3"]

        # The cache key includes the model: the same song, model and options again is a hit, another
        # model on it is not.
        hit = rerun(server, second, None, model=KIM, format="flac")
        assert hit.status_code == 202 and hit.json()["cache"] == "hit"
        assert rerun(server, first, None, model=SCNET, format="flac").json()["cache"] == "miss"
        stored = server.service.store
        assert len({stored.get(job["id"]).cache_key for job in (first, second)}) == 2

        # Refusals: a wrong token, a file and a job at once, neither, a model not served.
        wrong = rerun(server, {**first, "token": "x" * 32}, None, model=KIM)
        assert wrong.status_code == 404 and error_of(wrong)["code"] == "not_found"
        both = httpx.post(
            server.url + "/jobs",
            timeout=60,
            files=form(songs["wav"])["files"],
            data={"from_job": first["id"], "from_token": first["token"]},
        )
        assert both.status_code == 422 and error_of(both)["field"] == "from_job"
        neither = httpx.post(server.url + "/jobs", timeout=60, **text_form(model=KIM))
        assert neither.status_code == 422 and error_of(neither)["field"] == "audio_file"
        assert error_of(rerun(server, first, None, model="scnet-xl"))["code"] == "model_not_served"
        separate = httpx.post(
            server.url + "/separate", timeout=60, **text_form(from_job=first["id"], from_token=first["token"])
        )
        assert separate.status_code == 422  # POST /separate always takes the file itself

        # The song goes with its job: once the job is deleted, nothing can be separated from it.
        assert (
            httpx.delete(f"{server.url}/jobs/{first['id']}", params={"token": first["token"]}).status_code
            == 204
        )
        gone = rerun(server, first, None, model=KIM)
        assert gone.status_code == 404
        assert not list(Paths(server.data_dir).sources.glob(f"{first['id']}*"))
        assert job_status(server, second)["state"] == "done"


# ------------------------------------------------------------------------------------------------ memory


def loaded_weights(models: LoadedModels) -> int:
    """Bytes of the loaded models, counted from their parameters and buffers now (not from the books)."""
    return sum(model_bytes(model) for model in models.loaded_models().values())


def test_three_models_asked_for_in_turn_stay_under_the_memory_budget(tmp_path, catalog, songs):
    served = serve_models(list(STAND_INS), cache_dir=catalog["cache"]).served
    sizes = {name: model_bytes(served[name].load()) for name in STAND_INS}
    # Room for the two largest (as their files' sizes guess them before a first load), never for three:
    # each new model evicts the least recently used idle one.
    budget = served[KIM].estimate + served[BS4].estimate
    assert sizes[KIM] + sizes[BS4] <= budget < sum(sizes.values())
    settings = dict(budget_mb=budget / 1e6, auth="none", result_cache=False)  # every job runs its model
    with models_server(tmp_path, catalog, list(STAND_INS), **settings) as (server, executor):
        models = executor.loaded
        assert models.budget is not None and abs(models.budget - budget) <= 1
        budget = models.budget
        peak = [0]
        stop = threading.Event()

        def watch() -> None:  # bounded: the test stops it, and it ends by itself after two minutes
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                peak[0] = max(peak[0], loaded_weights(models))
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        order = [SCNET, KIM, BS4, SCNET, KIM]
        held: dict[str, list[weakref.ref]] = {}
        try:
            for name in order:
                job = post_job(server, songs["wav"], None, model=name).json()
                assert wait_for_state(server, job, "done")["model"] == name
                loaded = models.loaded_models()
                assert name in loaded and loaded_weights(models) <= budget
                held.setdefault(name, []).append(weakref.ref(loaded[name].module))
        finally:
            stop.set()
            watcher.join(timeout=10)
        assert 0 < peak[0] <= budget
        # LRU: SCNet went for BS4, KIM for SCNet's return, BS4 for KIM's.
        assert list(models.loaded()) == [SCNET, KIM]
        assert models.evictions == 3
        # An evicted model's weights are really gone (nothing else holds them), not just off the books.
        gc.collect()
        assert all(ref() is None for ref in held[BS4])
        assert held[SCNET][0]() is None  # the first SCNet was evicted and a new one loaded


def test_a_model_a_running_job_uses_is_never_evicted(catalog):
    """Two workers, room for one model: a load waits for the running job's model instead of evicting it."""
    names = [KIM, BS4]
    sizes = {
        name: model_bytes(serve_models([name], cache_dir=catalog["cache"]).served[name].load())
        for name in names
    }
    models = serve_models(names, cache_dir=catalog["cache"], budget=max(sizes.values()) + 1000)
    release = threading.Event()
    events: list[str] = []

    def first_job() -> None:
        with models.use(KIM) as model:
            events.append(f"running {model.name}")
            release.wait(60)
        events.append(f"ended {KIM}")

    def second_job() -> None:
        with models.use(BS4) as model:
            events.append(f"running {model.name}")

    one = threading.Thread(target=first_job)
    one.start()
    deadline = time.monotonic() + 60
    while f"running {KIM}" not in events and time.monotonic() < deadline:
        time.sleep(0.01)
    two = threading.Thread(target=second_job)
    two.start()
    time.sleep(1.0)  # the second load has had time to run: it must still be waiting
    assert events == [f"running {KIM}"]
    assert list(models.loaded()) == [KIM] and models.in_use() == {KIM: 1} and models.evictions == 0
    release.set()
    one.join(60)
    two.join(60)
    assert events == [f"running {KIM}", f"ended {KIM}", f"running {BS4}"]
    assert list(models.loaded()) == [BS4] and models.evictions == 1
    assert models.loaded_bytes <= models.budget

    # A cancelled job stops waiting for memory; a model not served is a clear error.
    cancel = threading.Event()
    with models.use(BS4):
        outcome: list[str] = []
        waiting = threading.Thread(target=_expect_cancelled, args=(models, cancel, outcome))
        waiting.start()
        time.sleep(0.5)
        cancel.set()
        waiting.join(30)
        assert outcome == ["cancelled"]
    with (
        pytest.raises(ModelChoiceError, match="not served here; served: mel-roformer-kim, bs-roformer-4stem"),
        models.use("scnet-xl"),
    ):
        pass


def _expect_cancelled(models: LoadedModels, cancel: threading.Event, outcome: list[str]) -> None:
    from freestems.errors import Cancelled

    try:
        with models.use(KIM, cancel):
            outcome.append("loaded")
    except Cancelled:
        outcome.append("cancelled")


def test_a_running_job_keeps_its_model_while_another_job_waits_for_memory(tmp_path, catalog, songs):
    """The same rule through the server: two workers, room for one model. The second job's model waits
    until the first job (on another model) ends; the first job's model is not evicted under it."""
    served = serve_models([KIM, BS4], cache_dir=catalog["cache"]).served
    budget = max(served[KIM].estimate, served[BS4].estimate) + 1000
    settings = dict(budget_mb=budget / 1e6, auth="none", result_cache=False, workers=2, reattach_grace=120.0)
    settings["max_request_cost"] = 10_000.0  # the long song at 3 shifts on Kim's RoFormer (15.4x): 4158
    with models_server(tmp_path, catalog, [KIM, BS4], **settings) as (server, executor):
        models = executor.loaded
        long = post_job(server, songs["long"], None, model=KIM, shifts=3).json()
        wait_until(lambda: models.in_use() == {KIM: 1}, timeout=60)
        waiting = post_job(server, songs["wav"], None, model=BS4).json()
        assert wait_for_state(server, waiting, "running")["model"] == BS4  # a worker took it: it waits
        time.sleep(1.0)
        assert job_status(server, long)["state"] == "running"
        assert list(models.loaded()) == [KIM] and models.in_use() == {KIM: 1} and models.evictions == 0
        assert job_status(server, waiting)["state"] == "running"
        # The first job ends (deleted by its owner): only now is its model evicted for the waiting one.
        assert (
            httpx.delete(f"{server.url}/jobs/{long['id']}", params={"token": long["token"]}).status_code
            == 204
        )
        assert wait_for_state(server, waiting, "done")["model"] == BS4
        assert list(models.loaded()) == [BS4] and models.evictions == 1
        assert loaded_weights(models) <= models.budget


def test_freestems_serve_serves_several_model_files(tmp_path):
    """The command itself: two checkpoint files served, in order, the first the default."""
    first = make_small_checkpoint(tmp_path / "first.pt", seed=1)
    second = make_small_checkpoint(tmp_path / "second.pt", seed=2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "freestems.cli", "serve", "--port", str(port),
        "--data-dir", str(tmp_path / "data"),
        "--model-file", str(first), "--model-file", str(second), "--model-memory", "100",
    ]  # fmt: skip
    environ = {**os.environ, "PYTHONPATH": str(Path(freestems.__file__).parents[1]), "FREESTEMS_THREADS": "1"}
    process = subprocess.Popen(
        command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:

        def described():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/config", timeout=5).json()
            except httpx.HTTPError:
                assert process.poll() is None, process.communicate()[1]
                return None

        config = wait_until(described, timeout=120, interval=0.2)
        assert [(model["name"], model["default"]) for model in config["models"]] == [
            ("first", True),
            ("second", False),
        ]
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert f"serving first, second on http://127.0.0.1:{port}" in stderr


def test_the_default_model_alone_is_loaded_and_warmed_up_at_start(tmp_path, catalog):
    """The first song's first sound must not wait for a load: the default model is warmed up when the
    executor starts; the other served models still wait for their first request."""
    executor = LocalExecutor(
        lambda: serve_models([SCNET, KIM], cache_dir=catalog["cache"], budget=0), tmp_path / "work"
    )
    executor.start()
    try:
        assert list(executor.loaded.loaded()) == [SCNET]
    finally:
        executor.close()
