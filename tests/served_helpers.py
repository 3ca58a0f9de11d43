"""Small seeded stand-ins for catalog models of three families, for servers that serve several models.

``stand_in_catalog(folder)`` writes a small SCNet, a small Mel-Band RoFormer (one vocals stem, as Kim's) and a
small BS-RoFormer (four stems), serves them from 127.0.0.1, and yields catalog entries that are the real
``scnet``, ``mel-roformer-kim`` and ``bs-roformer-4stem`` entries (title, published SDR, relative time,
licence) with only what fetches and builds the network replaced: the URL, the config and the checksum. So a
server given these names downloads, pins, describes and loads them by the real code path, and the page
shows the real titles and numbers.

Two more stand in for the models of the page's jobs "Remove reverb" and "Clean up noise"
(:data:`JOB_STAND_INS`): ``bs-roformer-dereverb`` (a small one-stem BS-RoFormer whose stem is ``dry``, as
the real one's) and ``mel-roformer-denoise`` (a small one-stem Mel-Band RoFormer, stem ``dry``). They are in
the catalog for the ``with`` block too, but only a server that names them serves them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from model_helpers import make_small_checkpoint, serve_directory, small_config
from reference import ROFORMER_FIXTURES

from freestems.models import CATALOG, ModelInfo
from freestems.models.roformer import roformer_from_msst

SCNET, KIM, BS4 = "scnet", "mel-roformer-kim", "bs-roformer-4stem"
STAND_INS = (SCNET, KIM, BS4)
DEREVERB, DENOISE = "bs-roformer-dereverb", "mel-roformer-denoise"
JOB_STAND_INS = (DEREVERB, DENOISE)


def roformer_config(family: str, segment: int = 44_100, target: str | None = None) -> dict:
    """An MSST YAML (as a dict) of the small fixture config: Mel-Band with one vocals stem, BS with four;
    either with one stem ``target`` (and the rest, ``other``) when given."""
    model = json.loads((ROFORMER_FIXTURES / f"{family}_config.json").read_text())
    if target is not None:
        model = {**model, "num_stems": 1}
        training = {"instruments": [target, "other"], "target_instrument": target}
    elif family == "mel_band_roformer":
        training = {"instruments": ["vocals", "other"], "target_instrument": "vocals"}
    else:
        training = {"instruments": ["bass", "drums", "vocals", "other"]}
    return {"audio": {"chunk_size": segment, "sample_rate": 44100}, "model": model, "training": training}


def _save_roformer(path: Path, config: dict, seed: int) -> Path:
    torch.manual_seed(seed)
    module, _ = roformer_from_msst(config)
    torch.save(module.state_dict(), path)
    return path


def write_stand_ins(folder: Path) -> dict[str, tuple[Path, dict]]:
    """The five small weights files (and the configs their entries embed), by catalog name."""
    folder.mkdir(parents=True, exist_ok=True)
    kim = roformer_config("mel_band_roformer")
    bs4 = roformer_config("bs_roformer")
    dereverb = roformer_config("bs_roformer", target="dry")
    denoise = roformer_config("mel_band_roformer", target="dry")
    return {
        SCNET: (make_small_checkpoint(folder / "scnet_small.ckpt", seed=3), small_config()),
        KIM: (_save_roformer(folder / "kim_small.ckpt", kim, seed=4), kim),
        BS4: (_save_roformer(folder / "bs4_small.ckpt", bs4, seed=5), bs4),
        DEREVERB: (_save_roformer(folder / "dereverb_small.ckpt", dereverb, seed=6), dereverb),
        DENOISE: (_save_roformer(folder / "denoise_small.ckpt", denoise, seed=7), denoise),
    }


@contextlib.contextmanager
def stand_in_catalog(folder: Path) -> Iterator[dict[str, ModelInfo]]:
    """The real entries of :data:`STAND_INS` and :data:`JOB_STAND_INS`, pointing at small seeded files served
    from 127.0.0.1, put into the catalog for the ``with`` block (the server runs in this process, so it sees
    them)."""
    files = write_stand_ins(folder / "served")
    with serve_directory(folder / "served") as base, pytest.MonkeyPatch.context() as patch:
        entries = {}
        for name, (path, config) in files.items():
            info = dataclasses.replace(
                CATALOG[name],
                url=f"{base}/{path.name}",
                config=config,
                sha256=None,
                size=None,
                spec_norm=False,
                normalize=False,
                segment=88_200 if name == SCNET else 44_100,
            )
            patch.setitem(CATALOG, name, info)
            entries[name] = info
        yield entries


@contextlib.contextmanager
def page_server(folder: Path, models: tuple[str, ...]) -> Iterator[Any]:
    """A live page server of the stand-ins ``models`` (the first the default), with a real proof of work
    and room for long test songs: what the page tests that run several models share."""
    from conftest import one_torch_thread
    from service_helpers import running_server, small_settings

    from freestems.executors import LocalExecutor
    from freestems.models.served import serve_models
    from freestems.service.paths import Paths

    with stand_in_catalog(folder), one_torch_thread():
        settings = small_settings(
            folder / "data",
            models=models,
            pow_algorithm="PBKDF2/SHA-256",
            pow_cost=200,
            pow_counter=40,
            max_upload_mb=100.0,
            max_duration=1200.0,
        )
        executor = LocalExecutor(
            lambda: serve_models(settings.served_models, cache_dir=folder / "cache"),
            Paths(settings.data_dir).work,
        )
        with running_server(settings, executor) as server:
            yield server
