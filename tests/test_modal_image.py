"""The Modal deployment's containers as they start, and the image they start from (issue 20): nothing before
a CPU memory snapshot asks CUDA anything, and every served model family's packages are in the image.

Modal's cloud is the one thing faked (``modal_helpers``).
"""

from __future__ import annotations

import pytest
import torch

from freestems.deploy.image import family_requirements, requirements
from freestems.models import CATALOG

CUDA_QUERIES = (
    "is_available",
    "device_count",
    "init",
    "_lazy_init",
    "current_device",
    "get_device_name",
    "get_device_properties",
    "empty_cache",
    "synchronize",
    "mem_get_info",
    "is_bf16_supported",
)
"""The ``torch.cuda`` functions that reach the driver (and, for the device count, fix it for the process)."""


class CudaTouched(AssertionError):
    """Something asked CUDA before the snapshot."""


@pytest.fixture
def cuda_forbidden(monkeypatch):
    """Every CUDA query raises :class:`CudaTouched` (a compiled CUDA build's own path to the driver too),
    until the test lifts it (``lift()``); returns the names asked meanwhile."""
    asked: list[str] = []
    forbidden = [True]

    def refuse(name, original):
        def call(*args, **kwargs):
            if forbidden[0]:
                asked.append(name)
                raise CudaTouched(f"torch.cuda.{name} was called before the snapshot")
            return original(*args, **kwargs) if original is not None else 0

        return call

    for name in CUDA_QUERIES:
        monkeypatch.setattr(torch.cuda, name, refuse(name, getattr(torch.cuda, name, None)), raising=False)
    # torch.cuda.is_available on a CUDA build goes through these; a module that kept its own reference to
    # is_available still lands here
    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", refuse("_cuda_getDeviceCount", None), raising=False)

    def lift() -> None:
        forbidden[0] = False
        monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: False)

    return asked, lift


def test_nothing_before_the_snapshot_asks_cuda_so_a_restored_container_finds_its_gpu(
    deployment, cuda_forbidden, monkeypatch
):
    asked, lift = cuda_forbidden
    module = deployment.module
    separator = module._SeparatorCode()  # the GPU class's code, its hooks called as Modal calls them
    separator.load()  # @modal.enter(snap=True): no GPU attached yet, so nothing may ask for one
    assert asked == []
    assert separator.device.type == "cpu" and separator.trimmed is True
    lift()  # the snapshot is taken and restored: the GPU is attached now
    queried = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: queried.append("is_available") or False)
    separator.ready()  # @modal.enter(snap=False): the first CUDA query is here, after the restore
    assert queried, "the restored container never asked for its GPU"


@pytest.mark.parametrize("family", sorted({info.architecture for info in CATALOG.values()}))
def test_every_served_family_has_its_packages_in_the_image(family):
    names = [name for name, info in CATALOG.items() if info.architecture == family]
    installed = {line.split("==")[0] for line in requirements(names)}
    for package in family_requirements([family]):
        assert package in installed, f"{family} needs {package}, which the image would not install"
    if family == "htdemucs":
        assert "demucs" in installed
    assert not {"onnx", "onnxscript", "onnxruntime"} & installed  # the export extra stays out


def test_the_image_installs_demucs_only_when_an_htdemucs_model_is_served():
    assert "demucs" not in {line.split("==")[0] for line in requirements(["scnet"])}
    ensembles = [info for info in CATALOG.values() if info.architecture == "ensemble"]
    ensemble = next(
        info.name
        for info in ensembles
        if any(CATALOG[member].architecture == "htdemucs" for member, _ in info.config["members"])
    )
    assert "demucs" in {line.split("==")[0] for line in requirements([ensemble])}


def test_a_wake_up_counts_the_restore_before_ready_from_the_spawn(deployment, songs):
    """Modal bills a container from its start; ready() runs after the snapshot's restore, so the wake-up is
    timed from the call's spawn (the web tier's clock) on the container's first input."""
    import time

    separator = deployment.Separator()
    spawned = time.time() - 5.0  # the restore (and scheduling) took 5 s before the input was taken
    separator.separate.local(songs["short"].read_bytes(), {"two_stems": "vocals"}, spawned_at=spawned)
    instance = separator._cached_user_cls_instance()
    (job,) = deployment.usage.records
    assert job.timings["wake_seconds"] >= 5.0 > job.timings["container_start"]
    instance.record_wake()
    (wake,) = deployment.usage.wakes
    assert wake.start_seconds == job.timings["wake_seconds"]
    separator.separate.local(songs["short"].read_bytes(), {"two_stems": "vocals"}, spawned_at=time.time())
    assert "wake_seconds" not in deployment.usage.records[-1].timings  # a warm container: no wake-up


@pytest.mark.usefixtures("deployment")  # torch on one thread, as in the deployment's other tests
def test_the_build_prints_records_and_checks_the_digest_of_what_it_bakes(checkpoint, tmp_path, capsys):
    """No catalog entry carries a sha256 or size today, so the build trusts its first download of a file:
    it prints each file's size and sha256, keeps them in the image's description, and a pin
    (FREESTEMS_MODAL_WEIGHTS_SHA256) makes a later build fail if the file published at the URL changed."""
    import hashlib
    import json

    from freestems.deploy.image import bake_arguments, bake_weights, parse_pins
    from freestems.service import Settings

    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    weights = tmp_path / "weights"
    weights.mkdir()
    bake_weights(None, str(checkpoint), None, str(weights))
    (baked,) = json.loads((weights / "model.json").read_text())["files"]
    assert baked == {"file": checkpoint.name, "size": checkpoint.stat().st_size, "sha256": digest,
                     "pinned": False}  # fmt: skip
    assert (
        f"weights {checkpoint.name}: {checkpoint.stat().st_size} bytes, sha256 {digest}"
        in capsys.readouterr().out
    )
    bake_weights(None, str(checkpoint), None, str(weights), pins=(f"{checkpoint.name}={digest}",))
    assert json.loads((weights / "model.json").read_text())["files"][0]["pinned"] is True
    with pytest.raises(RuntimeError, match="the file published at its URL changed"):
        bake_weights(None, str(checkpoint), None, str(weights), pins=(f"{checkpoint.name}={'0' * 64}",))
    with pytest.raises(ValueError, match="FILE=SHA256"):
        parse_pins(["scnet.ckpt=abc"])
    arguments = bake_arguments(Settings(), None, None, (f"a.ckpt={digest}",))
    assert arguments["pins"] == (f"a.ckpt={digest}",)  # part of the layer's hash: a new pin rebuilds it


def test_the_msst_configs_are_fetched_from_a_fixed_commit_not_a_moving_branch():
    from freestems.models.catalog import MSST_CONFIGS

    configs = [info.config_url for info in CATALOG.values() if info.config_url.startswith(MSST_CONFIGS)]
    assert configs and "/main/" not in MSST_CONFIGS
    assert MSST_CONFIGS.split("/")[-3] == "ea7eb9c20ea0e3f94368a30fc1654b51cdd55789"  # release v1.0.21


class RecordedImage:
    """A stand-in for ``modal.Image`` that records the recipe (each call, in order) instead of building."""

    def __init__(self, steps: list[tuple[str, tuple, dict]]) -> None:
        self.steps = steps

    @classmethod
    def debian_slim(cls, **options):
        return cls([("debian_slim", (), options)])

    def __getattr__(self, name):
        def step(*args, **options):
            return RecordedImage([*self.steps, (name, args, options)])

        return step


def recipe(
    monkeypatch, environ: dict[str, str] | None = None, **deploy: str
) -> list[tuple[str, tuple, dict]]:
    """The steps ``build_image`` takes for the service settings ``environ`` and the Modal ones ``deploy``
    (``FREESTEMS_MODAL_<KEY>``)."""
    import modal

    from freestems.deploy.image import build_image
    from freestems.deploy.settings import ModalSettings
    from freestems.service import Settings

    monkeypatch.setattr(modal, "Image", RecordedImage)
    environ = dict(environ or {})
    deployment = ModalSettings.from_env({f"FREESTEMS_MODAL_{k.upper()}": v for k, v in deploy.items()})
    return build_image(Settings.from_env(environ), deployment, environ).steps


def test_the_image_exports_the_served_scnet_models_for_the_browser_after_baking_their_weights(monkeypatch):
    from freestems.deploy.image import DEVICE_DIR, bake_device_exports, bake_weights, exporter_fingerprint

    environ = {"FREESTEMS_MODELS": "scnet,mel-roformer-kim", "FREESTEMS_DEVICE_DIR": "/home/me/exports"}
    steps = recipe(monkeypatch, environ)
    names = [name for name, _, _ in steps]
    assert names == ["debian_slim", "pip_install", "pip_install", "run_function", "pip_install",
                     "run_function", "env", "add_local_python_source"]  # fmt: skip
    (_, _, baked), (_, packages, _), (_, _, exported) = steps[3], steps[4], steps[5]
    assert baked["kwargs"]["model"] == "scnet"
    assert steps[3][1] == (bake_weights,) and steps[5][1] == (bake_device_exports,)
    installed = {package.split("==")[0] for package in packages}
    assert installed == {"onnx", "onnxscript", "onnxruntime"}  # the export extra, in a layer of its own
    assert all("==" in package for package in packages)  # pinned to what the deployer has
    kwargs = exported["kwargs"]
    assert kwargs["device_dir"] == DEVICE_DIR and kwargs["others"] == ("mel-roformer-kim",)
    assert kwargs["catalog"] == baked["kwargs"]["catalog"]  # a catalog change rebuilds the exports too
    assert kwargs["exporter"] == exporter_fingerprint() and len(kwargs["exporter"]) == 64
    assert exported["memory"] >= 8192
    (environment,) = steps[6][1]
    assert "FREESTEMS_DEVICE_DIR" not in environment  # the deployer's path means nothing in the image


@pytest.mark.parametrize(
    ("environ", "deploy"),
    [
        ({"FREESTEMS_MODEL": "mel-roformer-kim"}, {}),  # no family the browser runs
        ({"FREESTEMS_MODEL": "scnet"}, {"device_exports": "false"}),  # switched off
    ],
)
def test_no_export_layer_where_no_served_model_runs_in_the_browser(monkeypatch, environ, deploy):
    steps = recipe(monkeypatch, environ, **deploy)
    assert [name for name, _, _ in steps].count("run_function") == 1
    assert not any("onnx" in str(args) for _, args, _ in steps)


def test_the_web_tier_serves_the_exports_from_where_the_image_put_them():
    from pathlib import Path

    from freestems.deploy.image import DEVICE_DIR
    from freestems.deploy.settings import ModalSettings
    from freestems.deploy.web_tier import web_settings
    from freestems.service import Settings

    scnet, roformer = Settings.from_env({}), Settings.from_env({"FREESTEMS_MODEL": "mel-roformer-kim"})
    deployment = ModalSettings.from_env({})
    assert web_settings(scnet, deployment, in_container=True).device_dir == Path(DEVICE_DIR)
    assert web_settings(roformer, deployment, in_container=True).device_dir is None
    off = ModalSettings.from_env({"FREESTEMS_MODAL_DEVICE_EXPORTS": "false"})
    assert web_settings(scnet, off, in_container=True).device_dir is None
    assert web_settings(scnet, deployment, in_container=False).device_dir is None  # `modal serve` here


@pytest.mark.usefixtures("deployment")  # torch on one thread
def test_the_export_step_writes_each_served_model_where_the_web_tier_looks_for_it(
    checkpoint, tmp_path, capsys
):
    """The step as the build runs it, on the small checkpoint (a model file): its export lands in
    ``<device_dir>/<served name>/``, the name the web tier serves it under; a model of another family is
    skipped before anything is loaded (its weights are not there)."""
    import json

    from freestems.deploy.image import bake_device_exports
    from freestems.executors import describe
    from freestems.models import load_model

    served = describe(load_model(model_file=checkpoint)).name
    device_dir = tmp_path / "device"
    weights = tmp_path / "weights"
    weights.mkdir()
    bake_device_exports(
        None, str(checkpoint), None, str(weights), str(device_dir), others=("mel-roformer-kim",)
    )
    manifest = json.loads((device_dir / served / "manifest.json").read_text())
    files = {entry["file"]: entry for entry in manifest["onnx"]["files"]}
    assert "network.fp32.onnx" in files
    for name, entry in files.items():
        assert (device_dir / served / name).stat().st_size == entry["bytes"]
    printed = capsys.readouterr().out
    assert f"device export {served}: network.fp32.onnx {files['network.fp32.onnx']['bytes']} bytes" in printed
    assert "device export mel-roformer-kim: skipped, a mel_band_roformer model" in printed
    assert [path.name for path in device_dir.iterdir()] == [served]
