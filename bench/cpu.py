"""Who used the CPU while a route was driven: the server, wrk, or something else on the box.

The machine is small (2 cores) and may be shared, so each row says how much of the CPU went to
processes outside the bench; a large share means that row's numbers are disturbed.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_IDLE_WINDOW = 0.5  # seconds per look at the server's CPU time


def _busy_seconds() -> float:
    """CPU time every core spent busy since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _process_seconds(pids: list[int]) -> dict[int, float]:
    """CPU time of each process, plus that of its children it has reaped.

    gunicorn's master reaps the workers that max_requests recycles, so their time stays
    counted as the server's.
    """
    seconds: dict[int, float] = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue  # exited between listing and reading; the master's count has it
        fields = stat.rsplit(")", 1)[1].split()
        # utime, stime, cutime, cstime
        seconds[pid] = sum(int(f) for f in fields[11:15]) / _TICK
    return seconds


def _database_pids() -> list[int]:
    """PostgreSQL's server processes on this machine (their work for us is not noise)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuWatch:
    """CPU shares over one measured window, as fractions of all cores' time."""

    def __init__(self, pids: list[int]) -> None:
        self.started = time.monotonic()
        self.busy = _busy_seconds()
        self.server = _process_seconds(pids)
        self.database = _process_seconds(_database_pids())
        self.children = _children_seconds()

    def stop(self, pids: list[int]) -> dict[str, float]:
        """Shares of the window: the server, the load generator (wrk), everything else."""
        capacity = (time.monotonic() - self.started) * (os.cpu_count() or 1)
        busy = _busy_seconds() - self.busy
        now = _process_seconds(sorted(set(self.server) | set(pids)))
        # Totals, not per-process deltas: an exited worker's whole time is in its parent's
        # reaped-children count now, and its earlier time in the starting total.
        server = sum(now.values()) - sum(self.server.values())
        database = sum(_process_seconds(_database_pids()).values()) - sum(self.database.values())
        driver = _children_seconds() - self.children
        other = max(0.0, busy - server - database - driver)
        return {
            "server_seconds": round(server, 2),
            "database_seconds": round(database, 2),
            "server": round(server / capacity, 3),
            "database": round(database / capacity, 3),
            "wrk": round(driver / capacity, 3),
            "other": round(other / capacity, 3),
            "idle": round(max(0.0, 1 - busy / capacity), 3),
        }


def wait_until_idle(pids: Callable[[], list[int]], limit: float = 120.0) -> float:
    """Wait until the server has finished the requests queued when wrk stopped.

    A slow route leaves requests in the listen queue; without this they would be served during
    the next route's window. Returns the seconds waited.
    """
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = sum(_process_seconds(pids()).values())
        time.sleep(_IDLE_WINDOW)  # polling the server's CPU time, not waiting out a race
        used = sum(_process_seconds(pids()).values()) - before
        if used < _IDLE_WINDOW * 0.05:
            break
    return time.monotonic() - started
