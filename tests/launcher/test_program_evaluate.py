"""``fmprog program evaluate`` against a router and policy served over HTTP (fake models): its
table and JSON, its targets as the router reads them, usage errors (exit 2) and the router's
errors (exit 1)."""

from __future__ import annotations

import json

import pytest

from launcher.cli import main
from launcher.program_evaluate import UsageError, parse_target
from tests.router.test_evaluation_http import labelled
from tests.router.test_labels_http import cluster, register

pytestmark = pytest.mark.timeout(300)


def test_targets_read_as_the_router_takes_them():
    assert parse_target("static-largest") == {"kind": "static", "backends": "largest"}
    assert parse_target("static-cheapest") == {"kind": "static", "backends": "cheapest"}
    assert parse_target("random") == {"kind": "random"}
    assert parse_target("lambda=0.5") == {"kind": "lambda", "lambda": 0.5}
    assert parse_target("static:vqa=vqa-large, find@5:25=detect-large") == {
        "kind": "static",
        "backends": {"vqa": "vqa-large", "find@5:25": "detect-large"},
    }
    for text in ("lambda=cheap", "lambda=-1", "static:vqa", "largest", "static:=x"):
        with pytest.raises(UsageError):
            parse_target(text)


def test_evaluate_prints_a_table_and_json_and_exits_2_or_1_on_errors(tmp_path, zoo, capsys):
    with cluster(tmp_path, zoo) as (client, _):
        router = str(client.base_url)
        program_id = register(client, algorithm="random")
        labelled(client, program_id, 24)
        assert main(["program", "evaluate", program_id, "--router", router]) == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert lines[0].startswith(f"program {program_id} (random, lambda 0.001): 24 labelled decisions read")
        header = next(line for line in lines if line.startswith("target"))
        assert "matched/runs" in header and "IPS cost" in header and "SNIPS F1" in header and "DR F1" in header
        rows = {line.split()[0]: line.split() for line in lines[lines.index(header) + 1 :] if line.strip()}
        assert set(rows) == {"logged", "static-cheapest", "static-largest", "random"}
        assert rows["logged"][2] == "24/24"
        assert rows["random"][1] == "24/24"  # the random target is the logging policy: every run, weight 1

        args = ["program", "evaluate", program_id, "--router", router, "--target", "static:vqa=vqa-large", "--json"]
        assert main([*args, "--last", "10", "--draws", "512"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["decisions"] == 10 and report["evaluations"][0]["target"] == "static:vqa=vqa-large"

        assert main(["program", "evaluate", program_id, "--router", router, "--target", "lambda=x"]) == 2
        assert capsys.readouterr().err.strip() == "error: --target 'lambda=x': lambda must be a number, not 'x'"
        assert main(["program", "evaluate", program_id, "--router", router, "--target", "lambda=2"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: the router answered 422: target lambda=2:") and "gated" in err
        assert main(["program", "evaluate", "0" * 32, "--router", router]) == 1
        assert "404" in capsys.readouterr().err
        with pytest.raises(SystemExit) as usage:
            main(["program", "evaluate", program_id])  # no --router
        assert usage.value.code == 2
