"""Hostile programs: each is rejected before it runs or stopped with a clear error, and the
process carries on unharmed. A runaway loop or recursion is reported at the line of the loop
header or function definition whose step counter tripped."""

from __future__ import annotations

import resource
import time

import pytest

from fmprog.program import ExecutionLimits, Executor, ProgramRejected, compile_program
from tests.fakes import all_of, box, run

REJECTED = {
    "import os": ("import os\ndef execute_command(image):\n    return os.listdir('/')", 1, "import of 'os'"),
    "from subprocess": (
        "from subprocess import run\ndef execute_command(image):\n    return run('ls')",
        1,
        "import of 'subprocess'",
    ),
    "import inside function": (
        "def execute_command(image):\n    import sys\n    return sys.modules",
        2,
        "import of 'sys'",
    ),
    "class escape": (
        "def execute_command(image):\n    return ().__class__.__bases__[0].__subclasses__()",
        2,
        'starts with "_"',
    ),
    "dunder name": ("def execute_command(image):\n    return __builtins__", 2, 'starts with "_"'),
    "getattr": ("def execute_command(image):\n    return getattr((), 'x')", 2, "'getattr' is not available"),
    "eval": ("def execute_command(image):\n    return eval('1')", 2, "Eval calls are not allowed"),
    "exec": ("def execute_command(image):\n    exec('x = 1')", 2, "Exec calls are not allowed"),
    "open": ("def execute_command(image):\n    return open('/etc/passwd').read()", 2, "'open' is not available"),
    "globals": ("def execute_command(image):\n    return globals()", 2, "'globals' is not available"),
    "compile": ("def execute_command(image):\n    return compile('1', 'f', 'eval')", 2, "'compile' is not available"),
    "type": ("def execute_command(image):\n    return type(image)", 2, "'type' is not available"),
    "generator frame": (
        "def execute_command(image):\n    g = (x for x in [1])\n    return g.gi_frame.f_back",
        3,
        "gi_frame",
    ),
    "private attribute": ("def execute_command(image):\n    return ImagePatch(image)._frame", 2, 'starts with "_"'),
    "class definition": ("class A:\n    pass\ndef execute_command(image):\n    return A()", 1, "class definitions"),
    "generator": ("def execute_command(image):\n    yield 1", 2, "generators"),
    "format width": ("def execute_command(image):\n    return f'{1:>999999999}'", 2, "format width"),
    "nested format spec": (
        "def execute_command(image):\n    w = 10 ** 9\n    return f'{1:>{w}}'",
        3,
        "computed format",
    ),
    "module-level code": ("x = ImagePatch(None)\ndef execute_command(image):\n    return 1", 1, "module level"),
    "no entry point": ("def main(image):\n    return 1", None, "must define execute_command"),
    "syntax error": ("def execute_command(image):\n    return (", 2, "syntax error"),
    "oversized source": ("x = 1\n" * 5000 + "def execute_command(image):\n    return 1", None, "limit 20000"),
    "deep nesting": ("def execute_command(image):\n    return " + "-" * 19_000 + "1", None, "nested too deeply"),
}


@pytest.mark.parametrize("name", REJECTED)
def test_rejected_before_running(name):
    source, line, reason = REJECTED[name]
    with pytest.raises(ProgramRejected) as excinfo:
        compile_program(source)
    assert any(p.line == line and reason in p.message for p in excinfo.value.problems), excinfo.value.problems


STOPPED = {
    "infinite while": ("def execute_command(image):\n    while True:\n        pass", "step_budget", 2),
    "self-extending for": (
        "def execute_command(image):\n    x = [1]\n    for i in x:\n        x.append(i)",
        "step_budget",
        3,
    ),
    "swallowing the halt": (
        "def execute_command(image):\n    while True:\n        try:\n            while True:\n                pass\n"
        "        except:\n            pass",
        "step_budget",
        None,
    ),
    "deep recursion": ("def f(n):\n    return f(n + 1)\ndef execute_command(image):\n    return f(0)", "recursion", 1),
    "lambda recursion": ("def execute_command(image):\n    f = lambda g: g(g)\n    return f(f)", "recursion", 2),
    "huge power": ("def execute_command(image):\n    return 10 ** 10 ** 10", "resource_limit", 2),
    "huge shift": ("def execute_command(image):\n    return 1 << 10 ** 10", "resource_limit", 2),
    "squaring loop": (
        "def execute_command(image):\n    x = 3\n    while True:\n        x = x * x",
        "resource_limit",
        4,
    ),
    "string repetition": ("def execute_command(image):\n    return 'a' * 10 ** 10", "resource_limit", 2),
    "list repetition": ("def execute_command(image):\n    return [0] * 10 ** 9", "resource_limit", 2),
    "doubling by +": (
        "def execute_command(image):\n    s = 'ab'\n    for i in range(64):\n        s = s + s",
        "resource_limit",
        4,
    ),
    "doubling by +=": (
        "def execute_command(image):\n    s = [1]\n    for i in range(64):\n        s += s",
        "resource_limit",
        4,
    ),
    "doubling by extend": (
        "def execute_command(image):\n    s = [1]\n    for i in range(64):\n        s.extend(s)",
        "resource_limit",
        4,
    ),
    "doubling by slice assignment": (
        "def execute_command(image):\n    s = [1]\n    for i in range(64):\n        s[:0] = s",
        "resource_limit",
        4,
    ),
    "huge range": ("def execute_command(image):\n    return sum(range(10 ** 12))", "resource_limit", 2),
    "sum of lists": ("def execute_command(image):\n    return sum([[1]] * 100, [])", "runtime_error", 2),
    "percent format width": ("def execute_command(image):\n    return '%0999999999d' % 1", "resource_limit", 2),
    "padding": ("def execute_command(image):\n    return 'a'.ljust(10 ** 10)", "resource_limit", 2),
    "replace amplification": (
        "def execute_command(image):\n    s = 'a' * 1000\n    return s.replace('a', s)",
        "resource_limit",
        3,
    ),
    "join amplification": (
        "def execute_command(image):\n    s = 'a' * 5000\n    return s.join([s, s, s])",
        "resource_limit",
        3,
    ),
    "exponential repr": (
        "def execute_command(image):\n    x = []\n    for i in range(60):\n        x = [x, x]\n    return str(x)",
        "resource_limit",
        5,
    ),
    "exponential f-string": (
        "def execute_command(image):\n    x = []\n    for i in range(60):\n        x = [x, x]\n    return f'{x}'",
        "resource_limit",
        5,
    ),
    "f-string of many pieces": (
        "def execute_command(image):\n    s = 'a' * 9999\n    return f'" + "{s}" * 1000 + "'",
        "resource_limit",
        3,
    ),
    "f-strings kept by the hundred": (
        "def execute_command(image):\n    s = 'a' * 70\n    keep = []\n    for i in range(150):\n"
        "        keep.append(f'" + "{s}" * 1000 + "')",
        "resource_limit",
        5,
    ),
    "f-string of long literal text": (
        "def execute_command(image):\n    s = 'a'\n    return f'{s}" + "b" * 10_000 + "'",
        "resource_limit",
        3,
    ),
    "str.format escape": ("def execute_command(image):\n    return '{0.__class__}'.format(1)", "sandbox_violation", 2),
    "format_map escape": ("def execute_command(image):\n    return '{a}'.format_map({'a': 1})", "sandbox_violation", 2),
    "math outside the allow-list": (
        "import math\ndef execute_command(image):\n    return math.factorial(10 ** 7)",
        "sandbox_violation",
        3,
    ),
    "rewriting a patch": (
        "def execute_command(image):\n    p = ImagePatch(image)\n    p.left = -5",
        "sandbox_violation",
        3,
    ),
    "routed method taken as a value": (
        "def execute_command(image):\n    f = ImagePatch(image).find\n    return f('cat')",
        "sandbox_violation",
        2,
    ),
    "appending copies forever": (
        "def execute_command(image):\n    keep = []\n    s = 'a' * 9999\n    while True:\n        keep.append(s + 'b')",
        "step_budget",
        4,
    ),
}


@pytest.mark.parametrize("name", STOPPED)
def test_stopped_with_a_clear_error(executor, frame, name):
    source, kind, line = STOPPED[name]
    started = time.perf_counter()
    trace = run(executor, source, frame)
    assert trace.error is not None, trace.answer
    assert trace.error.kind == kind, trace.error
    assert trace.error.message
    if line is not None:
        assert trace.error.line == line
    assert time.perf_counter() - started < 5


def test_wall_clock_limit_stops_a_busy_program(zoo, frame):
    executor = Executor(zoo.registry(), ExecutionLimits(timeout_s=0.2, max_steps=10**9))
    started = time.perf_counter()
    trace = run(executor, "def execute_command(image):\n    while True:\n        pass", frame)
    assert trace.error.kind == "timeout" and "0.2 s" in trace.error.message
    assert time.perf_counter() - started < 1.0


def test_wall_clock_limit_counts_backend_time(zoo, frame):
    executor = Executor(zoo.registry(), ExecutionLimits(timeout_s=0.3))
    zoo.set_vqa(lambda image, question: time.sleep(0.2) or "no")
    source = "def execute_command(image):\n    p = ImagePatch(image)\n    while True:\n        p.query('q?')"
    trace = run(executor, source, frame)
    # a handful of steps cannot take 0.3 s: the time spent inside the backend is what counted
    assert trace.error.kind == "timeout"
    assert trace.steps < 10
    assert 2 <= len(trace.invocations) <= 3  # the second starts at ~0.2 s, before the deadline


def test_process_is_unharmed_after_every_hostile_program(executor, zoo, frame):
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for source, _, _ in STOPPED.values():
        run(executor, source, frame)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB"
    zoo.set_boxes({"cat": [box(0, 0, 10, 10)]})
    program = compile_program('def execute_command(image):\n    return ImagePatch(image).exists("cat")')
    trace = executor.run(program, frame, all_of(program, "small"))
    assert trace.answer is True and trace.error is None


def test_programs_cannot_share_state_between_runs(executor, frame):
    program = compile_program("SEEN = []\ndef execute_command(image):\n    SEEN.append(1)\n    return len(SEEN)")
    answers = [executor.run(program, frame, {}).answer for _ in range(3)]
    assert answers == [1, 1, 1]


def test_an_f_string_is_bounded_piece_by_piece(executor, frame):
    """The f-string stops at the piece that crosses the length limit: of four pieces of 6,000
    characters, the third and fourth are never formatted (each piece is a function call, a step)."""
    source = (
        "def piece(s):\n    return s\n"
        "def execute_command(image):\n    s = 'a' * 6000\n    return f'{piece(s)}{piece(s)}{piece(s)}{piece(s)}'"
    )
    trace = run(executor, source, frame)
    assert trace.error is not None and trace.error.kind == "resource_limit", trace.error
    assert trace.error.line == 5
    assert trace.steps == 3  # execute_command and two pieces


def test_an_f_string_left_open_by_a_caught_error_does_not_unbound_the_next(executor, frame):
    source = (
        "def shout():\n    try:\n        return f'{1 / 0}'\n    except ZeroDivisionError:\n        return '!'\n"
        "def execute_command(image):\n    s = 'a' * {n}\n    return len(f'{s}{shout()}{s}')"
    )
    assert run(executor, source.replace("{n}", "4000"), frame).answer == 8001
    trace = run(executor, source.replace("{n}", "6000"), frame)
    assert trace.error is not None and trace.error.kind == "resource_limit", trace.error


def test_f_strings_format_as_python_does(executor, frame):
    expressions = [
        "f'{x:.2f}|{x!r}|{word!a}|{x=}|{n:>6}|{n:#x}|{n:,}|{items}|{items!s:>12}|{word:^9}'",
        "f'{f\"[{word}]\"}<{n * 2}>{{literal}}'",
        "f'{ImagePatch(image).width}x{ImagePatch(image).height}'",
    ]
    body = "    x = 3.14159\n    n = 255000\n    word = 'caf\u00e9'\n    items = [1, 'two', (3.0,)]\n"
    for expression in expressions:
        source = f"def execute_command(image):\n{body}    return {expression}"
        names = {"x": 3.14159, "n": 255000, "word": "caf\u00e9", "items": [1, "two", (3.0,)]}
        expected = eval(expression, {"ImagePatch": _Size, "image": frame, **names})
        trace = run(executor, source, frame)
        assert trace.error is None, trace.error
        assert trace.answer == expected


class _Size:
    def __init__(self, image):
        self.height, self.width = image.shape[:2]


def test_a_source_holding_a_lone_surrogate_is_rejected_naming_its_line():
    """A lone surrogate (``\\ud800``, half of a UTF-16 pair) is not a Unicode character: a source
    holding one cannot be parsed, stored or sent back as UTF-8."""
    source = "def execute_command(image):\n    return 'a \ud800 b'\n"
    with pytest.raises(ProgramRejected) as excinfo:
        compile_program(source)
    [problem] = excinfo.value.problems
    assert problem.line == 2 and "lone surrogate" in problem.message and "\\ud800" in problem.message


NOT_TEXT = {
    "a string": "return 'a \\ud800 b'",
    "a string in a list": "return ['x', ('\\udfff',)]",
    "a dict key": "return {'\\udc00': 1}",
}


@pytest.mark.parametrize("name", NOT_TEXT)
def test_an_answer_holding_a_lone_surrogate_is_an_error_of_the_run(executor, frame, name):
    """The source holds only the escape (ASCII); the program builds the lone surrogate as it runs.
    Such an answer cannot be JSON (nor UTF-8): the run ends with an error, never a crash later."""
    trace = run(executor, "def execute_command(image):\n    " + NOT_TEXT[name] + "\n", frame)
    assert trace.answer is None
    assert trace.error is not None and trace.error.kind == "runtime_error", trace.error
    assert "lone surrogate" in trace.error.message
    trace.model_dump_json()  # the trace itself is JSON


def test_printed_text_and_error_messages_with_a_lone_surrogate_are_escaped(executor, frame):
    source = "def execute_command(image):\n    print('out \\ud800')\n    raise ValueError('bad \\udc00')\n"
    trace = run(executor, source, frame)
    assert trace.output == "out \\ud800\n"
    assert trace.error is not None and trace.error.kind == "runtime_error"
    assert trace.error.message == "ValueError: bad \\udc00"
    trace.model_dump_json()
