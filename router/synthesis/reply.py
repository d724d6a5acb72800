"""Reading a model's reply for program synthesis: the program in it (``extract_program``), and
whether the answer a program gave on a dry-run frame fits the task kind (``answer_problem``).

Text only: nothing here runs the program; the sandbox validates whatever comes out.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

from pydantic import JsonValue

from fmprog.rewards import TaskKind

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_program(reply: str) -> str:
    """The program in a model's reply: the fenced block that defines ``execute_command`` (else the
    first Python block, else the first block, else the whole reply), with usage lines after the
    function dropped, a lone function of another name renamed, and a bare body wrapped in
    ``def execute_command(image):``. Anything else is left to the validator to refuse."""
    blocks = _FENCE.findall(reply)
    if blocks:
        code = next(
            (body for _, body in blocks if "def execute_command" in body),
            next((body for lang, body in blocks if lang.lower() in ("python", "py", "python3")), blocks[0][1]),
        )
    else:
        code = reply
    code = textwrap.dedent(code.expandtabs(4)).strip("\n")
    return _entry_point(code).rstrip() + "\n"


def _entry_point(code: str) -> str:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return code  # the validator names the problem
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    lines = code.splitlines()
    usage = [node for node in tree.body if functions and _is_usage(node)]
    for node in sorted(usage, key=lambda n: n.lineno, reverse=True):
        del lines[node.lineno - 1 : node.end_lineno]
    if not any(f.name == "execute_command" for f in functions):
        if len(functions) == 1:
            line = functions[0].lineno - 1
            lines[line] = lines[line].replace(f"def {functions[0].name}(", "def execute_command(", 1)
        elif not functions and tree.body:
            lines = ["def execute_command(image):", *(f"    {line}" if line else line for line in lines)]
    return "\n".join(lines)


def _is_usage(node: ast.stmt) -> bool:
    """A top-level statement that runs something (a call, ``if __name__ == ...``): an example of
    use the model added after the program, which the sandbox would refuse at module level."""
    if isinstance(node, ast.Expr):
        return not isinstance(node.value, ast.Constant)
    if isinstance(node, ast.If):
        return any(isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(node.test))
    if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
        return node.value is not None and any(isinstance(n, ast.Call) for n in ast.walk(node.value))
    return False


def answer_problem(kind: TaskKind, answer: JsonValue) -> str | None:
    """Why a dry-run answer does not fit the task kind, or None."""
    shown = _shown(answer)
    if kind == "binary":
        if isinstance(answer, str) and answer.strip().lower() in ("yes", "no"):
            return None
        hint = " (bool_to_yesno turns a bool into one)" if isinstance(answer, bool) else ""
        return f'it returned {shown}, but a binary task must return "yes" or "no"{hint}'
    if answer is None:
        return "it returned None: every path of the program must return an answer"
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        return f"it returned {shown}, but an open task must return a short answer (text or a number)"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
