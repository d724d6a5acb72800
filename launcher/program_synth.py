"""``fmprog program synth "QUERY"``: synthesise a program for a task in words and print it.

The synthesizer is the router's (``router.synthesis``), configured the same way (``--config``,
``FMPROG_ROUTER_SYNTHESIS_*``). Its dry run needs backends: by default the cheapest backend of
each function in the configuration, loaded in this process; ``--serve-url`` uses a running
``fmprog serve`` instead, and ``--dry-run-frames 0`` skips the dry run (and needs no backend).

Prints the program on stdout (or the whole result as JSON with ``--json``) and, on stderr, what it
is doing as it goes (loading the backends and the model, each attempt and its checks), then each
attempt's outcome and time. Exit 0 with a program, 1 when no attempt passed, 2 for a bad
configuration.

Importing this module imports nothing heavy: the parser is built by the ``fmprog`` command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from fmprog.backends.config import DEFAULT_CONFIG, config_names

DESCRIPTION = "Synthesise a program for a task in words and print it."


def add_synth_command(program_commands: Any) -> argparse.ArgumentParser:
    """Add ``synth`` to the ``fmprog program`` subcommands (an argparse subparsers action)."""
    synth = program_commands.add_parser(
        "synth",
        help="synthesise a program for a task in words; print it (exit 0) or the last error (exit 1)",
        description=DESCRIPTION,
    )
    add_arguments(synth)
    synth.set_defaults(handler=run)
    return synth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help='the task, e.g. "Is there a red triangle left of a blue circle?"')
    parser.add_argument("--kind", choices=("binary", "open"), default="binary", help="(default: %(default)s)")
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="NAME_OR_PATH",
        help=f"backend configuration: the name of a packaged one ({', '.join(config_names())}) or the path of a "
        "YAML file (default: %(default)s)",
    )
    parser.add_argument("--attempts", type=int, help="programs asked of the model at most (default: 3)")
    parser.add_argument("--dry-run-frames", type=int, help="generated frames each program runs on (default: 3)")
    parser.add_argument("--serve-url", help="dry-run with the backends of a running fmprog serve at this URL")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from fmprog.backends.config import ConfigError
    from fmprog.engines.base import EngineError
    from router.errors import RouterError
    from router.settings import RouterSettings
    from router.synthesis.synthesizer import ProgramSynthesizer, synthesis_model

    overrides: dict[str, Any] = {"backends_config": args.config}
    if args.attempts is not None:
        overrides["synthesis_attempts"] = args.attempts
    if args.dry_run_frames is not None:
        overrides["synthesis_dry_run_frames"] = args.dry_run_frames
    try:
        settings = RouterSettings(**overrides)
        spec = settings.synthesis_spec()
        if spec is None:
            raise ConfigError("synthesis is disabled: set FMPROG_ROUTER_SYNTHESIS_BACKEND or _SYNTHESIS_ENGINE")
        catalog, backends, engines = _dry_run_backends(settings, args.serve_url)
    except (ConfigError, ValidationError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = synthesis_model(spec)
    synthesizer = ProgramSynthesizer(
        _Announced(model, settings.synthesis_attempts, settings.synthesis_dry_run_frames),
        catalog,
        backends,
        attempts=settings.synthesis_attempts,
        max_tokens=settings.synthesis_max_tokens,
        dry_run_frames=settings.synthesis_dry_run_frames,
    )
    try:
        if callable(load := getattr(model, "load", None)):
            _progress(f"loading the synthesizer's model ({model.name}) ...")
            started = perf_counter()
            load()
            _progress(f"loaded in {perf_counter() - started:.1f} s")
        result = synthesizer.synthesize(args.query, args.kind)
    except RouterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        model.close()
        for engine in engines:
            engine.close()
    if args.json:
        print(result.model_dump_json(indent=2))
    elif result.source is not None:
        print(result.source, end="")
    if not args.json:
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    for attempt in result.log:
        outcome = "accepted" if attempt.error is None else f"refused: {attempt.error}"
        print(f"attempt {attempt.attempt} ({attempt.llm_s:.1f} s model, {attempt.check_s:.2f} s checks): {outcome}",
              file=sys.stderr)  # fmt: skip
    tries = "1 attempt" if result.attempts == 1 else f"{result.attempts} attempts"
    verdict = "program" if result.ok else "no program"
    print(f"{verdict} after {tries} in {result.latency_s:.1f} s ({result.synthesizer})", file=sys.stderr)
    return 0 if result.ok else 1


def _progress(line: str) -> None:
    """What the command is doing, on stderr (stdout carries the program only)."""
    print(line, file=sys.stderr, flush=True)


class _Announced:
    """The synthesizer's model, saying on stderr which attempt it is writing and that it is then
    checked (a ChatModel, as ``ProgramSynthesizer`` takes)."""

    def __init__(self, model: Any, attempts: int, dry_run_frames: int):
        self.model = model
        self.attempts = attempts
        self.dry_run_frames = dry_run_frames
        self.asked = 0

    @property
    def name(self) -> str:
        return self.model.name

    def chat(self, messages: Sequence[Any], *, max_tokens: int) -> str:
        self.asked += 1
        _progress(f"attempt {self.asked} of {self.attempts}: asking the model for a program ...")
        reply = self.model.chat(messages, max_tokens=max_tokens)
        checks = "compiling it" + (
            f", then a dry run on at least {self.dry_run_frames} generated frames" if self.dry_run_frames else ""
        )
        _progress(f"attempt {self.asked} of {self.attempts}: {checks} ...")
        return reply


def _dry_run_backends(settings: Any, serve_url: str | None) -> tuple[Any, Any, list[Any]]:
    """The catalog and backends of the dry run: a running Serve's, or the cheapest backend of each
    function loaded here (none when the dry run is off); and the engines loaded here, to close."""
    from fmprog.backends.base import BackendRegistry
    from fmprog.backends.config import BackendCatalog, Function
    from fmprog.engines import build_engine, local_model

    catalog = settings.load_catalog()
    if serve_url:
        from services.client import HttpBackend

        _progress(f"dry run with the backends served at {serve_url}")
        timeout = settings.backend_timeout_s
        models = {s.name: HttpBackend(s, serve_url, timeout_s=timeout).model() for s in catalog.backends}
        return catalog, BackendRegistry.from_specs(list(catalog.backends), models), []
    if settings.synthesis_dry_run_frames == 0:
        _progress("no dry run (--dry-run-frames 0): no backends loaded")
        return catalog, BackendRegistry.from_specs([], {}), []
    cheapest = [min(specs, key=lambda s: s.cost) for f in Function if (specs := catalog.for_function(f))]
    names = ", ".join(spec.name for spec in cheapest)
    _progress(f"loading the dry run's backends here (the cheapest of each function): {names} ...")
    started = perf_counter()
    engines = {spec.name: build_engine(spec) for spec in cheapest}
    for engine in engines.values():
        engine.load()
    _progress(f"loaded in {perf_counter() - started:.1f} s")
    models = {name: local_model(engine) for name, engine in engines.items()}
    return BackendCatalog(backends=cheapest), BackendRegistry.from_specs(cheapest, models), list(engines.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmprog program synth", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
