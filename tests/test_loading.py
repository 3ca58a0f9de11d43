"""Loading checkpoints: wrappers, configs, the freestems format, catalog names and clear errors."""

import argparse
import json
import pickle
import shutil
import warnings

import pytest
import torch
from model_helpers import (
    SCNET_FIXTURES,
    SMALL_CONFIG,
    SMALL_STATE,
    make_small_checkpoint,
    serve_directory,
    small_config,
    small_spec,
)

from freestems.models import (
    CATALOG,
    CheckpointError,
    LoadedModel,
    ModelError,
    ModelInfo,
    ModelNotAvailable,
    build_model,
    load_model,
    read_msst_config,
    save_checkpoint,
)
from freestems.models.download import cache_path
from freestems.models.loading import extract_state_dict, fit_report, read_checkpoint

REFERENCE = torch.load(SMALL_STATE, map_location="cpu", weights_only=True)


def assert_reference_weights(model: LoadedModel, reference=REFERENCE):
    state = model.module.state_dict()
    assert list(state) == list(reference)
    for key, value in reference.items():
        assert torch.equal(state[key], value), key


def prefixed(state, prefix="module."):
    return {prefix + key: value for key, value in state.items()}


ZEROS = {key: torch.zeros_like(value) for key, value in REFERENCE.items()}
WRAPPERS = {
    "raw": REFERENCE,
    "best_state over state": {"state": ZEROS, "best_state": REFERENCE, "optimizer": {}, "epoch": 3},
    "state": {"state": REFERENCE, "best_state": None, "best_nsdr": 0.0, "epoch": 0},
    "state_dict": {"state_dict": REFERENCE, "epoch": 5},
    "model_state_dict": {"model_state_dict": REFERENCE, "optimizer_state_dict": {}},
    "module. prefix": prefixed(REFERENCE),
    "wrapped and prefixed": {"state_dict": prefixed(REFERENCE)},
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_every_wrapper_loads_strictly(tmp_path, wrapper):
    path = tmp_path / "weights.ckpt"
    torch.save(WRAPPERS[wrapper], path)
    model = load_model(model_file=path, model_config=SMALL_CONFIG)
    assert_reference_weights(model)
    assert model.name == "weights"
    assert not model.module.training


def test_reference_output_through_json_and_yaml_configs(tmp_path):
    """JSON configs follow SCNet's own default (spectrogram normalisation on, the authors' code); MSST YAML
    configs default to MSST's behaviour (off). Each must reproduce its reference output."""
    official = load_model(model_file=SCNET_FIXTURES / "small_state.pt", model_config=SMALL_CONFIG)
    msst = load_model(model_file=SCNET_FIXTURES / "msst_small_state.pt", model_config=write_yaml(tmp_path))
    for model, fixture in ((official, "small_io.pt"), (msst, "msst_small_io.pt")):
        io = torch.load(SCNET_FIXTURES / fixture, map_location="cpu", weights_only=True)
        with torch.no_grad():
            output = model.module(io["input"])
        assert (output - io["output"]).abs().max() < 1e-4


def test_extract_state_dict_rejects_what_is_not_one():
    with pytest.raises(CheckpointError, match="holds a list"):
        extract_state_dict([torch.zeros(1)])
    with pytest.raises(CheckpointError, match="empty"):
        extract_state_dict({})
    with pytest.raises(CheckpointError, match="found keys epoch, optimizer"):
        extract_state_dict({"epoch": 1, "optimizer": {}})
    assert list(extract_state_dict({"_orig_mod.module.a": torch.zeros(1)})) == ["a"]


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "not a PyTorch checkpoint"),
        (b"<html>404 page</html>" * 50, "not a PyTorch checkpoint"),
        ("truncated", "damaged/truncated"),
        ("object", "holds Python objects besides tensors (it contains argparse.Namespace)"),
    ],
)
def test_garbage_files_raise_checkpoint_error(tmp_path, content, expected):
    path = tmp_path / "bad.ckpt"
    if content == "truncated":
        torch.save(REFERENCE, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif content == "object":
        torch.save({"state_dict": REFERENCE, "args": argparse.Namespace(lr=0.1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        load_model(model_file=path, model_config=SMALL_CONFIG)
    message = str(caught.value)
    assert expected in message and str(path) in message
    assert "\n" not in message and "Traceback" not in message


def test_plain_pickle_is_not_executed(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


class Exploit:
    def __reduce__(self):
        return (open, ("pwned", "w"))


def test_missing_files_are_not_available(tmp_path):
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        load_model(model_file=tmp_path / "nope.ckpt", model_config=SMALL_CONFIG)
    with pytest.raises(ModelNotAvailable, match="config file .* does not exist"):
        load_model(model_file=SMALL_STATE, model_config=tmp_path / "nope.yaml")
    with pytest.raises(ModelNotAvailable, match="is a folder"):
        load_model(model_file=tmp_path, model_config=SMALL_CONFIG)


def test_wrong_config_says_what_the_file_needs(tmp_path):
    config = small_config()
    config["dims"] = [4, 8, 16, 32]
    config["num_dplayer"] = 4
    path = tmp_path / "other.json"
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as caught:
        load_model(model_file=SMALL_STATE, model_config=path)
    message = str(caught.value)
    assert str(SMALL_STATE) in message and "do not fit" in message
    assert "missing keys (separation_net.dp_modules.2." in message
    assert "shape mismatches" in message
    assert (
        "dims=[4, 8, 16, 24]" in message and "num_dplayer=2" in message and "conv_depths=[2, 1, 1]" in message
    )
    assert "\n" not in message


def test_misfit_report_names_a_matching_catalog_config():
    layout = json.loads((SCNET_FIXTURES / "full_keys.json").read_text())
    base_shaped = {key: torch.empty(shape, device="meta") for key, shape in layout}
    report = fit_report(build_model(small_spec()), base_shaped)
    assert "dims=[4, 32, 64, 128]" in report and "(the config of catalog model scnet)" in report
    report = fit_report(build_model(small_spec()), {"fc.weight": torch.zeros(2, 2)})
    assert "does not look like an SCNet checkpoint" in report


def write_yaml(tmp_path, model_extra="", sources=True, normalize="true"):
    config = small_config()
    lists = "\n".join(
        f"  {key}: [{', '.join(map(str, config[key]))}]"
        for key in ("dims", "band_SR", "band_stride", "band_kernel", "conv_depths")
    )
    text = f"""audio:
  chunk_size: 88200 # 44100 * 2
  num_channels: 2
  sample_rate: 44100
model:
{"  sources: [drums, bass, other, vocals]" if sources else ""}
  audio_channels: 2
{lists}
  nfft: 4096
  hop_size: 1024
  win_size: 4096
  normalized: True
  compress: 4
  conv_kernel: 3
  num_dplayer: 2
  expand: 1
{model_extra}
training:
  instruments:
    - drums
    - bass
    - other
    - vocals
augmentations:
  mixup_probs:
    !!python/tuple
    - 0.2
    - 0.02
inference:
  batch_size: 8
  num_overlap: 4
  normalize: {normalize}
"""
    path = tmp_path / "config_small.yaml"
    path.write_text(text)
    return path


def test_msst_yaml_parses_with_tuples_and_unknown_keys(tmp_path):
    path = write_yaml(tmp_path, model_extra="  use_flash: true\n  some_option: 3", sources=False)
    with pytest.warns(UserWarning, match="ignoring unknown model keys: some_option, use_flash"):
        spec = read_msst_config(path)
    assert spec.sources == ("drums", "bass", "other", "vocals")  # from training.instruments
    assert spec.config["sources"] == list(spec.sources)
    assert spec.config["dims"] == [4, 8, 16, 24] and spec.config["num_dplayer"] == 2
    assert "use_flash" not in spec.config
    assert spec.segment == 88200 and spec.normalize is True and spec.spec_norm is False
    assert spec.name == "config_small"


def test_msst_yaml_defaults(tmp_path):
    path = tmp_path / "minimal.yml"
    path.write_text("model:\n  dims: [4, 8, 16, 24]\n")
    spec = read_msst_config(path)
    assert spec.segment == 485100 and spec.normalize is False and spec.spec_norm is False
    assert spec.sources == ("drums", "bass", "other", "vocals")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model: [1, 2\n", "does not parse"),
        ("- just\n- a list\n", "does not hold a mapping"),
        ("audio:\n  chunk_size: 100\n", "has no 'model:' section"),
        ("model:\n  dims: [4, 8]\n  evil: !!python/object/apply:os.system [echo]\n", "does not parse"),
        ("model:\n  bandsplit_ratios: [.2, .4, .4]\n  n_rnn_layers: 6\n", "different SCNet port"),
        ("audio:\n  chunk_size: -5\nmodel:\n  dims: [4, 8]\n", "chunk_size must be a positive"),
    ],
)
def test_bad_yaml_configs(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=expected):
        read_msst_config(path)


def test_bad_json_config(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**small_config(), "dimz": [1]}))
    with pytest.raises(CheckpointError, match="unknown SCNet arguments dimz"):
        load_model(model_file=SMALL_STATE, model_config=path)
    path.write_text(json.dumps({**small_config(), "num_dplayer": 3}))
    with pytest.raises(CheckpointError, match="num_dplayer must be even"):
        load_model(model_file=SMALL_STATE, model_config=path)


def test_load_with_yaml_and_overrides(tmp_path):
    config = write_yaml(tmp_path)
    model = load_model(model_file=SMALL_STATE, model_config=config)
    assert_reference_weights(model)
    assert (model.segment, model.normalize, model.module.spec_norm) == (88200, True, False)
    assert model.sources == ("drums", "bass", "other", "vocals") and model.sample_rate == 44100
    model = load_model(model_file=SMALL_STATE, model_config=config, spec_norm=True, normalize=False)
    assert (model.normalize, model.module.spec_norm) == (False, True)


def test_freestems_checkpoint_carries_its_config(tmp_path):
    path = make_small_checkpoint(tmp_path / "tiny.ckpt", seed=3, normalize=True, segment=50_000)
    package = torch.load(path, map_location="cpu", weights_only=True)
    assert package["freestems"] == 1 and package["config"]["dims"] == [4, 8, 16, 24]
    model = load_model(model_file=path)
    assert (model.name, model.segment, model.normalize, model.module.spec_norm) == (
        "tiny",
        50_000,
        True,
        False,
    )
    assert_reference_weights(model, package["state_dict"])
    again = make_small_checkpoint(tmp_path / "again.ckpt", seed=3)
    assert_reference_weights(load_model(model_file=again), package["state_dict"])  # seeded: reproducible
    assert list(tmp_path.iterdir()) and not list(tmp_path.glob("*.part"))


def test_save_checkpoint_round_trip_keeps_sources_and_flags(tmp_path):
    spec = small_spec("custom")
    spec.sources = ("vocals", "drums", "bass", "other")
    spec.spec_norm = True
    module = build_model(spec)
    path = save_checkpoint(tmp_path / "sub" / "custom.ckpt", module, spec)
    model = load_model(model_file=path, normalize=True)
    assert model.sources == spec.sources and model.module.sources == list(spec.sources)
    assert model.module.spec_norm is True and model.normalize is True
    assert_reference_weights(model, module.state_dict())


def test_newer_freestems_format_is_refused(tmp_path):
    path = tmp_path / "future.ckpt"
    torch.save({"freestems": 99, "config": small_config(), "state_dict": REFERENCE}, path)
    with pytest.raises(CheckpointError, match="format 99; this freestems reads format 1"):
        load_model(model_file=path)


def test_bare_state_dict_needs_a_config(tmp_path):
    with pytest.raises(CheckpointError, match="does not say which model it is"):
        load_model(model_file=SMALL_STATE)
    with pytest.raises(ModelError, match="needs --model-file"):
        load_model(model_config=SMALL_CONFIG)


@pytest.fixture
def small_entry(monkeypatch):
    """Register a catalog entry for the small model; its URL points at a server set later by the test."""

    def register(url: str) -> ModelInfo:
        config = small_config()
        info = ModelInfo(
            name="small-test",
            title="small test model",
            architecture="scnet",
            config=config,
            sources=tuple(config["sources"]),
            url=url,
            config_url=url.replace(".ckpt", ".yaml"),
            normalize=True,
            segment=44100,
        )
        monkeypatch.setitem(CATALOG, info.name, info)
        return info

    return register


def test_catalog_name_with_the_file_already_in_the_cache(tmp_path, small_entry):
    info = small_entry("http://127.0.0.1:9/releases/small-test.ckpt")  # never contacted
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(SMALL_STATE, cache_path(info, cache))
    model = load_model("small-test", cache_dir=cache, download=False)
    assert_reference_weights(model)
    assert (model.name, model.segment, model.normalize) == ("small-test", 44100, True)
    assert model.module.spec_norm is False


def test_catalog_name_downloads_into_the_cache(tmp_path, small_entry):
    root = tmp_path / "www"
    root.mkdir()
    torch.save({"best_state": REFERENCE, "state": ZEROS}, root / "small-test.ckpt")
    cache = tmp_path / "cache"
    with serve_directory(root) as base_url:
        info = small_entry(f"{base_url}/small-test.ckpt")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model = load_model("small-test", cache_dir=cache, progress=False)
    assert_reference_weights(model)
    assert sorted(path.name for path in cache.iterdir()) == [info.filename, info.filename + ".sha256"]
    assert_reference_weights(load_model("small-test", cache_dir=cache, download=False))  # server gone
    torch.save({"best_state": ZEROS}, cache_path(info, cache))  # the file changes under the pin
    with pytest.raises(CheckpointError, match=r"has sha256 [0-9a-f]{64}, but the sha256 pinned in"):
        load_model("small-test", cache_dir=cache, download=False)


def test_catalog_model_missing_from_the_cache_without_download(tmp_path):
    with pytest.raises(ModelNotAvailable) as caught:
        load_model("scnet", cache_dir=tmp_path, download=False)
    message = str(caught.value)
    assert CATALOG["scnet"].url in message and str(tmp_path / "scnet_checkpoint_musdb18.ckpt") in message


def test_unknown_catalog_name(tmp_path):
    with pytest.raises(ModelNotAvailable, match="unknown model 'nope'; available: scnet, scnet-large"):
        load_model("nope", cache_dir=tmp_path)


def test_broken_cached_file_says_how_to_recover(tmp_path, small_entry):
    info = small_entry("http://127.0.0.1:9/small-test.ckpt")
    cache_path(info, tmp_path).write_bytes(b"partial garbage")
    with pytest.raises(CheckpointError) as caught:
        load_model("small-test", cache_dir=tmp_path, download=False)
    assert "not a PyTorch checkpoint" in str(caught.value)
    assert str(caught.value).endswith("(delete it to download it again)")


def test_catalog_config_with_a_local_file(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        load_model("scnet", model_file=SMALL_STATE)
    assert "dims=[4, 8, 16, 24]" in str(caught.value)
