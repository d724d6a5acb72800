"""The router answering through its pool of program workers."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from fmprog.backends import BackendCatalog
from fmprog.images import encode_png
from fmprog.program import ExecutionLimits
from fmprog.program.workers import WorkerPool
from router.answering import Answerer
from router.app import create_app
from router.programs import ProgramRegistry
from router.settings import RouterSettings
from tests.fakes import Zoo, box
from tests.router.conftest import create, example
from tests.servers import wait_until

KEY = "k" * 24
NESTED_EQUAL = (
    "def execute_command(image):\n"
    "    n = len(ImagePatch(image).find('person'))\n"
    "    x = [1]\n    y = [1]\n"
    "    for i in range(60):\n        x = [x, x]\n        y = [y, y]\n"
    "    return x == y\n"
)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_the_router_answers_through_its_workers_and_stops_them_on_shutdown(tmp_path, zoo: Zoo):
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    settings = RouterSettings(
        database=tmp_path / "router.db", api_key=KEY, synthesis_backend=None, program_workers=2, outbox_retry_s=3600
    )
    app = create_app(settings, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    image = base64.b64encode(encode_png(np.zeros((80, 100, 3), np.uint8))).decode()
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as client:
        program = client.post("/programs", json={"source": example("person_on_bike"), "kind": "binary", "lambda": 0})
        assert program.status_code == 201, program.text
        answer = client.post("/answer", json={"program_id": program.json()["id"], "image": image})
        assert answer.status_code == 200, answer.text
        assert answer.json()["error"] is None and answer.json()["trace"]
        assert zoo.models["detect-small"].calls  # the backend call was made here, in the router's process
        pool = app.state.service.answerer.executor
        assert isinstance(pool, WorkerPool)
        pids = pool.pids
        assert pids
    assert not any(_alive(pid) for pid in pids)


def test_a_run_killed_at_its_deadline_is_answered_and_recorded_while_others_answer(programs: ProgramRegistry, zoo: Zoo):
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    answerer = Answerer(programs, zoo.registry(), limits=ExecutionLimits(timeout_s=1), workers=2)
    frame = np.zeros((80, 100, 3), np.uint8)
    # the hostile run looks for cars (the normal one never does): its call says it is in its loop
    hostile_source = NESTED_EQUAL.replace("find('person')", "find('car')")
    try:
        hostile = programs.register(create("person_on_bike").model_copy(update={"source": hostile_source}))
        normal = programs.register(create("person_on_bike"))
        assert isinstance(answerer.executor, WorkerPool)
        answerer.executor.warm()  # both workers up: one for the attack, one for everyone else
        results = {}

        def attack() -> None:
            results["hostile"] = answerer.answer(hostile.id, frame, None)

        thread = threading.Thread(target=attack)
        thread.start()
        detector = zoo.models["detect-small"]
        wait_until(
            lambda: any(noun == "car" for _, noun in detector.calls),
            "the hostile run started",
            timeout_s=30,
            poll_s=0.01,
        )
        answered_meanwhile = 0  # normal answers that came back while the hostile run was still going
        while thread.is_alive():
            assert answerer.answer(normal.id, frame, None).error is None
            answered_meanwhile += thread.is_alive()
        thread.join()
        stopped = results["hostile"]
        assert stopped.error is not None and stopped.error.kind == "timeout"
        assert programs.store.get_frame(stopped.decision_id).error.kind == "timeout"  # type: ignore[union-attr]
        assert answered_meanwhile >= 1  # not queued behind the hostile run
    finally:
        answerer.close()


def test_a_killed_run_s_answer_keeps_what_it_invoked_and_what_it_remembered(programs: ProgramRegistry, zoo: Zoo):
    """The record of a run killed at its deadline charges the detection it made and counts as
    executed the site answered from the run's memory, as an answer that ran to the end would."""
    zoo.set_boxes({"person": [box(10, 10, 40, 60)]})
    remembered = NESTED_EQUAL.replace(
        "    n = len(ImagePatch(image).find('person'))\n",
        "    p = ImagePatch(image)\n    n = len(p.find('person'))\n    seen = p.exists('person')\n",
    )
    answerer = Answerer(programs, zoo.registry(), limits=ExecutionLimits(timeout_s=0.5), workers=1)
    try:
        program = programs.register(create("person_on_bike").model_copy(update={"source": remembered}))
        stopped = answerer.answer(program.id, np.zeros((80, 100, 3), np.uint8), None)
        assert stopped.error is not None and stopped.error.kind == "timeout"
        record = programs.store.get_frame(stopped.decision_id)
        find, exists = (site.id for site in program.call_sites)
        assert [(call.site, call.backend) for call in record.trace] == [(find, "detect-small")]
        assert record.executed_sites == [find, exists]
        assert record.site_costs == {find: record.trace[0].cost} and record.cost == record.trace[0].cost > 0
    finally:
        answerer.close()
