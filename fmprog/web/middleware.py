"""The middlewares every fmprog service runs behind (pure ASGI; only the JSON guard buffers a body,
a JSON one, which the routes read whole anyway): bearer authentication, loopback only for a service
with no key, a request size limit and a check of JSON bodies; and ``add_security``, which puts an
app behind them as its settings say."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Protocol

from fastapi import FastAPI
from pydantic import SecretStr
from starlette.middleware import Middleware

from fmprog.web.operations import OPEN_PATHS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServiceSettings(Protocol):
    """What ``add_security`` reads of a service's settings (a pydantic-settings class)."""

    model_config: Mapping[str, Any]

    @property
    def max_request_bytes(self) -> int: ...

    @property
    def api_key(self) -> SecretStr | None: ...


def api_key_setting(settings: ServiceSettings) -> str:
    """The environment variable that sets a service's API key (``FMPROG_ROUTER_API_KEY``)."""
    return f"{settings.model_config.get('env_prefix', '')}API_KEY"


def add_security(app: FastAPI, settings: ServiceSettings, *, auth: Middleware | None = None) -> None:
    """Put ``app`` behind the middlewares of every fmprog service, outermost first: authentication,
    the body limit (413 past ``settings.max_request_bytes``) and the JSON guard (inside the limit:
    it reads no more than that). Authentication is ``auth`` when given (the router's tenant keys);
    else ``Authorization: Bearer`` with ``settings.api_key`` (the operations routes open), or, with
    no key, loopback only."""
    if auth is None and settings.api_key is not None:
        auth = Middleware(BearerAuth, key=settings.api_key.get_secret_value(), open_paths=OPEN_PATHS)
    elif auth is None:
        auth = Middleware(LoopbackOnly, setting=api_key_setting(settings))
    app.add_middleware(JsonGuard)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(auth.cls, *auth.args, **auth.kwargs)


async def reply_problem(send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer an ASGI request from a middleware with ``{"detail": ...}`` and ``status``."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


WRONG_KEY = "missing or wrong API key (Authorization: Bearer <key>)"
BEARER_CHALLENGE = (b"www-authenticate", b"Bearer")


def bearer_token(scope: Scope) -> str | None:
    """The token of a request's ``Authorization: Bearer <token>`` header; None without one."""
    header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class BearerAuth:
    """Requires ``Authorization: Bearer <key>`` on every path except ``open_paths``; compares
    SHA-256 digests in constant time."""

    def __init__(self, app: ASGIApp, key: str, open_paths: Iterable[str] = ()):
        self.app = app
        self.digest = hashlib.sha256(key.encode()).digest()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        given = hashlib.sha256((token or "").encode()).digest()
        if token is None or not hmac.compare_digest(given, self.digest):
            await reply_problem(send, 401, WRONG_KEY, [BEARER_CHALLENGE])
            return
        await self.app(scope, receive, send)


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine's loopback."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def arrived_from_outside(local_address: object) -> bool:
    """Whether a connection's local address is an IP address other than loopback."""
    try:
        ipaddress.ip_address(str(local_address).strip("[]").split("%")[0])
    except ValueError:
        return False
    return not is_loopback(str(local_address))


class LoopbackOnly:
    """Refuses (403) every request that arrived on a non-loopback address of this machine: what a
    service with no API key wraps itself in, so that binding it beyond loopback by hand (``uvicorn
    --host 0.0.0.0``) cannot open it. Reads the local address of the connection (the ASGI scope's
    ``server``), not a setting. A server over TCP always puts an IP address there; what is not one
    did not come over the network (a Unix socket's path, an in-process test transport) and passes."""

    def __init__(self, app: ASGIApp, setting: str):
        self.app = app
        self.setting = setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] not in ("http", "websocket") or server is None or not arrived_from_outside(server[0]):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await reply_problem(send, 403, loopback_only(server[0], self.setting))


def loopback_only(address: object, setting: str) -> str:
    """Why a service with no key refused a request that arrived on ``address``."""
    return (
        f"this service has no API key, so it answers only on loopback; this request arrived on "
        f"{address}: set {setting} to serve beyond loopback"
    )


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await reply_problem(
                send, 413, f"request body of {int(declared)} bytes exceeds the limit of {self.max_bytes}"
            )
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await reply_problem(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes")


class _TooLarge(Exception):
    pass


MAX_JSON_DEPTH = 64
"""How deep a request's JSON may nest (objects and arrays): far more than any body of the services
needs, far less than what makes Python's own JSON parser (or a validator after it) recurse past its
stack, a RecursionError (a 500)."""

_JSON_STRING = re.compile(rb'"[^"]*"?')  # a string, closed or not, once its escapes are gone
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def json_body_problem(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a JSON request body cannot be read safely, or None (also for a body that is not JSON
    at all: the route says what is wrong with it). Refused: objects and arrays nested deeper than
    ``max_depth``, and a lone surrogate escape (``"\\ud800"``, half of a UTF-16 pair), text that
    is not Unicode: Python's parser takes it, but it can be neither stored nor sent back as UTF-8.

    The depth is counted on the brackets outside strings, in C and numpy (linear in the body, no
    parse); only a body that writes a surrogate escape at all is parsed here to find a lone one."""
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")  # pairs from the left, as JSON reads them
    skeleton = _JSON_STRING.sub(b"", unescaped).translate(None, _NOT_BRACKET)
    if skeleton.count(b"[") + skeleton.count(b"{") > max_depth:
        import numpy as np

        depth = int(np.cumsum(np.frombuffer(skeleton.translate(_STEPS), np.int8), dtype=np.int32).max())
        if depth > max_depth:
            return f"body: JSON nested {depth} levels deep, more than the limit of {max_depth}"
    if _SURROGATE_ESCAPE.search(body) is None:
        return None
    try:
        json.dumps(json.loads(body), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        escape = f"\\u{ord(exc.object[exc.start]):04x}"
        return f"body: a JSON string holds a lone surrogate ({escape}), which is not a Unicode character"
    except (ValueError, RecursionError):
        return None  # not JSON: the route's own parser answers
    return None


class JsonGuard:
    """Refuses (422, naming the problem) a JSON request body that ``json_body_problem`` finds
    cannot be read safely, before any route parses it. A body is taken as JSON, whatever its
    content type, when its first byte that is not blank opens an object or an array: the routes
    that parse JSON read it whole anyway. Any other body (an image, a form) streams through."""

    def __init__(self, app: ASGIApp, max_depth: int = MAX_JSON_DEPTH):
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        first = b""  # the body's first byte that is not blank
        more = True
        while more and not first:
            received.append(await receive())
            first = received[-1].get("body", b"").lstrip()[:1]
            more = received[-1]["type"] == "http.request" and received[-1].get("more_body", False)
        if first in (b"{", b"["):
            while more:
                received.append(await receive())
                more = received[-1]["type"] == "http.request" and received[-1].get("more_body", False)
            problem = json_body_problem(b"".join(m.get("body", b"") for m in received), self.max_depth)
            if problem is not None:
                await reply_problem(send, 422, problem)
                return

        async def replay() -> Message:
            return received.pop(0) if received else await receive()

        await self.app(scope, replay, send)
