"""What a program may touch, checked before it runs and guarded while it runs.

Two layers:

1. **Static policy** (``ProgramTransformer``): RestrictedPython's transformer (no names or
   attributes starting with ``_``, no ``exec``/``eval``, no frame or code attributes, attribute,
   item and iteration access rewritten into guard calls), extended here with what programs do
   not need: classes, generators, ``with``, imports outside an allow-list, computed format
   specifications, and module-level code other than imports, definitions and constants. The same
   pass rewrites every routed call into ``_fm_routed_(site_id, receiver, method, ...)``, counts a
   step at each loop iteration and function entry, and routes the amplifying operators
   (``+ * ** << %``), direct ``str()``/``repr()`` calls and f-strings (each replacement field,
   and the text built so far) through size guards.

2. **Run guards** (``RunGuards``), one per run: an allow-list of attributes per type (nothing
   outside it is reachable, so the program sees only the program API and plain data), a step
   budget, a wall-clock deadline, and a ceiling on the size of any string, sequence or integer a
   single operation may build, plus a coarse check of the process's resident memory every 1024
   steps.

What this cannot do: preempt one long C-level operation that no guard anticipates (for example
comparing or hashing two deeply nested, heavily shared containers). Python offers no way to
interrupt such an operation inside the process; the limits above bound every operation we know of.
"""

from __future__ import annotations

import ast
import math
import operator
import os
import re
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from RestrictedPython import RestrictingNodeTransformer
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence

from fmprog.program import api
from fmprog.program.callsites import ROUTED_METHODS, routed_method, site_id
from fmprog.program.errors import (
    ResourceLimitExceeded,
    SandboxViolation,
    StepBudgetExceeded,
    TimeLimitExceeded,
)

PROGRAM_FILENAME = "<program>"
ENTRY_POINT = "execute_command"


class ExecutionLimits(BaseModel):
    """Per-run limits. Defaults fit programs in the authors' style with room to spare."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int = Field(20_000, ge=1, description="Loop iterations plus function calls.")
    timeout_s: float = Field(10.0, gt=0, description="Wall clock for one run, backend calls included.")
    max_length: int = Field(
        10_000, ge=16, description="Largest string (chars) or sequence (items) one operation may build."
    )
    max_int_bits: int = Field(4_096, ge=64, description="Largest integer one operation may build.")
    max_memory_mb: int = Field(
        1_024, ge=0, description="Abort if the process grows by more than this during a run (0: off)."
    )
    max_output_chars: int = Field(10_000, ge=0, description="Text a program may print.")
    max_answer_bytes: int = Field(
        65_536,
        ge=16,
        description="Largest answer, in bytes of its JSON encoding (compact, UTF-8): a larger one ends the run "
        "with resource_limit and is not kept.",
    )


# --------------------------------------------------------------------------------------------
# Static policy


ALLOWED_IMPORTS = ("math", "typing")
_MAX_FORMAT_DIGITS = 4  # widths and precisions in format specifications: at most 9999
_GUARDED_BINOPS: dict[type[ast.operator], str] = {
    ast.Add: "_fm_add_",
    ast.Mult: "_fm_mul_",
    ast.Pow: "_fm_pow_",
    ast.LShift: "_fm_lshift_",
    ast.Mod: "_fm_mod_",
}
_RENDERING_CALLS = frozenset({"str", "repr"})
# Builtins a program might reach for that give more than the program API; named so that
# validation rejects them up front instead of failing with a NameError at run time.
FORBIDDEN_NAMES = frozenset(
    "__import__ breakpoint bytearray bytes classmethod compile delattr dir eval exec exit format "
    "getattr globals hasattr hash help id input iter locals memoryview object open property quit "
    "setattr staticmethod super type vars".split()
)


def _name(identifier: str) -> ast.Name:
    return ast.Name(id=identifier, ctx=ast.Load())


def _call(identifier: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=_name(identifier), args=list(args), keywords=[])


class ProgramTransformer(RestrictingNodeTransformer):
    """RestrictedPython's policy, narrowed to the program language and instrumented."""

    def visit_Module(self, node: ast.Module) -> ast.Module:
        self._bound = bound_names(node)
        entry_points = 0
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef):
                entry_points += stmt.name == ENTRY_POINT
            elif isinstance(stmt, ast.Import | ast.ImportFrom):
                pass
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                pass  # docstring
            elif isinstance(stmt, ast.Assign | ast.AnnAssign) and not any(
                isinstance(n, ast.Call | ast.Lambda) for n in ast.walk(stmt)
            ):
                pass  # constants
            else:
                self.error(
                    stmt, "only imports, function definitions and constant assignments may appear at module level"
                )
        if not entry_points:
            self.error(node, f"the program must define {ENTRY_POINT}(image)")
        node = super().visit_Module(node)
        return ast.fix_missing_locations(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in FORBIDDEN_NAMES and node.id not in self._bound:
            self.error(node, f"{node.id!r} is not available to programs")
        return super().visit_Name(node)

    # Constructs programs do not need.

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self.error(node, "class definitions are not allowed in programs")
        return node

    def _no_generators(self, node: ast.AST) -> ast.AST:
        self.error(node, "generators (yield) are not allowed in programs")
        return node

    visit_Yield = visit_YieldFrom = _no_generators

    def visit_With(self, node: ast.With) -> ast.AST:
        self.error(node, "with statements are not allowed in programs")
        return node

    def visit_TryStar(self, node: ast.AST) -> ast.AST:
        self.error(node, "except* is not allowed in programs")
        return node

    def _check_import(self, node: ast.Import | ast.ImportFrom) -> ast.AST:
        modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.level:
            self.error(node, "relative imports are not allowed in programs")
        for module in modules:
            if module not in ALLOWED_IMPORTS:
                self.error(
                    node, f"import of {module!r} is not allowed (programs may import: {', '.join(ALLOWED_IMPORTS)})"
                )
        if any(alias.name == "*" for alias in node.names):
            self.error(node, "'import *' is not allowed in programs")
        return super().check_import_names(node)

    visit_Import = visit_ImportFrom = _check_import

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        spec = ""
        if node.format_spec is not None:
            for part in ast.walk(node.format_spec):
                if isinstance(part, ast.FormattedValue):
                    self.error(node, "computed format specifications (nested braces) are not allowed")
                elif (
                    isinstance(part, ast.Constant)
                    and isinstance(part.value, str)
                    and any(len(d) > _MAX_FORMAT_DIGITS for d in re.findall(r"\d+", part.value))
                ):
                    self.error(node, "format width or precision too large (at most 9999)")
            spec = "".join(str(part.value) for part in ast.walk(node.format_spec) if isinstance(part, ast.Constant))
        # The guards format the piece themselves (conversion, then specification) and count it
        # towards the f-string it belongs to; what is left for Python is to join plain text.
        conversion = chr(node.conversion) if node.conversion >= 0 else ""
        piece = _call("_fm_fpiece_", self.visit(node.value), ast.Constant(conversion), ast.Constant(spec))
        return ast.copy_location(
            ast.FormattedValue(value=ast.copy_location(piece, node.value), conversion=-1, format_spec=None), node
        )

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        literal_chars = sum(len(v.value) for v in node.values if isinstance(v, ast.Constant) and type(v.value) is str)
        node = self.node_contents_visit(node)
        # _fm_fclose_(_fm_fopen_(n), f"..."): arguments run left to right, so the f-string is opened
        # before its first piece is formatted and closed (its result checked) after the last.
        opened = ast.copy_location(_call("_fm_fopen_", ast.Constant(literal_chars)), node)
        return ast.copy_location(_call("_fm_fclose_", opened, node), node)

    # Instrumentation.

    def visit_Call(self, node: ast.Call) -> ast.AST:
        method = routed_method(node)
        if method is None:
            func = node.func
            node = super().visit_Call(node)
            if (
                isinstance(func, ast.Name)
                and func.id in _RENDERING_CALLS
                and len(node.args) == 1
                and not node.keywords
                and not isinstance(node.args[0], ast.Starred)
            ):
                return ast.copy_location(_call("_fm_render_", node.func, node.args[0]), node)
            return node
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            self.error(node, f"{method}() is a routed call and takes plain arguments (no * or **)")
            return node
        receiver = self.visit(node.func.value) if isinstance(node.func, ast.Attribute) else ast.Constant(None)
        routed = ast.Call(
            func=_name("_fm_routed_"),
            args=[
                ast.Constant(site_id(node, method)),
                receiver,
                ast.Constant(method),
                *(self.visit(a) for a in node.args),
            ],
            keywords=[self.visit(k) for k in node.keywords],
        )
        return ast.copy_location(routed, node)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        node = self.node_contents_visit(node)
        guard = _GUARDED_BINOPS.get(type(node.op))
        if guard is None:
            return node
        return ast.copy_location(_call(guard, node.left, node.right), node)

    def visit_While(self, node: ast.While) -> ast.AST:
        node = self.node_contents_visit(node)
        node.body.insert(0, ast.Expr(_call("_fm_step_")))
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node = super().visit_FunctionDef(node)
        _strip_annotations(node.args)
        node.returns = None
        node.body.insert(0, ast.Expr(_call("_fm_step_")))
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        node = super().visit_Lambda(node)
        node.body = ast.copy_location(_call("_fm_stepv_", node.body), node.body)
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        # Annotations are never needed and would be evaluated at module level: drop them.
        if node.value is None:
            return ast.copy_location(ast.Pass(), node)
        return self.visit(ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node))

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        if node.type is None:  # a bare except would catch the run's own halts
            node.type = ast.copy_location(_name("Exception"), node)
        return super().visit_ExceptHandler(node)


def bound_names(tree: ast.AST) -> set[str]:
    """Every name the program itself binds anywhere (assignments, parameters, definitions, imports)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.FunctionDef):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound


def _strip_annotations(args: ast.arguments) -> None:
    for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
        if arg is not None:
            arg.annotation = None


# --------------------------------------------------------------------------------------------
# Run guards


class ModuleProxy:
    """The part of a module programs may use; its attributes are exactly ``members``."""

    def __init__(self, name: str, members: dict[str, Any]):
        self.__dict__.update(members)
        self.__name = name

    def _module_name(self) -> str:
        return self.__name

    def __repr__(self) -> str:
        return f"<module {self.__name}>"


_MATH_MEMBERS = (
    "acos asin atan atan2 ceil copysign cos degrees dist e exp fabs floor fmod gcd hypot inf isclose "
    "isfinite isinf isnan isqrt log log10 log2 modf nan pi radians sin sqrt tan tau trunc"
).split()
MODULES = {
    "math": ModuleProxy("math", {name: getattr(math, name) for name in _MATH_MEMBERS}),
    # Type hints are stripped before a program runs; importing them only has to succeed.
    "typing": ModuleProxy(
        "typing",
        {"Any": None, "Dict": dict, "List": list, "Optional": None, "Set": set, "Tuple": tuple, "Union": None},
    ),
}

_STR_METHODS = (
    "capitalize casefold count endswith find index isalnum isalpha isdecimal isdigit islower isnumeric "
    "isspace istitle isupper lower lstrip partition removeprefix removesuffix rfind rindex rpartition "
    "rsplit rstrip split splitlines startswith strip swapcase title upper"
).split()
_LIST_METHODS = "append clear copy count index insert pop remove reverse sort".split()
_DICT_METHODS = "clear copy get items keys pop popitem setdefault update values".split()
_SET_METHODS = (
    "add clear copy difference difference_update discard intersection intersection_update isdisjoint "
    "issubset issuperset pop remove symmetric_difference union update"
).split()
_NUMBER_ATTRIBUTES = "real imag conjugate is_integer".split()
PATCH_ATTRIBUTES = (
    "left lower right upper width height horizontal_center vertical_center cropped_image "
    "crop overlaps_with compute_depth"
).split()

# type -> attribute -> None (plain) or name of a RunGuards method that wraps the bound attribute
_ATTRIBUTES: dict[type, dict[str, str | None]] = {
    str: {
        **dict.fromkeys(_STR_METHODS),
        "join": "_str_join",
        "replace": "_str_replace",
        "center": "_str_pad",
        "ljust": "_str_pad",
        "rjust": "_str_pad",
        "zfill": "_str_pad",
        "expandtabs": "_str_expandtabs",
    },
    list: {**dict.fromkeys(_LIST_METHODS), "extend": "_list_extend"},
    tuple: dict.fromkeys(["count", "index"]),
    dict: dict.fromkeys(_DICT_METHODS),
    set: dict.fromkeys(_SET_METHODS),
    frozenset: dict.fromkeys(
        ["copy", "difference", "intersection", "isdisjoint", "issubset", "issuperset", "symmetric_difference", "union"]
    ),
    int: dict.fromkeys([*_NUMBER_ATTRIBUTES, "bit_length"]),
    bool: dict.fromkeys(_NUMBER_ATTRIBUTES),
    float: dict.fromkeys(_NUMBER_ATTRIBUTES),
    api.ImagePatch: dict.fromkeys(PATCH_ATTRIBUTES),
    api.Frame: dict.fromkeys(["width", "height"]),
}
_SEQUENCES = (str, list, tuple, bytes)
_SCALARS = (str, int, float, bool, type(None))
_EXCEPTIONS = (
    ArithmeticError,
    AssertionError,
    AttributeError,
    Exception,
    IndexError,
    KeyError,
    LookupError,
    NotImplementedError,
    RuntimeError,
    StopIteration,
    TypeError,
    ValueError,
    ZeroDivisionError,
)
_CONVERSIONS: dict[str, Callable[[Any], str]] = {"s": str, "r": repr, "a": ascii}
_PRINTF_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?[a-zA-Z%]")

SAFE_BUILTINS: dict[str, Any] = {
    f.__name__: f
    for f in (
        abs,
        all,
        any,
        bin,
        bool,
        callable,
        chr,
        dict,
        divmod,
        enumerate,
        filter,
        float,
        frozenset,
        hex,
        int,
        isinstance,
        len,
        list,
        map,
        max,
        min,
        next,
        oct,
        ord,
        reversed,
        round,
        set,
        slice,
        sorted,
        str,
        tuple,
        zip,
        *_EXCEPTIONS,
    )
}


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class RunGuards:
    """The guard functions one run's program calls, with that run's counters."""

    def __init__(self, limits: ExecutionLimits, started: float):
        self.limits = limits
        self.steps = 0
        self.deadline = started + limits.timeout_s
        self._max_len = limits.max_length
        self._max_bits = limits.max_int_bits
        self._output: list[str] = []
        self._output_chars = 0
        self._fstrings: list[int] = []  # characters built so far by each f-string being built
        self._rss_start = _resident_bytes() if limits.max_memory_mb else None

    # Budget and clock.

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise StepBudgetExceeded(f"the program exceeded its budget of {self.limits.max_steps} steps")
        if perf_counter() > self.deadline:
            raise TimeLimitExceeded(f"the program exceeded its time limit of {self.limits.timeout_s:g} s")
        if not self.steps & 1023 and self._rss_start is not None:
            self._check_memory()

    def step_value(self, value: Any) -> Any:
        self.step()
        return value

    def check_deadline(self) -> None:
        if perf_counter() > self.deadline:
            raise TimeLimitExceeded(f"the program exceeded its time limit of {self.limits.timeout_s:g} s")

    def _check_memory(self) -> None:
        now = _resident_bytes()
        if now is not None and now - self._rss_start > self.limits.max_memory_mb * 2**20:
            raise ResourceLimitExceeded(
                f"the process grew by more than {self.limits.max_memory_mb} MB while the program ran"
            )

    def getiter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        step = self.step
        for item in iterable:
            step()
            yield item

    # Attribute, item and write access.

    def getattr(self, obj: Any, name: str) -> Any:
        kind = type(obj)
        if kind is ModuleProxy:
            allowed = dict.fromkeys(vars(obj))
        elif isinstance(obj, BaseException):
            allowed = {"args": None}
        else:
            allowed = _ATTRIBUTES.get(kind)
        if isinstance(obj, api.ImagePatch) and name in ROUTED_METHODS:
            raise SandboxViolation(
                f"{name}() is a routed call: call it directly, as patch.{name}(...), so it has a call site"
            )
        if allowed is None or name not in allowed or name.startswith("_"):
            owner = obj._module_name() if kind is ModuleProxy else kind.__name__
            raise SandboxViolation(f"'{owner}.{name}' is not available to programs")
        wrapper = allowed[name]
        if wrapper is None:
            return getattr(obj, name)
        return getattr(self, wrapper)(obj, name)

    @staticmethod
    def getitem(obj: Any, key: Any) -> Any:
        return obj[key]

    def write(self, obj: Any) -> Any:
        if type(obj) is dict:
            return obj
        if type(obj) is list:
            return _GuardedList(obj, self)
        raise SandboxViolation(f"programs may not modify '{type(obj).__name__}' objects")

    # Size guards for amplifying operations.

    def _check_length(self, length: int) -> None:
        if length > self._max_len:
            raise ResourceLimitExceeded(f"the program tried to build a value of {length} items (limit {self._max_len})")

    def _check_bits(self, bits: int) -> None:
        if bits > self._max_bits:
            raise ResourceLimitExceeded(
                f"the program tried to build an integer of about {bits} bits (limit {self._max_bits})"
            )

    def add(self, a: Any, b: Any) -> Any:
        if isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES):
            self._check_length(len(a) + len(b))
        return a + b

    def mul(self, a: Any, b: Any) -> Any:
        self._check_mul(a, b)
        return a * b

    def _check_mul(self, a: Any, b: Any) -> None:
        if isinstance(a, int) and isinstance(b, int):
            self._check_bits(a.bit_length() + b.bit_length())
        elif isinstance(a, _SEQUENCES) and isinstance(b, int):
            self._check_length(len(a) * b)
        elif isinstance(b, _SEQUENCES) and isinstance(a, int):
            self._check_length(len(b) * a)

    def pow(self, a: Any, b: Any, mod: Any = None) -> Any:
        if mod is None and isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
            self._check_bits(a.bit_length() * b)
        return pow(a, b, mod)

    def lshift(self, a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int) and a and b > 0:
            self._check_bits(a.bit_length() + b)
        return a << b

    def mod(self, a: Any, b: Any) -> Any:
        if isinstance(a, str):
            for width, precision in _PRINTF_FIELD.findall(a):
                for number in (width, precision):
                    if number == "*":
                        raise ResourceLimitExceeded("'*' widths in % formatting are not allowed")
                    if number and int(number) > self._max_len:
                        self._check_length(int(number))
            self.check_render(b)
        return a % b

    _INPLACE: ClassVar[dict[str, Callable[[Any, Any], Any]]] = {
        "+=": operator.iadd,
        "-=": operator.isub,
        "*=": operator.imul,
        "/=": operator.itruediv,
        "//=": operator.ifloordiv,
        "%=": operator.imod,
        "**=": operator.ipow,
        "<<=": operator.ilshift,
        ">>=": operator.irshift,
        "&=": operator.iand,
        "|=": operator.ior,
        "^=": operator.ixor,
        "@=": operator.imatmul,
    }

    def inplacevar(self, op: str, a: Any, b: Any) -> Any:
        if op == "+=":
            return self.add(a, b) if not isinstance(a, list) else self._list_grow(a, b, operator.iadd)
        if op == "*=":
            self._check_mul(a, b)
        elif op == "**=":
            return self.pow(a, b)
        elif op == "<<=":
            return self.lshift(a, b)
        elif op == "%=":
            return self.mod(a, b)
        return self._INPLACE[op](a, b)

    def check_render(self, value: Any) -> None:
        """Refuse to render as text a value whose text would exceed the length limit."""
        if isinstance(value, _SCALARS):
            if isinstance(value, str):
                self._check_length(len(value))
            return
        budget, pending = self._max_len, [value]
        while pending:
            item = pending.pop()
            budget -= 1 + (len(item) if isinstance(item, str) else 0)
            if budget < 0 or len(pending) > self._max_len:
                raise ResourceLimitExceeded(f"value too large to render as text (limit {self._max_len})")
            if isinstance(item, list | tuple | set | frozenset):
                pending.extend(item)
            elif isinstance(item, dict):
                pending.extend(item.keys())
                pending.extend(item.values())

    # f-strings: the size of the text built so far is checked piece by piece, as str.join's
    # result is checked before it is built, so 1,000 pieces of 9,999 characters each stop at the
    # piece that crosses the limit instead of after ten million characters.

    def fstring_open(self, literal_chars: int) -> int:
        """Start one f-string whose literal text has ``literal_chars`` characters; its depth."""
        self._check_length(literal_chars)
        self._fstrings.append(literal_chars)
        return len(self._fstrings) - 1

    def fstring_piece(self, value: Any, conversion: str, spec: str) -> str:
        """Format one replacement field as Python would, counting it towards its f-string."""
        self.check_render(value)
        if conversion:
            value = _CONVERSIONS[conversion](value)
        text = format(value, spec)
        if self._fstrings:
            built = self._fstrings[-1] + len(text)
            self._check_length(built)
            self._fstrings[-1] = built
        return text

    def fstring_close(self, depth: int, text: str) -> str:
        """End the f-string opened at ``depth`` (and any a raised error left open inside it)."""
        del self._fstrings[depth:]
        self._check_length(len(text))
        return text

    def render(self, func: Callable[[Any], Any], value: Any) -> Any:
        if func is str or func is repr or func is self.repr:
            self.check_render(value)
        return func(value)

    def repr(self, value: Any) -> str:
        self.check_render(value)
        return repr(value)

    # Wrapped methods of builtin types.

    def _str_join(self, s: str, _name: str) -> Callable[[Iterable[str]], str]:
        def join(iterable: Iterable[str]) -> str:
            items = list(iterable)
            self._check_length(len(items))
            self._check_length(sum(len(i) for i in items if isinstance(i, str)) + len(s) * max(len(items) - 1, 0))
            return s.join(items)

        return join

    def _str_replace(self, s: str, _name: str) -> Callable[..., str]:
        def replace(old: str, new: str, count: int = -1) -> str:
            hits = s.count(old) if old else len(s) + 1
            if count >= 0:
                hits = min(hits, count)
            self._check_length(len(s) + hits * (len(new) - len(old)))
            return s.replace(old, new, count)

        return replace

    def _str_pad(self, s: str, name: str) -> Callable[..., str]:
        method = getattr(s, name)

        def pad(width: int, *args: Any) -> str:
            self._check_length(width)
            return method(width, *args)

        return pad

    def _str_expandtabs(self, s: str, _name: str) -> Callable[..., str]:
        def expandtabs(tabsize: int = 8) -> str:
            self._check_length(len(s) + s.count("\t") * max(tabsize, 0))
            return s.expandtabs(tabsize)

        return expandtabs

    def _list_extend(self, target: list, _name: str) -> Callable[[Iterable[Any]], None]:
        def extend(iterable: Iterable[Any]) -> None:
            self._list_grow(target, iterable, list.extend)

        return extend

    def _list_grow(self, target: list, iterable: Iterable[Any], grow: Callable[[list, list], Any]) -> Any:
        items = iterable if isinstance(iterable, list | tuple) else list(iterable)
        self._check_length(len(target) + len(items))
        result = grow(target, items)
        return target if result is None else result

    # Builtins bound to the run.

    def range(self, *args: int) -> range:
        r = range(*args)
        try:
            length = len(r)
        except OverflowError:
            length = self._max_len + 1
        self._check_length(length)
        return r

    def sum(self, iterable: Iterable[Any], start: Any = 0) -> Any:
        if not isinstance(start, int | float):
            raise TypeError("sum() in programs adds numbers only")
        return sum(iterable, start)

    def import_(self, name: str, globals=None, locals=None, fromlist=(), level=0) -> ModuleProxy:
        if level or name not in MODULES:
            raise SandboxViolation(f"import of {name!r} is not allowed")
        return MODULES[name]

    def print_(self, _getattr: Any = None) -> _PrintCollector:
        return _PrintCollector(self)

    def write_output(self, text: str) -> None:
        room = self.limits.max_output_chars - self._output_chars
        if room > 0:
            self._output.append(text[:room])
            self._output_chars += min(len(text), room)

    @property
    def output(self) -> str:
        return "".join(self._output)

    def globals(self, routed: Callable[..., Any]) -> dict[str, Any]:
        """A fresh global namespace for one execution of a compiled program."""
        builtins = {
            **SAFE_BUILTINS,
            "range": self.range,
            "sum": self.sum,
            "pow": self.pow,
            "repr": self.repr,
            "__import__": self.import_,
        }
        return {
            "__builtins__": builtins,
            "__name__": "program",
            "ImagePatch": api.ImagePatch,
            "distance": api.distance,
            "bool_to_yesno": api.bool_to_yesno,
            "to_numeric": api.to_numeric,
            "coerce_to_numeric": api.to_numeric,
            "llm_query": _indirect_llm_query,
            "math": MODULES["math"],
            "_fm_routed_": routed,
            "_fm_step_": self.step,
            "_fm_stepv_": self.step_value,
            "_fm_add_": self.add,
            "_fm_mul_": self.mul,
            "_fm_pow_": self.pow,
            "_fm_lshift_": self.lshift,
            "_fm_mod_": self.mod,
            "_fm_fopen_": self.fstring_open,
            "_fm_fpiece_": self.fstring_piece,
            "_fm_fclose_": self.fstring_close,
            "_fm_render_": self.render,
            "_getattr_": self.getattr,
            "_getitem_": self.getitem,
            "_getiter_": self.getiter,
            "_write_": self.write,
            "_inplacevar_": self.inplacevar,
            "_apply_": _apply,
            "_print_": self.print_,
            "_unpack_sequence_": guarded_unpack_sequence,
            "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        }


def program_names() -> frozenset[str]:
    """Every name a program may use without binding it: the program API in its global namespace,
    the builtins the sandbox provides, and ``print`` (with RestrictedPython's ``printed``)."""
    namespace = RunGuards(ExecutionLimits(max_memory_mb=0), 0.0).globals(_apply)
    names = [*namespace, *namespace["__builtins__"], "print", "printed"]
    return frozenset(name for name in names if not name.startswith("_"))


def _apply(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return func(*args, **kwargs)


def _indirect_llm_query(*_args: Any, **_kwargs: Any) -> str:
    raise SandboxViolation("llm_query() is a routed call: call it directly, as llm_query(...), so it has a call site")


class _GuardedList:
    """What ``_write_`` hands back for ``items[i] = x``: slice assignment may not grow past the limit."""

    __slots__ = ("_guards", "_target")

    def __init__(self, target: list, guards: RunGuards):
        self._target = target
        self._guards = guards

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(key, slice):
            value = list(value)
            removed = len(range(*key.indices(len(self._target))))
            self._guards._check_length(len(self._target) - removed + len(value))
        self._target[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._target[key]


class _PrintCollector:
    """Collects ``print`` output into the run's trace (RestrictedPython's print protocol)."""

    def __init__(self, guards: RunGuards):
        self._guards = guards

    def _call_print(self, *objects: Any, sep: str = " ", end: str = "\n") -> None:
        for obj in objects:
            self._guards.check_render(obj)
        self._guards.write_output(str(sep).join(str(o) for o in objects) + str(end))

    def __call__(self) -> str:
        return self._guards.output
