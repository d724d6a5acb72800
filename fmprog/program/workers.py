"""Run programs in worker processes that can be killed: a pool with the executor's ``run``.

The in-process guards (``fmprog.program.sandbox``) bound every operation they anticipate, but a
single C-level operation they do not (comparing two deeply nested containers that share
sub-structure) cannot be interrupted inside the process that runs it, and holds its lock for every
other thread. A ``WorkerPool`` runs each program in one of a few worker processes instead:

- each worker is a fresh interpreter started with a clean environment (no inherited variables, so
  no keys; only the pipe to the pool and the frame's shared memory as open files), an address
  space limit (``RLIMIT_AS``) and, per run, a CPU-time limit as a backstop (``RLIMIT_CPU``);
- the pool waits for a run at most ``timeout_s`` plus a margin (the time spent in backend calls
  is not the worker's), then kills the worker (SIGKILL) and answers with a ``timeout`` trace; a
  worker that dies, or runs out of memory, is replaced too (``resource_limit``). Such a trace
  keeps what the worker reported as the run went (each invocation and memo hit, with the run's
  steps and printed output so far);
- the program, its guards and the executor's retries and fallbacks run in the worker, against
  proxy models: each backend call comes back to the pool over the worker's pipe and is made here,
  in the calling thread, with the pool's backends (their clients, batching, timeouts). A crop is
  sent as its place in the frame, and the frame is written once into memory the worker maps;
- the compiled program is sent once per worker and kept by digest; workers are started on first
  demand, reused, and a busy pool queues runs.

Every worker may use its whole address space, so a pool of ``workers`` may claim ``workers`` times
``memory_mb``: ``pool_size`` says how many workers fit a share of the machine's memory.

What comes back from a worker is only plain data (a restricted unpickler refuses every class) and
JSON the trace's models validate: a worker is no more trusted than the program it runs. An answer
over the run's ``max_answer_bytes`` is refused in the worker, before its trace is sent (the trace
then has no answer), and checked again here. A worker ends when the pool's process is gone (its
pipe closes; a watcher thread checks the parent).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import marshal
import math
import mmap
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from fmprog.backends.base import Backend, BackendRegistry, FunctionModel
from fmprog.backends.config import BackendSpec, Function
from fmprog.backends.deadline import run_deadline
from fmprog.backends.frames import answering, frame_region
from fmprog.backends.functions import FUNCTIONS
from fmprog.program.compiler import Program
from fmprog.program.deciders import Decider
from fmprog.program.errors import InvalidDecision
from fmprog.program.executor import (
    Decision,
    ErrorKind,
    Executor,
    Invocation,
    MemoHit,
    ProgramError,
    Trace,
    answer_bytes,
    answer_too_large,
)
from fmprog.program.sandbox import ExecutionLimits

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 2**20  # the largest message a worker may send (a trace, a crop)
PROGRAMS_PER_WORKER = 1024  # compiled programs a worker keeps before it forgets them all
START_TIMEOUT_S = 60.0
_FRAME_ALIGN = 4 * 2**20
_RETIRE_GROWTH = 256 * 2**20  # a worker that grew this much during a run is replaced
_BOOT = (
    "import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
    "from fmprog.program.workers import serve; serve(sys.argv[2:])"
)


class WorkerStartError(RuntimeError):
    """A worker process could not be started (or died before it was ready)."""


CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")  # this process's cgroup's memory limit (cgroup v2)


def machine_memory(cgroup_limit: Path = CGROUP_MEMORY_MAX) -> int | None:
    """The memory this process's machine has, in bytes: its physical memory, or its cgroup's
    limit (``memory.max``) when that is a number and smaller (a container's). None when neither
    can be read."""
    try:
        physical: int | None = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        physical = None
    try:
        limit: int | None = int(cgroup_limit.read_text().strip())  # "max" when there is none
    except (OSError, ValueError):
        limit = None
    known = [size for size in (physical, limit) if size is not None and size > 0]
    return min(known) if known else None


def pool_size(workers: int, memory_mb: int, share: float) -> int:
    """How many program workers to start: the most whose address spaces (``memory_mb`` each) add
    up to at most ``share`` of the machine's memory (``machine_memory``), at least 1 and at most
    ``workers``; 0 stays 0 (programs run in the serving process), and ``workers`` when the
    machine's memory cannot be read."""
    if workers <= 0:
        return 0
    memory = machine_memory()
    if memory is None:
        return workers
    fit = int(share * memory) // (memory_mb * 2**20)
    return max(1, min(workers, fit))


# ---------------------------------------------------------------------------------------------
# The pool (in the serving process)


class WorkerPool:
    """Runs programs like ``Executor.run``, each in one of at most ``workers`` processes.

    ``memory_mb`` is each worker's address space (``RLIMIT_AS``: the interpreter, the frame and
    what the program builds); ``kill_margin_s`` is how long past its deadline a run may take before
    its worker is killed. Thread-safe: each run holds one worker; runs beyond ``workers`` wait."""

    def __init__(
        self,
        backends: BackendRegistry,
        limits: ExecutionLimits | None = None,
        *,
        workers: int = 4,
        retries: int = 0,
        retry_backoff_s: tuple[float, float] = (0.0, 0.0),
        memoise: bool = True,
        memory_mb: int = 1536,
        kill_margin_s: float = 1.0,
    ):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.backends = backends
        self.limits = limits or ExecutionLimits()
        self.size = workers
        self.memory_mb = memory_mb
        self.kill_margin_s = kill_margin_s
        self._checks = Executor(
            backends, self.limits, retries=retries, retry_backoff_s=retry_backoff_s, memoise=memoise
        )
        self.retry_backoff_s = self._checks.retry_backoff_s
        self._setup = {
            # what the worker's executor reads of a backend: its name, function, cost and vocabulary
            "backends": [
                b.spec.model_dump(mode="json", include={"name", "function", "cost", "vocabulary"})
                for b in backends.values()
            ],
            "limits": self.limits.model_dump(),
            "retries": retries,
            "retry_backoff_s": self._checks.retry_backoff_s,
            "memoise": memoise,
            "memory_mb": memory_mb,
        }
        self._lock = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._slots = 0  # workers started or starting
        self._closed = False
        self.kills = 0  # workers killed (deadline, crash, memory), for tests and metrics

    # -- running ---------------------------------------------------------------------------------

    def check_decision(
        self, program: Program, decision: Decision, candidates: Mapping[str, Collection[str]] | None = None
    ) -> None:
        """The executor's check of a decision (``Executor.check_decision``), made in this process."""
        self._checks.check_decision(program, decision, candidates)

    def run(
        self,
        program: Program,
        image: Any,
        decision: Decision | Decider,
        alternates: Mapping[str, Sequence[str]] | None = None,
        *,
        candidates: Mapping[str, Collection[str]] | None = None,
    ) -> Trace:
        """As ``Executor.run``, in a worker: InvalidDecision and ImageError (ValueErrors) are raised
        here before anything is sent; a run the pool had to stop is a trace with ``timeout`` (past
        its deadline) or ``resource_limit`` (the worker died or ran out of memory). A ``Decider``
        is sent to the worker, so it must pickle."""
        decision, alternates, pixels = self._checks.prepare(program, image, decision, alternates, candidates)
        if not isinstance(decision, Decider):
            decision = dict(decision)
        alternates = {site: list(names) for site, names in alternates.items()}  # what pickles plainly
        if candidates is not None:
            candidates = {site: list(names) for site, names in candidates.items()}
        worker = self._acquire()
        keep = False
        try:
            # The calls are made here: remote clients may send the frame once, and no call outlives the run.
            with answering(pixels), run_deadline(perf_counter() + self.limits.timeout_s):
                trace, keep = worker.run(self, program, pixels, decision, alternates, candidates)
        finally:
            self._release(worker, keep)
        return trace

    def warm(self) -> None:
        """Start every worker now rather than on first demand."""
        started = []
        with self._lock:
            wanted = self.size - self._slots
            self._slots += max(wanted, 0)
        try:
            for _ in range(max(wanted, 0)):
                started.append(self._start())
        finally:
            with self._lock:
                self._slots -= max(wanted, 0) - len(started)
                self._idle.extend(started)
                self._lock.notify_all()

    def close(self) -> None:
        """Kill every worker (idle or running); later runs raise RuntimeError."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._idle.clear()
            self._lock.notify_all()
        for worker in workers:
            worker.kill()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return sorted(w.pid for w in self._all)

    # -- workers ---------------------------------------------------------------------------------

    def _acquire(self) -> _Worker:
        with self._lock:
            while True:
                if self._closed:
                    raise RuntimeError("the worker pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._slots < self.size:
                    self._slots += 1
                    break
                self._lock.wait()
        try:
            return self._start()
        except BaseException:
            with self._lock:
                self._slots -= 1
                self._lock.notify()
            raise

    def _release(self, worker: _Worker, keep: bool) -> None:
        if not keep:
            worker.kill()
        with self._lock:
            if keep and not self._closed:
                self._idle.append(worker)
                self._lock.notify()
                return
            self._all.discard(worker)
            self._slots -= 1
            replace = not self._closed
            if replace:
                self._slots += 1  # taken by the replacement now, so that a waiting run does not start one too
        if not keep:
            self.kills += 1
        if replace:
            threading.Thread(target=self._replace, name="program-worker-start", daemon=True).start()

    def _replace(self) -> None:
        try:
            worker = self._start()
        except Exception:
            if not self._closed:
                logger.exception("could not start a program worker")
            with self._lock:
                self._slots -= 1
                self._lock.notify()
            return
        with self._lock:
            if self._closed:
                worker.kill()
                return
            self._idle.append(worker)
            self._lock.notify()

    def _start(self) -> _Worker:
        worker = _Worker.spawn()
        with self._lock:
            self._all.add(worker)  # from now on close() kills it, ready or not
            closed = self._closed
        try:
            if closed:
                raise RuntimeError("the worker pool is closed")
            worker.set_up(self._setup)
        except BaseException:
            worker.kill()
            with self._lock:
                self._all.discard(worker)
            raise
        return worker


def _worker_environment() -> dict[str, str]:
    """What a worker's interpreter needs, and nothing else the serving process holds (keys)."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1"))
    return env


class _Worker:
    """One worker process, seen from the pool: its pipe, the frame memory, the programs it holds."""

    def __init__(self, process: subprocess.Popen[bytes], conn: Connection, frame_fd: int):
        self.process = process
        self.pid = process.pid
        self.conn = conn
        self.frame_fd = frame_fd
        self.frame_map: mmap.mmap | None = None
        self.programs: set[str] = set()
        self._killed = False

    @classmethod
    def spawn(cls) -> _Worker:
        ours, theirs = socket.socketpair()
        frame_fd = os.memfd_create("fmprog-frame", os.MFD_CLOEXEC)
        args = [sys.executable, "-s", "-c", _BOOT, json.dumps(sys.path), str(theirs.fileno()), str(frame_fd)]
        try:
            process = subprocess.Popen(
                args,
                pass_fds=(theirs.fileno(), frame_fd),
                env=_worker_environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                cwd="/",
            )
        except BaseException:
            ours.close()
            os.close(frame_fd)
            raise
        finally:
            theirs.close()
        return cls(process, Connection(ours.detach()), frame_fd)

    def set_up(self, setup: dict[str, Any]) -> None:
        """Send the worker its backends and limits and wait until it is ready (WorkerStartError)."""
        try:
            self.conn.send(("setup", setup))
            if not self.conn.poll(START_TIMEOUT_S):
                raise WorkerStartError(f"a program worker was not ready after {START_TIMEOUT_S:g} s")
            reply = _loads(self.conn.recv_bytes(MAX_MESSAGE_BYTES))
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            raise WorkerStartError(f"a program worker died while starting ({type(exc).__name__})") from exc
        if not (isinstance(reply, tuple) and reply[:1] == ("ready",)):
            raise WorkerStartError(f"a program worker could not start: {reply}")

    def kill(self) -> None:
        if self._killed:
            return
        self._killed = True
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        self.conn.close()
        if self.frame_map is not None:
            self.frame_map.close()
        os.close(self.frame_fd)

    def _put_frame(self, pixels: np.ndarray) -> int:
        """Write the frame into the memory the worker maps; the map's size."""
        size = pixels.nbytes
        if self.frame_map is None or len(self.frame_map) < size:
            mapped = -(-size // _FRAME_ALIGN) * _FRAME_ALIGN
            if self.frame_map is not None:
                self.frame_map.close()
            os.ftruncate(self.frame_fd, mapped)
            self.frame_map = mmap.mmap(self.frame_fd, mapped)
        np.frombuffer(self.frame_map, np.uint8, count=size)[:] = pixels.reshape(-1)
        return len(self.frame_map)

    def run(
        self,
        pool: WorkerPool,
        program: Program,
        pixels: np.ndarray,
        decision: dict[str, str] | Decider,
        alternates: dict[str, list[str]],
        candidates: dict[str, list[str]] | None,
    ) -> tuple[Trace, bool]:
        """The run's trace, and whether this worker may be used again."""
        started = perf_counter()
        timeout_s = pool.limits.timeout_s
        margin = pool.kill_margin_s
        deadline = started + timeout_s + margin
        progress = _Progress(pool.limits)  # what the worker reported, read only if the run is stopped
        reset = len(self.programs) >= PROGRAMS_PER_WORKER
        if reset:
            self.programs.clear()
        digest = program.digest
        payload = None
        if digest not in self.programs:
            payload = (program.source, program.call_sites, marshal.dumps(program.code))
        frame = (pixels.shape[0], pixels.shape[1], self._put_frame(pixels))
        try:
            self.conn.send(("run", digest, payload, reset, frame, decision, alternates, candidates))
        except OSError as exc:  # the worker died between runs
            return self._died(exc, progress, started), False
        self.programs.add(digest)
        while True:
            wait = deadline - perf_counter()
            try:
                if wait <= 0 or not self.conn.poll(wait):
                    self.kill()
                    message = f"the program ran past its time limit of {timeout_s:g} s and was stopped"
                    return progress.stopped("timeout", message, started), False
                message = _loads(self.conn.recv_bytes(MAX_MESSAGE_BYTES))
            except (EOFError, OSError, pickle.UnpicklingError) as exc:
                return self._died(exc, progress, started), False
            kind = message[0] if isinstance(message, tuple) and message else None
            if kind == "call" and len(message) == 3:
                reply = _serve_call(pool.backends, pixels, message[1], message[2])
                try:
                    data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as exc:  # a result that does not pickle is the backend's failure
                    data = pickle.dumps(("error", type(exc).__name__, str(exc)))
                self.conn.send_bytes(data)
                deadline = max(deadline, perf_counter() + margin)  # backend time is not the worker's
            elif kind in ("invocation", "memo_hit") and _Progress.is_report(message):
                progress.add(*message)
            elif kind == "done" and len(message) == 3:
                trace = Trace.model_validate_json(message[1])
                trace.latency_s = perf_counter() - started
                oversized = _oversized(trace, pool.limits.max_answer_bytes)
                if oversized is not None:  # the worker checks its answer: one that did not is broken
                    return oversized, False
                return trace, not message[2]
            elif kind == "failed" and len(message) == 3:  # what the pool checked first: the worker is broken
                self.kill()
                raise RuntimeError(f"a program worker failed: {message[1]}: {message[2]}")
            else:
                self.kill()
                return progress.stopped("resource_limit", "the program's worker broke protocol", started), False

    def _died(self, exc: BaseException, progress: _Progress, started: float) -> Trace:
        self.kill()
        code = self.process.returncode
        if code == -signal.SIGXCPU:
            return progress.stopped("timeout", "the program used up its CPU time and was stopped", started)
        how = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
        if isinstance(exc, OSError | pickle.UnpicklingError):
            how = f"{type(exc).__name__}: {exc}"
        return progress.stopped("resource_limit", f"the program's worker process died ({how})", started)


class _Progress:
    """What a worker reported of its run as it went: each invocation and memo hit (as JSON), and
    with each the run's steps and the output printed since the previous report. Kept as reported
    and validated only if the pool has to stop the run, to build its trace."""

    def __init__(self, limits: ExecutionLimits):
        self._limits = limits
        self._reports: list[tuple[str, str]] = []
        self._steps = 0
        self._output: list[str] = []
        self._output_chars = 0

    @staticmethod
    def is_report(message: tuple[Any, ...]) -> bool:
        """Whether ``message`` is ``(kind, json, steps, output)`` as a worker sends it."""
        return (
            len(message) == 4
            and isinstance(message[1], str)
            and type(message[2]) is int
            and isinstance(message[3], str)
        )

    def add(self, kind: str, report: str, steps: int, output: str) -> None:
        """Keep one report: an invocation or a memo hit, the steps so far and the new output."""
        self._reports.append((kind, report))
        self._steps = max(self._steps, min(steps, self._limits.max_steps + 1))
        room = self._limits.max_output_chars - self._output_chars
        if output and room > 0:
            self._output.append(output[:room])
            self._output_chars += min(len(output), room)

    def stopped(self, kind: ErrorKind, message: str, started: float) -> Trace:
        """The trace of a run the pool stopped: what it invoked so far is still charged, and its
        memo hits, steps and output are kept as far as the worker reported them (a report that does
        not validate is left out)."""
        invocations: list[Invocation] = []
        memo_hits: list[MemoHit] = []
        executed: dict[str, None] = {}
        for what, report in self._reports:
            try:
                if what == "invocation":
                    invocations.append(Invocation.model_validate_json(report))
                    executed[invocations[-1].site] = None
                else:
                    memo_hits.append(MemoHit.model_validate_json(report))
                    executed[memo_hits[-1].site_id] = None
            except ValueError:
                continue
        return Trace(
            error=ProgramError(kind=kind, message=message),
            invocations=invocations,
            executed_sites=list(executed),
            cost=math.fsum(i.cost for i in invocations),
            latency_s=perf_counter() - started,
            steps=self._steps,
            output="".join(self._output),
            memo_hits=memo_hits,
        )


def _oversized(trace: Trace, limit: int) -> Trace | None:
    """``trace`` without its answer, stopped with ``resource_limit``, if the answer is over ``limit``
    (a worker refuses such an answer before it sends its trace, but is no more trusted than the
    program it runs); None when the answer fits."""
    if trace.answer is None:
        return None
    size = answer_bytes(trace.answer)
    if size <= limit:
        return None
    error = ProgramError(kind="resource_limit", message=answer_too_large(size, limit, exact=True))
    return trace.model_copy(update={"answer": None, "error": error})


def _serve_call(backends: BackendRegistry, pixels: np.ndarray, name: object, arguments: object) -> tuple[Any, ...]:
    """Make one backend call a worker asked for; the reply to send back."""
    try:
        backend = backends[name] if isinstance(name, str) else None
        if backend is None or not isinstance(arguments, tuple):
            raise ValueError("malformed backend call")
        values = tuple(_decode_argument(pixels, a) for a in arguments)
    except (KeyError, ValueError, TypeError) as exc:
        return ("error", "ValueError", f"the worker asked for a bad backend call: {exc}")
    try:
        result = getattr(backend.model, FUNCTIONS[backend.function].method)(*values)
    except Exception as exc:  # whether a retry may help travels with it (``retryable``)
        return ("error", type(exc).__name__, str(exc), getattr(exc, "retryable", True) is not False)
    return ("result", result)


def _decode_argument(pixels: np.ndarray, argument: object) -> Any:
    if isinstance(argument, str):
        return argument
    if isinstance(argument, tuple) and argument[:1] == ("frame",) and len(argument) == 5:
        row, col, height, width = argument[1:]
        if not all(type(v) is int for v in argument[1:]):
            raise ValueError("crop bounds must be integers")
        if min(row, col) < 0 or min(height, width) <= 0:
            raise ValueError("crop outside the frame")
        if row + height > pixels.shape[0] or col + width > pixels.shape[1]:
            raise ValueError("crop outside the frame")
        return pixels[row : row + height, col : col + width]
    if isinstance(argument, tuple) and argument[:1] == ("array",) and len(argument) == 3:
        shape, data = argument[1:]
        if not (isinstance(shape, tuple) and all(type(v) is int and v >= 0 for v in shape)):
            raise ValueError("bad array shape")
        if not isinstance(data, bytes) or len(data) != math.prod(shape):
            raise ValueError("bad array data")
        return np.frombuffer(data, np.uint8).reshape(shape)
    raise ValueError(f"unexpected argument {type(argument).__name__}")


class _PlainData(pickle.Unpickler):
    """Unpickles only plain data (str, bytes, numbers, tuples, lists, dicts): no class is found."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a worker may not send {module}.{name}")


def _loads(data: bytes) -> Any:
    return _PlainData(io.BytesIO(data)).load()


# ---------------------------------------------------------------------------------------------
# The worker (its own process)


class _Remote:
    """The worker's end: sends backend calls and invocations to the pool, maps the frame."""

    def __init__(self, conn: Connection, frame_fd: int):
        self.conn = conn
        self.frame_fd = frame_fd
        self.frame_map: mmap.mmap | None = None
        self.frame: np.ndarray | None = None
        self.errors: dict[str, type[Exception]] = {}

    def send(self, message: tuple[Any, ...]) -> None:
        self.conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def map_frame(self, height: int, width: int, size: int) -> np.ndarray:
        if self.frame_map is None or len(self.frame_map) != size:  # the pool grew the memory
            if self.frame_map is not None:
                with contextlib.suppress(BufferError):  # a view still alive: leave the old map be
                    self.frame_map.close()
            self.frame_map = mmap.mmap(self.frame_fd, size, prot=mmap.PROT_READ)
        count = height * width * 3
        self.frame = np.frombuffer(self.frame_map, np.uint8, count=count).reshape(height, width, 3)
        return self.frame

    def model(self, name: str, function: Function) -> FunctionModel:
        def call(*arguments: Any) -> Any:
            self.send(("call", name, tuple(self._encode(a) for a in arguments)))
            reply = self.conn.recv()
            if reply[0] == "result":
                return reply[1]
            error = self.errors.get(reply[1])
            if error is None:
                error = self.errors[reply[1]] = type(reply[1], (Exception,), {"retryable": True})
            failure = error(reply[2])
            failure.retryable = reply[3] if len(reply) > 3 else True
            raise failure

        return FunctionModel(function, call, f"{name} (in the serving process)")

    def _encode(self, argument: Any) -> Any:
        if isinstance(argument, str):
            return str(argument)
        if not isinstance(argument, np.ndarray):
            raise TypeError(f"a backend call cannot take {type(argument).__name__}")
        region = None if self.frame is None else frame_region(self.frame, argument)
        if region is not None:
            return ("frame", *region)
        array = np.ascontiguousarray(argument, np.uint8)
        return ("array", tuple(int(v) for v in array.shape), array.tobytes())


class _Reporter:
    """The executor's observer in a worker: sends each invocation and memo hit to the pool as it is
    recorded, with the run's steps and the output printed since the previous report."""

    def __init__(self, remote: _Remote):
        self._remote = remote
        self._output_sent = 0

    def start(self) -> None:
        """A new run begins: its output starts empty."""
        self._output_sent = 0

    def __call__(self, record: Invocation | MemoHit, steps: int, output: str) -> None:
        kind = "invocation" if isinstance(record, Invocation) else "memo_hit"
        self._remote.send((kind, record.model_dump_json(), steps, output[self._output_sent :]))
        self._output_sent = len(output)


def exit_with_parent(interval_s: float = 1.0) -> None:
    """End this process when the process that started it is gone: a worker outlives a parent
    killed by a signal (SIGTERM, SIGKILL) and would work on for nobody. Starts a daemon thread."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _resident() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def serve(argv: list[str]) -> None:
    """A worker's main loop: ``argv`` is the pipe's and the frame memory's descriptors. Returns
    (the process ends) when the pool closes the pipe."""
    with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):
        _serve(argv)


def _serve(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(argv[0]))
    remote = _Remote(conn, int(argv[1]))
    exit_with_parent()
    setup = conn.recv()[1]
    specs = [BackendSpec.model_validate(fields) for fields in setup["backends"]]
    registry = BackendRegistry([Backend(spec, remote.model(spec.name, spec.function)) for spec in specs])
    limits = ExecutionLimits(**setup["limits"])
    reporter = _Reporter(remote)
    executor = Executor(
        registry,
        limits,
        retries=setup["retries"],
        retry_backoff_s=tuple(setup["retry_backoff_s"]),
        memoise=setup["memoise"],
        observe=reporter,
    )
    cap = setup["memory_mb"] * 2**20
    with open("/proc/self/statm", "rb") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    if size > cap * 0.75:
        remote.send(("refused", f"the worker already maps {size >> 20} MB of its {setup['memory_mb']} MB"))
        return
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    programs: dict[str, Program] = {}
    baseline = _resident()
    remote.send(("ready", os.getpid()))
    while True:
        message = conn.recv()
        if message[0] != "run":
            return
        _, digest, payload, reset, (height, width, mapped), decision, alternates, candidates = message
        if reset:
            programs.clear()
        if payload is not None:
            source, sites, code = payload
            programs[digest] = Program(source=source, call_sites=sites, code=marshal.loads(code))
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        soft = math.ceil(used + limits.timeout_s) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (soft if cpu_hard < 0 else min(soft, cpu_hard), cpu_hard))
        try:
            frame = remote.map_frame(height, width, mapped)
            reporter.start()
            trace = executor.run(programs[digest], frame, decision, alternates, candidates=candidates)
            del frame
            remote.frame = None
            retire = (trace.error is not None and trace.error.message == "out of memory") or (
                _resident() - baseline > _RETIRE_GROWTH
            )
            remote.send(("done", trace.model_dump_json(), retire))
        except (InvalidDecision, ValueError) as exc:
            remote.send(("failed", type(exc).__name__, str(exc)))
        except MemoryError:
            os._exit(3)
