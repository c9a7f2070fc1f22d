"""wonders: controlled outbound HTTP(S) for air-gapped GPU nodes, relayed through a bucket."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wonders")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
