"""``fmprog program evaluate PROGRAM_ID --router URL``: what other policies would have cost and
scored on a registered program's labelled decisions, estimated by the router from its log
(``POST /programs/{id}/evaluate``; ``fmprog.off_policy``), without running a backend again.

Each ``--target`` is ``static-largest``, ``static-cheapest``, ``random``, ``lambda=X`` (the
program's own policy at another ``lambda``: ``cascade``, ``structured``, ``structured_code``) or
``static:SITE_OR_FUNCTION=BACKEND,...`` (the rest of the call sites their cheapest); without one,
the two static targets and random. Prints a table: per target the runs it matched of those read
and what they are worth (effective runs), and for IPS, SNIPS and the doubly robust estimate the
cost per frame (to four significant digits: the CPU zoo's costs are fractions) and the accuracy
(F1 for binary tasks; ``n/a`` when no run read has a positive label and the logging policy never
answered yes, so F1 is undefined for every target), after the logging policy's own line; then any
runs a target makes that the log never shows (``uncovered``). ``--json`` prints the router's report
as it is.

Usage errors exit 2 with one line on stderr; an error from the router (an unknown program, a target
the log cannot support) prints the router's message and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_TARGETS = ("static-cheapest", "static-largest", "random")


class UsageError(Exception):
    """A target that cannot be read; the message says why (exit 2)."""


def parse_target(text: str) -> dict[str, Any]:
    """One ``--target`` as the router's wire form of ``fmprog.off_policy.Target``."""
    text = text.strip()
    if text in ("static-largest", "static-cheapest"):
        return {"kind": "static", "backends": text.removeprefix("static-")}
    if text == "random":
        return {"kind": "random"}
    if text.startswith("lambda="):
        value = text.removeprefix("lambda=")
        try:
            lam = float(value)
        except ValueError:
            raise UsageError(f"--target {text!r}: lambda must be a number, not {value!r}") from None
        if not lam >= 0 or lam == float("inf"):
            raise UsageError(f"--target {text!r}: lambda must be a finite number of at least 0")
        return {"kind": "lambda", "lambda": lam}
    if text.startswith("static:"):
        backends = {}
        for item in text.removeprefix("static:").split(","):
            key, sep, name = (part.strip() for part in item.partition("="))
            if not sep or not key or not name:
                raise UsageError(f"--target {text!r}: {item!r} is not site=backend or function=backend")
            backends[key] = name
        return {"kind": "static", "backends": backends}
    raise UsageError(
        f"--target {text!r}: expected static-largest, static-cheapest, random, lambda=X or static:SITE=BACKEND,..."
    )


def evaluate(args: argparse.Namespace) -> int:
    import httpx

    try:
        targets = [parse_target(text) for text in args.target or DEFAULT_TARGETS]
    except UsageError as exc:
        return _usage(str(exc))
    if args.last < 1:
        return _usage(f"--last must be at least 1, not {args.last}")
    body = {"targets": targets, "last": args.last, "draws": args.draws}
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    url = f"{args.router.rstrip('/')}/programs/{args.program_id}/evaluate"
    try:
        reply = httpx.post(url, json=body, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach the router at {args.router}: {exc}", file=sys.stderr)
        return 1
    if reply.status_code != 200:
        print(f"error: the router answered {reply.status_code}: {_detail(reply)}", file=sys.stderr)
        return 1
    report = reply.json()
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


def _detail(reply: Any) -> str:
    try:
        detail = reply.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else reply.text.strip() or reply.reason_phrase


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cost_text(value: float | None) -> str:
    """A cost per frame: four significant digits (0.01465, 12.34), whole units from 1000 on (73400);
    ``-`` when there is no estimate."""
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def no_positives(logged: dict[str, Any]) -> bool:
    """Whether the runs read hold no positive label (and the logging policy never answered yes), from
    the logging policy's own outcomes: F1 0 means no true positive, and accuracy 1 then leaves no
    false negative or false positive. F1 is then undefined, for every target alike."""
    return logged.get("f1") == 0 and logged.get("accuracy") == 1


def table(report: dict[str, Any]) -> str:
    """The report as a compact table (see the module's docstring)."""
    evaluations = report["evaluations"]
    binary = any(e["logged"].get("f1") is not None for e in evaluations)
    score = "F1" if binary else "acc"
    undefined = binary and bool(evaluations) and no_positives(evaluations[0]["logged"])

    def quality(estimate: dict[str, Any]) -> str:
        if undefined and estimate["f1"] is not None:
            return "n/a"
        return _number(estimate["f1"] if binary else estimate["accuracy"], 3)

    lines = [
        f"program {report['program_id']} ({report['algorithm']}, lambda {report['lambda']:g}): "
        f"{report['decisions']} labelled decisions read, {report['labelled']} the policy's, "
        f"{report['fallbacks']} fallbacks left out",
        "",
        f"{'target':<28} {'matched/runs':>12} {'effective':>9}"
        + "".join(f" {name + ' cost':>11} {name + ' ' + score:>9}" for name in ("IPS", "SNIPS", "DR")),
    ]
    if evaluations:
        first = evaluations[0]
        logged = first["logged"]
        runs = f"{first['runs']}/{first['runs']}"
        cells = f" {cost_text(logged['cost_per_frame']):>11} {quality(logged):>9}" * 3
        lines.append(f"{'logged (' + report['algorithm'] + ')':<28} {runs:>12} {first['runs']:>9.1f}{cells}")
    for evaluation in evaluations:
        runs = f"{evaluation['matched']}/{evaluation['runs']}"
        cells = "".join(
            f" {cost_text(evaluation[name]['cost_per_frame']):>11} {quality(evaluation[name]):>9}"
            for name in ("ips", "snips", "dr")
        )
        lines.append(f"{evaluation['target']:<28} {runs:>12} {evaluation['effective_runs']:>9.1f}{cells}")
    notes = []
    for evaluation in evaluations:
        notes += [f"{evaluation['target']}: uncovered: {gap}" for gap in evaluation["uncovered"]]
        if evaluation["skipped"]:
            notes.append(f"{evaluation['target']}: {evaluation['skipped']} runs skipped (no propensity logged)")
        if evaluation["unresolved"]:
            notes.append(f"{evaluation['target']}: {evaluation['unresolved']} runs no weight sample reproduced")
    if undefined:
        notes.append("F1 n/a: no run read has a positive label (and the logging policy never answered yes)")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def add_evaluate_command(commands: Any) -> None:
    """``fmprog program evaluate`` on the ``program`` subcommands."""
    command = commands.add_parser(
        "evaluate",
        help="estimate what other policies would have cost and scored on a program's labelled decisions "
        "(off-policy evaluation by the router); print a table",
    )
    command.add_argument("program_id", help="the registered program's id")
    command.add_argument("--router", required=True, help="the router's URL, e.g. http://127.0.0.1:8080")
    command.add_argument(
        "--target",
        action="append",
        help="static-largest, static-cheapest, random, lambda=X or static:SITE_OR_FUNCTION=BACKEND,... "
        f"(repeatable; default: {', '.join(DEFAULT_TARGETS)})",
    )
    command.add_argument(
        "--last",
        type=int,
        default=10_000,
        help="the program's last this many labelled decisions (default: %(default)s)",
    )
    command.add_argument(
        "--draws", type=int, default=4096, help="samples of a gate that decided several calls (default: %(default)s)"
    )
    command.add_argument(
        "--api-key",
        default=os.environ.get("FMPROG_ROUTER_API_KEY"),
        help="the router's bearer key (default: $FMPROG_ROUTER_API_KEY)",
    )
    command.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default: %(default)s)")
    command.add_argument("--json", action="store_true", help="print the router's report as JSON")
    command.set_defaults(handler=evaluate)
