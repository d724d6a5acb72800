"""fmprog: serve foundation model programs with per-call-site backend routing learned online."""

__version__ = "0.1.0"
