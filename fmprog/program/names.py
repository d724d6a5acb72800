"""Names a program uses that do not exist, found before it runs.

Two mistakes compile and then stop a run on the first frame that reaches them:

- a method or attribute ``ImagePatch`` does not have, used on a value known to be a patch
  (``image_patch.fnd("car")``: "ImagePatch has no method 'fnd'; did you mean 'find'?");
- a call of a name the program never binds and that is neither a builtin the sandbox provides
  nor part of the program API (``count_objects(patches)``: "'count_objects' is not defined").

A value is known to be a patch where every way the program binds its name gives a patch (or
None, on which any method call fails anyway): ``ImagePatch(...)``, ``patch.crop(...)``, an item
or a loop variable of a list of patches, ``max`` or ``min`` of one. A list of patches is what
``find`` returns, and what ``sorted``, ``list``, ``reversed``, ``filter``, slices, ``+``,
comprehensions and list literals make of patches, as long as nothing else is put in it. Function
parameters, what the program's own functions return and names declared ``global`` or
``nonlocal`` are of unknown type and not checked. A program that puts what may not be a patch
into a list it may share with another name (a parameter, an alias, an item of another list) has
no list of patches at all. The check knows less than the program, never more, so it refuses no
program that could run.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable, Iterator, Mapping
from enum import Enum
from functools import cache
from typing import NamedTuple

from fmprog.program import api
from fmprog.program.callsites import ROUTED_METHODS
from fmprog.program.errors import Problem
from fmprog.program.sandbox import FORBIDDEN_NAMES, PATCH_ATTRIBUTES, bound_names, program_names


class Kind(Enum):
    """What a name or an expression is known to hold: ``UNSET`` is nothing yet (where the
    inference starts, and what an expression that cannot return gives), ``NONE`` only None."""

    UNSET = "unset"
    NONE = "none"
    PATCH = "patch"
    PATCHES = "patches"
    UNKNOWN = "unknown"


class Binding(NamedTuple):
    """One way a scope binds ``name``: to ``value`` (``how``: ``value``), to an ``element`` of the
    iterable ``value``, by putting an ``item`` or the ``items`` of ``value`` into the list it names,
    or to what is not known (``unknown``); ``fresh`` when the value is a new object, which no
    other name can hold."""

    name: str
    how: str
    value: ast.expr | None = None
    fresh: bool = False


@cache
def patch_members() -> tuple[frozenset[str], frozenset[str]]:
    """The methods and the plain attributes a program may use on a patch."""
    reachable = set(ROUTED_METHODS) | set(PATCH_ATTRIBUTES)
    methods = frozenset(name for name in reachable if callable(getattr(api.ImagePatch, name, None)))
    return methods, frozenset(reachable - methods)


_program_names = cache(program_names)
_INFERRED_CALLS = frozenset({"ImagePatch", "sorted", "list", "reversed", "filter", "max", "min", "enumerate", "zip"})
_RETURNS_HELD = frozenset({"max", "min", "next"})  # builtins that may return an object the program holds
_METHODS_RETURNING_HELD = frozenset({"pop", "get", "setdefault", "popitem"})
_FILLS = frozenset({"item", "items"})
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_FRESH = (ast.Constant, ast.List, ast.Dict, ast.Set, ast.JoinedStr, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Lambda)
_FRESH += _COMPREHENSIONS


def name_problems(tree: ast.Module) -> list[Problem]:
    """Each call of an undefined name, and each method or attribute a patch does not have, in source order."""
    found = _NameCheck(tree).problems()
    return [problem for _place, problem in sorted(found, key=lambda item: item[0])]


def _join(a: Kind, b: Kind) -> Kind:
    """What a name holds when it may hold ``a`` or ``b``: None joins a patch, nothing else mixes."""
    if a is b or b is Kind.UNSET:
        return a
    if a is Kind.UNSET:
        return b
    if {a, b} == {Kind.NONE, Kind.PATCH}:
        return Kind.PATCH
    return Kind.UNKNOWN


def _join_all(kinds: Iterable[Kind]) -> Kind:
    joined = Kind.UNSET
    for kind in kinds:
        joined = _join(joined, kind)
    return joined


def _closest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _parameters(arguments: ast.arguments) -> list[str]:
    names = [a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
    return names + [a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None]


def _scope_nodes(root: list[ast.stmt] | ast.AST) -> Iterator[tuple[ast.AST, bool]]:
    """Every node of one scope, with whether it lies inside a comprehension (whose targets are
    its own names). A nested function or lambda is given but not entered, past its decorators and
    default values."""
    stack: list[tuple[ast.AST, bool]] = [(node, False) for node in (root if isinstance(root, list) else [root])]
    while stack:
        node, inside = stack.pop()
        yield node, inside
        if isinstance(node, _SCOPES):
            arguments = node.args
            decorators = [] if isinstance(node, ast.Lambda) else node.decorator_list
            children: Iterable[ast.AST] = [*decorators, *arguments.defaults, *filter(None, arguments.kw_defaults)]
        else:
            children = ast.iter_child_nodes(node)
        inside = inside or isinstance(node, _COMPREHENSIONS)
        stack.extend((child, inside) for child in children)


def _growth(node: ast.AST) -> tuple[ast.expr, Binding] | None:
    """For ``receiver.append(x)``, ``.insert(i, x)`` or ``.extend(xs)``: the receiver, and what
    the call puts into it (a binding with no name yet; no value when it is not plain)."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return None
    method, args = node.func.attr, node.args
    if method not in ("append", "insert", "extend"):
        return None
    if len(args) != (2 if method == "insert" else 1) or node.keywords or isinstance(args[-1], ast.Starred):
        return node.func.value, Binding("", "item")
    return node.func.value, Binding("", "items" if method == "extend" else "item", args[-1])


def _unknown_bindings(target: ast.AST) -> list[Binding]:
    """The bindings of assigning what is not known to ``target``: each name it binds, and each
    list it puts an item into (``xs[0]``; see ``_opaque_fill`` for the others)."""
    bindings = []
    for node in ast.walk(target):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bindings.append(Binding(node.id, "unknown"))
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            bindings.append(Binding(node.value.id, "item"))
    return bindings


class _NameCheck:
    def __init__(self, tree: ast.Module):
        self.tree = tree
        classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef | ast.AsyncFunctionDef)}
        self.bound = bound_names(tree) | classes  # (the sandbox refuses both)
        self.known = _program_names()
        self.methods, self.data = patch_members()
        # The builtins the inference reads are the sandbox's only where the program does not rebind them.
        self.builtins = self.known - self.bound
        self.called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        declared = [node for node in ast.walk(tree) if isinstance(node, ast.Global | ast.Nonlocal)]
        self.unknown = {name for node in declared for name in node.names}
        self.lists = True  # until a list that may hold patches gets what may not be one
        self.shared_fill = False
        self.found: list[tuple[tuple[int, int], Problem]] = []

    def problems(self) -> list[tuple[tuple[int, int], Problem]]:
        """Each problem with where it is (line, column)."""
        undefined = [
            problem
            for node in ast.walk(self.tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            if (problem := self._undefined(node.func)) is not None
        ]
        self._check_scope(self.tree.body, [], {})
        if self.shared_fill and self.lists:
            self.lists, self.found = False, []  # again, knowing no list of patches
            self._check_scope(self.tree.body, [], {})
        return undefined + self.found

    # Undefined names.

    def _undefined(self, node: ast.Name) -> tuple[tuple[int, int], Problem] | None:
        name = node.id
        if name in self.bound or name in self.known or name in FORBIDDEN_NAMES or name.startswith("_"):
            return None  # forbidden and private names are the sandbox's to refuse
        if name in self.methods:
            message = f"{name!r} is not defined: it is a method of ImagePatch (patch.{name}(...))"
        else:
            message = f"{name!r} is not defined{_closest(name, self.bound | self.known)}"
        return (node.lineno, node.col_offset), Problem(node.lineno, message)

    # Patches: where each scope's names are inferred and its attributes checked.

    def _check_scope(self, root: list[ast.stmt] | ast.expr, params: list[str], outer: Mapping[str, Kind]) -> None:
        nodes = list(_scope_nodes(root))
        bindings: dict[str, list[Binding]] = {name: [Binding(name, "unknown")] for name in params}
        for node, inside in nodes:
            for binding in self._bindings(node, inside):
                bindings.setdefault(binding.name, []).append(binding)
        kinds = {**outer, **{name: Kind.UNKNOWN if name in self.unknown else Kind.UNSET for name in bindings}}
        users: dict[str, set[str]] = {}  # the names whose bindings read each name
        for name, ways in bindings.items():
            for way in ways:
                for read in ast.walk(way.value) if way.value is not None else ():
                    if isinstance(read, ast.Name) and read.id in bindings:
                        users.setdefault(read.id, set()).add(name)
        pending = set(bindings)
        while pending:  # each name's kind only rises (UNSET, NONE, PATCH or PATCHES, UNKNOWN): this ends
            name = pending.pop()
            kind = _join(kinds[name], _join_all(self._bound_kind(way, kinds) for way in bindings[name]))
            if kind is not kinds[name]:
                kinds[name] = kind
                pending.update(users.get(name, ()))
        for ways in bindings.values():
            self.shared_fill |= self._shared_fill(ways, kinds)
        for node, inside in nodes:
            if (fill := self._opaque_fill(node)) is not None:
                fill = fill._replace(value=None) if inside else fill  # (a comprehension's names are its own)
                self.shared_fill |= not self._fills_patches(fill, kinds)
        self._check_nodes(nodes, kinds)

    def _fills_patches(self, fill: Binding, kinds: Mapping[str, Kind]) -> bool:
        """Whether what a fill puts into its list is known to be patches (or None)."""
        return self._bound_kind(fill, kinds) in (Kind.UNSET, Kind.PATCHES)

    def _shared_fill(self, ways: list[Binding], kinds: Mapping[str, Kind]) -> bool:
        """Whether the name is a list that gets what may not be a patch while another name may
        hold it too: it is bound (here) to an object it did not create, or only filled here."""
        filled = [way for way in ways if way.how in _FILLS]
        if all(self._fills_patches(way, kinds) for way in filled):
            return False
        return not all(way.fresh for way in ways if way.how not in _FILLS) or len(filled) == len(ways)

    def _check_nodes(self, nodes: Iterable[tuple[ast.AST, bool]], kinds: Mapping[str, Kind]) -> None:
        for node, in_comprehension in nodes:
            if in_comprehension:
                continue  # checked with the comprehension's own names
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                self._check_attribute(node, kinds)
            elif isinstance(node, _SCOPES):
                self._check_scope(node.body, _parameters(node.args), kinds)
            elif isinstance(node, _COMPREHENSIONS):
                self._check_comprehension(node, kinds)

    def _check_comprehension(self, node: ast.AST, outer: Mapping[str, Kind]) -> None:
        kinds = dict(outer)
        for generator in node.generators:  # type: ignore[attr-defined]
            self._check_nodes(_scope_nodes(generator.iter), kinds)
            for binding in self._target_bindings(generator.target, "element", generator.iter):
                kinds[binding.name] = self._bound_kind(binding, kinds)
            for condition in generator.ifs:
                self._check_nodes(_scope_nodes(condition), kinds)
        parts = (node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,)  # type: ignore[attr-defined]
        for part in parts:
            self._check_nodes(_scope_nodes(part), kinds)

    def _check_attribute(self, node: ast.Attribute, kinds: Mapping[str, Kind]) -> None:
        name = node.attr
        if name in self.methods or name.startswith("_") or self._kind(node.value, kinds) is not Kind.PATCH:
            return  # private names are the sandbox's to refuse
        if id(node) not in self.called:
            if name in self.data:
                return
            message = f"ImagePatch has no attribute {name!r}{_closest(name, self.data | self.methods)}"
        elif name in self.data:
            message = f"ImagePatch's {name!r} is an attribute, not a method: drop the ()"
        else:
            message = f"ImagePatch has no method {name!r}{_closest(name, self.methods)}"
        line = node.end_lineno or node.lineno  # where the name is, as in call site ids
        place = (line, (node.end_col_offset or 0) - len(name))
        self.found.append((place, Problem(line, message)))

    # How a scope binds its names.

    def _bindings(self, node: ast.AST, in_comprehension: bool) -> list[Binding]:
        """The bindings one node makes in its scope (a comprehension's targets are its own)."""
        if isinstance(node, ast.NamedExpr):
            return [Binding(node.target.id, "unknown" if in_comprehension else "value", node.value)]
        if (growth := _growth(node)) is not None:
            receiver, fill = growth
            if not isinstance(receiver, ast.Name):
                return []  # an opaque fill: see _opaque_fill
            return [fill._replace(name=receiver.id, value=None if in_comprehension else fill.value)]
        if in_comprehension:
            return []
        if isinstance(node, ast.Assign):
            several = len(node.targets) > 1  # a = b = []: two names hold one list
            return [
                binding._replace(fresh=binding.fresh and not several)
                for target in node.targets
                for binding in self._target_bindings(target, "value", node.value)
            ]
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            return self._target_bindings(node.target, "value", node.value)
        if isinstance(node, ast.AugAssign):  # (the sandbox refuses it on items and attributes)
            if not isinstance(node.target, ast.Name):
                return []
            if isinstance(node.op, ast.Add):  # a list's += puts into it
                return [Binding(node.target.id, "items", node.value)]
            return [Binding(node.target.id, "unknown")]
        if isinstance(node, ast.For | ast.AsyncFor):
            return self._target_bindings(node.target, "element", node.iter)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return [Binding(node.name, "unknown")]
        if isinstance(node, ast.Import | ast.ImportFrom):
            return [Binding((alias.asname or alias.name).split(".")[0], "unknown") for alias in node.names]
        if isinstance(node, ast.ExceptHandler) and node.name:
            return [Binding(node.name, "unknown")]
        if isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            return [Binding(node.name, "unknown")]
        if isinstance(node, ast.MatchMapping) and node.rest:
            return [Binding(node.rest, "unknown")]
        return []

    def _target_bindings(self, target: ast.expr, how: str, value: ast.expr) -> list[Binding]:
        """The bindings of assigning ``value`` (``how``: ``value``) or each element of it
        (``element``) to ``target``."""
        if isinstance(target, ast.Name):
            return [Binding(target.id, how, value, how == "value" and self._fresh(value))]
        if isinstance(target, ast.Subscript):
            if not isinstance(target.value, ast.Name):
                return []  # an opaque fill: see _opaque_fill
            if how != "value":
                return [Binding(target.value.id, "item")]
            return [Binding(target.value.id, "items" if isinstance(target.slice, ast.Slice) else "item", value)]
        if isinstance(target, ast.Tuple | ast.List) and not any(isinstance(e, ast.Starred) for e in target.elts):
            parts = self._parts(target, how, value)
            if parts is not None:
                return [binding for element, part in zip(target.elts, parts, strict=True)
                        for binding in self._target_bindings(element, *part)]  # fmt: skip
        return _unknown_bindings(target)

    def _parts(self, target: ast.Tuple | ast.List, how: str, value: ast.expr) -> list[tuple[str, ast.expr]] | None:
        """What each element of an unpacked target is bound to, where it is known: ``a, b = x, y``;
        ``for i, patch in enumerate(patches)``; ``for a, b in zip(these, those)``."""
        size = len(target.elts)
        if how == "value" and isinstance(value, ast.Tuple | ast.List) and len(value.elts) == size:
            if not any(isinstance(e, ast.Starred) for e in value.elts):
                return [("value", element) for element in value.elts]
            return None
        if how != "element" or not isinstance(value, ast.Call) or not isinstance(value.func, ast.Name):
            return None
        name, args = value.func.id, value.args
        if value.keywords or any(isinstance(a, ast.Starred) for a in args) or name not in self.builtins:
            return None
        if name == "enumerate" and len(args) == 1 and size == 2:
            return [("unknown", args[0]), ("element", args[0])]
        if name == "zip" and len(args) == size:
            return [("element", arg) for arg in args]
        return None

    def _fresh(self, node: ast.expr) -> bool:
        """Whether an expression gives a new object, one that no other name holds."""
        if isinstance(node, _FRESH):
            return True
        if isinstance(node, ast.Tuple):
            return all(self._fresh(element) for element in node.elts)
        if isinstance(node, ast.IfExp):
            return self._fresh(node.body) and self._fresh(node.orelse)
        if isinstance(node, ast.BoolOp):
            return all(self._fresh(value) for value in node.values)
        if isinstance(node, ast.Subscript):
            return isinstance(node.slice, ast.Slice)
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                return func.id in self.builtins and func.id not in _RETURNS_HELD
            return isinstance(func, ast.Attribute) and func.attr not in _METHODS_RETURNING_HELD
        return False

    @staticmethod
    def _opaque_fill(node: ast.AST) -> Binding | None:
        """What a node puts into a list not named by a plain name (``rows[0].append(x)``,
        ``grid[i][j] = x``), which may be any list; None for any other node."""
        if (growth := _growth(node)) is not None:
            receiver, fill = growth
            return None if isinstance(receiver, ast.Name) else fill
        if isinstance(node, ast.comprehension):  # [... for xs[0] in ...] puts into xs
            opaque = any(isinstance(t, ast.Subscript) for t in ast.walk(node.target))
            return Binding("", "item") if opaque else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Subscript) and not isinstance(target.value, ast.Name):
                return Binding("", "items" if isinstance(target.slice, ast.Slice) else "item", node.value)
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.For):
            targets = [node.target]
        subscripts = [t for target in targets for t in ast.walk(target) if isinstance(t, ast.Subscript)]
        return Binding("", "item") if any(not isinstance(t.value, ast.Name) for t in subscripts) else None

    # What names and expressions hold.

    def _bound_kind(self, binding: Binding, kinds: Mapping[str, Kind]) -> Kind:
        if binding.value is None or binding.how == "unknown":
            return Kind.UNKNOWN
        kind = self._kind(binding.value, kinds)
        if binding.how == "value":
            return kind
        if binding.how == "element":
            return self._item(kind)
        if binding.how == "item":  # name.append(value), name[i] = value
            return self._listed(kind)
        return self._lists(kind)  # name.extend(value), name += value, name[i:j] = value

    def _kind(self, node: ast.expr, kinds: Mapping[str, Kind]) -> Kind:
        """What an expression is known to hold."""
        if isinstance(node, ast.Name):
            return kinds.get(node.id, Kind.UNKNOWN)
        if isinstance(node, ast.Constant):
            return Kind.NONE if node.value is None else Kind.UNKNOWN
        if isinstance(node, ast.NamedExpr):
            return self._kind(node.value, kinds)
        if isinstance(node, ast.IfExp):
            return _join(self._kind(node.body, kinds), self._kind(node.orelse, kinds))
        if isinstance(node, ast.BoolOp):
            return _join_all(self._kind(value, kinds) for value in node.values)
        if isinstance(node, ast.Subscript):
            return self._item(self._kind(node.value, kinds), sliced=isinstance(node.slice, ast.Slice))
        if isinstance(node, ast.List | ast.Tuple):
            if any(isinstance(element, ast.Starred) for element in node.elts):
                return Kind.UNKNOWN
            if not node.elts:
                return Kind.PATCHES if self.lists else Kind.UNKNOWN
            return self._listed(_join_all(self._kind(element, kinds) for element in node.elts))
        if isinstance(node, ast.ListComp | ast.GeneratorExp):
            return self._listed(self._comprehension_element(node, kinds))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self._lists(self._kind(node.left, kinds), self._kind(node.right, kinds))
        if isinstance(node, ast.Call):
            return self._call_kind(node, kinds)
        return Kind.UNKNOWN

    def _call_kind(self, node: ast.Call, kinds: Mapping[str, Kind]) -> Kind:
        func, args = node.func, node.args
        if any(isinstance(arg, ast.Starred) for arg in args):
            return Kind.UNKNOWN
        if isinstance(func, ast.Attribute):
            receiver = self._kind(func.value, kinds)
            if receiver in (Kind.UNSET, Kind.NONE):
                return Kind.UNSET  # the call never returns
            if receiver is Kind.PATCH and func.attr == "crop":
                return Kind.PATCH
            if receiver is Kind.PATCH and func.attr == "find":
                return Kind.PATCHES if self.lists else Kind.UNKNOWN
            if receiver is Kind.PATCHES:
                return {"pop": Kind.PATCH, "copy": Kind.PATCHES}.get(func.attr, Kind.UNKNOWN)
            return Kind.UNKNOWN
        if not isinstance(func, ast.Name) or func.id not in self.builtins or func.id not in _INFERRED_CALLS:
            return Kind.UNKNOWN
        if func.id == "ImagePatch":
            return Kind.PATCH
        if func.id in ("sorted", "list", "reversed") and len(args) == 1:
            return self._lists(self._kind(args[0], kinds))
        if func.id == "filter" and len(args) == 2:
            return self._lists(self._kind(args[1], kinds))
        if func.id in ("max", "min") and len(args) == 1:  # of a list, or its default when it is empty
            defaults = [self._kind(k.value, kinds) for k in node.keywords if k.arg == "default"]
            return _join_all([self._item(self._kind(args[0], kinds)), *defaults])
        if func.id in ("max", "min") and args:
            joined = _join_all(self._kind(arg, kinds) for arg in args)
            return joined if joined in (Kind.UNSET, Kind.PATCH) else Kind.UNKNOWN
        return Kind.UNKNOWN

    def _comprehension_element(self, node: ast.ListComp | ast.GeneratorExp, outer: Mapping[str, Kind]) -> Kind:
        kinds = dict(outer)
        for generator in node.generators:
            for binding in self._target_bindings(generator.target, "element", generator.iter):
                kinds[binding.name] = self._bound_kind(binding, kinds)
        return self._kind(node.elt, kinds)

    @staticmethod
    def _item(kind: Kind, *, sliced: bool = False) -> Kind:
        """What an item (or a slice) of a value of ``kind`` holds."""
        if kind in (Kind.UNSET, Kind.NONE):
            return Kind.UNSET  # indexing None never returns
        if kind is Kind.PATCHES:
            return Kind.PATCHES if sliced else Kind.PATCH
        return Kind.UNKNOWN

    def _listed(self, element: Kind) -> Kind:
        """What a list of elements of ``element`` is (None among patches, as in names)."""
        if element in (Kind.UNSET, Kind.NONE):
            return Kind.UNSET
        return Kind.PATCHES if element is Kind.PATCH and self.lists else Kind.UNKNOWN

    @staticmethod
    def _lists(*kinds: Kind) -> Kind:
        """A list made of lists of ``kinds`` (``+``, ``sorted``, ``extend``)."""
        joined = _join_all(kinds)
        if joined is Kind.PATCHES or joined is Kind.UNSET:
            return joined
        return Kind.UNKNOWN
