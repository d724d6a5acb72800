"""``fmprog up``: the whole cluster on one machine. Ray Serve with the backends, the policy service
and the router, started in that order, watched, and stopped in reverse order.

Ray and Serve run in this process (:func:`services.cluster.serve_backends`); the policy and the
router are child processes (``python -m uvicorn --factory ...``) configured through their
``FMPROG_POLICY_*`` and ``FMPROG_ROUTER_*`` variables, their logs in ``<state_dir>/logs``, and
supervised: one that dies is restarted with exponential backoff and jitter (its restart count in
``FMPROG_*_RESTARTS``, which it publishes as ``fmprog_service_restarts_total``); only repeated
deaths (``max_restarts`` within ``restart_window_s``) stop the cluster. Other
variables with those prefixes pass through to them (rewards, fallback, training interval, ...)
and are validated before anything starts.

What it is doing goes to stderr as it happens (each part as it becomes ready, each stop); stdout
gets the services' URLs and the ``ready`` line once everything answers. Ray prints a warning on
every normal stop of Serve (below, ``RAY_SHUTDOWN_NOISE``): it is left out.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from launcher.settings import LOCALHOST, READY, StackError, StackSettings, http_url

# -- child processes --------------------------------------------------------------------------


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)  # paths as text
    return str(value)


def child_env(prefix: str, values: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``{prefix}{NAME}`` set to each value,
    or removed where the value is None, so a variable left in the environment cannot override it."""
    env = dict(os.environ if base is None else base)
    for name, value in values.items():
        key = f"{prefix}{name.upper()}"
        if value is None:
            env.pop(key, None)
        else:
            env[key] = _env_value(value)
    return env


def port_in_use(host: str, port: int) -> bool:
    """True when nothing could listen on ``host:port`` now (the check servers make, SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(settings: StackSettings) -> None:
    """Raise StackError naming the first port of the stack something else listens on."""
    wanted = [
        ("router", settings.host, settings.router_port, "--router-port"),
        ("policy", LOCALHOST, settings.policy_port, "--policy-port"),
        ("Serve proxy", LOCALHOST, settings.serve_port, "--serve-port"),
    ]
    for name, host, port, option in wanted:
        if port_in_use(host, port):
            raise StackError(f"port {port} ({name}) on {host} is already in use; choose another with {option}")


@dataclass
class Service:
    """An HTTP service running as a child process (uvicorn), with its log file; ``start`` (re)starts
    it, telling it how often it was restarted (``FMPROG_<PREFIX>_RESTARTS``, its metric)."""

    name: str
    url: str
    command: list[str]
    env: dict[str, str]
    log: Path
    restarts_variable: str
    process: subprocess.Popen | None = None
    restarts: int = 0

    def start(self, deferring: Callable[[], contextlib.AbstractContextManager[Any]]) -> None:
        """Start the process (its log appended to after a restart). A stop signal must not interrupt
        us between the fork and keeping the handle (an orphan); and not by blocking it, since the
        child would inherit the blocked mask across exec."""
        env = {**self.env, self.restarts_variable: str(self.restarts)}
        with deferring(), self.log.open("ab" if self.restarts else "wb") as out:
            self.process = subprocess.Popen(
                self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log}: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, deadline: float) -> None:
        """Return once ``/readyz`` answers 200; StackError if the process exits or the deadline passes."""
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                raise StackError(self.died())
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StackError(
                    f"the {self.name} did not become ready at {self.url}; last lines of {self.log}:\n{self.tail()}"
                )
            time.sleep(0.2)

    def died(self) -> str:
        assert self.process is not None
        return (
            f"the {self.name} (pid {self.process.pid}) exited on its own with code {self.process.returncode}; "
            f"last lines of {self.log}:\n{self.tail()}"
        )

    def stop(self, timeout_s: float) -> str:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; say how it ended."""
        if self.process is None:
            return f"{self.name} was not running"
        if self.process.poll() is not None:
            return f"{self.name} had exited (code {self.process.returncode})"
        self.process.terminate()
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return f"{self.name} did not stop within {timeout_s:g} s and was killed"
        # uvicorn shuts down gracefully, then re-raises the signal
        return f"{self.name} stopped" if code in (0, -signal.SIGTERM) else f"{self.name} stopped with code {code}"


@contextlib.contextmanager
def run_service(
    name: str,
    app: str,
    *,
    host: str,
    port: int,
    env: dict[str, str],
    log: Path,
    stop_timeout_s: float,
    echo: Callable[[str], None],
    deferring: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Iterator[Service]:
    """Start ``uvicorn --factory app`` as a child process in a session of its own (a Ctrl-C at the
    terminal reaches only ``fmprog up``, which stops the children in order); stop it on exit."""
    command = [sys.executable, "-m", "uvicorn", "--factory", app, "--host", host, "--port", str(port)]
    command += ["--timeout-graceful-shutdown", str(max(1, int(stop_timeout_s) - 2))]
    log.parent.mkdir(parents=True, exist_ok=True)
    prefix = "FMPROG_POLICY_" if app.startswith("policy.") else "FMPROG_ROUTER_"
    service = Service(name, http_url(host, port), command, env, log, f"{prefix}RESTARTS")
    try:
        service.start(deferring)
        yield service
    finally:
        echo(service.stop(stop_timeout_s))


# -- fmprog up --------------------------------------------------------------------------------


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived: unwind and stop everything (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)


class _SignalStop:
    """While active, the first SIGINT or SIGTERM raises Stopped in the main thread. Once shutdown
    has begun (``stopping``), signals only say so: every part still stops, each with its timeout."""

    def __init__(self) -> None:
        self.stopping = False
        self._previous: dict[int, Any] = {}
        self._deferring = False
        self._deferred: int | None = None

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block no stop signal interrupts; one that arrived meanwhile raises Stopped after it."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._deferred is not None:
            self._handle(self._deferred, None)

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._deferring:
            self._deferred = signum
            return
        if self.stopping:
            os.write(2, f"{name}: already stopping\n".encode())
            return
        self.stopping = True
        os.write(2, f"{name}: stopping\n".encode())  # print() is not safe in a signal handler
        raise Stopped(signum)

    def install(self) -> None:
        """(Re)install the handlers: ``ray.init`` replaces SIGTERM's with one that exits with code 15."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def __enter__(self) -> _SignalStop:
        self.install()
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _print(line: str) -> None:
    print(line, flush=True)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _error(line: str) -> None:
    print(f"error: {line}", file=sys.stderr, flush=True)


ROUTER_FIELDS = {
    "database",
    "backends_config",
    "backends",
    "serve_url",
    "backend_transport",
    "ray_address",
    "policy_url",
    "policy_api_key",
    "api_key",
    "host",
    "port",
    "stream_file_roots",
}
POLICY_FIELDS = {"state_dir", "api_key", "host", "port"}

RAY_SHUTDOWN_NOISE = ("ServeController.graceful_shutdown failed",)
"""What Ray prints on stdout on every normal stop of Serve, left out. ``serve.shutdown()`` asks the
controller to stop and waits on that call; the controller ends by killing itself, as designed, and
since its calls are retried forever Ray relays a warning that the call failed and will be retried
(in colour, as "(raylet) Task ServeController.graceful_shutdown failed. ..."), which the client
then ignores."""


class _LineFilter(io.TextIOBase):
    """A text stream that passes whole lines on to ``target``, except those containing one of
    ``drop``. Each thread's unfinished line is kept apart until its newline comes."""

    def __init__(self, target: Any, drop: tuple[str, ...]):
        self.target = target
        self.drop = drop
        self._unfinished: dict[int, str] = {}
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        thread = threading.get_ident()
        with self._lock:
            *lines, rest = (self._unfinished.pop(thread, "") + text).split("\n")
            if rest:
                self._unfinished[thread] = rest
            for line in lines:
                if not any(noise in line for noise in self.drop):
                    self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def finish(self) -> None:
        """Pass on what is left of unfinished lines."""
        with self._lock:
            for rest in self._unfinished.values():
                self.target.write(rest)
            self._unfinished.clear()
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.target.encoding


class QuietShutdown:
    """Leaves ``RAY_SHUTDOWN_NOISE`` out of stdout from ``start()`` (when the stop begins) until the
    context is left (after Serve and Ray have stopped: Ray prints what it relays by then)."""

    def __init__(self) -> None:
        self._filter: _LineFilter | None = None

    def start(self) -> None:
        if self._filter is None:
            self._filter = _LineFilter(sys.stdout, RAY_SHUTDOWN_NOISE)
            sys.stdout = self._filter

    def __enter__(self) -> QuietShutdown:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._filter is not None:
            sys.stdout = self._filter.target
            self._filter.finish()
            self._filter = None


def up(
    settings: StackSettings,
    *,
    echo: Callable[[str], None] = _progress,
    show: Callable[[str], None] = _print,
    error: Callable[[str], None] = _error,
) -> int:
    """Start the cluster and block until SIGINT or SIGTERM (then stop everything and return 0). A
    service that dies is restarted (backoff with jitter) while the rest keep serving; one that dies
    too often, or a part that fails to start, stops the rest (return 1). A port in use: 2, before
    anything starts. ``echo`` says what it is doing (stderr), ``show`` the URLs and the ready line
    once everything answers (stdout), ``error`` what went wrong."""
    from services.cluster import serve_backends

    try:
        check_ports(settings)
    except StackError as exc:
        error(str(exc))
        return 2
    catalog = settings.catalog()
    if os.environ.pop("RAY_ADDRESS", None):
        echo("note: ignoring RAY_ADDRESS; fmprog up starts a Ray of its own")
    started = time.monotonic()
    signals = _SignalStop()
    try:
        with signals, contextlib.ExitStack() as stack:
            stack.callback(echo, "Serve and Ray stopped")
            # Serve's shutdown waits on Ray's own processes; if a signal to the whole process group
            # killed those already, it would hang for a minute. Give it stop_timeout_s * 2, then exit.
            watchdog = threading.Timer(2 * settings.stop_timeout_s, _give_up, (2 * settings.stop_timeout_s, error))
            watchdog.daemon = True
            stack.callback(watchdog.cancel)
            echo(f"state in {settings.state_dir}/, logs in {settings.log_dir}/")
            echo(f"starting Ray and Serve with {len(catalog.backends)} backends of {settings.config} ...")
            quiet = stack.enter_context(QuietShutdown())  # left after Serve and Ray stopped
            cluster = stack.enter_context(serve_backends(settings.serve_settings()))
            stack.callback(watchdog.start)
            stack.callback(quiet.start)  # Serve and Ray stop next
            signals.install()
            echo(f"Serve ready after {time.monotonic() - started:.1f} s: {len(catalog.backends)} backends")
            for spec in catalog.backends:
                echo(f"  {spec.name:<14} {spec.function.value:<6} cost {spec.cost:>9g}  {cluster.base_url}/{spec.name}")
            echo("starting the policy and the router ...")
            options = {"stop_timeout_s": settings.stop_timeout_s, "echo": echo, "deferring": signals.deferred}
            policy_env = child_env("FMPROG_POLICY_", settings.policy_settings().model_dump(include=POLICY_FIELDS))
            policy = stack.enter_context(
                run_service(
                    "policy",
                    "policy.app:create_app",
                    host=LOCALHOST,
                    port=settings.policy_port,
                    env=policy_env,
                    log=settings.log_dir / "policy.log",
                    **options,
                )
            )
            router_env = child_env(
                "FMPROG_ROUTER_", settings.router_settings(cluster.ray_address).model_dump(include=ROUTER_FIELDS)
            )
            router = stack.enter_context(
                run_service(
                    "router",
                    "router.app:create_app",
                    host=settings.host,
                    port=settings.router_port,
                    env=router_env,
                    log=settings.log_dir / "router.log",
                    **options,
                )
            )
            try:
                deadline = time.monotonic() + settings.ready_timeout_s
                for service in (policy, router):
                    service.wait_ready(deadline)
                    echo(f"{service.name} ready after {time.monotonic() - started:.1f} s")
            except StackError as exc:
                signals.stopping = True
                error(str(exc))
                return 1
            for service in (router, policy):
                show(f"{service.name:<7} {service.url}   (log {service.log})")
            show(f"{'serve':<7} {cluster.base_url}")
            show(f"{READY} after {time.monotonic() - started:.1f} s; Ctrl-C or SIGTERM stops everything")
            return _supervise((policy, router), settings, echo=echo, error=error, signals=signals)
    except Stopped as stop:
        echo(f"{stop}: everything stopped")
        return 0
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:
            raise
        # SIGTERM while ray.init had its own handler installed (it exits with the signal's number)
        echo("SIGTERM: everything stopped")
        return 0


def _give_up(timeout_s: float, error: Callable[[str], None]) -> None:
    error(f"Serve and Ray did not stop within {timeout_s:g} s (were Ray's processes killed already?); exiting")
    os._exit(1)


def _first_to_exit(services: tuple[Service, ...], poll_s: float = 0.2) -> Service:
    """Block until one of the services exits; return it."""
    while True:
        for service in services:
            if service.process is None or service.process.poll() is not None:
                return service
        time.sleep(poll_s)


def restart_delay(recent_deaths: int, settings: StackSettings, draw: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: ``restart_backoff_s * 2**(recent_deaths - 1)``, at most
    ``restart_backoff_max_s``, times a random factor in [0.5, 1.5) so services that died together
    do not come back in lockstep."""
    base = min(settings.restart_backoff_max_s, settings.restart_backoff_s * 2 ** max(0, recent_deaths - 1))
    return base * (0.5 + draw())


def _supervise(
    services: tuple[Service, ...],
    settings: StackSettings,
    *,
    echo: Callable[[str], None],
    error: Callable[[str], None],
    signals: _SignalStop,
) -> int:
    """Keep the services running until a stop signal (Stopped): a service that dies is restarted
    after a backoff while the others keep serving; one that died more than ``max_restarts`` times
    within ``restart_window_s`` stops the cluster (return 1)."""
    deaths: dict[str, collections.deque[float]] = {service.name: collections.deque() for service in services}
    while True:
        dead = _first_to_exit(services)
        now = time.monotonic()
        recent = deaths[dead.name]
        recent.append(now)
        while recent and now - recent[0] > settings.restart_window_s:
            recent.popleft()
        if len(recent) > settings.max_restarts:
            signals.stopping = True
            error(dead.died())
            error(
                f"the {dead.name} died {len(recent)} times within {settings.restart_window_s:g} s "
                f"(--max-restarts {settings.max_restarts}): stopping everything"
            )
            return 1
        delay = restart_delay(len(recent), settings)
        echo(f"{dead.died()}\nrestarting the {dead.name} in {delay:.1f} s (restart {dead.restarts + 1})")
        time.sleep(delay)
        dead.restarts += 1
        dead.start(signals.deferred)
        try:
            dead.wait_ready(time.monotonic() + settings.ready_timeout_s)
        except StackError as exc:
            echo(f"the restarted {dead.name} did not become ready: {exc}")
            continue
        echo(f"{dead.name} restarted (pid {dead.process.pid}), serving again at {dead.url}")
