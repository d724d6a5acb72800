"""Serving an ASGI app over real HTTP for a test: uvicorn in a thread on a free port."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import uvicorn

from services.cluster import free_port


@contextlib.contextmanager
def serving(
    app: object, *, ready_path: str = "/readyz", timeout_s: float = 30, host: str = "127.0.0.1"
) -> Iterator[str]:
    """Serve ``app`` on ``host`` (127.0.0.1; "0.0.0.0" for every interface) until the block ends;
    yields its base URL on 127.0.0.1 once ``ready_path`` answers 200 there."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if httpx.get(f"{url}{ready_path}", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise TimeoutError(f"{url}{ready_path} did not answer")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 60, poll_s: float = 0.1) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(poll_s)
