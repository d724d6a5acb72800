"""The README's quick start, run as written: a new user reaches a first labelled answer of their own
program by the README alone.

The blocks are read from README.md itself: every fenced block right after a ``<!-- quickstart -->``
line, in order. The one ``sh`` block that runs ``fmprog up`` is started as written (from the
repository root, with no ``FMPROG_*`` variable from this process), with ``--state-dir`` and free
``--router-port``, ``--policy-port`` and ``--serve-port`` added, so that it touches neither the
checkout's ``state/`` nor ports another run may hold. The other ``sh`` blocks run in one bash, the
``python`` blocks in one interpreter, each with the router's address in the README,
``127.0.0.1:8080``, replaced by the one it listens on. Lines the test appends after them hand back
what they made (the program, the answer, the label's reply), which is then checked here and
against the router itself: one answer and one new label counted for the program."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from launcher.process import StackProcess
from launcher.settings import StackSettings
from services.cluster import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = "<!-- quickstart -->"
ADDRESS = "127.0.0.1:8080"
LABEL = "blue"
CALL_SITES = {"find@3:24", "find@4:26", "query@8:22"}
READY_TIMEOUT_S = 240.0
pytestmark = pytest.mark.timeout(420)


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int


def quickstart_blocks(text: str) -> list[Block]:
    """Every fenced block right after a ``<!-- quickstart -->`` line (blank lines between allowed)."""
    lines = text.split("\n")
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        start = next(j for j in range(i + 1, len(lines)) if lines[j].strip())
        fence = re.match(r"^(`{3,})(\w+)\s*$", lines[start])
        assert fence, f"README.md:{i + 1}: {MARK} is not followed by a fenced block with a language"
        end = next(j for j in range(start + 1, len(lines)) if lines[j].strip() == fence.group(1))
        blocks.append(Block(fence.group(2), "\n".join(lines[start + 1 : end]), start + 2))
    return blocks


@dataclass(frozen=True)
class QuickStart:
    up: Block
    shell: list[Block]
    python: list[Block]


def quickstart() -> QuickStart:
    blocks = quickstart_blocks(README.read_text(encoding="utf-8"))
    ups = [b for b in blocks if b.language == "sh" and re.search(r"\bfmprog up\b", b.code)]
    assert len(ups) == 1, f"README.md marks {len(ups)} blocks that run fmprog up; the quick start needs one"
    shell = [b for b in blocks if b.language == "sh" and b is not ups[0]]
    python = [b for b in blocks if b.language == "python"]
    assert len(shell) >= 3 and len(python) >= 3, "the quick start's steps in curl and in Python are not all marked"
    assert {b.language for b in blocks} == {"sh", "python"}, [b.language for b in blocks]
    return QuickStart(ups[0], shell, python)


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


@dataclass
class Cluster:
    router: str  # host:port
    env: dict[str, str]
    process: subprocess.Popen[str]
    lines: list[str]

    def at(self, code: str) -> str:
        """The README's code with its router address replaced by this cluster's."""
        return code.replace(ADDRESS, self.router)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    assert shutil.which("curl") and shutil.which("jq"), "the quick start needs curl and jq (make install installs jq)"
    steps = quickstart()
    command = shlex.split(steps.up.code, comments=True)
    assert command[1:2] == ["up"] and Path(command[0]).name == "fmprog", steps.up.code
    command[0] = str(ROOT / command[0])  # the README runs it from the repository root
    router_port, policy_port, serve_port = _free_ports(3)
    state = tmp_path_factory.mktemp("quickstart") / "state"
    command += ["--state-dir", str(state), "--router-port", str(router_port)]
    command += ["--policy-port", str(policy_port), "--serve-port", str(serve_port)]
    env = {name: value for name, value in os.environ.items() if not name.startswith("FMPROG_")}
    stack = StackProcess(StackSettings(), env=env, ready_timeout_s=READY_TIMEOUT_S, command=command)
    with stack:  # its state and ports this test's; SIGTERM when the module is done, unless a test stopped it
        assert stack.process is not None
        yield Cluster(f"127.0.0.1:{router_port}", env, stack.process, stack.lines)


def _counted(cluster: Cluster, name: str, program: str, **labels: str) -> float:
    """The router's counter ``name`` for one program (and ``labels``), summed."""
    text = httpx.get(f"http://{cluster.router}/metrics", timeout=30).text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    wanted = {"program": program, **labels}
    return sum(s.value for s in samples if s.name == name and wanted.items() <= s.labels.items())


def _check_answered_and_labelled(cluster: Cluster, program: str, answer: dict, feedback: dict) -> None:
    """The program answered the frame (no error, a backend for each call site) and the router took
    the label as a new one for that answer, and counted both."""
    assert answer["error"] is None, answer
    assert set(answer["decision"]) == CALL_SITES, answer
    assert answer["cost"] > 0 and answer["trace"], answer
    assert feedback["decision_id"] == answer["decision_id"] and feedback["label"] == LABEL, feedback
    assert feedback["repeat"] is False and feedback["reward"] in (100.0, -100.0), feedback
    assert _counted(cluster, "fmprog_answers_total", program) == 1
    assert _counted(cluster, "fmprog_feedback_total", program, outcome="new") == 1
    reread = httpx.get(f"http://{cluster.router}/programs/{program}", timeout=30)
    assert reread.status_code == 200 and reread.json()["algorithm"] == "fast", reread.text


def test_the_quick_start_is_marked_and_names_the_router():
    steps = quickstart()
    assert all(ADDRESS in block.code for block in steps.shell), "every curl step calls the router at " + ADDRESS
    assert ADDRESS in "\n".join(block.code for block in steps.python)
    assert "fmprog.client" in steps.python[0].code


def test_the_curl_steps_answer_a_frame_and_label_it(cluster, tmp_path):
    steps = quickstart()
    script = "\n".join(cluster.at(block.code) for block in steps.shell)
    # handed back by the test, after the README's commands: the program and the answer they made
    script += f'\nprintf %s "$PROGRAM" > {shlex.quote(str(tmp_path / "program"))}'
    script += f'\nprintf %s "$ANSWER" > {shlex.quote(str(tmp_path / "answer.json"))}\n'
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        check=False,
        cwd=ROOT,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    program = (tmp_path / "program").read_text()
    answer = json.loads((tmp_path / "answer.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{32}", program) and answer["program_id"] == program, (program, answer)
    decoder, printed, rest = json.JSONDecoder(), [], run.stdout
    while rest := rest.strip():  # what the commands printed: readyz, the program's id, the answer, the label's reply
        if rest.startswith(program):
            rest = rest[len(program) :]
            continue
        value, end = decoder.raw_decode(rest)
        printed.append(value)
        rest = rest[end:]
    ready, shown, feedback = printed
    assert ready["status"] == "ready", ready
    assert shown == {"answer": answer["answer"], "decision": answer["decision"], "cost": answer["cost"]}
    _check_answered_and_labelled(cluster, program, answer, feedback)
    docs = httpx.get(f"http://{cluster.router}/docs", timeout=30)  # the interactive documentation it points to
    assert docs.status_code == 200 and "swagger" in docs.text.lower(), docs.text[:200]


def test_the_python_steps_answer_a_frame_and_label_it(cluster):
    steps = quickstart()
    script = "\n".join(cluster.at(block.code) for block in steps.python)
    # handed back by the test, after the README's code: what its variables hold
    script += (
        "\nimport json as _json\n"
        "print(_json.dumps({'program': program.id, 'answer': answer.model_dump(mode='json', by_alias=True), "
        "'feedback': feedback.model_dump(mode='json', by_alias=True)}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    lines = run.stdout.strip().splitlines()
    assert lines[0] == "True", run.stdout  # fm.ready()
    handed = json.loads(lines[-1])
    program, answer, feedback = handed["program"], handed["answer"], handed["feedback"]
    assert answer["program_id"] == program
    assert lines[1].startswith(program), run.stdout  # print(program.id, ...)
    _check_answered_and_labelled(cluster, program, answer, feedback)


def test_ctrl_c_stops_everything(cluster):
    """The README says Ctrl-C stops the cluster: SIGINT to fmprog up, which exits 0 (last: it
    stops the module's cluster)."""
    cluster.process.send_signal(signal.SIGINT)
    assert cluster.process.wait(120) == 0, "\n".join(cluster.lines[-40:])
