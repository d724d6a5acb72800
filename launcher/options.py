"""Command-line options that several ``fmprog`` commands share."""

from __future__ import annotations

import argparse

from fmprog.backends.config import DEFAULT_CONFIG, config_names


def config_help(what: str = "backend configuration") -> str:
    """The help of a ``--config`` option: the packaged configurations' names, or a path."""
    names = ", ".join(config_names()) or "none installed"
    return f"{what}: the name of a packaged one ({names}) or the path of a YAML file (default: %(default)s)"


def add_config_option(parser: argparse.ArgumentParser, default: str = DEFAULT_CONFIG) -> None:
    """``--config NAME_OR_PATH``, read by ``fmprog.backends.config.load_catalog``."""
    parser.add_argument("--config", default=default, metavar="NAME_OR_PATH", help=config_help())
