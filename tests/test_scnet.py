"""SCNet equals the reference implementations (fixtures made with the authors' code and the MSST copy)."""

import json

import pytest
import torch
from model_helpers import small_config
from reference import SCNET_FIXTURES

from freestems.models.scnet import SCNet, band_splits


@pytest.mark.parametrize(
    ("spec_norm", "state_file", "io_file"),
    [(True, "small_state.pt", "small_io.pt"), (False, "msst_small_state.pt", "msst_small_io.pt")],
    ids=["official", "msst"],
)
def test_matches_reference_output(spec_norm, state_file, io_file):
    model = SCNet(**small_config(), spec_norm=spec_norm).eval()
    model.load_state_dict(torch.load(SCNET_FIXTURES / state_file, weights_only=True), strict=True)
    io = torch.load(SCNET_FIXTURES / io_file, weights_only=True)
    with torch.inference_mode():
        output = model(io["input"])
    assert output.shape == io["output"].shape
    assert (output - io["output"]).abs().max().item() < 1e-4


def test_spec_norm_switch_changes_output():
    """The two behaviours really differ, so the catalog's flag matters."""
    model = SCNet(**small_config(), spec_norm=True).eval()
    model.load_state_dict(torch.load(SCNET_FIXTURES / "small_state.pt", weights_only=True))
    io = torch.load(SCNET_FIXTURES / "msst_small_io.pt", weights_only=True)
    with torch.inference_mode():
        output = model(io["input"])
    assert (output - io["output"]).abs().max().item() > 1e-3


def test_release_config_state_dict_matches_keys_and_shapes():
    expected = json.loads((SCNET_FIXTURES / "full_keys.json").read_text())
    ours = [[key, list(value.shape)] for key, value in SCNet().state_dict().items()]
    assert ours == expected
    assert sum(p.numel() for p in SCNet().parameters()) == 10_578_768


@pytest.mark.parametrize("length", [1024, 4097, 44100, 50001])
def test_output_length_equals_input_length(length):
    torch.manual_seed(0)
    model = SCNet(**small_config()).eval()
    with torch.inference_mode():
        output = model(torch.randn(2, 2, length))
    assert output.shape == (2, 4, 2, length)
    assert torch.isfinite(output).all()


def test_rejects_too_short_input_and_odd_dplayer():
    model = SCNet(**small_config()).eval()
    with pytest.raises(ValueError, match="at least 1024 samples"):
        model(torch.zeros(1, 2, 1000))
    with pytest.raises(ValueError, match="even"):
        SCNet(**{**small_config(), "num_dplayer": 3})


def test_band_splits_of_the_base_config():
    assert band_splits(2049, [0.175, 0.392, 0.433]) == [(0, 359), (359, 1162), (1162, 2049)]
