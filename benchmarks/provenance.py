"""Where and when a benchmark's numbers were measured: written into every committed results file.

``provenance()`` gives ``{"date", "commit", "machine", "command"}``: the UTC time, HEAD's short hash
(noting uncommitted changes), the machine (CPUs, memory, CPU model, platform, Python) and the command
line that measured it, so that a figure in the docs can be traced to the run that made it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def git_commit() -> str | None:
    """HEAD's short hash, noting uncommitted changes; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    dirty = any(line and not line.startswith("??") for line in status.stdout.splitlines())
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def machine() -> dict[str, Any]:
    """CPUs, memory, CPU model, platform and Python of this machine."""
    return {
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def provenance() -> dict[str, Any]:
    """The date, commit, machine and command of the run now measuring."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "command": _command(),
    }


def _command() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = f"python -m {spec.name}" if spec is not None and spec.name != "__main__" else Path(sys.argv[0]).name
    return " ".join([head, *sys.argv[1:]])


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def cpu_model() -> str | None:
    """The CPU's model name (from /proc/cpuinfo), else what the platform says, else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
