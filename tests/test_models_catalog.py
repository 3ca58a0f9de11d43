"""The catalog of released checkpoints."""

import dataclasses
import json

import pytest
import torch
from model_helpers import SCNET_FIXTURES

from freestems.models import (
    CATALOG,
    DEFAULT_MODEL,
    ModelInfo,
    ModelNotAvailable,
    ModelSpec,
    build_model,
    get_model_info,
)
from freestems.models.catalog import RELEASES_URL
from freestems.models.loading import CONFIG_KEYS

NAMES = ["scnet", "scnet-large", "scnet-large-authors", "scnet-xl", "scnet-xl-ihf"]


def test_five_models_and_the_default_is_the_light_base():
    assert list(CATALOG) == NAMES
    assert DEFAULT_MODEL == "scnet"
    assert CATALOG[DEFAULT_MODEL].config["dims"] == [4, 32, 64, 128]
    assert min(CATALOG.values(), key=lambda info: info.relative_cost).name == DEFAULT_MODEL


def test_entries_are_complete_and_consistent():
    assert len({info.name for info in CATALOG.values()}) == len(CATALOG)
    assert len({info.filename for info in CATALOG.values()}) == len(CATALOG)
    for name, info in CATALOG.items():
        assert isinstance(info, ModelInfo)
        assert info.name == name
        assert info.architecture == "scnet"
        assert info.url.startswith(RELEASES_URL) and info.url.endswith(".ckpt")
        assert info.config_url.startswith(RELEASES_URL) and info.config_url.endswith(".yaml")
        assert info.url.rsplit("/", 2)[1] == info.config_url.rsplit("/", 2)[1]  # same release
        assert info.filename == info.url.rsplit("/", 1)[1]
        assert info.sources == ("drums", "bass", "other", "vocals")
        assert tuple(info.config["sources"]) == info.sources
        assert set(info.config) <= set(CONFIG_KEYS)
        assert info.sha256 is None and info.size is None  # unknown here: never invented
        assert info.license == "MIT"
        assert set(info.sdr) == {"avg", "bass", "drums", "vocals", "other"}
        assert info.sdr["avg"] == pytest.approx(
            sum(info.sdr[s] for s in ("bass", "drums", "vocals", "other")) / 4, abs=0.01
        )
        assert info.segment == 485_100
        assert info.relative_cost >= 1.0
        assert info.config["num_dplayer"] % 2 == 0


def test_release_table_details():
    assert get_model_info("scnet").url == RELEASES_URL + "v.1.0.6/scnet_checkpoint_musdb18.ckpt"
    assert get_model_info("scnet-xl-ihf").filename == "model_scnet_ep_36_sdr_10.0891.ckpt"
    flags = {name: (info.spec_norm, info.normalize) for name, info in CATALOG.items()}
    assert flags == {
        "scnet": (False, True),
        "scnet-large": (False, False),
        "scnet-large-authors": (True, True),
        "scnet-xl": (False, False),
        "scnet-xl-ihf": (False, False),
    }
    xl, ihf = CATALOG["scnet-xl"].config, CATALOG["scnet-xl-ihf"].config
    assert xl["num_dplayer"] == 8 and xl["band_SR"] == [0.230, 0.370, 0.400]
    assert {key: ihf[key] for key in ("band_stride", "band_kernel", "conv_depths")} == {
        "band_stride": [1, 4, 4],
        "band_kernel": [3, 4, 4],
        "conv_depths": [3, 3, 3],
    }
    assert CATALOG["scnet-large"].config == CATALOG["scnet-large-authors"].config


def test_entries_are_frozen_and_configs_not_shared():
    info = CATALOG["scnet-large"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "other"  # type: ignore[misc]
    assert info.config is not CATALOG["scnet-large-authors"].config


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ModelNotAvailable) as caught:
        get_model_info("scnet-huge")
    message = str(caught.value)
    assert "scnet-huge" in message and "\n" not in message
    assert all(name in message for name in NAMES)


def test_every_config_builds_and_sizes_are_ordered():
    counts = {}
    for name, info in CATALOG.items():
        with torch.device("meta"):  # shapes only: no memory for ~50M parameters
            module = build_model(ModelSpec.from_info(info))
        assert module.sources == list(info.sources)
        counts[name] = sum(parameter.numel() for parameter in module.parameters())
    assert counts["scnet"] == 10_578_768  # the published base model (fixtures/scnet/full_keys.json)
    assert counts["scnet-large"] == counts["scnet-large-authors"]
    assert counts["scnet"] < counts["scnet-large"] <= counts["scnet-xl"]
    assert counts["scnet-xl-ihf"] > counts["scnet-large"]
    costs = [CATALOG[name].relative_cost for name in NAMES]
    assert costs[0] < costs[1] <= costs[3] <= costs[4]


def test_base_config_matches_the_released_state_dict_layout():
    expected = json.loads((SCNET_FIXTURES / "full_keys.json").read_text())
    with torch.device("meta"):
        module = build_model(ModelSpec.from_info(CATALOG["scnet"]))
    assert [[key, list(value.shape)] for key, value in module.state_dict().items()] == expected
