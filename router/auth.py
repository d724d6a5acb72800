"""Who a router request comes from (HTTP): the caller's tenant from its bearer key.

``TenantAuth`` puts a ``Caller`` in each request's state (``request.state.caller``), or answers
401 (a missing or wrong key where one is needed) or 403 (a request from outside loopback to a
router that needs no key) itself. ``KeyRing`` resolves keys: the router's shared key is the
default tenant; a tenant's key is looked up by its id and checked against its stored digest, and
kept for ``cache_s`` seconds, so a revoked key stops working within that long.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from fmprog.web import BEARER_CHALLENGE, WRONG_KEY, arrived_from_outside, bearer_token, loopback_only, reply_problem
from router.store import Store
from router.tenants import Caller, digest_matches, key_id

KEY_CACHE_S = 5.0


class KeyRing:
    """The keys a router takes: its shared key (the default tenant) and its tenants' stored keys."""

    def __init__(
        self,
        store: Store,
        shared_key: str | None = None,
        *,
        require_keys: bool = False,
        cache_s: float = KEY_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.shared = hashlib.sha256(shared_key.encode()).digest() if shared_key else None
        self.require_keys = require_keys
        self.cache_s = cache_s
        self.clock = clock
        self._callers: dict[str, tuple[float, Caller]] = {}  # key -> (until, caller)
        self._any: tuple[float, bool] = (float("-inf"), False)

    def keys_required(self) -> bool:
        """Whether every request needs a key: a shared key is set, keys are required by setting, or
        a tenant key is in force (checked at most every ``cache_s``)."""
        known = self.known_required()
        if known is not None:
            return known
        found = self.store.has_keys()
        self._any = (self.clock() + self.cache_s, found)
        return found

    def known_required(self) -> bool | None:
        """``keys_required`` when known without the database; None: ask ``keys_required``."""
        if self.shared is not None or self.require_keys:
            return True
        until, found = self._any
        return found if self.clock() < until else None

    def known(self, key: str) -> Caller | None:
        """The caller a key stands for when that is known without the database (the shared key, a
        key resolved less than ``cache_s`` ago); None: ask ``resolve``."""
        if self.shared is not None and hmac.compare_digest(hashlib.sha256(key.encode()).digest(), self.shared):
            return Caller()
        cached = self._callers.get(key)
        return cached[1] if cached is not None and self.clock() < cached[0] else None

    def resolve(self, key: str) -> Caller | None:
        """The caller a key stands for; None for a key this router does not take (unknown, revoked)."""
        known = self.known(key)
        if known is not None:
            return known
        now = self.clock()
        self._callers.pop(key, None)
        named = key_id(key)
        found = self.store.find_key(named) if named is not None else None
        if found is None:
            return None
        record, digest = found
        if record.revoked_at is not None or not digest_matches(key, digest):
            return None
        caller = Caller(tenant=record.tenant, admin=record.admin, key_id=record.id)
        if len(self._callers) > 10_000:  # a bound on memory; keys are few, so this is only a guard
            self._callers.clear()
        self._callers[key] = (now + self.cache_s, caller)
        return caller


class TenantAuth:
    """ASGI middleware: the caller of each request (``scope["state"]["caller"]``) from its key;
    ``open_paths`` need none. Where no key is required (no shared key, no tenant key in force), a
    request from loopback is the default tenant's and one from outside is refused, open paths too
    (``setting`` names what to set)."""

    def __init__(self, app: ASGIApp, ring: Callable[[], KeyRing], open_paths: Iterable[str], setting: str):
        self.app = app
        self.ring = ring  # read per request: the ring is built with the store, at start-up
        self.open_paths = frozenset(open_paths)
        self.setting = setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ring = self.ring()
        token = None if scope["path"] in self.open_paths else bearer_token(scope)
        caller = None
        if token is not None:
            caller = ring.known(token) or await anyio.to_thread.run_sync(ring.resolve, token)
        if caller is None:
            required = ring.known_required()
            if required is None:
                required = await anyio.to_thread.run_sync(ring.keys_required)
            server = scope.get("server")
            if not required and server is not None and arrived_from_outside(server[0]):
                await reply_problem(send, 403, loopback_only(server[0], self.setting))
                return
            if required and scope["path"] not in self.open_paths:
                await reply_problem(send, 401, WRONG_KEY, [BEARER_CHALLENGE])
                return
            caller = Caller()  # no key needed (loopback is the default tenant, whatever key it sent), or an open path
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)
