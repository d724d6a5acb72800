"""deploy/docker/healthcheck.py, the images' health check, against a small HTTP server on loopback."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.manifests import ROOT, load_module


def module() -> ModuleType:
    return load_module(ROOT / "deploy/docker/healthcheck.py")


class _Handler(http.server.BaseHTTPRequestHandler):
    healthy = frozenset({"/readyz", "/detect-small/healthz", "/llm-small/healthz"})

    def do_GET(self) -> None:
        self.send_response(200 if self.path in self.healthy else 503)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "backends.yaml"
    path.write_text("backends:\n  - name: detect-small\n  - name: vqa-small\n  - name: llm-small\n")
    return path


def test_healthy_urls(server: str) -> None:
    assert module().main([f"{server}/readyz"]) == 0


def test_an_unhealthy_or_unreachable_url_fails(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    check = module()
    assert check.main([f"{server}/readyz", f"{server}/starting"]) == 1
    assert "HTTP 503" in capsys.readouterr().err
    assert check.main(["http://127.0.0.1:9/readyz", "--timeout", "1"]) == 1  # discard port: nothing listens


def test_every_backend_of_a_configuration(server: str, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check = module()
    assert check.main(["--backends-of", str(config), server]) == 1  # vqa-small does not answer
    assert "/vqa-small/healthz" in capsys.readouterr().err
    assert check.main(["--backends-of", str(config), "--only", "detect-small,llm-small", server]) == 0
    assert check.main(["--backends-of", str(config), "--only", "", server]) == 1  # empty: all of them
    assert check.main(["--backends-of", str(config), "--only", "nope", server]) == 1
    assert "unknown backends ['nope']" in capsys.readouterr().err


def test_the_real_configurations_name_their_backends() -> None:
    check = module()
    for name, backends in (("synthetic", 8), ("gpu", 8), ("real", 8)):
        urls = check.backend_urls(ROOT / f"fmprog/configs/{name}.yaml", "http://127.0.0.1:8000/")
        assert "http://127.0.0.1:8000/llm-small/healthz" in urls and len(urls) == backends
