"""BS-RoFormer with PoPE positions (MSST's "BS PolarFormer") equals the MSST reference, and so do its options.

The fixture was made with MSST's ``bs_roformer.py`` and PoPE-pytorch 0.2.1 (tests/fixtures/polarformer).
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from reference import POLARFORMER_FIXTURES

from freestems.models.roformer import BSRoformer, MelBandRoformer, roformer_from_msst
from freestems.models.roformer.attention import PolarEmbedding

TOLERANCE = 1e-4


def fixture_config() -> dict:
    return json.loads((POLARFORMER_FIXTURES / "bs_roformer_pope_config.json").read_text())


def fixture_state() -> dict:
    return torch.load(POLARFORMER_FIXTURES / "bs_roformer_pope_state.pt", weights_only=True)


@pytest.fixture(scope="module")
def polarformer():
    """(model with the fixture weights, reference input, reference output)."""
    model = BSRoformer(**fixture_config()).eval()
    model.load_state_dict(fixture_state(), strict=True)
    io = torch.load(POLARFORMER_FIXTURES / "bs_roformer_pope_io.pt", weights_only=True)
    return model, io["input"], io["output"]


def run(model, audio):
    with torch.no_grad():
        return model(audio)


def test_state_dict_has_exactly_our_keys_in_order(polarformer):
    model, _, _ = polarformer
    state = fixture_state()
    assert list(model.state_dict()) == list(state)
    assert all(model.state_dict()[key].shape == value.shape for key, value in state.items())
    assert "layers.0.0.layers.0.0.pope_embed.bias" in state  # the time stack's attention
    assert "layers.0.1.layers.0.0.pope_embed.inv_freqs" in state  # the frequency stack's
    assert not any("rotary" in key for key in state)


def test_matches_reference_output(polarformer):
    model, audio, expected = polarformer
    out = run(model, audio)
    assert out.shape == expected.shape == (1, 2, 2, audio.shape[-1])
    error = (out - expected).abs().max().item()
    assert error < TOLERANCE, f"max abs error {error}"


def test_changed_positions_change_the_output(polarformer):
    """The comparison can fail: rotary-style frequencies (dim / 2 of them, each used twice) or a key bias
    (zero in the fixture: PoPE's initial value) move the output well past the tolerance."""
    model, audio, expected = polarformer
    for key, change in (
        ("layers.0.0.layers.0.0.pope_embed.inv_freqs", lambda t: t[::2].repeat_interleave(2)),
        ("layers.0.1.layers.0.0.pope_embed.bias", lambda t: t - 0.5),
    ):
        state = fixture_state()
        state[key] = change(state[key])
        changed = BSRoformer(**fixture_config()).eval()
        changed.load_state_dict(state, strict=True)
        assert (run(changed, audio) - expected).abs().max().item() > 10 * TOLERANCE, key


def test_polar_scores_are_magnitudes_times_the_cosine_of_the_phase_difference():
    """q_i . k_j = sum_d softplus(q_id) softplus(k_jd) cos((i - j) f_d - b_hd), b clamped to [-2 pi, 0],
    f_d = 10000 ** (-d / dim): the formula of the PoPE paper and of PoPE-pytorch."""
    torch.manual_seed(0)
    heads, length, dim = 2, 5, 8
    pope = PolarEmbedding(dim=dim, heads=heads)
    with torch.no_grad():
        pope.bias.uniform_(-8.0, 1.0)  # beyond both ends of the clamp
    q, k = torch.randn(1, heads, length, dim), torch.randn(1, heads, length, dim)
    rq, rk = pope(q, k)
    assert rq.shape == rk.shape == (1, heads, length, 2 * dim)
    freqs = 10000.0 ** (-torch.arange(dim, dtype=torch.float64) / dim)
    assert torch.allclose(pope.inv_freqs.double(), freqs)
    bias = pope.bias.detach().double().clamp(-2 * math.pi, 0)
    distance = (torch.arange(length)[:, None] - torch.arange(length)[None, :]).double()
    phase = distance[None, :, :, None] * freqs - bias[:, None, None, :]  # (heads, i, j, dim)
    magnitudes = F.softplus(q.double())[0, :, :, None, :] * F.softplus(k.double())[0, :, None, :, :]
    expected = (magnitudes * phase.cos()).sum(-1)
    assert torch.allclose((rq @ rk.transpose(-1, -2))[0].double(), expected, atol=1e-4)


def test_mlp_expansion_factor_sets_the_mask_estimators_hidden_width():
    config = {**fixture_config(), "mask_estimator_depth": 2, "mlp_expansion_factor": 3}
    state = BSRoformer(**config).state_dict()
    assert state["mask_estimators.0.to_freqs.0.0.0.weight"].shape == (32 * 3, 32)  # dim 32 -> 96
    assert state["mask_estimators.0.to_freqs.0.0.2.weight"].shape == (2 * 32, 32 * 3)


def test_skip_connection_adds_every_earlier_layers_output():
    """MSST's ``skip_connection``: before layer i, the outputs of layers 0..i-1 are added to its input."""
    torch.manual_seed(1)
    config = {**fixture_config(), "depth": 3, "skip_connection": True}
    model = BSRoformer(**config).eval()
    plain = BSRoformer(**{**config, "skip_connection": False}).eval()
    plain.load_state_dict(model.state_dict(), strict=True)  # the option adds no weights
    x = torch.randn(1, 5, 30, 32)
    expected, outputs = x, []
    for stacks in model.layers:
        time_stack, freq_stack = stacks
        expected = expected + sum(outputs, torch.zeros_like(x))
        expected = time_stack(expected.transpose(1, 2).reshape(30, 5, 32)).view(1, 30, 5, 32).transpose(1, 2)
        expected = freq_stack(expected.reshape(5, 30, 32)).view(1, 5, 30, 32)
        outputs.append(expected)
    with torch.no_grad():
        assert torch.allclose(model._transform(x), expected, atol=1e-5)
        assert not torch.allclose(plain._transform(x), expected, atol=1e-3)
    audio = torch.randn(1, 2, 9000) * 0.1
    assert run(model, audio).shape == (1, 2, 2, 9000)


def test_mel_band_roformer_takes_pope_too():
    config = {"dim": 32, "depth": 1, "stereo": True, "num_bands": 8, "dim_head": 16, "heads": 2}
    model = MelBandRoformer(**config, use_pope=True).eval()
    keys = set(model.state_dict())
    assert "layers.0.0.layers.0.0.pope_embed.bias" in keys and not any("rotary" in key for key in keys)
    assert run(model, torch.randn(1, 2, 6000)).shape == (1, 1, 2, 6000)


def test_polarformer_yaml_is_a_bs_roformer():
    config = {
        "audio": {"chunk_size": 44100 * 2, "sample_rate": 44100},
        "model": fixture_config(),
        "training": {"instruments": ["vocals", "other"], "target_instrument": None},
    }
    module, facts = roformer_from_msst(config)
    assert isinstance(module, BSRoformer) and facts.architecture == "bs_roformer"
    assert facts.sources == ("vocals", "other") and facts.config["use_pope"] is True
    module.load_state_dict(fixture_state(), strict=True)
