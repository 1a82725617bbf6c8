"""Optional py-spy sampling of the workers while a route is driven (`make bench PROFILE=1`).

Sampling slows the workers a little, so a profiled run's rates are for finding costs, not for
the table. Each route leaves a folded-stack file (open it with any flame-graph viewer, e.g.
speedscope) and a summary of the functions with the largest share of the samples.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TOP = 40


def find_py_spy() -> str:
    """py-spy from this virtualenv or the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy==0.4.3")
    return found


def _is_plumbing(frame: str) -> bool:
    # gunicorn's accept loop and py-spy's per-process root frame wrap every sample.
    return frame.startswith("process ") or "(gunicorn/" in frame or frame.startswith("<module>")


def top_frames(folded: Path, limit: int = TOP) -> tuple[list[tuple[str, float]], ...]:
    """The busiest functions in a folded-stack file: by inclusive and by self share."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():  # a line py-spy was still writing
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        return [], []
    busiest = [(f, n / total) for f, n in inclusive.most_common() if not _is_plumbing(f)]
    return busiest[:limit], [(f, n / total) for f, n in own.most_common(limit)]


class Profiler:
    """Records every worker of a server with py-spy while one route is driven."""

    def __init__(self, enabled: bool, results: Path, workdir: Path) -> None:
        self.enabled = enabled
        self.py_spy = find_py_spy() if enabled else ""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.directory = results / f"profile-{stamp}"
        self.workdir = workdir

    @contextmanager
    def recording(self, key: str, server: Any, seconds: int) -> Iterator[None]:
        """Sample the master and its workers for `seconds` around the block."""
        if not self.enabled:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        folded = self.directory / f"{key}.folded"
        spy = subprocess.Popen(
            [
                self.py_spy,
                "record",
                "--pid",
                str(server.process.pid),
                "--subprocesses",
                "--duration",
                str(seconds),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nolineno",
                "--nonblocking",
                "--output",
                str(folded),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            spy.wait(timeout=seconds + 60)
        self._summarise(key, folded)

    def _summarise(self, key: str, folded: Path) -> None:
        if not folded.exists():
            print(f"  (py-spy wrote nothing for {key})")
            return
        inclusive, own = top_frames(folded)
        lines = [f"{key}: share of all samples, including callees"]
        lines += [f"{share:>6.1%}  {frame}" for frame, share in inclusive]
        lines += ["", f"{key}: share of all samples spent in the function itself"]
        lines += [f"{share:>6.1%}  {frame}" for frame, share in own]
        (self.directory / f"{key}.top.txt").write_text("\n".join(lines) + "\n")
