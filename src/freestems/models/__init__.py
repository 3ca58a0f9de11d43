"""Models: SCNet, the catalog of released checkpoints, the weights cache and loading.

Typical use::

    from freestems.models import load_model

    model = load_model("scnet")  # downloads to the cache on first use
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freestems.contract import LoadedModel, ModelSpec
from freestems.models.catalog import CATALOG, DEFAULT_MODEL, ModelInfo, check_model_choice, get_model_info
from freestems.models.errors import CheckpointError, ModelChoiceError, ModelError, ModelNotAvailable

if TYPE_CHECKING:
    from freestems.models.download import cached_file, default_cache_dir
    from freestems.models.loading import (
        build_model,
        ensure_weights,
        load_model,
        read_msst_config,
        save_checkpoint,
    )

_LAZY = {
    "cached_file": "download",
    "default_cache_dir": "download",
    "ensure_weights": "loading",
    "build_model": "loading",
    "load_model": "loading",
    "read_msst_config": "loading",
    "save_checkpoint": "loading",
}
"""Names imported on first use: loading a model needs torch, and the web tier, which reads the catalog
only, does not import it (see :mod:`freestems.rules`)."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"freestems.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'freestems.models' has no attribute {name!r}")


__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "CheckpointError",
    "LoadedModel",
    "ModelChoiceError",
    "ModelError",
    "ModelInfo",
    "ModelNotAvailable",
    "ModelSpec",
    "build_model",
    "cached_file",
    "check_model_choice",
    "default_cache_dir",
    "ensure_weights",
    "get_model_info",
    "load_model",
    "read_msst_config",
    "save_checkpoint",
]
