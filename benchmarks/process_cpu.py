"""CPU time of every process on the machine between two samples, grouped by what the process is in
a running ``fmprog up`` stack (from ``/proc``: no psutil needed).

``sample()`` reads each process's user+system time, parent and command line (``/proc/<pid>/stat``,
``/proc/<pid>/cmdline``) and the machine's busy time (``/proc/stat``); ``cpu_by_group(before,
after, stack_pid)`` charges the difference to groups:

- ``router``: the uvicorn process running ``router.app``; ``program workers``: its descendants;
- ``policy``: the one running ``policy.app``;
- ``serve proxy`` (Ray's ``ProxyActor``), ``replicas`` (``ServeReplica``), ``serve controller``;
- ``fmprog up``: the supervisor (``stack_pid``), which is also Ray's driver for Serve;
- ``ray other``: every other descendant of the supervisor (raylet, gcs_server, the dashboard and
  its agents, log monitor, idle workers);
- ``load generator``: this process;
- ``outside the stack``: everything else on the machine (not counted in the stack's total: it is
  how much other work shared the cores while measuring).

A process that exits between the samples is charged through its parent's ``cutime``/``cstime``
(what the parent reaped), less what it had used at the first sample, to the exited child's group
when known (a router's program worker) and else to the parent's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")

REPLICAS = "replicas"
GROUPS = (
    "router",
    "program workers",
    "policy",
    "serve proxy",
    REPLICAS,
    "serve controller",
    "fmprog up",
    "ray other",
    "load generator",
)
OUTSIDE = "outside the stack"


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cpu_s: float  # user + system time of the process (all its threads)
    reaped_s: float  # user + system time of its children that exited and were waited for
    args: str


@dataclass(frozen=True)
class Sample:
    processes: dict[int, Proc]
    busy_s: float  # the machine's busy time (all CPUs), from /proc/stat


def _read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    comm_end = stat.rfind(")")
    fields = stat[comm_end + 2 :].split()
    # after "pid (comm) ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime ...
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    args = raw.replace(b"\0", b" ").decode(errors="replace").strip() or stat[stat.find("(") : comm_end + 1]
    return Proc(pid, ppid, (utime + stime) * TICK_S, (cutime + cstime) * TICK_S, args)


def _busy_s() -> float:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) * TICK_S  # user nice system idle iowait irq softirq steal


def sample() -> Sample:
    processes = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (proc := _read_proc(int(entry.name))) is not None:
            processes[proc.pid] = proc
    return Sample(processes, _busy_s())


def _ancestors(pid: int, processes: dict[int, Proc]) -> list[int]:
    chain, seen = [], set()
    while pid in processes and pid not in seen and pid > 1:
        seen.add(pid)
        pid = processes[pid].ppid
        chain.append(pid)
    return chain


def classify(pid: int, processes: dict[int, Proc], stack_pid: int, me: int | None = None) -> str:
    """The group of process ``pid`` (see the module's docstring)."""
    me = os.getpid() if me is None else me
    if pid == me:
        return "load generator"
    if pid == stack_pid:
        return "fmprog up"
    ancestors = [a for a in _ancestors(pid, processes) if a in processes]
    if stack_pid not in ancestors:
        return OUTSIDE
    args = processes[pid].args
    if "ServeReplica" in args:
        return REPLICAS
    if "ProxyActor" in args:
        return "serve proxy"
    if "ServeController" in args:
        return "serve controller"
    if "router.app" in args:
        return "router"
    if "policy.app" in args:
        return "policy"
    if any("router.app" in processes[a].args for a in ancestors):
        return "program workers"
    return "ray other"


def cpu_by_group(before: Sample, after: Sample, stack_pid: int) -> dict[str, object]:
    """Seconds of CPU per group between two samples, with how many processes each group had, the
    machine's busy seconds and the stack's total (every group but ``outside the stack``)."""
    seconds = dict.fromkeys((*GROUPS, OUTSIDE), 0.0)
    counts = dict.fromkeys((*GROUPS, OUTSIDE), 0)
    merged = {**before.processes, **after.processes}  # to classify processes that exited
    for pid, proc in after.processes.items():
        group = classify(pid, after.processes, stack_pid)
        old = before.processes.get(pid)
        same = old is not None and old.ppid == proc.ppid and old.cpu_s <= proc.cpu_s  # not a reused pid
        seconds[group] += proc.cpu_s - (old.cpu_s if same else 0.0)
        counts[group] += 1
        if same:  # children it reaped meanwhile, less what they had used at the first sample
            reaped = proc.reaped_s - old.reaped_s
            if reaped > 0:
                gone = [p for p in before.processes.values() if p.ppid == pid and p.pid not in after.processes]
                reaped = max(0.0, reaped - sum(p.cpu_s for p in gone))
                child_group = classify(gone[0].pid, merged, stack_pid) if gone else group
                seconds[child_group] += reaped
    stack = sum(seconds[g] for g in GROUPS)
    return {
        "seconds": {g: round(s, 4) for g, s in seconds.items()},
        "processes": counts,
        "stack_s": round(stack, 4),
        "machine_busy_s": round(after.busy_s - before.busy_s, 4),
    }


def describe(stack_pid: int) -> list[tuple[int, str, str]]:
    """(pid, group, command line) of every process of the stack and this one, for a look at how
    the processes are named."""
    processes = sample().processes
    rows = [(pid, classify(pid, processes, stack_pid), proc.args[:160]) for pid, proc in sorted(processes.items())]
    return [row for row in rows if row[1] != OUTSIDE]
