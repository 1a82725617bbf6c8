"""A web worker gives back the heap its start freed, so it holds one argon2id buffer, not two."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import LiveServer
from tokenserver.config import Settings

# The production parameters: the buffer at stake is argon2id's memory (19 MiB).
HASH_MIB = Settings().argon2_memory_kib / 1024

_TWO_HASHES_THEN_RELEASE = """
from argon2 import PasswordHasher
from tokenserver.config import Settings
from tokenserver.worker_memory import release_freed_heap

def rss_kib():
    status = open("/proc/self/status").read()
    return int(status.split("VmRSS:")[1].split()[0])

settings = Settings()
hasher = PasswordHasher(
    time_cost=1, memory_cost=settings.argon2_memory_kib, parallelism=settings.argon2_parallelism
)
# As in a worker: the master's check raised glibc's mmap threshold, so a hash of the same
# size comes from the heap, and stays there once freed.
hasher.hash("a password to try the parameters on")
hasher.hash("a password to try the parameters on")
kept = rss_kib()
released = release_freed_heap()
print(released, kept, rss_kib())
"""


def test_release_gives_a_freed_hash_buffer_back_to_the_system() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _TWO_HASHES_THEN_RELEASE],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    released, kept_kib, after_kib = done.stdout.split()
    assert released == "True"
    assert (int(kept_kib) - int(after_kib)) / 1024 > HASH_MIB * 0.8


def _heap_mib(pid: int) -> float:
    """The resident size of the process's main heap (glibc's main arena), in MiB."""
    kib, in_heap = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if not line[0].isupper():  # a mapping's first line; the heap may be split in several
            in_heap = line.endswith("[heap]")
        elif in_heap and line.startswith("Rss:"):
            kib += int(line.split()[1])
    return kib / 1024


def _workers(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def test_a_worker_does_not_keep_its_start_up_hash_in_its_main_heap(
    live_server_factory: Any,
) -> None:
    # Production-sized hashes: the master's check and the worker's own are 19 MiB each.
    server: LiveServer = live_server_factory(
        1, TOKENSERVER_ARGON2_MEMORY_KIB=str(Settings().argon2_memory_kib)
    )
    assert server.process is not None
    master = server.process.pid
    (worker,) = _workers(master)  # it answered /healthz: the app is loaded, the hook has run
    # The worker inherits the master's heap and adds its own app; a kept trial hash alone
    # would add HASH_MIB.
    assert _heap_mib(worker) - _heap_mib(master) < HASH_MIB / 2
