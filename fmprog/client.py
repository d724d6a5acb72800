"""A typed Python client of the router's HTTP API.

    from fmprog.client import Client

    with Client("http://127.0.0.1:8080") as fm:
        program = fm.register(source=open("p.py").read(), kind="binary")  # or query="is there a car?"
        answer = fm.answer(program.id, "photo.jpg")  # bytes, a path, or an H x W x 3 uint8 RGB array
        fm.feedback(answer.decision_id, "yes")

Every reply other than a 2xx raises ``FmprogError`` (or one of its subclasses, ``NotFound``,
``Unauthorized``, ``Invalid`` and ``Refused``) with the status and the server's ``detail``; so
does a router that cannot be reached. The models below hold what a caller needs of each reply and
keep every other field the router sends (``extra="allow"``), so a newer router does not break
them; ``model_dump(by_alias=True)`` gives the reply as the router sent it.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmprog.images import JPEG_SIGNATURE, PNG_SIGNATURE, encode_png

API_KEY_VARIABLE = "FMPROG_ROUTER_API_KEY"
"""The environment variable the router reads its key from; the client's default key too."""

MAX_FEEDBACK_BATCH = 1000
"""The most labels the router takes in one ``POST /feedback`` list; longer lists are sent in parts."""

EVENT_RECONNECTS = 3
"""How many times in a row ``Client.events`` reconnects after a dropped connection."""

Image = bytes | bytearray | memoryview | str | os.PathLike[str] | np.ndarray
"""A frame: PNG or JPEG bytes, the path of a PNG or JPEG file, or an H x W x 3 uint8 RGB array."""

Target = Mapping[str, Any] | Literal["largest", "cheapest", "random"]
"""A policy to estimate: the router's target object, or a shorthand (a static policy of every call
site's dearest or cheapest backend, or the uniformly random policy)."""


# -- errors -------------------------------------------------------------------------------------------


class FmprogError(Exception):
    """A request the router refused (``status`` is its HTTP status and ``detail`` its reason), or
    one that never got an answer (``status`` is None and ``detail`` says why)."""

    def __init__(self, status: int | None, detail: str, *, method: str | None = None, url: str | None = None):
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.status is None:
            return self.detail
        where = f"{self.method} {self.url}: " if self.method and self.url else ""
        return f"{where}HTTP {self.status}: {self.detail}"


class NotFound(FmprogError):
    """404: no such program, decision or stream (or not one the caller's key may see)."""


class Unauthorized(FmprogError):
    """401: a missing or wrong API key; or 403: a router without a key refuses callers from
    outside its own machine."""


class Invalid(FmprogError):
    """422 or 400: the request was malformed, or its content was refused (a program that does not
    compile, a label the task cannot read, a frame that is not an image); ``detail`` says what."""


class Refused(FmprogError):
    """429 or 503: the router is overloaded, a quota or budget is spent, or a service it needs is
    down. ``retry_after_s`` is how long it asks to wait (its ``Retry-After`` header), if it says."""

    def __init__(
        self,
        status: int | None,
        detail: str,
        *,
        retry_after_s: float | None = None,
        method: str | None = None,
        url: str | None = None,
    ):
        self.retry_after_s = retry_after_s
        super().__init__(status, detail, method=method, url=url)


_ERRORS: dict[int, type[FmprogError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    422: Invalid,
    429: Refused,
    503: Refused,
}


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (a number of seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _detail(response: httpx.Response) -> str:
    """The reason a reply gives: its JSON ``detail``, else its text, else its reason phrase."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)
    return response.text.strip()[:2000] or response.reason_phrase or "no reason given"


def _error(response: httpx.Response) -> FmprogError:
    """The exception for a reply that is not a 2xx."""
    status = response.status_code
    where = {"method": response.request.method, "url": str(response.request.url)}
    cls = _ERRORS.get(status, FmprogError)
    if cls is Refused:
        wait = _retry_after(response.headers.get("retry-after"))
        return Refused(status, _detail(response), retry_after_s=wait, **where)
    return cls(status, _detail(response), **where)


# -- models -------------------------------------------------------------------------------------------

_REPLY = ConfigDict(extra="allow", frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)


class Candidate(BaseModel):
    """A backend the policy may choose at a call site, and what one call of it costs."""

    model_config = _REPLY

    name: str
    cost: float


class CallSite(BaseModel):
    """A routed call of a program: its id (``method@line:col``), its source text and the backends
    the policy may choose for it."""

    model_config = _REPLY

    id: str
    function: str
    source: str = ""
    candidates: list[Candidate] = Field(default_factory=list)


class Program(BaseModel):
    """A registered program: its id (what every other call takes), source, kind, cost weight
    (``lambda_``), policy algorithm, call sites, and warnings about what its backends cannot see."""

    model_config = _REPLY

    id: str
    source: str
    kind: str
    lambda_: float = Field(alias="lambda")
    algorithm: str
    call_sites: list[CallSite] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    query: str | None = None
    name: str | None = None
    tenant: str | None = None
    created_at: datetime | None = None


class Answer(BaseModel):
    """The answer to one frame: ``answer`` itself, the ``decision_id`` to send its label with, the
    backend chosen for each call site (``decision``), what it cost and the trace of every backend
    call (dicts with ``site``, ``backend``, ``cost``, ``ok``...). ``error`` says why a run stopped
    without an answer (``kind``, ``message``, ``line``), and is None when it answered."""

    model_config = _REPLY

    decision_id: str
    program_id: str
    frame_id: str | None = None
    answer: Any = None
    decision: dict[str, str] = Field(default_factory=dict)
    fallback: bool = False
    trace: list[dict[str, Any]] = Field(default_factory=list)
    cost: float = 0.0
    latency_s: float = 0.0
    error: dict[str, Any] | None = None
    label_requested: bool = True
    reused: bool = False
    propensity: float | None = None


class Feedback(BaseModel):
    """What a label earned: the task ``reward`` (before any cost term), the run's cost, and
    whether the router had already received this label (``repeat``)."""

    model_config = _REPLY

    decision_id: str
    program_id: str
    label: str
    reward: float
    cost: float = 0.0
    repeat: bool = False


class FeedbackOutcome(BaseModel):
    """What became of one label of a list: ``accepted``, ``repeat``, ``conflict`` (the decision
    has another label), ``unknown`` (no such decision), ``expired`` or ``rejected``; ``feedback``
    is set for the first two, and ``detail`` says why for the others."""

    model_config = _REPLY

    decision_id: str
    outcome: str
    detail: str | None = None
    feedback: Feedback | None = None


class StreamCounters(BaseModel):
    """What a stream has done so far: frames received, answered (reused ones included), reused,
    dropped and failed, and the cost of its answers."""

    model_config = _REPLY

    received: int = 0
    answered: int = 0
    reused: int = 0
    dropped: int = 0
    failed: int = 0
    cost: float = 0.0


class Stream(BaseModel):
    """A stream the router reads and answers: its source, rate, ``state`` (running, stopped or
    ended), counters and the last error reading its source."""

    model_config = _REPLY

    id: str
    program_id: str
    source: str
    fps: float
    state: str
    counters: StreamCounters = Field(default_factory=StreamCounters)
    last_error: str | None = None


class StreamEvent(BaseModel):
    """One answered frame of a stream: its number in the stream (``seq``, from 1), where it was in
    the source (``pts``, seconds), the answer, its ``decision_id`` (for a label) and its cost."""

    model_config = _REPLY

    seq: int
    stream_id: str
    frame: int
    pts: float
    answer: Any = None
    decision_id: str
    cost: float = 0.0
    reused: bool = False
    error: dict[str, Any] | None = None
    lag_s: float = 0.0


class EvaluationReport(BaseModel):
    """What other policies would have cost and scored on a program's labelled decisions, estimated
    from its log: one dict per target in ``evaluations`` (its ``target`` name, the ``ips``,
    ``snips`` and ``dr`` estimates, each with ``accuracy`` and ``cost_per_frame``, ``matched``...)."""

    model_config = _REPLY

    program_id: str
    algorithm: str
    lambda_: float = Field(alias="lambda")
    decisions: int
    labelled: int
    fallbacks: int = 0
    evaluations: list[dict[str, Any]] = Field(default_factory=list)


# -- frames -------------------------------------------------------------------------------------------


def image_body(image: Image) -> tuple[bytes, str]:
    """A frame's bytes and content type (``image/png`` or ``image/jpeg``, read from the bytes): an
    array is encoded as PNG, a path is read. ValueError or TypeError for anything else."""
    if isinstance(image, np.ndarray):
        return encode_png(image), "image/png"  # ImageError (a ValueError) unless H x W x 3 uint8
    if isinstance(image, str | os.PathLike):
        data = Path(image).read_bytes()
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    else:
        raise TypeError(f"a frame is PNG or JPEG bytes, a file's path or an H x W x 3 uint8 array, not {type(image)}")
    if data.startswith(PNG_SIGNATURE):
        return data, "image/png"
    if data.startswith(JPEG_SIGNATURE):
        return data, "image/jpeg"
    raise ValueError(f"a frame must be PNG or JPEG; these {len(data)} bytes start with {data[:8]!r}")


def _target(target: Target) -> dict[str, Any]:
    if isinstance(target, str):
        if target in ("largest", "cheapest"):
            return {"kind": "static", "backends": target}
        if target == "random":
            return {"kind": "random"}
        raise ValueError(f"target {target!r}: 'largest', 'cheapest', 'random', or the router's target object")
    return dict(target)


def _quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# -- the client ---------------------------------------------------------------------------------------


class Client:
    """The router's HTTP API (``url``, e.g. ``http://127.0.0.1:8080``) as Python calls.

    ``api_key`` is sent as ``Authorization: Bearer <key>``; left out, it is ``$FMPROG_ROUTER_API_KEY``
    when that is set (an empty string sends no key). ``timeout_s`` bounds each request. Use it as a
    context manager, or call ``close()`` when done; one client may be shared by threads."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 60):
        self.url = url.rstrip("/")
        key = os.environ.get(API_KEY_VARIABLE) if api_key is None else api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout_s = timeout_s
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        """Close the client's connections."""
        self._http.close()

    # -- requests ---------------------------------------------------------------------------------------

    def _unreachable(self, exc: httpx.TransportError) -> FmprogError:
        if isinstance(exc, httpx.TimeoutException):
            return FmprogError(None, f"the router at {self.url} did not answer within {self.timeout_s:g} s ({exc})")
        return FmprogError(None, f"cannot reach the router at {self.url}: is `fmprog up` running? ({exc})")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request to the router (``path`` below its URL, e.g. ``/programs``) and return
        its 2xx reply; FmprogError for any other reply or none. The typed methods use this; it is
        public for routes they do not cover."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if not response.is_success:
            raise _error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # -- programs ---------------------------------------------------------------------------------------

    def register(
        self,
        source: str | None = None,
        *,
        query: str | None = None,
        kind: Literal["binary", "open"],
        lambda_: float | None = None,
        algorithm: str | None = None,
        name: str | None = None,
        **options: Any,
    ) -> Program:
        """Register a program: its ``source`` (Python defining ``execute_command(image)``), or a
        ``query`` in words for the router to write the program from (exactly one of the two).

        ``kind`` is ``binary`` (yes/no answers) or ``open``. ``lambda_`` weighs cost against
        accuracy (left out: the router's default), ``algorithm`` names the policy (left out:
        ``structured``), ``name`` names the program in reads and metrics. Other fields of the
        registration go in ``options`` as the router names them (``hyperparameters``,
        ``backends``, ``labels``, ``teacher``, ``budget``); options that are None are left out. A
        program that does not compile raises Invalid."""
        fields: dict[str, Any] = {"source": source, "query": query, "kind": kind, "lambda": lambda_}
        fields.update(algorithm=algorithm, name=name, **options)
        body = {name: value for name, value in fields.items() if value is not None}
        return Program.model_validate(self._json("POST", "/programs", json=body))

    def program(self, program_id: str) -> Program:
        """A registered program; NotFound if there is none with that id."""
        return Program.model_validate(self._json("GET", f"/programs/{_quoted(program_id)}"))

    def programs(self, *, limit: int = 100, offset: int = 0) -> list[Program]:
        """The caller's programs, oldest first: at most ``limit`` (up to 1000) after the first ``offset``."""
        found = self._json("GET", "/programs", params={"limit": limit, "offset": offset})
        return [Program.model_validate(item) for item in found]

    def delete(self, program_id: str) -> None:
        """Delete a program and stop its streams; NotFound if there is none with that id."""
        self.request("DELETE", f"/programs/{_quoted(program_id)}")

    def policy_view(self, program_id: str, *, last: int | None = None) -> dict[str, Any]:
        """Per call site, the share of each backend among the policy's ``last`` decisions (the
        router's default window when left out), as the router reports it."""
        params = {} if last is None else {"last": last}
        return self._json("GET", f"/programs/{_quoted(program_id)}/policy", params=params)

    def evaluate(
        self, program_id: str, targets: Sequence[Target] | None = None, *, last: int | None = None
    ) -> EvaluationReport:
        """Estimate what other policies would have cost and scored on the program's last ``last``
        labelled decisions (the router's default when left out), from its log.

        A target is the router's target object (``{"kind": "static", "backends": ...}``,
        ``{"kind": "random"}`` or ``{"kind": "lambda", "lambda": x}``) or the shorthand
        ``"largest"``, ``"cheapest"`` or ``"random"``; left out, the static largest and cheapest."""
        chosen = ["largest", "cheapest"] if targets is None else targets
        body: dict[str, Any] = {"targets": [_target(target) for target in chosen]}
        if last is not None:
            body["last"] = last
        return EvaluationReport.model_validate(
            self._json("POST", f"/programs/{_quoted(program_id)}/evaluate", json=body)
        )

    # -- answers and labels -----------------------------------------------------------------------------

    def answer(
        self, program_id: str, image: Image, *, frame_id: str | None = None, camera: str | None = None
    ) -> Answer:
        """Answer one frame with a program. ``image`` is PNG or JPEG bytes, a file's path, or an
        H x W x 3 uint8 RGB array (sent as PNG). ``frame_id`` is kept with the answer; frames
        naming a ``camera`` go through the reuse gate (a frame that barely differs from that
        camera's last one may get its answer again, at cost 0)."""
        data, content_type = image_body(image)
        params = {"program_id": program_id, "frame_id": frame_id, "camera": camera}
        reply = self._json(
            "POST",
            "/answer",
            content=data,
            headers={"Content-Type": content_type},
            params={name: value for name, value in params.items() if value is not None},
        )
        return Answer.model_validate(reply)

    def feedback(self, decision_id: str, label: str) -> Feedback:
        """Send the true label of an answered frame (its ``decision_id``) and get its reward.
        NotFound for an unknown decision; a label the task cannot read raises Invalid, another
        label for an already labelled decision FmprogError 409, and one past the label window 410."""
        body = {"decision_id": decision_id, "label": label}
        return Feedback.model_validate(self._json("POST", "/feedback", json=body))

    def feedback_many(self, labels: Iterable[tuple[str, str]]) -> list[FeedbackOutcome]:
        """Send many ``(decision_id, label)`` pairs (in requests of up to 1000) and get one outcome
        per label, in order; one label's problem is its own outcome, not an exception."""
        pairs = [{"decision_id": decision_id, "label": label} for decision_id, label in labels]
        outcomes: list[FeedbackOutcome] = []
        for start in range(0, len(pairs), MAX_FEEDBACK_BATCH):
            reply = self._json("POST", "/feedback", json=pairs[start : start + MAX_FEEDBACK_BATCH])
            outcomes.extend(FeedbackOutcome.model_validate(item) for item in reply["results"])
        return outcomes

    # -- streams ----------------------------------------------------------------------------------------

    def start_stream(
        self,
        program_id: str,
        source: str,
        *,
        fps: float | None = None,
        reuse: bool | None = None,
        max_age: int | None = None,
        webhook: str | None = None,
    ) -> Stream:
        """Have the router read ``source`` (``rtsp://``, ``http(s)://``, or ``file://`` under a
        directory the router allows) and answer ``fps`` of its frames a second with the program;
        the answers are the stream's events (``events``). Options left out take the router's
        defaults (5 frames a second, reuse on, ``max_age`` 10); ``webhook`` also gets each event."""
        options = {"source": source, "fps": fps, "reuse": reuse, "max_age": max_age, "webhook": webhook}
        body = {name: value for name, value in options.items() if value is not None}
        return Stream.model_validate(self._json("POST", f"/programs/{_quoted(program_id)}/streams", json=body))

    def stream(self, stream_id: str) -> Stream:
        """A stream's state and counters; NotFound if there is none with that id."""
        return Stream.model_validate(self._json("GET", f"/streams/{_quoted(stream_id)}"))

    def streams(self, program_id: str | None = None, *, limit: int = 100, offset: int = 0) -> list[Stream]:
        """The caller's streams (of one program, if given)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if program_id is not None:
            params["program_id"] = program_id
        return [Stream.model_validate(item) for item in self._json("GET", "/streams", params=params)]

    def stop_stream(self, stream_id: str) -> None:
        """Stop a stream; its events stay readable."""
        self.request("DELETE", f"/streams/{_quoted(stream_id)}")

    def events(self, stream_id: str, *, after: int | None = None) -> Iterator[StreamEvent]:
        """A stream's events (its answered frames) in order, from the first or after event number
        ``after``, waiting for new ones while the stream runs. The iterator ends when the router
        ends the stream's events (the stream has stopped or ended and every event was sent). A
        dropped connection is resumed after the last event received, a few times in a row."""
        last = after
        connected, failures = False, 0
        while True:
            params = {} if last is None else {"after": last}
            try:
                # the router sends a keep-alive comment every 10 s, well within the read timeout
                with self._http.stream("GET", f"/streams/{_quoted(stream_id)}/events", params=params) as response:
                    if not response.is_success:
                        response.read()
                        raise _error(response)
                    connected = True
                    for event in _server_sent_data(response.iter_lines()):
                        parsed = StreamEvent.model_validate_json(event)
                        last, failures = parsed.seq, 0
                        yield parsed
                return
            except httpx.TransportError as exc:
                failures += 1
                if not connected or failures > EVENT_RECONNECTS:
                    raise self._unreachable(exc) from exc
                time.sleep(1.0)  # the router's retry interval

    # -- operations -------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether the router is up and ready to answer (``GET /readyz`` answers 200)."""
        try:
            return self._http.get("/readyz").is_success
        except httpx.TransportError:
            return False

    def metrics(self) -> str:
        """The router's Prometheus metrics page, as text."""
        return self.request("GET", "/metrics").text


def _server_sent_data(lines: Iterable[str]) -> Iterator[str]:
    """The ``data`` of each Server-Sent Event in ``lines`` (its ``data:`` lines joined by newlines);
    comments, ``id:`` and ``retry:`` lines are read past."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)
