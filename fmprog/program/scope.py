"""What a program asks that its backends cannot see, known before it runs.

A call site whose arguments are literals sends the same noun or question on every frame: the
detector's noun for ``find("person")``, "Is this person red?" for ``verify_property("person",
"red")``. ``site_text`` rebuilds that text from the source, as the program API would send it, and
``site_scope`` asks each backend's declared vocabulary (``fmprog.vision.scope``) whether it is
inside. ``usable_backends`` keeps, of a site's backends, those that can see it (all of them when
none can: the call is made anyway and marked), and ``scope_warnings`` names each site that no
backend can see, for the registration's warnings. A site with computed arguments (variables,
f-strings) is not checked here; its calls are still marked when they run.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence

from fmprog.backends.config import BackendSpec, Function
from fmprog.program.api import DEFAULT_QUERY, NUMBER_QUESTION, choice_question, property_question
from fmprog.program.callsites import CallSite, is_numeric_name
from fmprog.vision.scope import out_of_vocabulary


def _literal(node: ast.expr | None) -> object:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


_NOT_LITERAL = object()


def site_text(site: CallSite) -> str | None:
    """The noun or question a site sends to its backend on every frame, when its arguments are
    literals; None when they are computed or the function takes no text (``read_text``, and LLM
    prompts, which no vocabulary covers)."""
    if site.function not in (Function.detect, Function.vqa):
        return None
    try:
        call = ast.parse(site.source.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(call, ast.Call):
        return None
    args = [_literal(a) for a in call.args]
    keywords = {k.arg: _literal(k.value) for k in call.keywords}
    if any(a is _NOT_LITERAL for a in (*args, *keywords.values())):
        return None

    def argument(position: int, name: str) -> object:
        return args[position] if len(args) > position else keywords.get(name)

    if site.method in ("find", "exists"):
        name = argument(0, "object_name")
        if not isinstance(name, str):
            return None
        if site.method == "exists" and site.function == Function.vqa and is_numeric_name(name):
            return NUMBER_QUESTION
        return name
    if site.method == "verify_property":
        name, attribute = argument(0, "object_name"), argument(1, "attribute")
        return property_question(name, attribute) if isinstance(name, str) and isinstance(attribute, str) else None
    if site.method in ("query", "simple_query"):
        question = argument(0, "question")
        if question is None:
            return DEFAULT_QUERY
        return question if isinstance(question, str) else None
    if site.method == "best_text_match":
        options, prefix = argument(0, "option_list"), argument(1, "prefix")
        listed = isinstance(options, list | tuple) and options and all(isinstance(o, str) for o in options)
        if listed and (prefix is None or isinstance(prefix, str)):
            return choice_question(list(options), prefix)  # type: ignore[arg-type]
    return None


def site_scope(site: CallSite, specs: Sequence[BackendSpec]) -> dict[str, str | None]:
    """For each backend, why the site's literal text is outside its vocabulary (None: inside, or
    not known before the program runs)."""
    text = site_text(site)
    return {spec.name: out_of_vocabulary(spec.vocabulary, site.function.value, text) for spec in specs}


def site_reach(site: CallSite, specs: Sequence[BackendSpec]) -> tuple[list[BackendSpec], dict[str, str]]:
    """The backends that can see what the site asks (all of them when none can), and, when none
    can, each backend with why (empty otherwise)."""
    scope = site_scope(site, specs)
    inside = [spec for spec in specs if scope[spec.name] is None]
    if inside or not specs:
        return inside or list(specs), {}
    return list(specs), {name: reason for name, reason in scope.items() if reason is not None}


def usable_backends(site: CallSite, specs: Sequence[BackendSpec]) -> list[BackendSpec]:
    """The backends that can see what the site asks (all of them when none can)."""
    return site_reach(site, specs)[0]


def unseen(site: CallSite, specs: Sequence[BackendSpec]) -> dict[str, str]:
    """When none of ``specs`` can see what the site asks: each backend with why; else empty."""
    return site_reach(site, specs)[1]


def warning_line(site: CallSite, reasons: Mapping[str, str]) -> str:
    """One line: the site, then each reason with the backends it holds for."""
    by_reason: dict[str, list[str]] = {}
    for backend, reason in reasons.items():
        by_reason.setdefault(reason, []).append(backend)
    return f"line {site.line}: {site.id}: " + "; ".join(
        f"{reason} ({', '.join(names)})" for reason, names in by_reason.items()
    )


def scope_warnings(sites: Sequence[tuple[CallSite, Sequence[BackendSpec]]]) -> list[str]:
    """A warning line for each site (with its backends) that none of its backends can see."""
    return [warning_line(site, reasons) for site, specs in sites if (reasons := unseen(site, specs))]
