"""The checkpoint is the one commit point: a run killed at any write resumes to the run an
uninterrupted one writes -- weights, optimizer state, RNG state and history, bit for bit.

For every atomic write of an uninterrupted run in turn, a forked child trains with
:data:`pgm.io.on_write` set to kill it (``os._exit``) once that write's temporary file is
complete and before it replaces the old file, which is every point where the run's files
change (the temporary file stays behind, as after a real kill). The test then resumes the run
in this process, as `pgm train --resume` (or a new start, if the kill came before config.json
existed) would -- after a second kill, at the first write of the resume -- and compares
everything with the uninterrupted run. No timing luck: the kill
points are counted writes. The wall-time columns of the history are the only values that
differ."""

import itertools
import os
from pathlib import Path

import pytest
import torch

import pgm
from pgm import io
from pgm.inference.adversarial import train_gan

KILLED = 137
TIMES = {"seconds", "valid_seconds", "checkpoint_seconds", "save_seconds"}

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked child")


def _fit_vae(data, out: Path, resume: bool) -> None:
    torch.manual_seed(0)
    model = pgm.VAE(data_dim=data.data_dim, latent_dim=2, hidden=(8,))
    # the validation ELBO falls in epoch 7: an epoch without a new best (no weights written)
    # and an early stop (patience 1) are among the kill points
    pgm.fit(model, data, epochs=8, batch_size=300, lr=0.05, patience=1, out=out,
            resume=resume, progress=False)


def _fit_gan(data, out: Path, resume: bool) -> None:
    train_gan(data, out, epochs=2, seed=1, batch_size=500, snapshot_every=0, resume=resume,
              progress=False)  # snapshots.json holds the start only: a Parzen fit is slow


def _count_writes(train, out: Path) -> int:
    count = itertools.count(1)
    io.on_write = lambda path: next(count)
    try:
        train(out, resume=False)
    finally:
        io.on_write = None
    return next(count) - 1


def _killed_before_write(n: int, train, out: Path, resume: bool = False) -> None:
    """Run ``train`` in a child that is killed just before its nth atomic write lands."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            count = itertools.count(1)

            def kill(path):
                if next(count) == n:
                    os._exit(KILLED)

            io.on_write = kill
            train(out, resume=resume)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == KILLED, f"write {n}: the child was not killed"


def _record(out: Path) -> dict:
    """What a run directory holds, the wall times left out; temporary files would show."""
    ckpt = io.load_checkpoint(out / io.CHECKPOINT)
    ckpt["history"] = [{k: v for k, v in r.items() if k not in TIMES} for r in ckpt["history"]]
    files = {p.name: p.read_bytes() for p in out.iterdir()
             if p.is_file() and p.name not in (io.HISTORY, io.CHECKPOINT)}
    history = [{k: v for k, v in r.items() if k not in TIMES}
               for r in io.read_history(out / io.HISTORY)]
    return {"checkpoint": ckpt, "files": files, "history.csv": history}


def _assert_same(a, b, where: str) -> None:
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same(u, v, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("name", ["vae", "gan"])
def test_a_kill_at_any_write_resumes_to_the_uninterrupted_run(name, tmp_path):
    data = pgm.load_dataset("digits" if name == "vae" else "gauss1d")
    train = (lambda out, resume: _fit_vae(data, out, resume)) if name == "vae" else \
        (lambda out, resume: _fit_gan(data, out, resume))
    writes = _count_writes(train, tmp_path / "full")
    full = _record(tmp_path / "full")
    if name == "vae":  # the kill points include epochs without a new best, and the stop
        assert full["checkpoint"]["bad_epochs"] == 1 and full["checkpoint"]["epoch"] == 7
    assert writes >= 10
    for n in range(1, writes + 1):
        out = tmp_path / f"killed-{n}"
        _killed_before_write(n, train, out)
        assert any(p.name.endswith(".tmp") for p in out.iterdir())  # the kill's temporary file
        # what quickstart does after a kill: resume a run that has begun; killed again at the
        # resume's first write (its views, or a killed-before-its-checkpoint run's restart)
        _killed_before_write(1, train, out, resume=(out / io.CONFIG).exists())
        train(out, resume=(out / io.CONFIG).exists())
        _assert_same(_record(out), full, f"killed before write {n} of {writes}")
