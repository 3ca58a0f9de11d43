"""The licence rule of serving: a service's default is never a model whose weights' licence does not allow
serving them; an operator who names one is warned at start, not refused."""

from __future__ import annotations

import logging

import pytest

from freestems.cli import licence_note
from freestems.models import CATALOG, ModelChoiceError, ModelNotAvailable, catalog
from freestems.models.served import serve_models, unservable
from freestems.service import Settings

UNSERVABLE = "bs-roformer-viperx"  # licence: none stated


def test_the_default_is_servable_and_served_when_nothing_is_named():
    assert catalog.default_served_model() == catalog.DEFAULT_MODEL == "scnet"
    assert Settings.from_env({}).served_models == ("scnet",)


def test_a_default_that_is_not_servable_is_refused(monkeypatch):
    assert not CATALOG[UNSERVABLE].servable
    monkeypatch.setattr(catalog, "DEFAULT_MODEL", UNSERVABLE)
    with pytest.raises(ModelChoiceError, match=f"default model {UNSERVABLE} may not be served by default"):
        Settings.from_env({}).served_models  # noqa: B018 - the property decides
    named = Settings.from_env({"FREESTEMS_MODELS": f"{UNSERVABLE},scnet"})
    assert named.served_models == (UNSERVABLE, "scnet")  # named by the operator: allowed


def test_unservable_names_the_entries_behind_a_name_a_preset_or_an_ensemble():
    assert unservable("scnet") == [] and unservable("nonsense") == [] and unservable("a++") == []
    assert [info.name for info in unservable(UNSERVABLE)] == [UNSERVABLE]
    assert [info.name for info in unservable("ensemble-vocals-kim-ft")] == ["htdemucs_ft"]
    assert unservable("ensemble-vocals-kim-scnet") == []
    assert [info.name for info in unservable("mel-roformer-kim+htdemucs:2")] == ["htdemucs"]


def test_serving_a_named_unservable_model_warns_one_line_at_start(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="freestems.models.served")
    with pytest.raises(ModelNotAvailable):  # offline: the weights are not in this empty cache
        serve_models(["scnet", UNSERVABLE], cache_dir=tmp_path, download=False)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert UNSERVABLE in warnings[0] and "none stated" in warnings[0] and "operator named it" in warnings[0]
    caplog.clear()
    with pytest.raises(ModelNotAvailable):
        serve_models(["mel-roformer-kim+htdemucs"], cache_dir=tmp_path, download=False)
    (warning,) = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert "mel-roformer-kim+htdemucs (member htdemucs)" in warning


def test_the_command_line_notes_each_licence_that_does_not_allow_serving():
    assert licence_note("scnet") is None and licence_note(None) is None and licence_note("nonsense") is None
    assert licence_note("ensemble-vocals-kim-scnet") is None
    assert licence_note(UNSERVABLE) == (
        f'the weights of {UNSERVABLE} are published with the licence "{CATALOG[UNSERVABLE].license}"; '
        "you run them under that licence (not one that lets a service offer them)"
    )
    chain = licence_note("scnet>vocals:mel-roformer-kim+htdemucs")
    assert chain is not None and "\n" not in chain
    demucs = CATALOG["htdemucs"].license
    assert chain.startswith(f'the weights of htdemucs are published with the licence "{demucs}"')
    assert CATALOG["htdemucs"].license.startswith("research only")
