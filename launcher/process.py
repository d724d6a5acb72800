"""``fmprog up`` run as a child process: the real cluster for demos, tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.settings import READY, StackError, StackSettings

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
"""A terminal control sequence (colours): Ray colours some lines it relays even when they go to a pipe."""

# -- fmprog up as a child process -------------------------------------------------------------


def fmprog_command() -> list[str]:
    """The ``fmprog`` console script beside this interpreter, else ``python -m launcher.cli``."""
    script = Path(sys.executable).parent / "fmprog"
    return [str(script)] if script.exists() else [sys.executable, "-m", "launcher.cli"]


def up_arguments(settings: StackSettings) -> list[str]:
    """The ``fmprog up`` command line for ``settings`` (the API keys go in the environment instead)."""
    arguments = ["--config", str(settings.config), "--host", settings.host, "--state-dir", str(settings.state_dir)]
    arguments += ["--router-port", str(settings.router_port), "--policy-port", str(settings.policy_port)]
    arguments += ["--serve-port", str(settings.serve_port), "--backend-transport", settings.backend_transport]
    if settings.backends:
        arguments += ["--backends", ",".join(settings.backends)]
    if settings.num_cpus is not None:
        arguments += ["--num-cpus", f"{settings.num_cpus:g}"]
    arguments += ["--max-restarts", str(settings.max_restarts), "--restart-window", f"{settings.restart_window_s:g}"]
    return arguments


class StackProcess:
    """``fmprog up`` run as a child process, for demos, tests and benchmarks that need the real cluster.

    ``with StackProcess(settings) as stack:`` returns once it printed that it is ready (StackError
    with its output if it exits or times out first); leaving the block sends SIGTERM and waits.
    Its output (stdout and stderr together, terminal colour codes removed) is kept in ``lines`` and,
    with ``echo``, passed on line by line. With ``command``, that command line runs as given (a
    README's, say) in the environment ``env``, and the keys of ``settings`` are not set for it.
    """

    def __init__(
        self,
        settings: StackSettings,
        *,
        echo: Callable[[str], None] | None = None,
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 300.0,
        command: list[str] | None = None,
    ):
        self.settings = settings
        self.command = command
        self.echo = echo
        self.env = env
        self.ready_timeout_s = ready_timeout_s
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        env = dict(os.environ if self.env is None else self.env)
        if self.command is None:
            env.pop("FMPROG_ROUTER_API_KEY", None)
            if self.settings.api_key is not None:
                env["FMPROG_ROUTER_API_KEY"] = self.settings.api_key.get_secret_value()
            env["FMPROG_POLICY_API_KEY"] = self.settings.policy_api_key.get_secret_value()
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            self.command or [*fmprog_command(), "up", *up_arguments(self.settings)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # a Ctrl-C reaches only our process, which stops this one in order
        )
        ready = threading.Event()

        def read(stream: Any) -> None:
            for raw in stream:
                line = ANSI_ESCAPE.sub("", raw.rstrip("\n"))
                self.lines.append(line)
                if self.echo is not None:
                    self.echo(line)
                if line.startswith(READY):
                    ready.set()

        self._reader = threading.Thread(target=read, args=(self.process.stdout,), name="fmprog-up-output", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            while not ready.wait(0.2):
                if self.process.poll() is not None:
                    self._reader.join(timeout=5)
                    raise StackError(f"fmprog up exited with code {self.process.returncode}:\n{self.output(40)}")
                if time.monotonic() > deadline:
                    raise StackError(f"fmprog up was not ready after {self.ready_timeout_s:g} s:\n{self.output(40)}")
        except BaseException:  # not ready, or interrupted (Ctrl-C): never leave it running
            if self.process.poll() is None:
                self.stop()
            raise

    def output(self, last: int | None = None) -> str:
        return "\n".join(self.lines[-last:] if last else self.lines)

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM, then wait for the exit code; after ``timeout_s`` SIGKILL its process group and raise."""
        if self.process is None:
            raise StackError("fmprog up was never started")
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise StackError(f"fmprog up did not stop within {timeout_s:g} s and was killed") from None
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.process.returncode

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def __enter__(self) -> StackProcess:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()
