"""Errors of the ``models`` layer: each carries a one-line message a user can act on."""

from __future__ import annotations


class ModelError(Exception):
    """Base class: a model could not be provided. ``str(error)`` is the user-facing message."""


class ModelNotAvailable(ModelError):
    """The model cannot be obtained: unknown name, download failed or offline, missing file."""


class CheckpointError(ModelError):
    """A file is not a usable checkpoint: not a torch file, weights that do not fit, or a bad config."""


class ModelChoiceError(ModelError, ValueError):
    """A model named in ways that do not fit together (a catalog name and a file, a config without a file).

    A ``ValueError`` too, so that settings validation reports it like any other bad value.
    """
