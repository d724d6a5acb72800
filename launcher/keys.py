"""``fmprog keys``: tenants' API keys in a router's database.

``fmprog keys create TENANT --state-dir DIR`` makes a key for TENANT and prints it once (only its
digest is stored); ``--admin`` makes one that sees every tenant. ``fmprog keys revoke ID`` revokes
one (routers stop taking it within seconds), ``fmprog keys list`` lists them without secrets. Each
reads the database of ``fmprog up --state-dir DIR`` (``DIR/router.sqlite3``), or ``--database URL``
(a PostgreSQL URL, or a SQLite path or URL).

Errors exit 2 with one line on stderr: an unknown key id, a tenant name that is not one, a database
that cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

ROUTER_DATABASE = "router.sqlite3"  # in fmprog up's --state-dir


def _store(args: argparse.Namespace) -> Any:
    from router.store import Store

    if args.database:
        return Store(args.database)
    path = Path(args.state_dir) / ROUTER_DATABASE
    path.parent.mkdir(parents=True, exist_ok=True)
    return Store(path)


def _run(args: argparse.Namespace) -> int:
    from router.errors import RouterError
    from router.tenants import TenantName

    try:
        with _store(args) as store:
            if args.keys_command == "create":
                tenant = TypeAdapter(TenantName).validate_python(args.tenant)
                key, record = store.add_key(tenant, admin=args.admin)
                who = "every tenant (admin)" if record.admin else f"tenant {record.tenant!r}"
                print(f"key {record.id} for {who}; shown once, keep it:", file=sys.stderr)
                print(key)
            elif args.keys_command == "revoke":
                record = store.revoke_key(args.key_id)
                print(f"revoked key {record.id} of tenant {record.tenant!r}", file=sys.stderr)
            else:
                for record in store.list_keys(args.tenant):
                    print(json.dumps(record.model_dump(mode="json")))
    except ValidationError:
        print(
            f"error: tenant {args.tenant!r}: letters, digits and . _ - only, at most 64, starting with a letter or "
            "digit",
            file=sys.stderr,
        )
        return 2
    except RouterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_keys_command(commands: Any) -> None:
    """``fmprog keys`` with its create, revoke and list subcommands."""
    keys = commands.add_parser("keys", help="create, revoke and list tenants' API keys in a router's database")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--state-dir", default="state", help=f"fmprog up's state directory: its {ROUTER_DATABASE} (default: state)"
    )
    where.add_argument("--database", help="the router's database instead: a PostgreSQL URL, or a SQLite path or URL")
    sub = keys.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", parents=[where], help="make a key for a tenant and print it once")
    create.add_argument("tenant", help="the tenant's name (letters, digits, . _ -)")
    create.add_argument("--admin", action="store_true", help="a key that sees every tenant's programs")
    revoke = sub.add_parser("revoke", parents=[where], help="revoke a key by its id (the part after fmp_)")
    revoke.add_argument("key_id")
    listing = sub.add_parser("list", parents=[where], help="list keys as JSON lines, without secrets")
    listing.add_argument("--tenant", help="only this tenant's")
    keys.set_defaults(handler=_run)
