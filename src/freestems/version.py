"""The installed version of freestems, in a module of its own so that any layer can name it (the CLI's
``--version``, the service's health answer, the download code's User-Agent) without importing the package's
front door."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("freestems")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
