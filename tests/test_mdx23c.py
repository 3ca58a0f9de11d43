"""MDX23C (TFC-TDF v3) equals the MSST reference, loads from a checkpoint and its YAML, runs in the engine.

The fixture was made with MSST's ``models/mdx23c_tfc_tdf_v3.py`` (tests/fixtures/mdx23c/README.md).
"""

import copy
import json
import warnings

import numpy as np
import pytest
import torch
import yaml
from model_helpers import serve_directory
from reference import MDX23C_FIXTURES

from freestems.engine import SeparationError, separate
from freestems.models import CATALOG, CheckpointError, ModelInfo, load_model
from freestems.models.loading import _yaml_family
from freestems.models.mdx23c import MDX23C, is_mdx23c, mdx23c_from_msst

TOLERANCE = 1e-4
CHUNK = 32256  # the fixture's audio.chunk_size: hop 512 * (64 frames - 1)


def fixture_yaml() -> dict:
    """The fixture's whole config, as MSST reads it from a YAML (audio, model and training sections)."""
    return json.loads((MDX23C_FIXTURES / "mdx23c_config.json").read_text())


def fixture_state() -> dict:
    return torch.load(MDX23C_FIXTURES / "mdx23c_state.pt", weights_only=True)


def changed(**sections) -> dict:
    """The fixture config with some settings changed: ``model={"norm": "BatchNorm"}``, ..."""
    config = copy.deepcopy(fixture_yaml())
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


@pytest.fixture(scope="module")
def mdx23c():
    """(model with the fixture weights, reference input, reference output)."""
    module, _ = mdx23c_from_msst(fixture_yaml())
    module.load_state_dict(fixture_state(), strict=True)
    io = torch.load(MDX23C_FIXTURES / "mdx23c_io.pt", weights_only=True)
    return module, io["input"], io["output"]


def run(model, audio):
    with torch.no_grad():
        return model(audio)


# --------------------------------------------------------------------------------------------- fidelity


def test_state_dict_has_exactly_the_reference_keys_in_order(mdx23c):
    model, _, _ = mdx23c
    state = fixture_state()
    assert list(model.state_dict()) == list(state)
    assert all(model.state_dict()[key].shape == value.shape for key, value in state.items())


def test_matches_reference_output(mdx23c):
    model, audio, expected = mdx23c
    out = run(model, audio)
    assert out.shape == expected.shape == (1, 2, 2, CHUNK)
    error = (out - expected).abs().max().item()
    assert error < TOLERANCE, f"max abs error {error}"


@pytest.mark.parametrize(
    "key", ["bottleneck_block.blocks.0.tdf.2.weight", "decoder_blocks.2.tfc_tdf.blocks.0.shortcut.weight"]
)
def test_a_changed_weight_changes_the_output(mdx23c, key):
    """The comparison can fail: noise of 5 % of one layer's spread moves the output past the tolerance (noise,
    not a scale: the norm after a TDF layer would undo a scale)."""
    _, audio, expected = mdx23c
    state = fixture_state()
    noise = torch.randn(state[key].shape, generator=torch.Generator().manual_seed(0))
    state[key] = state[key] + 0.05 * state[key].std() * noise
    model, _ = mdx23c_from_msst(fixture_yaml())
    model.load_state_dict(state, strict=True)
    assert (run(model, audio) - expected).abs().max().item() > 10 * TOLERANCE


def test_facts_of_the_config():
    model, facts = mdx23c_from_msst(fixture_yaml())
    assert isinstance(model, MDX23C) and not model.training
    assert facts.architecture == "mdx23c" and facts.sources == ("vocals", "other")
    assert (facts.segment, facts.max_segment, facts.normalize, facts.sample_rate) == (
        CHUNK,
        CHUNK,
        False,
        44100,
    )


def test_target_instrument_gives_one_stem():
    model, facts = mdx23c_from_msst(changed(training={"target_instrument": "vocals"}))
    assert facts.sources == ("vocals",)
    assert model.state_dict()["final_conv.2.weight"].shape[0] == 8  # 1 stem x 2 subbands x 2 channels x re/im
    assert run(model, torch.randn(1, 2, CHUNK) * 0.1).shape == (1, 1, 2, CHUNK)


def test_shorter_input_is_padded_with_silence_to_the_chunk(mdx23c):
    model, audio, _ = mdx23c
    short = audio[..., :20_000]
    padded = torch.nn.functional.pad(short, (0, CHUNK - 20_000))
    assert torch.equal(run(model, short), run(model, padded)[..., :20_000])


def test_longer_input_and_other_channel_counts_are_refused(mdx23c):
    model, audio, _ = mdx23c
    with pytest.raises(ValueError, match=f"at most {CHUNK} samples"):
        run(model, torch.cat([audio, audio], dim=-1))
    with pytest.raises(ValueError, match="2 audio channels"):
        run(model, audio[:, :1])


def test_batch_items_are_separated_independently(mdx23c):
    model, audio, expected = mdx23c
    other = torch.flip(audio, dims=[-1]) * 0.5
    out = run(model, torch.cat([audio, other]))
    assert (out[:1] - expected).abs().max().item() < TOLERANCE
    assert (out[1:] - run(model, other)).abs().max().item() < 1e-5


# ------------------------------------------------------------------------------------- norms, activations


@pytest.mark.parametrize(
    ("norm", "kind", "norm_keys"),
    [
        (
            "BatchNorm",
            torch.nn.BatchNorm2d,
            {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"},
        ),
        ("InstanceNorm", torch.nn.InstanceNorm2d, {"weight", "bias"}),
        ("GroupNorm4", torch.nn.GroupNorm, {"weight", "bias"}),
        ("none", torch.nn.Identity, set()),
    ],
)
def test_norm_variants(norm, kind, norm_keys):
    model, _ = mdx23c_from_msst(changed(model={"norm": norm}))
    first = model.encoder_blocks[0].tfc_tdf.blocks[0].tfc1[0]  # (norm, activation, conv)
    assert type(first) is kind
    prefix = "encoder_blocks.0.tfc_tdf.blocks.0.tfc1.0."
    assert {key[len(prefix) :] for key in model.state_dict() if key.startswith(prefix)} == norm_keys
    if norm == "GroupNorm4":
        assert first.num_groups == 4
    if norm == "InstanceNorm":
        assert first.affine
    assert run(model, torch.randn(1, 2, CHUNK) * 0.1).shape == (1, 2, 2, CHUNK)


@pytest.mark.parametrize(
    ("act", "kind"), [("gelu", torch.nn.GELU), ("relu", torch.nn.ReLU), ("elu0.5", torch.nn.ELU)]
)
def test_activation_variants(act, kind):
    model, _ = mdx23c_from_msst(changed(model={"act": act}))
    activations = [module for module in model.modules() if isinstance(module, kind)]
    assert activations and not any(
        isinstance(module, (torch.nn.GELU, torch.nn.ReLU, torch.nn.ELU)) and not isinstance(module, kind)
        for module in model.modules()
    )
    if act == "elu0.5":
        assert all(module.alpha == 0.5 for module in activations)
    model.load_state_dict(fixture_state(), strict=True)  # an activation has no weights
    assert run(model, torch.randn(1, 2, CHUNK) * 0.1).shape == (1, 2, 2, CHUNK)


# -------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"model": {"act": "swish"}}, "unknown activation 'swish'"),
        ({"audio": {"chunk_size": 32000}}, "not a multiple of 8"),
        ({"audio": {"dim_f": 1000}}, "subbands"),
        ({"audio": {"num_channels": 1}}, "stereo"),
        ({"audio": {"sample_rate": 48000}}, "44100"),
        ({"model": {"scale": [2]}}, "scale"),
        ({"training": {"instruments": None, "target_instrument": None}}, "instruments"),
    ],
)
def test_unusable_configs_raise_checkpoint_errors(sections, message):
    with pytest.raises(CheckpointError, match=message):
        mdx23c_from_msst(changed(**sections))


def test_missing_settings_are_named():
    config = fixture_yaml()
    del config["model"]["num_scales"], config["audio"]["hop_length"]
    with pytest.raises(CheckpointError, match="needs audio.hop_length, model.num_scales"):
        mdx23c_from_msst(config)


def test_unknown_model_keys_are_ignored_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mdx23c_from_msst(changed(model={"stht": True}))
    assert any("stht" in str(warning.message) for warning in caught)


def test_the_yaml_tells_mdx23c_from_the_other_families():
    assert is_mdx23c(fixture_yaml()["model"]) and _yaml_family(fixture_yaml()) == "mdx23c"
    roformer = {"model": {"dim": 8, "depth": 1, "freqs_per_bands": [512, 513]}}
    scnet = {"model": {"dims": [4, 32], "band_SR": [0.2, 0.4, 0.4]}}
    assert (_yaml_family(roformer), _yaml_family(scnet)) == ("bs_roformer", "scnet")


# ------------------------------------------------------------------------------------ loading, engine


def save_mdx23c(folder, name: str, config: dict | None = None, state: dict | None = None):
    """A checkpoint as MSST saves it (a bare state_dict) and its YAML beside it."""
    weights, config_path = folder / f"{name}.ckpt", folder / f"{name}.yaml"
    torch.save(state if state is not None else fixture_state(), weights)
    config_path.write_text(yaml.safe_dump(config or fixture_yaml()))
    return weights, config_path


def noise(samples: int) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((2, samples)) * 0.1).astype(np.float32)


def test_checkpoint_and_yaml_load_and_separate(tmp_path):
    weights, config = save_mdx23c(tmp_path, "mine")
    loaded = load_model(model_file=weights, model_config=config)
    assert (loaded.name, loaded.sources) == ("mine", ("vocals", "other"))
    assert (loaded.segment, loaded.max_segment, loaded.chunk_tail, loaded.normalize) == (
        CHUNK,
        CHUNK,
        "zeros",
        False,
    )
    for key, value in fixture_state().items():
        assert torch.equal(loaded.module.state_dict()[key], value)
    for length in (44_100 + 123, 9_000):  # several chunks and a last one padded; less than one chunk
        stems = separate(noise(length), loaded, overlap=0.25)
        assert list(stems) == ["vocals", "other"]
        assert all(audio.shape == (2, length) and audio.dtype == np.float32 for audio in stems.values())
        assert all(np.isfinite(audio).all() for audio in stems.values())
    with pytest.raises(SeparationError, match=f"at most {CHUNK} samples"):
        separate(noise(44_100), loaded, segment=CHUNK + 512)


def test_weights_under_another_config_are_refused(tmp_path):
    weights, _ = save_mdx23c(tmp_path, "mine")
    _, other = save_mdx23c(tmp_path, "other", changed(model={"growth": 16}))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(model_file=weights, model_config=other)


def register(monkeypatch, **fields) -> ModelInfo:
    defaults = dict(
        title="tiny",
        architecture="mdx23c",
        sources=("vocals", "other"),
        config_url="",
        sdr={"vocals": 1.0},
        sdr_set="Multisong",
        license="none stated",
        segment=CHUNK,
    )
    info = ModelInfo(**{**defaults, **fields})
    monkeypatch.setitem(CATALOG, info.name, info)
    return info


def test_a_catalog_entry_downloads_its_yaml_beside_the_weights(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    save_mdx23c(served, "drums")
    cache = tmp_path / "cache"
    with serve_directory(served) as base:
        register(
            monkeypatch, name="tiny-mdx", config={}, url=f"{base}/drums.ckpt", config_url=f"{base}/drums.yaml"
        )
        loaded = load_model("tiny-mdx", cache_dir=cache, progress=False)
    assert sorted(path.name for path in cache.iterdir() if not path.name.endswith(".sha256")) == [
        "drums.ckpt",
        "drums.yaml",
    ]
    assert loaded.sources == ("vocals", "other") and loaded.max_segment == CHUNK
    again = load_model("tiny-mdx", cache_dir=cache, download=False)  # from the cache, the server gone
    assert again.segment == CHUNK


def test_a_catalog_entry_with_its_config_checks_a_fresh_download(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    save_mdx23c(served, "good")
    state = fixture_state()
    del state["final_conv.2.weight"]
    save_mdx23c(served, "bad", state=state)
    with serve_directory(served) as base:
        register(monkeypatch, name="tiny-good", config=fixture_yaml(), url=f"{base}/good.ckpt")
        register(monkeypatch, name="tiny-bad", config=fixture_yaml(), url=f"{base}/bad.ckpt")
        assert load_model("tiny-good", cache_dir=tmp_path / "cache", progress=False).segment == CHUNK
        with pytest.raises(CheckpointError, match="missing keys.*final_conv.2.weight"):
            load_model("tiny-bad", cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / "bad.ckpt").exists()  # refused before it entered the cache


def test_a_published_config_that_does_not_build_is_refused(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    save_mdx23c(served, "odd", changed(audio={"chunk_size": 32000}))
    with serve_directory(served) as base:
        register(
            monkeypatch, name="tiny-odd", config={}, url=f"{base}/odd.ckpt", config_url=f"{base}/odd.yaml"
        )
        with pytest.raises(CheckpointError, match="not a multiple of 8"):
            load_model("tiny-odd", cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / "odd.yaml").exists()
