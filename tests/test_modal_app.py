"""The Modal deployment, offline: what it declares, its image's inputs, and its GPU class run in-process.

``modal`` builds app objects without credentials or network, and ``.local()`` runs a class's enter hooks
and methods in this process; the GPU class then runs on the CPU with a small seeded checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from audio_samples import write_test_file
from modal_helpers import declared
from model_helpers import make_small_checkpoint

from freestems.audio import decode
from freestems.deploy.image import bake_weights, image_environment, read_description, requirements
from freestems.deploy.web_tier import WEB_CPU, WEB_SCALEDOWN_WINDOW
from freestems.executors import describe
from freestems.jobrun import JobFailed, choose_precision, run_job
from freestems.models import load_model
from freestems.options import SeparationOptions
from freestems.service import SettingsError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("songs") / "song.mp3"
    write_test_file(path, "mp3", seconds=3.0)
    return path


def names_in(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        return sorted(bundle.namelist())


# ---------------------------------------------------------------------------------------------- declarations


def test_the_defaults_declare_a_snapshotted_l4_and_scaled_out_web_containers(deployment):
    module = deployment.module
    found = declared(module)
    assert found["gpu"] == {
        "gpu": "L4",
        "cpu": 4.0,
        "memory": 4096,
        "timeout": 900,
        "scaledown_window": 10,
        "max_containers": 1,  # the environment asked for 1
        "enable_memory_snapshot": True,
    }  # no region, no experimental options
    assert found["cpu"] == {  # the same class on CPU-only containers: no gpu at all
        "cpu": 2.0,
        "memory": 3072,
        "timeout": 900,
        "scaledown_window": 5,
        "max_containers": 20,
        "enable_memory_snapshot": True,
    }
    assert found["web"] == {
        "secrets": ["freestems"],
        "cpu": WEB_CPU,
        "memory": 1024,
        "max_containers": 10,  # any container serves any request: the state is shared
        "max_inputs": 500,
        "scaledown_window": WEB_SCALEDOWN_WINDOW,
        "timeout": 1800 + 60,  # above a socket's lifetime (and an upload and its job)
        "volumes": {"/data": "freestems-data"},  # uploads and results outlive every container
    }
    assert (
        module.GPU_CLASS_OPTIONS["image"] is module.image
        and module.CPU_CLASS_OPTIONS["image"] is module.image
    )
    assert module.WEB_FUNCTION_OPTIONS["image"] is module.image
    assert module.app.name == "freestems"


def test_the_module_declares_what_the_settings_say(tmp_path):
    """A fresh interpreter imports the module under other settings, as `modal deploy` would."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("FREESTEMS_")}
    environ.update(
        FREESTEMS_MODAL_APP_NAME="stems-test",
        FREESTEMS_MODAL_GPU="A10G",
        FREESTEMS_MODAL_GPU_SNAPSHOT="1",
        FREESTEMS_MODAL_SCALEDOWN_WINDOW="42",
        FREESTEMS_MODAL_MAX_CONTAINERS="3",
        FREESTEMS_MODAL_TIMEOUT="1200",
        FREESTEMS_MODAL_CPU="6",
        FREESTEMS_MODAL_REGION="us-east,us-west",
        FREESTEMS_MODAL_WEB_MAX_INPUTS="77",
        FREESTEMS_MODAL_WEB_MAX_CONTAINERS="4",
        FREESTEMS_SOCKET_LIFETIME="3000",
        FREESTEMS_MODAL_SECRET_NAME="stems-secret",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),  # this tree
    )
    script = (
        "import json, modal_helpers, freestems.deploy.modal_app as m\n"
        "print(json.dumps({'app': m.app.name, **modal_helpers.declared(m)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    gpu, web = found["gpu"], found["web"]
    assert found["app"] == "stems-test"
    assert gpu == {
        "gpu": "A10G",
        "cpu": 6.0,
        "memory": 4096,
        "timeout": 1200,
        "scaledown_window": 42,
        "max_containers": 3,
        "enable_memory_snapshot": True,
        "experimental_options": {"enable_gpu_snapshot": True},
        "region": ["us-east", "us-west"],
    }
    assert web["max_inputs"] == 77 and web["max_containers"] == 4
    assert web["timeout"] == 3000 + 60 and web["volumes"] == {"/data": "stems-test-data"}
    assert web["secrets"] == ["stems-secret"]


def test_the_image_gets_the_settings_but_no_secret_and_no_local_path(deployment, checkpoint):
    module = deployment.module
    environ = {
        "FREESTEMS_MAX_SHIFTS": "3",
        "FREESTEMS_HMAC_SECRET": "do not ship",
        "FREESTEMS_DATA_DIR": "/home/me/data",
        "FREESTEMS_PORT": "9000",
        "FREESTEMS_DEVICE": "cpu",
        "FREESTEMS_MODEL_FILE": str(checkpoint),
        "FREESTEMS_MODAL_GPU": "T4",
        "FREESTEMS_NOT_A_SETTING": "x",
        "HOME": "/home/me",
    }
    env = image_environment(environ, module.settings)
    assert env == {
        "FREESTEMS_CACHE": "/weights",
        "FREESTEMS_HOST": "0.0.0.0",
        "FREESTEMS_MAX_SHIFTS": "3",
        "FREESTEMS_MODAL_GPU": "T4",
        "FREESTEMS_MODEL_FILE": "/weights/small.pt",
    }
    # The deployment is a public server, whatever the deployer's host says: no keys needs saying so.
    assert module.settings.host == "0.0.0.0" and not module.settings.trust_proxy
    with pytest.raises(SettingsError, match="ALLOW_PUBLIC_NOAUTH"):
        module.serving_settings({"FREESTEMS_AUTH": "none"})


def test_the_image_installs_pinned_torch_and_the_package_dependencies(deployment):
    module = deployment.module
    pinned = requirements()
    names = {requirement.split(">")[0].split("=")[0] for requirement in pinned}
    assert {"numpy", "av", "lameenc", "fastapi", "uvicorn", "altcha"} <= names
    assert "torch" not in names and "pytest" not in names and "modal" not in names
    assert module.modal_settings.modal_torch.startswith("torch==")


@pytest.mark.usefixtures("deployment")  # torch on one thread, as in the deployment's other tests
def test_the_build_step_writes_the_description_the_web_tier_reads(checkpoint, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    bake_weights(None, str(checkpoint), None, str(weights))
    assert read_description(weights) == describe(load_model(model_file=checkpoint))
    assert read_description(tmp_path) is None


# ---------------------------------------------------------------------------------------------- the GPU class


def test_the_gpu_class_separates_an_mp3_into_the_zip_of_post_separate(deployment, song, tmp_path):
    separator = deployment.Separator()
    audio = song.read_bytes()
    options = {"two_stems": "vocals", "filename": "My Song.mp3", "progress": "0123456789abcdef-cafe"}
    data = separator.separate.local(audio, options)
    assert names_in(data) == ["no_vocals.mp3", "vocals.mp3"]
    length = decode(song).shape[1]
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        bundle.extractall(tmp_path / "stems")
    for name in ("vocals", "no_vocals"):
        assert decode(tmp_path / "stems" / f"{name}.mp3").shape == (2, length)

    events = deployment.channel.get("0123456789abcdef-cafe", 0)
    kinds = [event["type"] for event in events]
    assert kinds[0] == "started" and kinds[-1] == "timings" and "progress" in kinds
    started, timings = events[0], events[-1]["timings"]
    assert started["first_input"] and started["container_start"] > 0 and not started["restored"]
    assert timings["gpu_seconds"] > 0 and timings["separate"] > 0 and timings["encode"] > 0
    assert timings["audio_seconds"] == pytest.approx(3.0, abs=0.01)
    (record,) = deployment.usage.records
    assert record.job_id == "0123456789abcdef" and record.gpu == "L4" and record.model == "small"
    assert record.gpu_seconds == timings["gpu_seconds"]
    # Counted whole: the L4, the 4 cores and the 4 GiB the class reserves, for the call's busy seconds.
    assert timings["busy_seconds"] == timings["gpu_seconds"]
    rate = 0.000222 + 4 * 0.0000131 + 4 * 0.00000222
    assert record.cost_usd == timings["cost_usd"] == pytest.approx(record.gpu_seconds * rate)

    # A warm container: no start time any more. Four stems as 16-bit WAV, without a progress key.
    data = separator.separate.local(audio, {"mp3": False, "shifts": 2, "overlap": 0.5})
    assert names_in(data) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert len(deployment.usage.records) == 2 and deployment.usage.records[1].timings["container_start"] == 0


def test_the_gpu_class_refuses_what_post_separate_refuses(deployment, song, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the class makes its job folders
    separator = deployment.Separator()
    with pytest.raises(JobFailed) as refused:
        separator.separate.local(song.read_bytes(), {"two_stems": "guitar"})
    assert refused.value.code == "invalid_options" and "two_stems" in refused.value.message
    with pytest.raises(JobFailed) as refused:
        separator.separate.local(song.read_bytes(), {"two_stem": "vocals"})
    assert refused.value.code == "invalid_options" and "two_stem" in refused.value.message
    with pytest.raises(JobFailed) as refused:
        separator.separate.local(b"this is not audio" * 100, {"filename": "notes.mp3"})
    assert refused.value.code == "not_audio" and "notes.mp3" in refused.value.message
    with pytest.raises(JobFailed) as refused:
        separator.separate.local(song.read_bytes(), {"max_duration": 1})
    assert refused.value.code == "too_long"
    assert deployment.usage.records == []
    assert list(tmp_path.iterdir()) == []  # the warm-up's and every job's folders are gone


def test_half_precision_is_taken_only_where_the_output_stays_faithful(checkpoint):
    model = load_model(model_file=checkpoint)
    cpu = torch.device("cpu")
    assert choose_precision(model, cpu) == ("fp32", {})  # a CPU runs fp32
    assert choose_precision(model, cpu, "fp16") == ("fp16", {})  # an explicit choice is kept
    chosen, measured = choose_precision(model, cpu, candidates=("bf16",), threshold_db=float("-inf"))
    assert chosen == "bf16" and 10 < measured["bf16"] < 100  # bf16 keeps ~8 bits: a few tens of dB
    chosen, measured = choose_precision(model, cpu, candidates=("bf16",), threshold_db=measured["bf16"] + 1)
    assert chosen == "fp32" and set(measured) == {"bf16"}


def test_the_gpu_path_decodes_first_and_encodes_in_parallel_to_the_same_stems(tmp_path, song):
    """preload + parallel_encode (what the GPU class runs) change where the time goes, not the output;
    with a model that normalises the whole track, whose statistics then come from the one decoding pass."""
    model = load_model(model_file=make_small_checkpoint(tmp_path / "normalising.pt", normalize=True))
    outputs = {}
    for gpu_path in (False, True):
        archive = tmp_path / f"{gpu_path}.zip"
        result = run_job(
            song,
            archive,
            model,
            work_dir=tmp_path / f"work-{gpu_path}",
            options=SeparationOptions(two_stems="vocals", format="wav"),
            preload=gpu_path,
            parallel_encode=gpu_path,
        )
        assert result.audio_seconds == pytest.approx(3.0, abs=0.01) and result.timings["decode"] > 0
        with zipfile.ZipFile(archive) as bundle:
            outputs[gpu_path] = {name: bundle.read(name) for name in bundle.namelist()}
    assert sorted(outputs[True]) == ["no_vocals.wav", "vocals.wav"]
    assert outputs[True] == outputs[False]
    assert not (tmp_path / "work-True").exists() and not (tmp_path / "work-False").exists()
