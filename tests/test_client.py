"""``fmprog.client.Client`` against the real router over real HTTP (fake models; the policy service
behind it for the learned policies): programs, answers from bytes, paths and arrays, labels one by
one and in lists, off-policy evaluation, a stream's events to its end, and every error as its
exception: 404 NotFound, 422 Invalid with the server's reason, 401 Unauthorized, 429 Refused with
its Retry-After, and a router that is not there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fmprog.backends import BackendCatalog
from fmprog.client import (
    Answer,
    Client,
    FmprogError,
    Invalid,
    NotFound,
    Refused,
    Unauthorized,
    _server_sent_data,
    image_body,
)
from fmprog.images import ImageError, encode_jpeg, encode_png
from policy.app import create_app as create_policy_app
from policy.settings import PolicySettings
from router.app import create_app
from router.settings import RouterSettings
from services.cluster import free_port
from tests.fakes import Zoo, box
from tests.router.conftest import example
from tests.servers import serving

pytestmark = pytest.mark.timeout(180)
KEY = "k" * 24
COUNT = 'def execute_command(image):\n    return str(len(ImagePatch(image).find("person")))\n'
FRAME = np.zeros((80, 100, 3), np.uint8)


def _zoo() -> Zoo:
    """Fake models that see a person on a bicycle; the small VQA says no, the large yes."""
    zoo = Zoo()
    zoo.set_boxes({"person": [box(10, 10, 40, 60)], "bicycle": [box(12, 40, 42, 70)]})
    zoo.models["vqa-small"].answer = lambda image, question: "no"
    zoo.models["vqa-large"].answer = lambda image, question: "yes"
    return zoo


@contextlib.contextmanager
def router(tmp_path: Path, zoo: Zoo, policy_url: str | None = None, **settings: Any) -> Iterator[str]:
    """The router on the fake zoo, served over HTTP; yields its URL."""
    configured = RouterSettings(
        database=tmp_path / "router.db",
        policy_url=policy_url,
        synthesis_backend=None,
        program_workers=0,
        outbox_retry_s=3600 if policy_url is None else 0.2,
        policy_timeout_s=30,
        **settings,
    )
    app = create_app(configured, catalog=BackendCatalog(backends=zoo.specs), backends=zoo.registry())
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One router with the policy service behind it, for the tests that need no settings of their own."""
    tmp_path = tmp_path_factory.mktemp("client")
    policy_app = create_policy_app(PolicySettings(state_dir=tmp_path / "policy", train_interval_s=3600))
    with serving(policy_app) as policy_url, router(tmp_path, _zoo(), policy_url) as router_url:
        yield router_url


@pytest.fixture
def fm(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    monkeypatch.delenv("FMPROG_ROUTER_API_KEY", raising=False)
    with Client(url) as client:
        yield client


def test_register_answer_and_label_a_frame_in_five_lines(fm: Client, tmp_path: Path):
    program = fm.register(source=COUNT, kind="open", lambda_=0, algorithm="random", name=None)
    assert program.kind == "open" and program.lambda_ == 0 and program.algorithm == "random"
    [site] = program.call_sites
    assert site.function == "detect" and {c.name for c in site.candidates} == {"detect-small", "detect-large"}
    assert all(c.cost > 0 for c in site.candidates)
    assert fm.program(program.id) == program
    assert program.id in [p.id for p in fm.programs(limit=1000)]

    path = tmp_path / "frame.jpg"
    path.write_bytes(encode_jpeg(FRAME))
    answers = [
        fm.answer(program.id, encode_png(FRAME), frame_id="bytes"),
        fm.answer(program.id, path, frame_id="path"),
        fm.answer(program.id, str(path)),
        fm.answer(program.id, FRAME, camera="door"),
    ]
    for answer in answers:
        assert isinstance(answer, Answer) and answer.program_id == program.id
        assert answer.answer == "1" and answer.error is None
        assert answer.cost == sum(call["cost"] for call in answer.trace) > 0
        assert answer.decision[site.id] in {"detect-small", "detect-large"}
    assert [a.frame_id for a in answers] == ["bytes", "path", None, None]
    assert len({a.decision_id for a in answers}) == 4

    feedback = fm.feedback(answers[0].decision_id, "1")
    assert (feedback.decision_id, feedback.label, feedback.repeat) == (answers[0].decision_id, "1", False)
    assert feedback.reward > 0 and feedback.cost == answers[0].cost
    assert fm.feedback(answers[0].decision_id, "1").repeat  # the same label again: a repeat
    with pytest.raises(FmprogError) as conflict:
        fm.feedback(answers[0].decision_id, "2")
    assert conflict.value.status == 409 and type(conflict.value) is FmprogError

    unknown = "0" * 32
    outcomes = fm.feedback_many([(answers[1].decision_id, "1"), (unknown, "1"), (answers[2].decision_id, "0")])
    assert [o.outcome for o in outcomes] == ["accepted", "unknown", "accepted"]
    assert outcomes[0].feedback is not None and outcomes[0].feedback.reward > 0
    assert outcomes[2].feedback is not None and outcomes[2].feedback.reward < 0
    assert outcomes[1].feedback is None and outcomes[1].detail
    assert fm.feedback_many([]) == []

    fm.delete(program.id)
    with pytest.raises(NotFound):
        fm.program(program.id)


def test_a_missing_program_is_not_found_with_the_servers_reason(fm: Client):
    missing = "0" * 32
    for call in (
        lambda: fm.program(missing),
        lambda: fm.answer(missing, FRAME),
        lambda: fm.feedback(missing, "yes"),
        lambda: fm.delete(missing),
        lambda: fm.evaluate(missing),
        lambda: fm.stream(missing),
    ):
        with pytest.raises(NotFound) as found:
            call()
        assert found.value.status == 404 and found.value.detail
        assert str(found.value).startswith(f"{found.value.method} {fm.url}/")


def test_a_rejected_program_is_invalid_with_the_servers_message(fm: Client, url: str):
    source = "def execute_command(image):\n    import os\n    return 'no'\n"
    with pytest.raises(Invalid) as rejected:
        fm.register(source=source, kind="binary")
    raw = httpx.post(f"{url}/programs", json={"source": source, "kind": "binary"})
    assert rejected.value.status == raw.status_code == 422
    assert rejected.value.detail == raw.json()["detail"] and "import" in rejected.value.detail
    assert rejected.value.detail in str(rejected.value)

    with pytest.raises(Invalid, match=r"source.*query"):
        fm.register(kind="binary")  # neither source nor query: the router's validation says so
    with pytest.raises(Invalid, match="colour"):
        fm.register(source=COUNT, kind="open", colour="red")  # the router has no such field
    named = fm.register(source=COUNT, kind="open", name="people counter")
    assert named.name == "people counter" and fm.program(named.id).name == "people counter"


def test_a_spent_budget_is_refused_with_when_to_retry(fm: Client):
    budget = {"cost": 1, "window": "hour", "exhausted": "refuse"}
    program = fm.register(source=COUNT, kind="open", lambda_=0, algorithm="random", budget=budget)
    fm.answer(program.id, FRAME)  # spends more than the budget
    with pytest.raises(Refused) as refused:
        fm.answer(program.id, FRAME)
    assert refused.value.status == 429 and "budget" in refused.value.detail
    assert refused.value.retry_after_s is not None and 0 < refused.value.retry_after_s <= 3600


def test_evaluate_returns_the_report(fm: Client):
    program = fm.register(source=example("person_on_bike"), kind="binary", lambda_=0.001, algorithm="random")
    for n in range(24):
        answer = fm.answer(program.id, FRAME)
        fm.feedback(answer.decision_id, "no" if n % 3 == 0 else "yes")
    report = fm.evaluate(program.id, last=100)
    assert (report.program_id, report.algorithm, report.lambda_) == (program.id, "random", 0.001)
    assert report.decisions == report.labelled == 24 and report.fallbacks == 0
    largest, cheapest = report.evaluations
    assert (largest["target"], cheapest["target"]) == ("static-largest", "static-cheapest")
    assert largest["runs"] == 24 and {"ips", "snips", "dr"} <= set(largest)
    [own] = fm.evaluate(program.id, [{"kind": "random"}]).evaluations
    assert own["matched"] == 24
    assert fm.policy_view(program.id, last=24)["decisions"] == 24


def test_an_api_key_is_sent_and_a_wrong_or_missing_one_is_unauthorized(tmp_path, monkeypatch):
    monkeypatch.delenv("FMPROG_ROUTER_API_KEY", raising=False)
    with router(tmp_path, _zoo(), api_key=KEY) as url:
        with Client(url) as anonymous, pytest.raises(Unauthorized) as refused:
            anonymous.programs()
        assert refused.value.status == 401 and "API key" in refused.value.detail
        with Client(url, api_key="w" * 24) as wrong, pytest.raises(Unauthorized):
            wrong.register(source=COUNT, kind="open")
        with Client(url, api_key=KEY) as keyed:
            program = keyed.register(source=COUNT, kind="open", lambda_=0)
            assert keyed.answer(program.id, FRAME).answer == "1"
        monkeypatch.setenv("FMPROG_ROUTER_API_KEY", KEY)  # the router's own variable is the default key
        with Client(url) as from_environment:
            assert [p.id for p in from_environment.programs()] == [program.id]
        with Client(url, api_key="") as none, pytest.raises(Unauthorized):  # an empty key: none sent
            none.programs()


def test_a_router_that_is_not_there_is_named_in_the_error():
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, timeout_s=5) as fm:
        assert not fm.ready()
        with pytest.raises(FmprogError) as unreachable:
            fm.programs()
    assert unreachable.value.status is None
    assert f"cannot reach the router at {url}: is `fmprog up` running?" in str(unreachable.value)


def test_a_stream_of_a_short_clip_is_read_to_its_end(tmp_path):
    av = pytest.importorskip("av")
    clip = tmp_path / "clip.avi"
    with av.open(str(clip), "w") as output:
        video = output.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        for i in range(6):
            output.mux(video.encode(av.VideoFrame.from_ndarray(np.full((120, 160, 3), 40 * i, np.uint8), "rgb24")))
        output.mux(video.encode())
    with router(tmp_path, _zoo(), stream_file_roots=[tmp_path], stream_tick_s=0.2) as url, Client(url) as fm:
        program = fm.register(source=COUNT, kind="open", lambda_=0)
        with pytest.raises(Invalid, match="allowed only under"):
            fm.start_stream(program.id, "file:///etc/passwd")
        stream = fm.start_stream(program.id, clip.as_uri(), fps=10, reuse=False)
        assert (stream.program_id, stream.fps, stream.state) == (program.id, 10, "running")
        events = list(fm.events(stream.id))  # ends when the clip has ended and every event was sent
        ended = fm.stream(stream.id)
        assert ended.state == "ended" and ended.counters.received == 6
        assert [e.seq for e in events] == list(range(1, ended.counters.answered + 1)) and events
        assert all(e.stream_id == stream.id and e.answer == "1" and not e.reused for e in events)
        assert [e.seq for e in fm.events(stream.id, after=events[0].seq)] == [e.seq for e in events[1:]]
        assert [s.id for s in fm.streams(program.id)] == [stream.id]
        fm.stop_stream(stream.id)  # stopping an ended stream: nothing to do
        fm.feedback(events[-1].decision_id, "1")


def test_server_sent_events_are_read_past_comments_and_ids():
    lines = ["retry: 1000", "", ": keep-alive", "", "id: 1", 'data: {"a": 1}', "", "data: x", "data:y", ""]
    assert list(_server_sent_data(lines)) == ['{"a": 1}', "x\ny"]


def test_a_frame_is_sent_as_png_or_jpeg_and_anything_else_is_refused_here(tmp_path):
    png, jpeg = encode_png(FRAME), encode_jpeg(FRAME)
    assert image_body(png) == (png, "image/png")
    assert image_body(bytearray(jpeg)) == (jpeg, "image/jpeg")
    assert image_body(FRAME) == (png, "image/png")
    with pytest.raises(ValueError, match="PNG or JPEG"):
        image_body(b"GIF89a....")
    with pytest.raises(ImageError, match="H x W x 3 uint8"):
        image_body(FRAME.astype(np.float32))
    with pytest.raises(TypeError):
        image_body(42)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        image_body(tmp_path / "missing.png")
