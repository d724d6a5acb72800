"""``fmprog program synth`` (launcher.program_synth) with a scripted model: the program on stdout, the
attempts on stderr, exit 0 / 1 / 2; the dry run with the configuration's cheapest backends loaded
in process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher import program_synth as synthesis_cli
from router.synthesis import synthesizer as synthesis
from tests.router.test_synthesis import GOOD, HOSTILE, ScriptedModel, fenced

CONFIG = str(Path(__file__).resolve().parents[2] / "fmprog" / "configs" / "synthetic.yaml")


@pytest.fixture
def scripted(monkeypatch):
    def install(*replies: str) -> ScriptedModel:
        model = ScriptedModel(*replies)
        monkeypatch.setattr(synthesis, "synthesis_model", lambda spec: model)
        return model

    return install


def test_prints_the_program_and_its_attempts(scripted, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("llama_cpp")
    model = scripted(fenced(HOSTILE["open"][0]), fenced(GOOD))
    assert synthesis_cli.main(["Is there a dog?", "--config", CONFIG, "--dry-run-frames", "1"]) == 0
    out, err = capsys.readouterr()
    assert out == GOOD
    assert "attempt 1 (" in err and "refused: line 2: 'open' is not available to programs" in err
    assert "attempt 2 (" in err and "accepted" in err and "program after 2 attempts" in err
    assert model.calls == 2 and model.closed


def test_json_output_and_exit_1_when_no_attempt_passes(scripted, capsys):
    scripted("I would rather not.")
    argv = ["Is there a dog?", "--config", CONFIG, "--dry-run-frames", "0", "--attempts", "2", "--json"]
    assert synthesis_cli.main(argv) == 1
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["source"] is None and result["attempts"] == 2 and len(result["errors"]) == 2
    assert "no program after 2 attempts" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "nowhere.yaml"], "cannot read backend configuration"),
        (["--attempts", "0"], "synthesis_attempts"),
    ],
)
def test_a_bad_configuration_is_exit_2(scripted, capsys, argv: list[str], message: str):
    scripted(GOOD)
    assert synthesis_cli.main(["Is there a dog?", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_command_hooks_into_an_argparse_tree():
    import argparse

    parser = argparse.ArgumentParser(prog="fmprog")
    program = parser.add_subparsers(dest="command").add_parser("program")
    synthesis_cli.add_synth_command(program.add_subparsers(dest="program_command"))
    args = parser.parse_args(["program", "synth", "How many stars?", "--kind", "open"])
    assert (args.query, args.kind, args.handler) == ("How many stars?", "open", synthesis_cli.run)
