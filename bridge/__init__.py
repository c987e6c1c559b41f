"""voxys-bridge: verified CRM and billing webhooks in, Voxys Connect lead-status changes out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("voxys-bridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
