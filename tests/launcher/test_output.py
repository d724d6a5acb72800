"""What the commands print, without starting a cluster: ``fmprog program evaluate``'s table (costs to
four significant digits, F1 ``n/a`` on a stream without positives), the progress of ``fmprog
program synth`` on stderr with stdout left to the program, Ray's shutdown warning left out of
``fmprog up``'s stdout, and colour codes taken out of the output ``StackProcess`` relays."""

from __future__ import annotations

import io
import sys
import threading

import pytest

from launcher.process import ANSI_ESCAPE
from launcher.program_evaluate import cost_text, no_positives, table
from launcher.supervisor import RAY_SHUTDOWN_NOISE, QuietShutdown, _LineFilter

# -- fmprog program evaluate ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (0.0, "0"),
        (0.029304, "0.0293"),
        (0.0146521, "0.01465"),
        (0.00001234, "1.234e-05"),
        (12.3456, "12.35"),
        (999.94, "999.9"),
        (1646.0, "1646"),
        (73400.0, "73400"),
        (151234.6, "151235"),
    ],
)
def test_costs_keep_four_significant_digits(value, text):
    assert cost_text(value) == text


def _estimate(cost: float, accuracy: float, f1: float | None) -> dict:
    return {"cost_per_frame": cost, "task_reward": 0.0, "accuracy": accuracy, "f1": f1}


def _report(logged: dict, target: dict) -> dict:
    evaluation = {
        "target": "static-largest",
        "runs": 20,
        "matched": 7,
        "effective_runs": 6.5,
        "skipped": 0,
        "unresolved": 0,
        "uncovered": [],
        "logged": logged,
        "ips": target,
        "snips": target,
        "dr": target,
    }
    return {
        "program_id": "p" * 32,
        "algorithm": "cascade",
        "lambda": 100.0,
        "decisions": 20,
        "labelled": 20,
        "fallbacks": 0,
        "evaluations": [evaluation],
    }


def _rows(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("target"))
    rows = {}
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[-6:]  # cost and quality by IPS, SNIPS and DR
    return rows


def test_the_zoo_costs_no_longer_read_zero():
    """The CPU zoo's costs are fractions of a unit: one decimal made every cell 0.0."""
    text = table(_report(_estimate(0.029304, 0.9, 0.5), _estimate(0.0918, 0.95, 0.75)))
    rows = _rows(text)
    assert rows["logged"] == ["0.0293", "0.500"] * 3
    assert rows["static-largest"] == ["0.0918", "0.750"] * 3
    assert "n/a" not in text


def test_f1_without_positives_in_the_stream_is_na():
    logged = _estimate(0.0293, 1.0, 0.0)  # every answer a right "no": no positive label, no yes said
    assert no_positives(logged)
    text = table(_report(logged, _estimate(0.0918, 0.9, 0.0)))
    rows = _rows(text)
    assert rows["logged"] == ["0.0293", "n/a"] * 3
    assert rows["static-largest"] == ["0.0918", "n/a"] * 3
    assert text.splitlines()[-1] == (
        "F1 n/a: no run read has a positive label (and the logging policy never answered yes)"
    )


def test_an_f1_of_zero_with_positives_stays_zero_and_missing_estimates_stay_dashes():
    logged = _estimate(1646.0, 0.8, 0.0)  # positives, all missed: F1 is 0
    assert not no_positives(logged)
    rows = _rows(table(_report(logged, _estimate(None, None, None))))
    assert rows["logged"] == ["1646", "0.000"] * 3
    assert rows["static-largest"] == ["-", "-"] * 3


def test_open_tasks_print_accuracy_not_f1():
    text = table(_report(_estimate(7590.5, 1.0, None), _estimate(797.25, 0.5, None)))
    assert "IPS acc" in text and "n/a" not in text
    assert _rows(text)["static-largest"] == ["797.2", "0.500"] * 3


# -- fmprog program synth ------------------------------------------------------------------------


def test_synth_says_what_it_is_doing_on_stderr(monkeypatch, capsys):
    from launcher import program_synth as synthesis_cli
    from router.synthesis import synthesizer as synthesis
    from tests.router.test_synthesis import ScriptedModel

    model = ScriptedModel("I would rather not.")
    monkeypatch.setattr(synthesis, "synthesis_model", lambda spec: model)
    argv = ["Is there a dog?", "--config", "synthetic", "--dry-run-frames", "0", "--attempts", "2"]
    assert synthesis_cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[:5] == [
        "no dry run (--dry-run-frames 0): no backends loaded",
        "attempt 1 of 2: asking the model for a program ...",
        "attempt 1 of 2: compiling it ...",
        "attempt 2 of 2: asking the model for a program ...",
        "attempt 2 of 2: compiling it ...",
    ]
    assert lines[-1].startswith("no program after 2 attempts")


# -- fmprog up's output ------------------------------------------------------------------------------

RAY_LINE = (
    "\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed. There are infinite retries remaining, "
    "so the task will be retried. Error: The actor is dead because it was killed by `ray.kill`."
)


def test_the_line_filter_drops_ray_s_shutdown_warning_and_passes_the_rest():
    out = io.StringIO()
    stream = _LineFilter(out, RAY_SHUTDOWN_NOISE)
    print("policy stopped", file=stream)
    print(RAY_LINE, file=stream)
    stream.write("half a ")
    stream.write("line\nand the start of one")
    stream.flush()
    assert out.getvalue() == "policy stopped\nhalf a line\n"
    stream.finish()
    assert out.getvalue() == "policy stopped\nhalf a line\nand the start of one"


def test_the_line_filter_keeps_each_thread_s_lines_whole():
    out = io.StringIO()
    stream = _LineFilter(out, RAY_SHUTDOWN_NOISE)
    barrier = threading.Barrier(4)

    def write(n: int) -> None:
        barrier.wait()
        for i in range(200):
            stream.write(f"thread {n} ")
            stream.write(f"line {i}")
            stream.write("\n")
            stream.write(f"{RAY_LINE}\n")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 800 and all(line.startswith("thread ") and " line " in line for line in lines)


def test_quiet_shutdown_filters_stdout_only_from_start_to_the_end(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    with QuietShutdown() as quiet:
        print(RAY_LINE)  # not stopping yet: passed on
        quiet.start()
        assert sys.stdout is not out
        print(RAY_LINE)
        print("Serve stopped")
    assert sys.stdout is out
    assert out.getvalue() == f"{RAY_LINE}\nServe stopped\n"


def test_relayed_output_loses_its_colour_codes():
    assert ANSI_ESCAPE.sub("", RAY_LINE).startswith("(raylet) Task ServeController")
    assert ANSI_ESCAPE.sub("", "\x1b[1;31merror\x1b[0m: \x1b[?25lplain") == "error: plain"


def test_up_prints_its_progress_on_stderr_and_the_urls_on_stdout():
    """The supervisor's defaults: progress and errors to stderr, the URLs and ready line to stdout."""
    import inspect

    from launcher import supervisor

    defaults = {name: p.default for name, p in inspect.signature(supervisor.up).parameters.items()}
    assert defaults["echo"] is supervisor._progress and defaults["show"] is supervisor._print
    assert defaults["error"] is supervisor._error
