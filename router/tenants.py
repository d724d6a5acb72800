"""Tenants and their API keys: who a request comes from, and what it may see.

A tenant owns the programs it registers, with their decisions, labels and streams; another tenant's
program is "not found" to it. An admin key sees every tenant's. The router's single shared key
(``api_key``), and a router with no key at all (loopback only), stand for the tenant ``default``, so
a setup from before tenants keeps working as one tenant.

A key reads ``fmp_<id>_<secret>``: the id names the key (``fmprog keys revoke ID``) and is stored as
it is; of the whole key only its SHA-256 is stored, so the database cannot give keys away. The
secret is 256 random bits, which is why one unsalted hash is enough (no password to guess).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

DEFAULT_TENANT = "default"
TenantName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
KEY_PREFIX = "fmp_"
_KEY = re.compile(r"^fmp_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: its tenant, and whether its key is an admin's (sees every tenant)."""

    tenant: str = DEFAULT_TENANT
    admin: bool = False
    key_id: str | None = None  # None: the shared key, or no key (loopback)

    def sees(self, tenant: str) -> bool:
        """Whether this caller may see (read, answer, label, delete) what belongs to ``tenant``."""
        return self.admin or tenant == self.tenant


OPERATOR = Caller(admin=True)
"""The router's own callers (its streams, the command line, in-process use): the default tenant's,
seeing every tenant's programs. The HTTP routes always pass the request's caller instead."""


class ApiKey(BaseModel):
    """A stored key, without its secret."""

    model_config = ConfigDict(frozen=True)

    id: str
    tenant: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None = None


def new_key() -> tuple[str, str, str]:
    """A fresh key: (the key to hand out once, its id, the digest to store)."""
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return key, key_id, key_digest(key)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """The id part of a well-formed tenant key, None for anything else (the shared key, a typo)."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def digest_matches(key: str, digest: str) -> bool:
    """Whether ``key`` hashes to the stored ``digest`` (compared in constant time)."""
    return hmac.compare_digest(key_digest(key), digest)
