"""The ``fmprog`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from fmprog.backends.config import DEFAULT_CONFIG, BackendSpec
from launcher.options import add_config_option, config_help


def _version() -> str:
    """The installed package's version (the checkout's, when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fmprog")
    except PackageNotFoundError:
        from fmprog import __version__

        return __version__


def _program_check(args: argparse.Namespace) -> int:
    from fmprog.backends.config import ConfigError, load_catalog
    from launcher.program_run import compiled, warnings

    try:
        source = Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    program = compiled(args.file, source)
    if program is None:
        return 2
    if (problem := program.servable_problem()) is not None:
        print(f"{args.file}: {problem}", file=sys.stderr)
        return 2
    try:
        catalog = load_catalog(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps([site.model_dump(mode="json") for site in program.call_sites], indent=2))
    for warning in warnings(program, catalog):
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    return 0


def _backends(args: argparse.Namespace) -> int:
    from fmprog.backends.config import ConfigError, load_catalog

    try:
        catalog = load_catalog(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = [_backend_row(spec) for spec in catalog.backends]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max([len("vocabulary"), *(len(r["vocabulary"]["summary"]) for r in rows if r["vocabulary"])])
    print(f"{'name':<16} {'function':<8} {'engine':<12} {'cost':>10} {'vocabulary':<{width}} description")
    for row in rows:
        vocabulary = "(not declared)" if row["vocabulary"] is None else row["vocabulary"]["summary"]
        print(
            f"{row['name']:<16} {row['function']:<8} {row['engine'] or '-':<12} {row['cost']:>10g} "
            f"{vocabulary:<{width}} {row['description']}"
        )
    return 0


def _backend_row(spec: BackendSpec) -> dict:
    from fmprog.vision.vocabulary import vocabulary

    row: dict = {
        "name": spec.name,
        "function": spec.function.value,
        "engine": spec.engine.kind if spec.engine is not None else None,
        "cost": spec.cost,
        "description": spec.description,
        "vocabulary": None,
    }
    if spec.vocabulary is not None:
        size = vocabulary(spec.vocabulary).size
        forms = list(spec.vocabulary.questions or ())
        summary = f"{size} class{'es' if size != 1 else ''} ({spec.vocabulary.nouns})"
        summary += f", {len(forms)} question forms" if forms else ""
        row["vocabulary"] = {"nouns": spec.vocabulary.nouns, "size": size, "questions": forms, "summary": summary}
    return row


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from fmprog.backends.config import ConfigError, load_catalog
    from launcher.supervisor import QuietShutdown
    from services.cluster import ServeSettings, serve_backends

    try:
        load_catalog(args.config)  # a configuration that cannot be used fails here, before Ray starts
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = ServeSettings(
        config=args.config,
        host=args.host,
        port=args.port,
        backends=args.backends.split(",") if args.backends else None,
        ray_address=args.ray_address,
        num_cpus=args.num_cpus,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"starting Ray and Serve with the backends of {args.config} ...", file=sys.stderr, flush=True)
    with QuietShutdown() as quiet, serve_backends(settings) as cluster:
        for name in cluster.handles:
            spec = cluster.catalog.get(name)
            print(f"{name:>14}  {spec.function.value:<6} cost {spec.cost:>10g}  {cluster.base_url}/{name}", flush=True)
        print("serving; Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        quiet.start()  # Serve and Ray stop next, without Ray's warning that they did
    return 0


def _up(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from launcher.settings import StackSettings
    from launcher.supervisor import up

    try:
        settings = StackSettings(
            config=args.config,
            backends=args.backends.split(",") if args.backends else None,
            host=args.host,
            router_port=args.router_port,
            policy_port=args.policy_port,
            serve_port=args.serve_port,
            state_dir=args.state_dir,
            num_cpus=args.num_cpus,
            backend_transport=args.backend_transport,
            api_key=args.api_key or None,
            max_restarts=args.max_restarts,
            restart_window_s=args.restart_window,
            **_policy_key(),
        )
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            print(f"error: {where + ': ' if where else ''}{message}", file=sys.stderr)
        return 2
    return up(settings)


def _policy_key() -> dict[str, str]:
    """The policy's bearer key from ``$FMPROG_POLICY_API_KEY`` when set (a caller that talks to the
    policy itself, such as StackProcess), else none: ``fmprog up`` makes a random one."""
    key = os.environ.get("FMPROG_POLICY_API_KEY", "")
    return {"policy_api_key": key} if key else {}


def _serve_config(args: argparse.Namespace) -> int:
    import yaml

    from fmprog.backends.config import ConfigError, load_catalog
    from services.app import serve_config

    try:
        catalog = load_catalog(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = serve_config(catalog, host=args.host, port=args.port)
    sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
    return 0


def _add_plugin_commands(commands: Any) -> None:
    """The subcommands other installed packages add through the ``fmprog.commands`` entry points
    (each a function taking the subparsers): ``bench``, from the benchmark package, which sits on
    top of the launcher and so is found, not imported."""
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group="fmprog.commands"), key=lambda entry: entry.name):
        entry.load()(commands)


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without a description its one-line help as one, so that
    ``fmprog COMMAND --help`` says what the command does (plain text, as all help here)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None and helps.get(name):
                    text = helps[name]
                    sub.description = text[0].upper() + text[1:] + "."
                _describe(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmprog",
        description="Serve foundation model programs: each call site's backend chosen per frame by a learned policy.",
    )
    parser.add_argument("--version", action="version", version=f"fmprog {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    program = commands.add_parser("program", help="work with foundation model programs")
    program_commands = program.add_subparsers(dest="program_command", required=True)
    check = program_commands.add_parser(
        "check", help="validate a program; print its call sites as JSON (exit 0) or the error (exit 2)"
    )
    check.add_argument("file", help="path to the program's Python source")
    check.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="NAME_OR_PATH",
        help=config_help("warn (on stderr) about each call site that none of this configuration's backends can see"),
    )
    check.set_defaults(handler=_program_check)

    from launcher.program_evaluate import add_evaluate_command
    from launcher.program_run import add_run_command
    from launcher.program_synth import add_synth_command

    add_run_command(program_commands)
    add_evaluate_command(program_commands)

    add_synth_command(program_commands)

    from launcher.keys import add_keys_command

    add_keys_command(commands)

    listing = commands.add_parser(
        "backends", help="list a configuration's backends: name, function, engine, cost and vocabulary"
    )
    add_config_option(listing)
    listing.add_argument("--json", action="store_true", help="print a JSON list (name, function, cost, ...)")
    listing.set_defaults(handler=_backends)

    serve = commands.add_parser("serve", help="start Ray Serve with every backend of a configuration; block")
    add_config_option(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--backends", help="comma-separated subset of backends to serve")
    serve.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    serve.add_argument("--num-cpus", type=float, help="logical CPUs of the local Ray (default: all)")
    serve.set_defaults(handler=_serve)

    stack = commands.add_parser(
        "up",
        help="start the whole cluster on this machine (Ray Serve with the backends, the policy, the router); "
        "block until Ctrl-C or SIGTERM, then stop it all",
    )
    add_config_option(stack)
    stack.add_argument("--backends", help="comma-separated subset of backends to serve and offer (default: all)")
    stack.add_argument(
        "--host",
        default="127.0.0.1",
        help="the router's address; off loopback it needs an API key (default: %(default)s)",
    )
    stack.add_argument("--router-port", type=int, default=8080, help="(default: %(default)s)")
    stack.add_argument("--policy-port", type=int, default=8081, help="the policy, on 127.0.0.1 (default: %(default)s)")
    stack.add_argument(
        "--serve-port", type=int, default=8000, help="Ray Serve's proxy, on 127.0.0.1 (default: %(default)s)"
    )
    stack.add_argument(
        "--state-dir", default="state", help="router database, policy state and logs (default: %(default)s)"
    )
    stack.add_argument("--num-cpus", type=float, help="logical CPUs of the local Ray (default: all)")
    stack.add_argument(
        "--backend-transport",
        choices=["handle", "http"],
        default="handle",
        help="how the router calls the backends: DeploymentHandles, the router joining the local Ray as a driver, "
        "or HTTP through the Serve proxy (default: %(default)s)",
    )
    stack.add_argument(
        "--api-key",
        default=os.environ.get("FMPROG_ROUTER_API_KEY"),
        help="the router's bearer key, at least 16 characters (default: $FMPROG_ROUTER_API_KEY)",
    )
    stack.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="a service that dies is restarted (exponential backoff with jitter); one that dies more often than "
        "this within --restart-window stops the cluster with exit 1 (default: %(default)s)",
    )
    stack.add_argument(
        "--restart-window", type=float, default=300.0, help="seconds the restarts are counted in (default: %(default)s)"
    )
    stack.set_defaults(handler=_up)

    _add_plugin_commands(commands)

    config = commands.add_parser("serve-config", help="print the Ray Serve config (serveConfigV2) of a configuration")
    add_config_option(config, default="gpu")
    config.add_argument("--host", default="0.0.0.0")
    config.add_argument("--port", type=int, default=8000)
    config.set_defaults(handler=_serve_config)
    _describe(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
