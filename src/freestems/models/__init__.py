"""Models: SCNet, the catalog of released checkpoints, the weights cache and loading.

Typical use::

    from freestems.models import load_model

    model = load_model("scnet")  # downloads to the cache on first use
"""

from freestems.models.catalog import CATALOG, DEFAULT_MODEL, ModelInfo, get_model_info
from freestems.models.download import cached_file, default_cache_dir, ensure_weights
from freestems.models.errors import CheckpointError, ModelChoiceError, ModelError, ModelNotAvailable
from freestems.models.loading import (
    LoadedModel,
    ModelSpec,
    build_model,
    check_model_choice,
    load_model,
    read_msst_config,
    save_checkpoint,
)

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
