"""Container health check: exit 0 when every URL answers 200, 1 (naming the first failure) otherwise.

    python healthcheck.py http://127.0.0.1:8080/readyz
    python healthcheck.py --backends-of /app/deploy/config/synthetic.yaml http://127.0.0.1:8000
    python healthcheck.py --backends-of /app/deploy/config/synthetic.yaml --only detect-small http://127.0.0.1:8000

With ``--backends-of CONFIG BASE_URL`` it asks ``BASE_URL/<backend>/healthz`` of every backend in
the configuration (or of the comma-separated ``--only`` subset; empty means all), so a Ray Serve
head counts as healthy only once all its backends answer.
Standard library and PyYAML only: it runs inside the images in well under a second.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path


def backend_urls(config: Path, base_url: str, only: str = "") -> list[str]:
    """``BASE_URL/<name>/healthz`` for every backend of a backend configuration file, or for the
    comma-separated names in ``only`` (each must be in the file)."""
    import yaml

    names = [backend["name"] for backend in (yaml.safe_load(config.read_text()) or {}).get("backends") or []]
    if not names:
        raise ValueError(f"{config} lists no backends")
    chosen = [name.strip() for name in only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ValueError(f"unknown backends {unknown}; {config} defines {names}")
    return [f"{base_url.rstrip('/')}/{name}/healthz" for name in chosen or names]


def failure(url: str, timeout_s: float) -> str | None:
    """None when ``url`` answers 200 within ``timeout_s``, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return None if reply.status == 200 else f"{url}: HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="+", help="URLs to ask, or the Serve base URL with --backends-of")
    parser.add_argument("--backends-of", type=Path, metavar="CONFIG", help="ask every backend of this configuration")
    parser.add_argument("--only", default="", metavar="NAMES", help="with --backends-of: only these backends")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per request (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.backends_of:
            urls = [url for base in args.urls for url in backend_urls(args.backends_of, base, args.only)]
        else:
            urls = args.urls
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"unhealthy: cannot read {args.backends_of}: {exc}", file=sys.stderr)
        return 1
    for url in urls:
        problem = failure(url, args.timeout)
        if problem is not None:
            print(f"unhealthy: {problem}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
