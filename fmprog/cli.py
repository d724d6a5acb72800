"""The ``fmprog`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _program_check(args: argparse.Namespace) -> int:
    from fmprog.program import ProgramRejected, compile_program

    try:
        source = Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        program = compile_program(source)
    except ProgramRejected as exc:
        for problem in exc.problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return 2
    print(json.dumps([site.model_dump(mode="json") for site in program.call_sites], indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmprog", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    program = commands.add_parser("program", help="work with foundation model programs")
    program_commands = program.add_subparsers(dest="program_command", required=True)
    check = program_commands.add_parser(
        "check", help="validate a program; print its call sites as JSON (exit 0) or the error (exit 2)"
    )
    check.add_argument("file", help="path to the program's Python source")
    check.set_defaults(handler=_program_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
