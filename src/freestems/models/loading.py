"""Turn a catalog name or a checkpoint file into a ready-to-run model.

Three ways in (see :func:`load_model`):

* a catalog name: the weights come from the cache (downloaded on first use), the config from the catalog;
* a checkpoint file plus its config: an MSST YAML (``model:``, ``audio:``, ``inference:`` sections: its model
  keys tell SCNet, BS-RoFormer, Mel-Band RoFormer and MDX23C apart) or a JSON of
  :class:`~freestems.models.scnet.SCNet` constructor arguments;
* a freestems checkpoint, which carries its own config (:func:`save_checkpoint` writes one)::

    {"freestems": 1, "name": str, "config": {SCNet kwargs}, "spec_norm": bool, "normalize": bool,
     "segment": int, "state_dict": {key: tensor}}

Weights always load with ``strict=True``; a file that does not fit gets a :class:`CheckpointError` that says
what the file seems to need instead of a torch traceback.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import nn

from freestems.contract import SEGMENT, SOURCES, LoadedModel, ModelSpec
from freestems.errors import one_line
from freestems.files import atomic_path
from freestems.models.catalog import (  # check_model_choice: re-exported (it moved to the catalog)
    CATALOG,
    DEFAULT_MODEL,
    MSST_FAMILIES,
    ModelInfo,
    check_model_choice,
    get_model_info,
)
from freestems.models.errors import CheckpointError, ModelChoiceError, ModelNotAvailable
from freestems.models.msst import MsstFacts
from freestems.models.scnet import SCNet

if TYPE_CHECKING:
    from freestems.models.spelling import ChainSpec

FORMAT_VERSION = 1
"""Version of the freestems checkpoint format written by :func:`save_checkpoint`."""

CONFIG_KEYS = tuple(
    name for name in inspect.signature(SCNet.__init__).parameters if name not in ("self", "spec_norm")
)
"""The SCNet constructor arguments a config may set (``spec_norm`` is carried separately)."""

# Keys of the older, unrelated "SCNet-PyTorch" port MSST once shipped (models/scnet_unofficial): its weights
# have a different module tree, so its configs are refused instead of silently building the wrong network.
_UNOFFICIAL_KEYS = {
    "bandsplit_ratios",
    "downsample_strides",
    "n_conv_modules",
    "n_rnn_layers",
    "rnn_hidden_dim",
}

# Wrappers around a state_dict, in order of preference. The official SCNet trainer saves both ``state`` (last
# epoch) and ``best_state`` (best validation): the released models are the best state.
_WRAPPER_KEYS = ("best_state", "state", "state_dict", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / DataParallel, torch.compile


# --------------------------------------------------------------------------------------------- checkpoints


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Load a checkpoint file onto the CPU with ``weights_only=True``.

    Raises :class:`ModelNotAvailable` when the file is missing and :class:`CheckpointError` when it is not a
    PyTorch checkpoint or holds more than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ModelNotAvailable(f"model file {path} {what}")
    try:
        with warnings.catch_warnings():  # torch's note about pickle protocols of non-torch pickles is noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Deliberately no retry with weights_only=False: unpickling arbitrary objects runs arbitrary code, and
        # checkpoints reach us from downloads and from users of the web service. Official SCNet training and
        # MSST save only tensors, numbers, strings and containers, which load fine with weights_only=True; a
        # file that needs more is either unusual or hostile, and a trusting user can convert it in one line.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found is None:  # not a pickle at all, or a damaged one
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (cannot unpickle it)") from None
        raise CheckpointError(
            f"{path} holds Python objects besides tensors (it contains {found.group(1)}); "
            "freestems only loads plain checkpoints. "
            'If you trust the file, re-save its weights: python -c "import torch; '
            f"torch.save(torch.load('{path}', weights_only=False)['state_dict'], 'plain.ckpt')\" "
            "(use the key that holds the weights)"
        ) from None
    except PermissionError as error:
        raise ModelNotAvailable(f"cannot read model file {path}: {one_line(error)}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, pickle.PickleError) as error:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint or is damaged/truncated ({one_line(error)})"
        ) from None


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The state_dict inside a loaded checkpoint, with ``module.`` prefixes removed.

    Accepts a raw state_dict, or a dict wrapping it in ``best_state`` (preferred), ``state``, ``state_dict``
    or ``model_state_dict``.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state_dict")
    if not obj:
        raise CheckpointError("checkpoint is empty")
    state = obj if _is_state_dict(obj) else None
    if state is None:
        for key in _WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                state = obj[key]
                break
    if state is None:
        keys = ", ".join(str(key) for key in list(obj)[:8])
        raise CheckpointError(
            f"checkpoint has no state_dict: expected tensors or one of {', '.join(_WRAPPER_KEYS)}; "
            f"found keys {keys}"
        )
    result = {}
    for key, value in state.items():
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        result[name] = value
    return result


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in value.items())
    )


def save_checkpoint(path: str | os.PathLike[str], module: nn.Module, spec: ModelSpec) -> Path:
    """Write ``module``'s weights and ``spec`` as a self-describing freestems checkpoint (atomically)."""
    path = Path(path)
    package = {
        "freestems": FORMAT_VERSION,
        "name": spec.name,
        "config": _plain({**spec.config, "sources": list(spec.sources)}),
        "spec_norm": bool(spec.spec_norm),
        "normalize": bool(spec.normalize),
        "segment": int(spec.segment),
        "state_dict": {key: value.detach().cpu() for key, value in module.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        torch.save(package, temp)
    return path


def _spec_from_package(package: Mapping[str, Any], path: Path) -> ModelSpec:
    version = package.get("freestems")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is a freestems checkpoint of format {version!r}; this freestems reads format "
            f"{FORMAT_VERSION} (upgrade freestems)"
        )
    config = package.get("config")
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{path} is a freestems checkpoint without a 'config' dict")
    config = _check_config_keys(dict(config), str(path))
    return ModelSpec(
        name=str(package.get("name") or path.stem),
        config=config,
        sources=tuple(config.get("sources", SOURCES)),
        spec_norm=bool(package.get("spec_norm", False)),
        normalize=bool(package.get("normalize", False)),
        segment=_positive_int(package.get("segment", SEGMENT), "segment", path),
    )


# ------------------------------------------------------------------------------------------------- configs


class _MsstLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no type hints (no types-PyYAML here)
    """A safe YAML loader that also accepts ``!!python/tuple`` (found in MSST configs) as a tuple."""


_MsstLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


def read_msst_config(path: str | os.PathLike[str]) -> ModelSpec:
    """Parse an MSST YAML config.

    ``model:`` gives the SCNet arguments (unknown keys are ignored with a warning), ``training.instruments``
    the sources when ``model.sources`` is absent, ``audio.chunk_size`` the segment (default 485100) and
    ``inference.normalize`` whole-track normalisation (default False). ``spec_norm`` is False: MSST's SCNet
    does not normalise the spectrogram (the caller may override it).
    """
    path = Path(path)
    data = _read_config_file(path, lambda text: yaml.load(text, Loader=_MsstLoader))
    model = data.get("model")
    if not isinstance(model, Mapping):
        raise CheckpointError(f"config {path} has no 'model:' section")
    unofficial = sorted(_UNOFFICIAL_KEYS & set(model))
    if unofficial:
        raise CheckpointError(
            f"config {path} is for a different SCNet port (keys {', '.join(unofficial)}), "
            "not the official architecture freestems runs"
        )
    unknown = sorted(str(key) for key in model if key not in CONFIG_KEYS)
    if unknown:
        warnings.warn(f"config {path.name}: ignoring unknown model keys: {', '.join(unknown)}", stacklevel=2)
    config = _plain({key: value for key, value in model.items() if key in CONFIG_KEYS})
    sections = {}
    for section in ("training", "audio", "inference"):
        value = data.get(section)
        sections[section] = value if isinstance(value, Mapping) else {}
    sources = config.get("sources") or sections["training"].get("instruments") or list(SOURCES)
    if not isinstance(sources, list | tuple) or not all(isinstance(name, str) for name in sources):
        raise CheckpointError(f"config {path}: sources must be a list of names, got {sources!r}")
    config["sources"] = list(sources)
    return ModelSpec(
        name=path.stem,
        config=config,
        sources=tuple(sources),
        spec_norm=False,
        normalize=bool(sections["inference"].get("normalize", False)),
        segment=_positive_int(sections["audio"].get("chunk_size", SEGMENT), "audio.chunk_size", path),
    )


def read_json_config(path: str | os.PathLike[str]) -> ModelSpec:
    """Parse a JSON of SCNet constructor arguments (like the reference fixtures' ``small_config.json``).

    Besides constructor arguments it may hold ``spec_norm`` (default True, SCNet's own default: the
    reference constructor is the authors' code), ``normalize`` (default False) and ``segment``.
    """
    path = Path(path)
    data = dict(_read_config_file(path, json.loads))
    extras = {key: data.pop(key) for key in ("spec_norm", "normalize", "segment", "name") if key in data}
    config = _check_config_keys(data, f"config {path}")
    return ModelSpec(
        name=str(extras.get("name") or path.stem),
        config=config,
        sources=tuple(config.get("sources", SOURCES)),
        spec_norm=bool(extras.get("spec_norm", True)),
        normalize=bool(extras.get("normalize", False)),
        segment=_positive_int(extras.get("segment", SEGMENT), "segment", path),
    )


def read_config(path: str | os.PathLike[str]) -> ModelSpec:
    """A config file by extension: ``.json`` is a JSON of constructor arguments, anything else MSST YAML."""
    path = Path(path)
    return read_json_config(path) if path.suffix.lower() == ".json" else read_msst_config(path)


def _read_config_file(path: Path, parse: Callable[[str], Any]) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelNotAvailable(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"cannot read config file {path}: {one_line(error)}") from None
    try:
        data = parse(text)
    except (yaml.YAMLError, ValueError) as error:
        raise CheckpointError(f"config file {path} does not parse: {one_line(error)}") from None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"config file {path} does not hold a mapping of settings")
    return data


def _check_config_keys(config: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(str(key) for key in config if key not in CONFIG_KEYS)
    if unknown:
        raise CheckpointError(
            f"{where}: unknown SCNet arguments {', '.join(unknown)} (valid: {', '.join(CONFIG_KEYS)})"
        )
    plain: dict[str, Any] = _plain(config)
    return plain


def _positive_int(value: Any, what: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{path}: {what} must be a positive number of samples, got {value!r}")
    return value


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so configs compare and serialise the same whatever their origin."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def catalog_spec(info: ModelInfo) -> ModelSpec:
    """The spec of a catalog SCNet entry."""
    return ModelSpec(
        name=info.name,
        config=_plain(dict(info.config)),
        sources=tuple(info.sources),
        spec_norm=info.spec_norm,
        normalize=info.normalize,
        segment=info.segment,
    )


# ------------------------------------------------------------------------------------------------ building


def build_model(spec: ModelSpec) -> SCNet:
    """An SCNet for ``spec`` with fresh weights in eval mode; bad arguments raise :class:`CheckpointError`."""
    config = {**spec.config, "sources": list(spec.sources)}
    _check_config_keys(config, f"model {spec.name}")
    if int(config.get("num_dplayer", 6)) % 2:
        raise CheckpointError(f"model {spec.name}: num_dplayer must be even, got {config['num_dplayer']}")
    try:
        module = SCNet(**config, spec_norm=bool(spec.spec_norm))
    except (TypeError, ValueError, IndexError, ZeroDivisionError, RuntimeError) as error:
        raise CheckpointError(f"model {spec.name}: invalid SCNet config ({one_line(error)})") from None
    return module.eval()


def fit_report(module: nn.Module, state: Mapping[str, torch.Tensor], scnet: bool = True) -> str | None:
    """None when ``state`` loads into ``module`` strictly; otherwise what differs (and, for an SCNet, which
    config the file seems to need)."""
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [key for key in expected if key in found and expected[key] != found[key]]
    if not (missing or unexpected or reshaped):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if reshaped:
        shown = "; ".join(
            f"{key}: file {list(found[key])} vs model {list(expected[key])}" for key in reshaped[:2]
        )
        parts.append(f"{len(reshaped)} shape mismatches ({shown}{'; ...' if len(reshaped) > 2 else ''})")
    text = "the weights do not fit the config: " + ", ".join(parts)
    if not scnet:
        return text
    inferred = infer_config(state)
    if inferred:
        text += "; the file looks like " + ", ".join(f"{key}={value}" for key, value in inferred.items())
        matches = _catalog_matches(inferred)
        if matches:
            text += f" (the config of catalog model {' or '.join(matches)})"
    else:
        text += "; it does not look like an SCNet checkpoint at all"
    return text


def _catalog_matches(inferred: Mapping[str, Any]) -> list[str]:
    matches = []
    for name, info in CATALOG.items():
        if info.architecture != "scnet":
            continue
        fits = all(info.config.get(key) == value for key, value in inferred.items() if key != "n_sources")
        if fits and inferred.get("n_sources", len(info.sources)) == len(info.sources):
            matches.append(name)
    return matches


def infer_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The SCNet hyper-parameters that can be read off a state_dict's shapes (empty if it is not SCNet's)."""
    shape = {key: tuple(value.shape) for key, value in state.items()}
    first: list[tuple[int, ...]] = []
    for i in range(16):  # encoder layers up to the first one missing
        item = shape.get(f"encoder.{i}.SDlayer.convs.0.weight")
        if item is None:
            break
        first.append(item)
    if not first or any(len(item) != 4 for item in first):
        return {}
    inferred: dict[str, Any] = {"dims": [first[0][1]] + [item[0] for item in first]}
    kernels = [shape.get(f"encoder.0.SDlayer.convs.{j}.weight") for j in range(3)]
    present = [item for item in kernels if item]
    if len(present) == len(kernels):
        inferred["band_kernel"] = [item[2] for item in present]
    depths = []
    for j in range(3):
        pattern = re.compile(rf"encoder\.0\.conv_modules\.{j}\.layers\.(\d+)\.")
        depths.append(len({found.group(1) for key in shape if (found := pattern.match(key))}))
    inferred["conv_depths"] = depths
    pattern = re.compile(r"separation_net\.dp_modules\.(\d+)\.")
    layers = {found.group(1) for key in shape if (found := pattern.match(key))}
    inferred["num_dplayer"] = len(layers)
    last = shape.get(f"decoder.{len(first) - 1}.1.convtrs.0.weight")
    if last and len(last) == 4 and inferred["dims"][0]:
        inferred["n_sources"] = last[1] // inferred["dims"][0]
    return inferred


def load_weights(
    module: nn.Module, state: Mapping[str, torch.Tensor], origin: str, scnet: bool = True
) -> nn.Module:
    """``module.load_state_dict(state, strict=True)``; a misfit raises :class:`CheckpointError` saying why."""
    report = fit_report(module, state, scnet)
    if report is not None:
        raise CheckpointError(f"{origin}: {report}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:  # e.g. a dtype that cannot be copied
        raise CheckpointError(f"{origin}: cannot load the weights ({one_line(error)})") from None
    return module


def verify_checkpoint(path: str | os.PathLike[str], spec: ModelSpec) -> None:
    """Check that ``path`` is a checkpoint whose weights fit ``spec`` (the model is built on the meta device,
    so no memory is spent on it). Raises :class:`CheckpointError` otherwise."""
    state = extract_state_dict(read_checkpoint(path))
    with torch.device("meta"):
        module = build_model(spec)
    report = fit_report(module, state)
    if report is not None:
        raise CheckpointError(report)


# ------------------------------------------------------------------------------------------------- loading


def load_model(
    name: str | None = None,
    *,
    model_file: str | os.PathLike[str] | None = None,
    model_config: str | os.PathLike[str] | None = None,
    spec_norm: bool | None = None,
    normalize: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> LoadedModel:
    """Load a model of any family ready to separate.

    Args:
        name: a catalog name (default :data:`DEFAULT_MODEL` when no ``model_file`` is given), an ensemble
            of them: ``"a+b"``, with optional weights ``"a:vocals=2+b:vocals=0"`` (see
            :func:`freestems.models.spelling.parse_members`), or a chain ``"a>drums:b"`` (b run on a's drums;
            see :mod:`freestems.models.chain`). With ``model_file`` it names the catalog config to use for
            that file.
        model_file: a checkpoint file instead of the cache: an SCNet, RoFormer or MDX23C state_dict (raw or
            wrapped; then ``model_config`` or ``name`` is required), a freestems checkpoint (config included),
            or a Demucs ``.th`` model file (config included).
        model_config: the config of ``model_file``: an MSST YAML (its ``model:`` section tells SCNet,
            BS-RoFormer, Mel-Band RoFormer and MDX23C apart), or ``.json`` of SCNet constructor arguments.
        spec_norm, normalize: override the in-model spectrogram / whole-track normalisation flags.
        cache_dir: the weights cache (default :func:`freestems.models.download.default_cache_dir`).
        download: fetch catalog files missing from the cache (else raise :class:`ModelNotAvailable`).
        progress: show a download progress bar on stderr.

    Raises:
        ModelNotAvailable: unknown name, missing file, download failed, the demucs extra is missing.
        CheckpointError: the file is not a checkpoint, a config is bad, or the weights do not fit it.
        ModelChoiceError: names and files that do not fit together, or a bad ensemble or chain.
    """
    check_model_choice(name, model_file, model_config, name_with_file=True)
    flags = _Flags(spec_norm, normalize)
    if model_file is not None:
        return _load_file(Path(model_file), model_config, name, flags)
    return _load_named(name or DEFAULT_MODEL, flags, _Fetch(cache_dir, download, progress))


def _load_named(name: str, flags: _Flags, fetch: _Fetch) -> LoadedModel:
    """A catalog name or preset, an ensemble ``a+b`` or a chain ``a>drums:b``."""
    from freestems.models.spelling import SEPARATOR, is_chain, parse_chain, parse_members

    if is_chain(name):
        return _load_chain(name, parse_chain(name), flags, fetch)
    if SEPARATOR in name:
        return _load_ensemble(name, name, parse_members(name), flags, fetch)
    return _load_entry(get_model_info(name), flags, fetch)


@dataclass(frozen=True)
class _Flags:
    """The user's overrides of the normalisation flags (None: the model's own)."""

    spec_norm: bool | None = None
    normalize: bool | None = None

    def apply(self, model: LoadedModel) -> LoadedModel:
        if self.normalize is not None:
            model.normalize = bool(self.normalize)
        return model


@dataclass(frozen=True)
class _Fetch:
    """Where catalog files come from: the cache, downloading what is missing unless told not to."""

    cache_dir: str | os.PathLike[str] | None
    download: bool
    progress: bool

    def files(self, info: ModelInfo) -> list[Path]:
        return fetch_files(info, self.cache_dir, progress=self.progress, download=self.download)


def _load_entry(info: ModelInfo, flags: _Flags, fetch: _Fetch) -> LoadedModel:
    """A catalog entry of any family: its files from the cache, its config from the catalog (or beside)."""
    if info.architecture == "ensemble":
        members = [(member, dict(weights)) for member, weights in info.config["members"]]
        return _load_ensemble(info.name, "+".join(m for m, _ in members), members, flags, fetch)
    if info.architecture == "chain":
        from freestems.models.spelling import ChainSpec

        return _load_chain(info.name, ChainSpec.of(info.config), flags, fetch)
    paths = fetch.files(info)
    hint = " (delete it to download it again)"
    if info.architecture == "htdemucs":
        from freestems.models.htdemucs import load_demucs_files

        return flags.apply(load_demucs_files(paths, info.config["weights"], info.name))
    if info.architecture in MSST_FAMILIES:
        config = info.config or read_yaml(paths[-1])
        return flags.apply(_load_msst(paths[0], config, info.architecture, info.name, hint))
    spec = catalog_spec(info)
    return _load_scnet(paths[0], spec, flags, hint)


def _load_ensemble(
    name: str,
    spelled: str,
    members: Sequence[tuple[str, Mapping[str, float]]],
    flags: _Flags,
    fetch: _Fetch,
) -> LoadedModel:
    """An ensemble of catalog entries (presets nest: a member may itself be a preset)."""
    from freestems.models.ensemble import make_ensemble

    infos = [get_model_info(member) for member, _ in members]  # every name checked before any download
    loaded = [
        (_load_entry(info, flags, fetch), weights) for info, (_, weights) in zip(infos, members, strict=True)
    ]
    try:
        return make_ensemble(name, loaded)
    except ModelChoiceError as error:
        raise ModelChoiceError(f"{spelled}: {error}") from None


def _load_chain(name: str, spec: ChainSpec, flags: _Flags, fetch: _Fetch) -> LoadedModel:
    """A chain: every model and stem checked against the catalog before any download, then each model
    loaded its own way (a part may be an ensemble or a preset)."""
    from freestems.models.chain import make_chain, spec_outputs

    spec_outputs(name, spec)
    first = _load_named(spec.first, flags, fetch)
    links = [(stem, _load_named(model, flags, fetch)) for stem, model in spec.links]
    return make_chain(name, first, links)


def _load_file(
    path: Path, model_config: str | os.PathLike[str] | None, name: str | None, flags: _Flags
) -> LoadedModel:
    """A checkpoint file: its family from its config (or the catalog entry ``name``), or from the file."""
    if model_config is None and name is None and path.suffix == ".th":
        return flags.apply(_load_demucs_file(path))
    if model_config is not None:
        if Path(model_config).suffix.lower() == ".json":
            spec = read_json_config(model_config)
        else:
            config = read_yaml(model_config)
            architecture = _yaml_family(config)
            if architecture in MSST_FAMILIES:
                return flags.apply(_load_msst(path, config, architecture, path.stem, ""))
            spec = read_msst_config(model_config)
        spec.name = path.stem  # the weights name the model, not their (often shared) config file
        return _load_scnet(path, spec, flags, "")
    if name is not None:
        info = get_model_info(name)
        if info.architecture == "htdemucs":
            return flags.apply(_load_demucs_file(path))
        if info.architecture in MSST_FAMILIES:
            if not info.config:
                raise ModelChoiceError(
                    f"model {name} has no embedded config: give its YAML with --model-config"
                )
            return flags.apply(_load_msst(path, info.config, info.architecture, path.stem, ""))
        if info.architecture != "scnet":
            raise ModelChoiceError(
                f"model {name} is a preset ({info.architecture}), not a config for one file"
            )
        return _load_scnet(path, catalog_spec(info), flags, "")
    return _load_scnet(path, None, flags, "")


def _yaml_family(config: Mapping[str, Any]) -> str:
    """``scnet``, ``bs_roformer``, ``mel_band_roformer`` or ``mdx23c`` from an MSST YAML's ``model:`` keys."""
    from freestems.models.mdx23c import ARCHITECTURE, is_mdx23c
    from freestems.models.roformer import guess_architecture

    model = config.get("model")
    if not isinstance(model, Mapping):
        return "scnet"  # read_msst_config says what is missing
    if is_mdx23c(model):
        return ARCHITECTURE
    return guess_architecture(model) or "scnet"


def msst_model(config: Mapping[str, Any], architecture: str | None, name: str) -> tuple[nn.Module, MsstFacts]:
    """The network of an MSST-configured family (fresh weights, eval mode) and its facts, from a parsed
    YAML; ``architecture`` None: a RoFormer told by its keys. Raises :class:`CheckpointError`."""
    if architecture == "mdx23c":
        from freestems.models.mdx23c import mdx23c_from_msst

        return mdx23c_from_msst(config, name)
    from freestems.models.roformer import roformer_from_msst

    return roformer_from_msst(config, architecture, name)


def _load_demucs_file(path: Path) -> LoadedModel:
    from freestems.models.htdemucs import load_demucs_file

    return load_demucs_file(path)


def _load_scnet(path: Path, spec: ModelSpec | None, flags: _Flags, hint: str) -> LoadedModel:
    """An SCNet checkpoint; without ``spec`` the file must be a freestems checkpoint that says its config."""
    try:
        package = read_checkpoint(path)
        if spec is None:
            if not (isinstance(package, Mapping) and "freestems" in package):
                raise CheckpointError(
                    f"{path} does not say which model it is: give its config (MSST YAML or JSON) with "
                    "--model-config, or a catalog name with -m"
                )
            spec = _spec_from_package(package, path)
        state = extract_state_dict(package)
        del package
        if flags.spec_norm is not None:
            spec.spec_norm = bool(flags.spec_norm)
        if flags.normalize is not None:
            spec.normalize = bool(flags.normalize)
        module = load_weights(build_model(spec), state, str(path))
    except CheckpointError as error:
        raise CheckpointError(_naming(error, path) + hint) from None
    return LoadedModel(
        module=module.eval(),
        name=spec.name,
        sources=tuple(spec.sources),
        segment=int(spec.segment),
        normalize=bool(spec.normalize),
    )


def _load_msst(
    path: Path, config: Mapping[str, Any], architecture: str | None, name: str, hint: str
) -> LoadedModel:
    """A BS-RoFormer, Mel-Band RoFormer or MDX23C checkpoint and its MSST config (a dict)."""
    try:
        module, facts = msst_model(config, architecture, f"config of {name}")
        state = extract_state_dict(read_checkpoint(path))
        load_weights(module, state, str(path), scnet=False)
    except CheckpointError as error:
        raise CheckpointError(_naming(error, path) + hint) from None
    return msst_loaded(module, facts, name)


def msst_loaded(module: nn.Module, facts: MsstFacts, name: str) -> LoadedModel:
    """A network of an MSST family (:func:`msst_model`, weights loaded or not) ready for the engine."""
    return LoadedModel(
        module=module.eval(),
        name=name,
        sources=facts.sources,
        segment=facts.segment,
        normalize=facts.normalize,
        max_segment=facts.max_segment,
    )


def fetch_files(
    info: ModelInfo,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    download: bool = True,
) -> list[Path]:
    """Every file of catalog entry ``info`` in the cache (:func:`freestems.models.download.ensure_files`), a
    fresh download checked by :func:`validate_file` before it enters the cache."""
    from freestems.models.download import ensure_files

    return ensure_files(info, cache_dir, progress=progress, download=download, check=validate_file)


def ensure_weights(
    info: ModelInfo, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True
) -> Path:
    """The first weights file of ``info`` in the cache, downloaded (and checked) first when missing."""
    return fetch_files(info, cache_dir, progress=progress)[0]


def read_yaml(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """An MSST YAML file as a dict (``!!python/tuple`` accepted, nothing else beyond safe YAML)."""
    return _read_config_file(Path(path), lambda text: yaml.load(text, Loader=_MsstLoader))


def validate_file(info: ModelInfo, url: str, path: Path) -> None:
    """Check a freshly downloaded file of ``info`` before it enters the cache: a config that parses and
    builds, SCNet/RoFormer/MDX23C weights that fit the config (built on the meta device: no memory spent), a
    Demucs model file that unpickles safely. Raises :class:`CheckpointError` otherwise."""
    if url == info.config_url:
        with torch.device("meta"):
            msst_model(read_yaml(path), info.architecture, "the config")
        return
    if info.architecture == "htdemucs":
        from freestems.models.htdemucs import read_demucs_package

        read_demucs_package(path)
        return
    state = extract_state_dict(read_checkpoint(path))
    if info.architecture in MSST_FAMILIES:
        if info.config:
            with torch.device("meta"):
                module, _ = msst_model(info.config, info.architecture, info.name)
            report = fit_report(module, state, scnet=False)
            if report is not None:
                raise CheckpointError(report)
        return
    with torch.device("meta"):
        scnet = build_model(catalog_spec(info))
    report = fit_report(scnet, state)
    if report is not None:
        raise CheckpointError(report)


def _naming(error: CheckpointError, path: Path) -> str:
    message = str(error)
    return message if str(path) in message else f"{path}: {message}"


# ------------------------------------------------------------------------------------------------- helpers


def _first(keys: list[str], count: int = 3) -> str:
    return ", ".join(keys[:count]) + (", ..." if len(keys) > count else "")
