"""A folder of results published in one step: ``RUN/eval/`` is the old evaluation or the new
one, never a mix of both.

An evaluation is several files (results.json, per_datapoint.npz, report.md/.html, figures).
Each file's own atomic write (:func:`pgm.io.atomic_write_bytes`) is not enough: a kill, or a
reader, between two of them would pair the new results.json with the old per_datapoint.npz.
So :func:`staging` gives a fresh hidden folder ``RUN/.eval.XXXXXXXX.tmp`` beside ``eval/``,
everything is written there, and :func:`publish` moves it into place with one rename (or,
where ``eval/`` exists and is to be replaced, one ``renameat2(RENAME_EXCHANGE)`` that swaps
the two folders atomically; the old one is then deleted). Where the kernel lacks that call
the old folder is first renamed aside (``.eval.XXXXXXXX.old``), so a kill in between leaves
no ``eval/`` but the old one aside, which :func:`remove_stale` puts back.

A killed writer leaves the old complete evaluation or the new complete one, plus at most a
staging folder; the next writer, holding the run's lock (:mod:`pgm.runlock`), removes it.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import tempfile
from pathlib import Path

from pgm import io
from pgm.errors import PgmError

EVAL = "eval"
#: staging folders (``.eval.XXXXXXXX.tmp``) and old ones set aside (``.eval.XXXXXXXX.old``)
_LEFT = re.compile(r"^\.(?P<name>[A-Za-z0-9_-]+)\.[A-Za-z0-9_]{8}\.(?P<kind>tmp|old)$")


class ResultsExistError(PgmError, FileExistsError):
    """A complete result is already there and was not to be replaced (``--overwrite``)."""


def staging(run_dir: str | Path, name: str = EVAL) -> Path:
    """A new empty hidden folder inside ``run_dir`` to write the next ``name`` into."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise PgmError(f"{run_dir} is a file, not a run directory to write {name}/ into")
    run_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=run_dir))


def check_absent(run_dir: str | Path, name: str = EVAL) -> None:
    """ResultsExistError if ``run_dir/name`` exists: say so before any work is done."""
    dest = Path(run_dir) / name
    if dest.exists():
        raise ResultsExistError(f"{dest} already holds an evaluation; pass --overwrite to "
                                f"replace it (overwrite=True from Python; or copy it elsewhere "
                                f"first)")


def publish(folder: Path, run_dir: str | Path, name: str = EVAL, *,
            overwrite: bool = False) -> Path:
    """Move the complete ``folder`` (from :func:`staging`) to ``run_dir/name`` in one step;
    an existing one is replaced only with ``overwrite`` (else ResultsExistError, and
    ``folder`` is removed). Return the published path."""
    dest = Path(run_dir) / name
    if io.on_write is not None:  # the kill-test seam: the new folder is complete here
        io.on_write(dest)
    if not dest.exists():
        os.rename(folder, dest)
        return dest
    if not overwrite:
        shutil.rmtree(folder, ignore_errors=True)
        check_absent(run_dir, name)
    if _exchange(folder, dest):  # folder now holds the old one
        shutil.rmtree(folder, ignore_errors=True)
        return dest
    aside = Path(str(folder)[: -len(".tmp")] + ".old")
    os.rename(dest, aside)
    os.rename(folder, dest)
    shutil.rmtree(aside, ignore_errors=True)
    return dest


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where
    that is not available (another OS, an old kernel or libc, a filesystem without it)."""
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if call(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False


def evaluation_dir(path: str | Path) -> Path:
    """The evaluation a path names: a folder holding results.json itself (``RUN/eval``, or
    a copy kept elsewhere), else the run's published one, ``path/eval``."""
    path = Path(path)
    return path if (path / "results.json").is_file() else path / EVAL


def remove_stale(run_dir: str | Path) -> list[Path]:
    """Clear what killed publishers left in ``run_dir``: staging folders are removed; an old
    folder set aside goes back where it was if nothing replaced it, else it is removed.
    Return what was removed. Call it only while holding the run's lock."""
    run_dir = Path(run_dir)
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        return []
    removed = []
    for entry in names:
        m = _LEFT.match(entry)
        path = run_dir / entry
        if m is None or not path.is_dir() or path.is_symlink():
            continue
        dest = run_dir / m["name"]
        if m["kind"] == "old" and not dest.exists():
            os.rename(path, dest)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
