"""A web worker's heap: what loading the app freed goes back to the system before it serves.

A worker checks the argon2id parameters with one trial hash on its main thread (config.py), and
the master's own check has already raised glibc's mmap threshold above a hash's size (glibc
does that after the first large block is freed), so that trial's 19 MiB come from the main
heap and stay there, free but resident, for the life of the worker: its main thread never
hashes again (Passwords hashes on a thread of its own, whose arena keeps its own buffer).
"""

from __future__ import annotations

import ctypes


def release_freed_heap() -> bool:
    """Give the free pages of glibc's heaps back to the system; False where there is no glibc.

    Once per worker, after loading the app: it costs a few milliseconds, and a page given back
    is zeroed again only if it is used again. The hashing thread's buffer is not touched: it
    sits at the top of its own heap, which malloc_trim leaves alone outside the main heap.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already runs on
    except (OSError, AttributeError):
        return False  # not glibc (musl has no malloc_trim): nothing is kept that way there
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))
