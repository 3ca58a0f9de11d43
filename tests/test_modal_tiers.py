"""The Modal deployment's GPU/CPU side, offline (issue 13): a GPU container without a GPU refuses to start,
no billed call outlives the one who waits for it, the CPU tier and the overflow to it, the weights layer
hashed with the catalog, pinned dependencies, the cached precision, the memory given back before the
snapshot, and the zip that stores what is compressed already.

Modal's cloud is the one thing faked (``modal_helpers``): its calls run the classes' own ``.local()``, its
Queue, Dicts and the backlog count are in-memory stand-ins.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import modal
import pytest
import torch
from modal_helpers import (
    InProcessCalls,
    MemoryCache,
    load_modal_app,
    modal_environment,
    use_in_process_gpu,
)
from service_helpers import wait_until

from freestems.deploy.image import bake_weights, build_image, catalog_facts, requirements
from freestems.deploy.probe import NoAccelerator, cached_precision, gpu_refusal, trim_memory
from freestems.executors import JobEvent, WorkItem
from freestems.executors.modal import InputCancellation, ModalExecutor
from freestems.models import CATALOG, DEFAULT_MODEL, load_model
from freestems.options import SeparationOptions

ROOT = Path(__file__).resolve().parents[1]
L4_RATE = 0.000222 + 4 * 0.0000131 + 4 * 0.00000222  # an L4, 4 cores, 4 GiB (freestems.cost.PRICES_SOURCE)
CPU_RATE = 2 * 0.0000131 + 3 * 0.00000222  # the CPU class: 2 cores, 3 GiB


@pytest.fixture
def short_lease(monkeypatch, checkpoint, tmp_path):
    """The deployment with 2-second leases (checked every half second in the container)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_modal_app(
            monkeypatch, modal_environment(checkpoint, tmp_path / "data", FREESTEMS_MODAL_LEASE_SECONDS="2")
        )
    finally:
        torch.set_num_threads(previous)


def work_item(tmp_path, job_id: str, source, events: dict[str, list[JobEvent]], **options) -> WorkItem:
    copy = tmp_path / f"{job_id}{source.suffix}"
    shutil.copy(source, copy)
    return WorkItem(
        job_id=job_id,
        source=copy,
        result=tmp_path / f"{job_id}.zip",
        report=lambda event: events.setdefault(event.job_id, []).append(event),
        options=SeparationOptions(**options),
        max_duration=240,
        display_name=f"{job_id}{source.suffix}",
    )


def final(events: dict[str, list[JobEvent]], job_id: str) -> JobEvent | None:
    found = [event for event in events.get(job_id, []) if event.kind in ("done", "failed", "cancelled")]
    return found[-1] if found else None


# ------------------------------------------------------------------------------------ 1: no silent CPU


def test_a_gpu_container_without_a_usable_gpu_refuses_to_start(deployment, monkeypatch, songs):
    module = deployment.module
    monkeypatch.setattr(module, "in_container", lambda: True)  # as in a Modal container
    monkeypatch.setattr(module, "driver_version", lambda: "575.57.08")  # where the class reads it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the wheel's CUDA is too new for it
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(NoAccelerator) as refused:
        module.Separator().separate.local(songs["short"].read_bytes(), SeparationOptions())
    message = str(refused.value)
    assert "GPU L4" in message and "NVIDIA driver 575.57.08" in message
    assert f"torch {torch.__version__} is built for CUDA 13.0" in message and "cu126" in message
    assert deployment.usage.records == []  # nothing was separated on the CPU

    without_driver = gpu_refusal("T4", None, "2.13.0+cpu", None)
    assert "no NVIDIA driver" in without_driver and "CPU-only build" in without_driver


def test_the_cpu_class_runs_the_same_separator_on_a_cpu_and_prices_it_as_one(deployment, monkeypatch, songs):
    module = deployment.module
    monkeypatch.setattr(module, "in_container", lambda: True)
    threads = torch.get_num_threads()
    try:
        data = module.CpuSeparator().separate.local(songs["short"].read_bytes(), {"two_stems": "vocals"})
    finally:
        torch.set_num_threads(threads)
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        assert sorted(bundle.namelist()) == ["no_vocals.mp3", "vocals.mp3"]
    (record,) = deployment.usage.records
    assert record.gpu is None and record.gpu_seconds is None
    busy = record.timings["busy_seconds"]
    assert busy > 0 and record.cost_usd == pytest.approx(busy * CPU_RATE)


# ---------------------------------------------------------------------- 5: no billed call left running


class BrokenChannel:
    """The progress queue, failing with a Modal error once the call has reported progress."""

    def __init__(self, channel) -> None:
        self.channel, self.progressed = channel, threading.Event()

    def put(self, key, event) -> None:
        self.channel.put(key, event)

    def get(self, key, timeout):
        if self.progressed.is_set():
            raise modal.exception.ConnectionError("lost the connection to Modal")
        events = self.channel.get(key, timeout)
        if any(event.get("type") == "progress" for event in events):
            self.progressed.set()
        return events

    def clear(self, key) -> None:
        self.channel.clear(key)


def test_a_modal_error_while_waiting_cancels_the_gpu_call(deployment, songs, tmp_path):
    calls = InProcessCalls(deployment.Separator().separate.local)
    channel = BrokenChannel(deployment.channel)
    executor = ModalExecutor(
        calls, channel, deployment.module.model_description, gpu="L4", poll_interval=0.05
    )
    executor.start()
    events: dict[str, list[JobEvent]] = {}
    try:
        executor.submit(work_item(tmp_path, "long", songs["long"], events, shifts=3))
        assert wait_until(lambda: final(events, "long") is not None, timeout=120)
    finally:
        executor.close()
    failed = final(events, "long")
    assert failed.kind == "failed" and failed.code == "internal"
    (call,) = calls.spawned
    assert calls.cancelled == 1  # the job failed here, so the GPU stops too
    assert wait_until(call.finished.is_set, timeout=60) and isinstance(call.error, InputCancellation)


def test_a_call_whose_web_container_died_stops_by_itself(short_lease, songs):
    """The web tier spawned the call with a lease and died: nobody renews it, nobody cancels."""
    module = short_lease.module
    calls = InProcessCalls(module.Separator().separate.local)
    short_lease.leases.renew("dead-job-1234", __import__("time").time() + 2)
    call = calls.spawn(
        songs["long"].read_bytes(),
        SeparationOptions(shifts=3),
        filename="long.mp3",
        progress="dead-job-1234",
        lease="dead-job-1234",
    )
    assert wait_until(call.finished.is_set, timeout=120)
    assert calls.cancelled == 0  # no one cancelled it: it saw its lease lapse and stopped
    assert isinstance(call.error, InputCancellation) and call.value is None
    assert short_lease.usage.records == []
    # A call whose lease is gone before it starts (its job was cancelled while it queued) does no work.
    late = calls.spawn(songs["short"].read_bytes(), SeparationOptions(), progress="gone-1", lease="gone-1")
    assert wait_until(late.finished.is_set, timeout=60) and isinstance(late.error, InputCancellation)
    assert [event["type"] for event in short_lease.channel.get("gone-1", 0)] == []


def test_a_live_web_tier_keeps_its_leases_and_releases_them(short_lease, songs, tmp_path):
    module = short_lease.module
    calls = InProcessCalls(module.Separator().separate.local)
    executor = ModalExecutor(
        calls,
        short_lease.channel,
        module.model_description,
        gpu="L4",
        poll_interval=0.05,
        leases=short_lease.leases,
        lease_seconds=2,
    )
    executor.start()
    events: dict[str, list[JobEvent]] = {}
    try:
        executor.submit(work_item(tmp_path, "long", songs["long"], events, shifts=2))
        assert wait_until(lambda: final(events, "long") is not None, timeout=180)
    finally:
        executor.close()
    assert final(events, "long").kind == "done"
    (call,) = calls.spawned
    assert call.job["lease"].startswith("long-") and short_lease.leases.renewals >= 1
    assert short_lease.leases.leases == {}  # released once the result came back


# ------------------------------------------------------------------------------- the CPU tier, overflow


def test_overflow_sends_a_job_to_the_cpu_class_once_the_gpu_backlog_is_reached(deployment, songs, tmp_path):
    gpu = InProcessCalls(deployment.Separator().separate.local)
    cpu = InProcessCalls(deployment.module.CpuSeparator().separate.local)
    executor = ModalExecutor(
        gpu,
        deployment.channel,
        deployment.module.model_description,
        gpu="L4",
        poll_interval=0.05,
        cpu_calls=cpu,
        tier="overflow",
        overflow_backlog=2,
    )
    executor.start()
    events: dict[str, list[JobEvent]] = {}
    try:
        gpu.waiting = 1  # below the threshold: the GPU class
        executor.submit(work_item(tmp_path, "first", songs["short"], events))
        assert wait_until(lambda: final(events, "first") is not None, timeout=120)
        gpu.waiting = 2  # two inputs already wait for a GPU container: this one goes to a CPU
        executor.submit(work_item(tmp_path, "second", songs["short"], events))
        assert wait_until(lambda: final(events, "second") is not None, timeout=120)
    finally:
        executor.close()
    first, second = final(events, "first"), final(events, "second")
    assert (first.kind, first.gpu, second.kind, second.gpu) == ("done", "L4", "done", None)
    assert (len(gpu.spawned), len(cpu.spawned)) == (1, 1)
    assert first.timings["cost_usd"] == pytest.approx(first.timings["busy_seconds"] * L4_RATE)
    assert second.timings["cost_usd"] == pytest.approx(second.timings["busy_seconds"] * CPU_RATE)
    assert "gpu_seconds" not in second.timings


@pytest.mark.parametrize(("tier", "workers"), [("gpu", 1), ("cpu", 20), ("overflow", 21)])
def test_the_settings_choose_the_tier_of_the_web_tiers_executor(
    monkeypatch, checkpoint, tmp_path, tier, workers
):
    environ = modal_environment(checkpoint, tmp_path / "data", FREESTEMS_MODAL_TIER=tier)
    deployment = load_modal_app(monkeypatch, environ)
    use_in_process_gpu(monkeypatch, deployment)
    executor = deployment.module.make_executor()
    assert (executor.tier, executor.workers) == (tier, workers)
    assert executor.calls is deployment.calls and executor.leases is deployment.leases
    assert executor.cpu_calls is (None if tier == "gpu" else deployment.cpu_calls)


# ------------------------------------------------------------------------------- 6: the image is honest


def test_the_weights_layer_is_hashed_with_the_catalog_entries_it_bakes(deployment, monkeypatch):
    """Modal caches a ``run_function`` layer on the function and its arguments: the catalog's facts are
    among the arguments, so changing an entry the step bakes rebuilds it, and nothing else does."""
    module = deployment.module
    seen: list[dict] = []
    original = modal.Image.run_function

    def recording(self, function, *args, **kwargs):
        if function is bake_weights:  # not the browser export after it
            seen.append(dict(kwargs.get("kwargs") or {}))
        return original(self, function, *args, **kwargs)

    monkeypatch.setattr(modal.Image, "run_function", recording)
    catalog_settings = module.settings.replace(model_file=None, model=None)
    build_image(catalog_settings, module.modal_settings, {})
    info = CATALOG[DEFAULT_MODEL]
    monkeypatch.setitem(CATALOG, DEFAULT_MODEL, dataclasses.replace(info, sha256="0" * 64))
    build_image(catalog_settings, module.modal_settings, {})
    other = next(name for name in CATALOG if name != DEFAULT_MODEL)
    monkeypatch.setitem(CATALOG, other, dataclasses.replace(CATALOG[other], url="https://example.org/x"))
    build_image(catalog_settings, module.modal_settings, {})
    before, changed, unrelated = seen
    assert json.loads(before["catalog"])["entries"][DEFAULT_MODEL]["sha256"] == info.sha256
    assert changed["catalog"] != before["catalog"]  # a new checksum: a new layer
    assert unrelated == changed  # another entry changed: the same layer
    assert before["model"] == DEFAULT_MODEL and before["weights_dir"] == "/weights"  # what the settings name
    # A model given as a file: its bytes are hashed (copied into the image), no catalog facts.
    build_image(module.settings, module.modal_settings, {})
    assert seen[-1]["catalog"] is None


def test_an_ensemble_bakes_and_hashes_every_member():
    ensemble = next(name for name, info in CATALOG.items() if info.architecture == "ensemble")
    facts = json.loads(catalog_facts(ensemble))
    members = {member for member, _ in CATALOG[ensemble].config["members"]}
    assert members | {ensemble} <= set(facts["entries"])
    pair = json.loads(catalog_facts(f"{DEFAULT_MODEL}+{sorted(members)[0]}"))
    assert {DEFAULT_MODEL, sorted(members)[0]} <= set(pair["entries"])


@pytest.mark.parametrize(
    ("served", "models"),
    [
        ("htdemucs_ft>drums:mdx23c-drumsep", {"htdemucs_ft", "mdx23c-drumsep"}),
        ("chain-drumsep-ft", {"chain-drumsep-ft", "htdemucs_ft", "mdx23c-drumsep"}),
        ("chain-dereverb-kim", {"chain-dereverb-kim", "mel-roformer-kim", "bs-roformer-dereverb"}),
        ("scnet+mel-roformer-kim>vocals:bs-roformer-dereverb", {"scnet", "mel-roformer-kim",
                                                                  "bs-roformer-dereverb"}),
    ],
)  # fmt: skip
def test_a_chain_bakes_and_hashes_every_model_it_runs(served, models):
    """A chain, ad hoc or a preset, is seen through like an ensemble: each of its models' entries is in the
    layer's hash, and each of its families' packages in the image (DrumSep after HT-Demucs: MDX23C; a
    preset's own architecture, ``chain``, is no family)."""
    from freestems.deploy.image import model_families

    assert set(json.loads(catalog_facts(served))["entries"]) == models
    assert set(json.loads(catalog_facts(DEFAULT_MODEL, [served]))["entries"]) == models | {DEFAULT_MODEL}
    families = {CATALOG[name].architecture for name in models} - {"chain"}
    assert model_families([served]) == families
    htdemucs = "htdemucs" in families
    assert ("demucs" in {line.split("==")[0] for line in requirements([served])}) is htdemucs


def test_an_unknown_model_in_a_chain_fails_the_deploy_naming_it():
    from freestems.models import ModelNotAvailable

    with pytest.raises(ModelNotAvailable, match="unknown model 'nope'"):
        catalog_facts("htdemucs_ft>drums:nope")


def test_the_image_pins_every_dependency_to_the_version_installed_here():
    pinned = requirements()
    assert pinned and all("==" in requirement for requirement in pinned)
    for requirement in pinned:
        name, version = requirement.split("==")
        assert importlib.metadata.version(name) == version
    names = {requirement.split("==")[0] for requirement in pinned}
    assert {"numpy", "av", "fastapi", "uvicorn"} <= names and "torch" not in names


# ---------------------------------------------------------------------------------------- 8: smaller


@pytest.mark.usefixtures("deployment")  # torch on one thread, as in the deployment's other tests
def test_the_precision_probe_runs_once_then_comes_from_the_cache(checkpoint):
    model = load_model(model_file=checkpoint)
    cache = MemoryCache()
    device = torch.device("cpu")
    first = cached_precision(model, device, "auto", cache, candidates=("bf16",))
    assert first[2] is False and first[0] in ("bf16", "fp32") and "bf16" in first[1]
    assert list(cache.values()) == [{"precision": first[0], "fidelity": first[1]}]
    assert cached_precision(model, device, "auto", cache, candidates=("bf16",)) == (*first[:2], True)
    # What the cache says is used without a probe (a probe on this CPU could never answer fp16).
    (key,) = cache
    cache[key] = {"precision": "fp16", "fidelity": {"fp16": 55.0}}
    assert cached_precision(model, device, "auto", cache, candidates=("bf16",)) == (
        "fp16",
        {"fp16": 55.0},
        True,
    )
    assert cached_precision(model, device, "fp32", cache) == ("fp32", {}, False)  # asked: no probe


def test_the_snapshot_is_taken_after_the_memory_the_warm_up_freed_is_given_back(deployment, songs):
    separator = deployment.Separator()
    separator.separate.local(songs["short"].read_bytes(), {"two_stems": "vocals"})
    assert separator._cached_user_cls_instance().trimmed is True  # malloc_trim ran (glibc)
    assert trim_memory() is True


WEB_WITHOUT_TORCH = """
import json, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("the web tier imported torch")

sys.meta_path.insert(0, NoTorch())
import freestems.deploy.modal_app as module
from starlette.testclient import TestClient

module.in_container = lambda: True  # as in the web container: the description baked into the image
module.WEIGHTS_DIR = sys.argv[1]
# no Modal credentials here: this process's state (tests/test_scaleout.py)
module.stores.shared_state = lambda: None
with TestClient(module.web.local()) as client:
    health = client.get("/health").json()
print(json.dumps({"model": health["model"], "torch": "torch" in sys.modules}))
"""


def test_the_web_tier_starts_and_serves_without_importing_torch(checkpoint, tmp_path):
    """The web container runs in the same CUDA image, but a CPU-only web tier has no use for torch: its
    import (seconds, hundreds of MB) would be paid on every web cold start."""
    weights = tmp_path / "weights"
    weights.mkdir()
    description = {"name": "small", "sources": ["drums", "bass", "other", "vocals"], "fingerprint": "f" * 16}
    (weights / "model.json").write_text(json.dumps(description))
    environ = {name: value for name, value in os.environ.items() if not name.startswith("FREESTEMS_")}
    environ.update(modal_environment(checkpoint, tmp_path / "data"))
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])
    result = subprocess.run(
        [sys.executable, "-c", WEB_WITHOUT_TORCH, str(weights)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"model": "small", "torch": False}


@pytest.mark.parametrize("fmt", ["flac", "wav", "mp3"])
def test_the_zip_stores_the_stems_as_they_are(deployment, songs, fmt):
    data = deployment.Separator().separate.local(songs["short"].read_bytes(), {"format": fmt})
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        infos = bundle.infolist()
    assert len(infos) == 4 and {info.compress_type for info in infos} == {zipfile.ZIP_STORED}


# ------------------------------------------------------------------------------------ 7: per wake-up


def test_a_container_records_its_wake_up_when_it_scales_down(deployment, songs):
    separator = deployment.Separator()
    separator.separate.local(songs["short"].read_bytes(), {"two_stems": "vocals"})
    instance = separator._cached_user_cls_instance()
    instance.record_wake()  # what the @modal.exit hook runs when the container scales down
    (wake,) = deployment.usage.wakes
    (job,) = deployment.usage.records
    assert (wake.kind, wake.tier, wake.inputs) == ("wake", "L4", 1)
    assert wake.start_seconds == job.timings["container_start"] > 0
    assert wake.busy_seconds >= job.timings["busy_seconds"] and wake.idle_seconds >= 0
    life = wake.start_seconds + wake.busy_seconds + wake.idle_seconds
    assert wake.cost_usd == pytest.approx(life * L4_RATE, rel=0.01)
    assert wake.cost_usd > job.cost_usd  # the wake-up costs more than its one job: the start and idle


def test_the_cost_command_reads_jobs_and_wake_ups_from_modal(monkeypatch, capsys):
    """`freestems cost --modal` over the deployment's Dict (Modal's Dict is the one thing faked)."""
    from freestems.cli import main
    from freestems.cost import UsageRecord, WakeRecord

    job = UsageRecord("j1", 2.0, "scnet", "L4", 180.0, 9.0, 9.0 * L4_RATE, {"busy_seconds": 9.0})
    cpu = UsageRecord("j2", 3.0, "scnet", None, 180.0, None, 60.0 * CPU_RATE, {"busy_seconds": 60.0})
    wake = WakeRecord("ta-1", "L4", 4.0, 8.0, 9.0, 10.0, 1, 27.0 * L4_RATE)
    entries = [job.as_dict(), cpu.as_dict(), wake.as_dict(), "not a record"]
    names: list[str] = []

    class FakeDict:
        def items(self):
            return iter(enumerate(entries))

    class EmptyVolume:  # nothing rolled up yet
        def listdir(self, path):
            raise FileNotFoundError(path)

    def from_name(name, **kwargs):
        names.append(name)
        return FakeDict()

    monkeypatch.setattr(modal.Dict, "from_name", from_name)
    monkeypatch.setattr(modal.Volume, "from_name", lambda name, **kwargs: names.append(name) or EmptyVolume())
    assert main(["cost", "--modal"]) == 0
    out = capsys.readouterr().out
    assert names == ["freestems-usage", "freestems-data"]
    assert out.startswith("2 recorded job(s) in Modal app freestems; 2 on the tiers shown")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:6]}
    assert rows["L4"][:3] == ["L4", "1", "9.0"] and rows["CPU"][:3] == ["CPU", "1", "60.0"]
    spend = next(line for line in out.splitlines() if line.startswith("recorded spend"))
    total = 9.0 * L4_RATE + 60.0 * CPU_RATE
    assert f"2 job(s) ${total:.4f}" in spend and f"1 wake-up(s) ${27.0 * L4_RATE:.4f}" in spend
    assert "start 8 s and idle 10 s" in spend


def test_the_usage_log_outlives_modals_seven_days_on_the_data_volume(monkeypatch, tmp_path, capsys):
    """Modal drops a Dict entry after 7 days without a read or write: the web tier rolls the usage log up
    onto the data Volume, and `freestems cost --modal` reads both (one record per key)."""
    from modal_fakes import FakeDict, FakeVolume

    from freestems.cli import main
    from freestems.cost import UsageRecord, WakeRecord
    from freestems.deploy.stores import DictUsageLog, roll_up_usage

    usage, volume = FakeDict(), FakeVolume(tmp_path / "cloud")
    mount = volume.mount(tmp_path / "web")
    log = DictUsageLog(usage)
    log.record(UsageRecord("j1", 2.0, "scnet", "L4", 180.0, 9.0, 9.0 * L4_RATE, {"busy_seconds": 9.0}))
    log.record_wake(WakeRecord("ta-1", "L4", 4.0, 8.0, 9.0, 10.0, 1, 27.0 * L4_RATE))
    rolled = list(usage.items())
    assert roll_up_usage(usage, mount.path / "usage", mount.commit, "c1") == 2
    assert usage.len() == 0  # out of the Dict, into the Volume (committed first)
    for key, value in rolled[:1]:  # a second container rolled the same entry up at the same time
        usage.put(key, value)
    log.record(UsageRecord("j2", 3.0, "scnet", None, 180.0, None, 60.0 * CPU_RATE, {"busy_seconds": 60.0}))

    class CloudVolume:  # the Volume seen from the deployer's machine: its committed files, through the API
        def listdir(self, path):
            return [
                type("Entry", (), {"path": f"{path}/{file.name}"}) for file in (volume.cloud / path).iterdir()
            ]

        def read_file(self, path):
            yield (volume.cloud / path).read_bytes()

    monkeypatch.setattr(modal.Dict, "from_name", lambda name, **kwargs: usage)
    monkeypatch.setattr(modal.Volume, "from_name", lambda name, **kwargs: CloudVolume())
    assert main(["cost", "--modal"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 recorded job(s) in Modal app freestems")  # j1 once, though in both places
    spend = next(line for line in out.splitlines() if line.startswith("recorded spend"))
    assert "2 job(s)" in spend and "1 wake-up(s)" in spend
