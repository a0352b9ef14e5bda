"""CPU threads: whether other rethink processes on this machine ask for more cores than it has.

Every training process registers its pid and thread count as a small file in a per-user folder
under the temporary directory for as long as it trains (removed when it stops; the entry of a
process that died without removing it is ignored and removed, as its pid is gone). Reading that
folder is cheap, so training warns, once per process, when the registered threads add up to more
than the cores: processes that each take every core slow each other down many times over.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import torch

_warned = False


def folder() -> str:
    return os.path.join(tempfile.gettempdir(), f"rethink-threads-{os.getuid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (a reused pid)
        return True
    return True


def others() -> dict[int, int]:
    """The thread counts of the other live rethink processes that train on this machine, by pid."""
    found = {}
    try:
        names = os.listdir(folder())
    except OSError:
        return found
    for name in names:
        try:
            pid, n = int(name), int(open(os.path.join(folder(), name)).read())
        except (OSError, ValueError):  # removed meanwhile, or half written
            continue
        if not _alive(pid):  # killed before it could remove its entry
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder(), name))
        elif pid != os.getpid():
            found[pid] = n
    return found


@contextlib.contextmanager
def registered():
    """Register this process's threads while it trains, warning once per process when all
    registered threads are more than the cores."""
    path = os.path.join(folder(), str(os.getpid()))
    mine = torch.get_num_threads()
    try:
        os.makedirs(folder(), exist_ok=True)
        with open(path, "w") as f:
            f.write(str(mine))
    except OSError:  # no writable temporary directory: train without telling others
        path = None
    try:
        _warn_if_oversubscribed(mine)
        yield
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                os.remove(path)


def _warn_if_oversubscribed(mine: int) -> None:
    global _warned
    cores = os.cpu_count() or 1
    rivals = others()
    if _warned or mine + sum(rivals.values()) <= cores:
        return
    _warned = True
    listed = ", ".join(f"pid {pid}: {n}" for pid, n in sorted(rivals.items()))
    print(
        f"rethink: warning: {len(rivals)} other rethink process(es) train on this machine ({listed} threads) "
        f"besides this one ({mine}), more threads than its {cores} cores, which slows every one down; give each "
        f"--threads so that they add up to at most {cores}, or run them as one sweep with --executor process",
        file=sys.stderr,
    )
