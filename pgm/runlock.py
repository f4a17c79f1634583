"""One writer per run directory: the lock that ``pgm train``, ``pgm evaluate``, :func:`pgm.fit`
and the GAN loop hold for as long as they write a run.

``with hold(run_dir, "pgm train"):`` takes an advisory ``flock`` (exclusive, non-blocking) on
``RUN/.lock``, a file that records the holder's PID and what it is doing. A second writer
stops at once with :class:`~pgm.errors.RunLockedError`, one line naming the run and the
holder's PID. The kernel frees a flock when its holder dies, so a ``.lock`` left by a killed
process never blocks; the holder removes the file when it lets go (after checking, when it
takes the lock, that the file it locked is still the one at that path, so two processes never
both hold it).

The lock is re-entrant within a process: :func:`pgm.fit` called inside ``pgm train``, which
already holds the run, counts up instead of waiting on itself. Under ``torchrun`` only rank 0
writes, so only rank 0 locks; every rank learns whether it got the lock, so all stop together.

Taking the lock removes the temporary files that killed atomic writes
(:func:`pgm.io.atomic_write_bytes`) left behind, ``.NAME.XXXXXXXX.tmp``, in the run directory,
its ``figures/`` and its ``eval/`` (a nested run, such as ``ae-baseline/``, cleans its own when
:func:`pgm.fit` locks it), and the staging folder of a killed ``pgm evaluate``
(:func:`pgm.publish.remove_stale`): while the lock is held nobody else writes there.
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pgm import distributed, publish
from pgm.errors import PgmError, RunLockedError

LOCK = ".lock"
# mkstemp's names: "." + the file's name + "." + 8 characters of [a-z0-9_] + ".tmp"
_STALE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
FOLDERS = ("figures", "eval", "cache")  # where pgm writes in a run, besides the run itself


@dataclass
class _Held:
    pid: int  # the process that took it (a forked child does not hold its parent's lock)
    fd: int | None  # None: locking is not available here (no fcntl, or a filesystem without)
    path: Path
    created: bool  # the lock made the run directory: removed again if nothing was written
    count: int = 1


_held: dict[str, _Held] = {}
_mutex = threading.Lock()


@contextmanager
def hold(run_dir: str | Path | None, what: str = "pgm"):
    """Hold the lock of ``run_dir`` (created if missing) for the ``with`` block; ``what``
    names the holder to a second writer (``"pgm train"``). RunLockedError if another process
    holds it. ``run_dir=None`` (nothing written) holds nothing."""
    if run_dir is None:
        yield
        return
    run_dir = Path(run_dir)
    failure = None
    key = None
    if distributed.is_main():
        try:
            key = acquire(run_dir, what)
        except PgmError as e:
            failure = e
    if distributed.active():  # rank 0's outcome, on every rank
        message = distributed.all_gather([None if failure is None else str(failure)])[0]
        if failure is None and message is not None:
            failure = RunLockedError(message)
    if failure is not None:
        raise failure
    try:
        yield
    finally:
        if key is not None:
            release(key)


def held(run_dir: str | Path) -> bool:
    """True when this process holds the lock of ``run_dir``."""
    entry = _held.get(str(Path(run_dir).resolve()))
    return entry is not None and entry.pid == os.getpid()


def acquire(run_dir: Path, what: str) -> str:
    """Take (or count up) this process's lock of ``run_dir``; return the key for
    :func:`release`. Prefer :func:`hold`."""
    key = str(run_dir.resolve())
    with _mutex:
        entry = _held.get(key)
        if entry is not None and entry.pid == os.getpid():
            entry.count += 1
            return key
        path = run_dir / LOCK
        created = not run_dir.exists()
        fd = _lock(run_dir, path, what)
        _held[key] = _Held(os.getpid(), fd, path, created)
    remove_stale_temps(run_dir)
    publish.remove_stale(run_dir)  # a killed evaluate's staging folder (pgm.publish)
    return key


def release(key: str) -> None:
    """Count down; the last release removes ``RUN/.lock`` and unlocks it (and removes the run
    directory if the lock made it and nothing was written there)."""
    with _mutex:
        entry = _held[key]
        entry.count -= 1
        if entry.count > 0:
            return
        del _held[key]
        if entry.fd is None:
            return
        try:
            os.unlink(entry.path)  # still locked: a waiter that opened it sees it is gone
        except OSError:
            pass
        os.close(entry.fd)  # frees the flock
        if entry.created:
            try:
                entry.path.parent.rmdir()  # only if empty
            except OSError:
                pass


def _lock(run_dir: Path, path: Path, what: str) -> int | None:
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        return None
    for _ in range(100):  # another round only when the file was replaced meanwhile
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:  # the folder was removed (by a holder that let go): again
            continue
        except OSError as e:
            raise PgmError(f"cannot lock the run directory {run_dir}: {e.strerror} "
                           f"({e.filename or path})") from None
        try:
            holder = _flock(fcntl, fd)
        except OSError as e:  # a filesystem without locks
            os.close(fd)
            warnings.warn(f"cannot lock {path} ({e.strerror}); nothing keeps a second writer "
                          "out of this run", stacklevel=4)
            return None
        if holder is not None:
            os.close(fd)
            raise RunLockedError(f"{run_dir} is being written by {holder}; wait for it to "
                                 "finish, or choose another directory")
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
            return fd
        os.close(fd)  # its holder let go and removed it while we waited: lock the new one
    raise RunLockedError(f"{run_dir}: its lock kept changing hands; try again")


def _flock(fcntl, fd: int) -> str | None:
    """None once this process holds the flock of ``fd``; else who holds it, 'process PID
    (what)'. A holder that locked a moment ago is given a moment to write its PID."""
    for _ in range(100):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            holder = _holder(fd)
            if holder is not None:
                return holder
            time.sleep(0.01)
    return "another process"


def _holder(fd: int) -> str | None:
    """'process PID (what)' from the lock file's record, in one line; None before it is
    written."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace")
    except OSError:
        text = ""
    pid, _, what = text.strip().partition(" ")
    if not pid.isdigit():
        return None
    what = " ".join(what.split())
    return f"process {pid}" + (f" ({what})" if what else "")


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Remove the temporary files of killed atomic writes in ``run_dir`` and the folders pgm
    writes in it (:data:`FOLDERS`, with their subfolders); return what was removed. Nothing
    else is walked: a run directory may sit in a folder of other things. Call it only while
    holding the lock."""
    run_dir = Path(run_dir)
    folders = [run_dir]
    for name in FOLDERS:
        for root, _, _ in os.walk(run_dir / name):  # nothing if missing
            folders.append(Path(root))
    removed = []
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = folder / name
            if _STALE.match(name) and path.is_file() and not path.is_symlink():
                try:
                    path.unlink()
                    removed.append(path)
                except OSError:
                    pass
    return removed
