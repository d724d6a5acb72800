"""Call sites: every routed call written in a program's source.

A call site is one AST node, so two textually identical calls are two sites, and a call whose
arguments are computed (f-strings, variables) keeps its identity. Its id is
``"{method}@{line}:{col}"``, the position of the method's name in the source: stable for a given
source, unique (no two calls share a name token), and readable in traces.

Routed calls are attribute calls ``x.find(..)``, ``x.exists(..)``, ``x.verify_property(..)``,
``x.query(..)`` (``x.simple_query(..)`` is an alias), ``x.best_text_match(..)``,
``x.llm_query(..)``, ``x.read_text()``, and the module-level function ``llm_query(..)`` of
ViperGPT-style programs (each function's record in ``fmprog.backends.functions`` lists its methods).
As in the authors' code the receiver's type is unknown statically: an attribute call such as
``"abc".find("b")`` on a string is a site too, which never executes as a routed call and so never
costs anything. Calls on literal receivers (``"abc".find``) are excluded since they cannot be
patches.

Nested invocations belong to the site the program wrote: ``exists`` runs one detection and
``verify_property`` one VQA question, charged to the ``exists`` or ``verify_property`` site. The
only exception to a method's family is ``exists`` with a literal numeric name (``"3"``,
``"number 3"``): the authors' code answers it with VQA ("What number is written in the image?"),
so such a site's family is ``vqa``. A computed name always uses detection, because a site's
family must be known before the policy decides.
"""

from __future__ import annotations

import ast

from pydantic import BaseModel, ConfigDict

from fmprog.backends.config import Function
from fmprog.backends.functions import routed_methods

# Each routed method and the function its call sites call, from the table of neural functions.
ROUTED_METHODS: dict[str, Function] = routed_methods()
MODULE_ROUTED_FUNCTIONS = frozenset({"llm_query"})


class CallSite(BaseModel):
    """One routed call in a program's source."""

    model_config = ConfigDict(frozen=True)

    id: str
    method: str
    function: Function
    line: int
    col: int
    source: str


def is_numeric_name(name: str) -> bool:
    """The authors' rule for ``exists``: a digit string, or a name starting with 'number'."""
    return name.isdigit() or name.lower().startswith("number")


def routed_method(node: ast.Call) -> str | None:
    """The routed method a call node invokes, or None if it is not a routed call."""
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in ROUTED_METHODS:
        if isinstance(func.value, ast.Constant | ast.JoinedStr | ast.List | ast.Dict | ast.Tuple | ast.Set):
            return None
        return func.attr
    if isinstance(func, ast.Name) and func.id in MODULE_ROUTED_FUNCTIONS:
        return func.id
    return None


def site_id(node: ast.Call, method: str) -> str:
    line, col = _name_position(node)
    return f"{method}@{line}:{col}"


def site_function(node: ast.Call, method: str) -> Function:
    if method == "exists" and node.args:
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and is_numeric_name(arg.value):
            return Function.vqa
    return ROUTED_METHODS[method]


def _name_position(node: ast.Call) -> tuple[int, int]:
    func = node.func
    if isinstance(func, ast.Attribute):
        # The method name ends where the attribute node ends.
        return func.end_lineno or func.lineno, (func.end_col_offset or 0) - len(func.attr)
    return func.lineno, func.col_offset


def find_call_sites(tree: ast.AST, source: str) -> list[CallSite]:
    """All call sites in source order (by line, then column)."""
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (method := routed_method(node)) is not None:
            line, col = _name_position(node)
            sites.append(
                CallSite(
                    id=site_id(node, method),
                    method=method,
                    function=site_function(node, method),
                    line=line,
                    col=col,
                    source=ast.get_source_segment(source, node) or "",
                )
            )
    sites.sort(key=lambda s: (s.line, s.col))
    return sites
