"""The HT-Demucs family (``htdemucs``, ``htdemucs_ft``, ``htdemucs_6s``) on the freestems engine.

The networks are the ``demucs`` package's own classes (an optional extra:
``pip install "freestems[demucs]"``), so released weights load as they were trained; only the chunking is ours
(:mod:`freestems.engine`), set up to give what Demucs's ``apply_model`` gives with ``shifts=0``:

* one chunk is the model's training segment (HT-Demucs refuses longer input and pads shorter input itself);
* the chunks at the end of the track are centred (``chunk_tail="centred"``), as ``apply_model`` pads them;
* the whole track is normalised with the mono mix's mean and deviation, as Demucs's command line does;
* the crossfade: at overlaps up to 0.5 our trapezoid and Demucs's triangle give the same normalised weights.

A bag of models (``htdemucs_ft``: four fine-tuned models, each stem taken from its specialist) is one module
that mixes its members' stems with the bag's per-stem weights.

Loading never unpickles arbitrary objects: a Demucs ``.th`` file (a dict of ``klass``, ``args``, ``kwargs``,
``state``, ``training_args``, as Demucs's training writes it) loads with ``torch.load(weights_only=True)``
and an allow-list of the Demucs model classes and :class:`fractions.Fraction` (HT-Demucs keeps its segment
as one). Anything else in the file is refused with a :class:`CheckpointError` that names it.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import torch
import yaml
from torch import nn
from torch.nn import functional as F

from freestems.contract import SAMPLE_RATE, LoadedModel
from freestems.errors import one_line
from freestems.models.errors import CheckpointError, ModelNotAvailable

INSTALL_HINT = 'the HT-Demucs models need the demucs extra: pip install "freestems[demucs]"'


def _demucs() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """The demucs modules, or :class:`ModelNotAvailable` saying how to install them."""
    try:
        from demucs import apply, demucs, hdemucs, htdemucs
    except ImportError:
        raise ModelNotAvailable(INSTALL_HINT) from None
    return apply, demucs, hdemucs, htdemucs


def model_classes() -> tuple[type[Any], ...]:
    """The Demucs network classes a ``.th`` file may name as its ``klass``."""
    _, demucs, hdemucs, htdemucs = _demucs()
    return (htdemucs.HTDemucs, hdemucs.HDemucs, demucs.Demucs)


def allowed_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` may rebuild from a Demucs file, besides tensors and lists."""
    return [*model_classes(), Fraction]


class DemucsModule(nn.Module):
    """One Demucs model or a bag of them, as a module from (batch, channels, samples) to
    (batch, stems, channels, samples).

    Stem ``s`` is ``sum_i weights[i][s] * member_i(x)[s] / sum_i weights[i][s]``, exactly as Demucs mixes a
    bag (a single model has weight 1). Members whose weights are all 0 are dropped: they cannot change the
    output. Demucs runs in float32 (its spectrogram code is not written for autocast), whatever the engine's
    precision.
    """

    weights: torch.Tensor  # a buffer: per-member, per-stem weights, normalised per stem

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[Sequence[float]], segment: int):
        super().__init__()
        table = torch.tensor([list(map(float, row)) for row in weights], dtype=torch.float32)
        keep = [i for i in range(len(members)) if bool(table[i].ne(0).any())]
        self.members = nn.ModuleList(members[i] for i in keep)
        table = table[keep]
        self.register_buffer("weights", table / table.sum(dim=0, keepdim=True), persistent=False)
        self.segment = segment
        self._htdemucs = model_classes()[0]

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.shape[-1] > self.segment:
            raise ValueError(
                f"this model takes chunks of at most {self.segment} samples (its training segment), "
                f"got {mix.shape[-1]}: use a segment of at most {self.segment / SAMPLE_RATE:.2f} s"
            )
        with torch.autocast(mix.device.type, enabled=False):
            mix = mix.float()
            out: torch.Tensor | None = None
            for member, weight in zip(self.members, self.weights, strict=True):
                stems = self._run(member, mix) * weight[None, :, None, None]
                out = stems if out is None else out + stems
        if out is None:  # wrap_demucs refuses a bag that leaves every member out
            raise ValueError("this Demucs module has no members with a non-zero weight")
        return out

    def _run(self, member: nn.Module, mix: torch.Tensor) -> torch.Tensor:
        if isinstance(member, self._htdemucs):
            # HT-Demucs pads a short chunk to its training length and trims the output itself.
            whole: torch.Tensor = member(mix)
            return whole
        # Demucs and HDemucs want a "valid length"; apply_model pads around the chunk and trims the centre.
        length = mix.shape[-1]
        valid_length = cast("Callable[[int], int]", member.valid_length)  # demucs has no type hints
        delta = int(valid_length(length)) - length
        out: torch.Tensor = member(F.pad(mix, (delta // 2, delta - delta // 2)))
        trim = out.shape[-1] - length
        return out[..., trim // 2 : trim // 2 + length]


def wrap_demucs(model: nn.Module, name: str) -> LoadedModel:
    """Turn a Demucs model (HTDemucs, HDemucs, Demucs) or a ``BagOfModels`` into a :class:`LoadedModel`
    whose last chunks are centred and whose chunks are at most the training segment, as Demucs runs them."""
    apply, *_ = _demucs()
    if isinstance(model, apply.BagOfModels):
        members, weights = list(model.models), [list(row) for row in model.weights]
    elif isinstance(model, model_classes()):
        members, weights = [model], [[1.0] * len(model.sources)]
    else:
        raise CheckpointError(f"model {name}: a {type(model).__name__} is not a Demucs model or bag")
    sources = tuple(str(source) for source in members[0].sources)
    for member in members:
        if member.samplerate != SAMPLE_RATE or member.audio_channels != 2:
            raise CheckpointError(
                f"model {name}: runs on {member.audio_channels} channels at {member.samplerate} Hz; "
                f"freestems runs stereo at {SAMPLE_RATE} Hz"
            )
        if tuple(member.sources) != sources:
            raise CheckpointError(f"model {name}: the bag's members separate different stems")
    totals = torch.tensor(weights, dtype=torch.float64).sum(dim=0)
    if len(weights) != len(members) or any(len(row) != len(sources) for row in weights):
        raise CheckpointError(f"model {name}: the bag needs one weight per member and stem")
    if bool((totals == 0).any()):
        raise CheckpointError(f"model {name}: the bag's weights leave a stem with no model")
    # One chunk for all: the shortest member segment (HT-Demucs cannot take more than its own).
    segment = min(int(member.segment * member.samplerate) for member in members)
    module = DemucsModule([member.eval() for member in members], weights, segment).eval()
    return LoadedModel(
        module=module,
        name=name,
        sources=sources,
        segment=segment,
        normalize=True,
        chunk_tail="centred",
        max_segment=segment,
    )


# ------------------------------------------------------------------------------------------------- loading


def read_demucs_package(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A Demucs ``.th`` file's dict, unpickled with ``weights_only=True`` and only the Demucs classes allowed.

    Raises :class:`ModelNotAvailable` when the file is missing and :class:`CheckpointError` when it is not
    a Demucs model file or references any other Python object.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ModelNotAvailable(f"model file {path} {what}")
    allowed = allowed_globals()
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(allowed):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            package = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # No fallback to full unpickling: that runs whatever code the file names.
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(error))
        if found is None:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (cannot unpickle it)") from None
        raise CheckpointError(
            f"{path} references {found.group(1)}, which a Demucs model file does not need; freestems only "
            "unpickles tensors, plain containers and the Demucs model classes, so it refuses this file"
        ) from None
    except PermissionError as error:
        raise ModelNotAvailable(f"cannot read model file {path}: {one_line(error)}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, pickle.PickleError) as error:
        message = f"{path} is not a PyTorch checkpoint or is damaged ({one_line(error)})"
        raise CheckpointError(message) from None
    if not isinstance(package, Mapping) or not {"klass", "args", "kwargs", "state"} <= set(package):
        raise CheckpointError(
            f"{path} is not a Demucs model file (expected a dict with klass, args, kwargs and state)"
        )
    return dict(package)


def model_from_package(package: Mapping[str, Any], origin: str) -> nn.Module:
    """Build the network a Demucs package describes and load its weights (strictly), in eval mode."""
    klass, args, kwargs, state = (package[key] for key in ("klass", "args", "kwargs", "state"))
    if klass not in model_classes():
        raise CheckpointError(f"{origin}: klass {klass!r} is not a Demucs model class")
    if not isinstance(args, list | tuple) or not isinstance(kwargs, Mapping):
        raise CheckpointError(f"{origin}: args must be a list and kwargs a dict")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{origin}: state must be a dict of tensors")
    if state.get("__quantized"):
        raise CheckpointError(f"{origin}: a quantized (DiffQ) Demucs model; freestems runs unquantized ones")
    parameters = inspect.signature(klass).parameters
    kwargs = dict(kwargs)
    for key in [key for key in kwargs if key not in parameters]:
        # Demucs's own loader does the same for arguments of older versions of a class.
        warnings.warn(f"{origin}: dropping unknown {klass.__name__} argument {key}", stacklevel=2)
        del kwargs[key]
    try:
        model: nn.Module = klass(*args, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, IndexError) as error:
        raise CheckpointError(f"{origin}: invalid {klass.__name__} arguments ({one_line(error)})") from None
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{origin}: the weights do not fit the model ({one_line(error)})") from None
    return model.eval()


def load_demucs_file(path: str | os.PathLike[str], name: str | None = None) -> LoadedModel:
    """A single Demucs model file (``.th``), ready for the engine; ``name`` defaults to the file's stem."""
    path = Path(path)
    _demucs()
    model = model_from_package(read_demucs_package(path), str(path))
    return wrap_demucs(model, name or path.stem)


def find_signature(folder: Path, signature: str) -> Path:
    """The file of ``signature`` in ``folder``: ``<sig>.th`` or ``<sig>-<sha256 prefix>.th``."""
    if not folder.is_dir():
        raise ModelNotAvailable(f"model folder {folder} does not exist")
    found = sorted(
        path
        for path in folder.iterdir()
        if path.suffix == ".th" and signature in (path.stem, path.stem.rsplit("-", 1)[0])
    )
    if not found:
        raise ModelNotAvailable(f"no file for model {signature} in {folder} (expected {signature}-*.th)")
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise CheckpointError(f"more than one file for model {signature} in {folder}: {names}")
    return found[0]


def check_name_hash(path: Path) -> None:
    """Demucs names a file ``<sig>-<first hex digits of its sha256>.th``; check those digits."""
    prefix = path.stem.rsplit("-", 1)[1] if "-" in path.stem else ""
    if not re.fullmatch(r"[0-9a-f]{4,64}", prefix):
        return
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    if not digest.hexdigest().startswith(prefix):
        raise CheckpointError(
            f"{path} is damaged: its sha256 starts {digest.hexdigest()[: len(prefix)]}, its name says "
            f"{prefix} (download it again)"
        )


def load_demucs_bag(
    yaml_path: str | os.PathLike[str], folder: str | os.PathLike[str] | None = None, name: str | None = None
) -> LoadedModel:
    """A Demucs bag: a YAML (``models:`` signatures, optional ``weights:`` and ``segment:``) whose ``.th``
    files sit in ``folder`` (default: beside the YAML). Each file's name hash is checked, as Demucs does."""
    apply, *_ = _demucs()
    yaml_path = Path(yaml_path)
    folder = Path(folder) if folder is not None else yaml_path.parent
    try:
        bag = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotAvailable(f"bag file {yaml_path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise CheckpointError(f"cannot read bag file {yaml_path}: {error}") from None
    signatures = bag.get("models") if isinstance(bag, Mapping) else None
    if not isinstance(signatures, list) or not signatures or not all(isinstance(s, str) for s in signatures):
        raise CheckpointError(f"{yaml_path} is not a Demucs bag (expected models: [signatures])")
    weights, segment = bag.get("weights"), bag.get("segment")
    if segment is not None and (isinstance(segment, bool) or not isinstance(segment, int | float)):
        raise CheckpointError(f"{yaml_path}: segment must be a number of seconds, got {segment!r}")
    members = []
    for signature in signatures:
        path = find_signature(folder, signature)
        check_name_hash(path)
        members.append(model_from_package(read_demucs_package(path), str(path)))
    try:
        model = apply.BagOfModels(members, weights, segment)
    except (AssertionError, TypeError) as error:
        raise CheckpointError(f"{yaml_path}: the bag's models or weights do not match ({error})") from None
    return wrap_demucs(model, name or yaml_path.stem)


def load_demucs_files(
    paths: Sequence[str | os.PathLike[str]], weights: Sequence[Sequence[float]], name: str
) -> LoadedModel:
    """A catalog entry's Demucs files (one model, or a bag's members in order) with the bag's per-member,
    per-stem ``weights``, ready for the engine."""
    apply, *_ = _demucs()
    members = [model_from_package(read_demucs_package(path), str(path)) for path in paths]
    if len(members) == 1:
        return wrap_demucs(members[0], name)
    try:
        bag = apply.BagOfModels(members, [list(row) for row in weights], None)
    except (AssertionError, TypeError) as error:
        raise CheckpointError(f"model {name}: the bag's models or weights do not match ({error})") from None
    return wrap_demucs(bag, name)
