"""torch.distributed on the CPU: 2 gloo processes (torch.multiprocessing.spawn), tiny data.

A spawn costs seconds of imports on a loaded machine, so one spawn (the module-scoped
``ranks`` fixture) runs every 2-rank scenario and leaves on disk what the tests check; one
``torchrun`` subprocess checks the launcher end to end.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from lock_holder import Holder

import pgm
from pgm import distributed, io
from pgm.cli import main
from pgm.data import Dataset
from pgm.errors import RunLockedError, TrainingDivergedError
from pgm.evaluation import EvalConfig, evaluate
from pgm.models import LinearGaussian

WORLD = 2
FIT = {"epochs": 1, "batch_size": 16, "patience": None, "progress": False, "device": "cpu"}


def _dataset(x: torch.Tensor, n_train: int, n_valid: int) -> Dataset:
    return Dataset(name="synthetic", x_train=x[:n_train], x_valid=x[n_train:n_train + n_valid],
                   x_test=x[n_train + n_valid:], y_train=None, y_valid=None, y_test=None,
                   image_shape=None, n_classes=None, binarize="none", seed=0)


def _binary_data() -> Dataset:
    """48 training points (3 global batches of 16, no padding on 2 ranks), 12 validation."""
    g = torch.Generator().manual_seed(0)
    p = torch.rand(4, 16, generator=g)
    x = (torch.rand(60, 16, generator=g) < p[torch.arange(60) % 4]).float()
    return _dataset(x, 48, 12)


def _autoencoder():
    """Deterministic loss (a Delta guide draws no noise): the ranks' split alone can differ."""
    torch.manual_seed(0)
    return pgm.Autoencoder(data_dim=16, latent_dim=2, hidden=(8,))


def _spawn(fn, *args):
    """Run ``fn(*args)`` on WORLD gloo ranks set up as torchrun would (env vars)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(port, fn, args), nprocs=WORLD)


def _rank_main(rank, port, fn, args):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init("cpu")
    try:
        if rank > 0:  # only rank 0 may write: every pgm file goes through atomic_write_bytes
            def refuse(path, data):
                raise AssertionError(f"rank {rank} wrote {path}")
            io.atomic_write_bytes = refuse
        fn(*args)
    finally:
        distributed.close()


def _weights(run: Path) -> dict:
    return io.load_checkpoint(run / io.CHECKPOINT)["model"]


def _assert_same_weights(a: Path, b: Path):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


# ---- helpers that need no process group ----------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 5, 6, 7])
def test_shards_are_contiguous_and_cover_everything(monkeypatch, n):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(distributed.shard(list(range(n))))
    assert sum(parts, []) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_one_process_is_a_world_of_one():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.all_gather([1, 2]) == [1, 2]
    assert distributed.first_failed_rank(torch.tensor(True)) is None
    assert distributed.first_failed_rank(torch.tensor(False)) == 0


# ---- what the 2 ranks run -------------------------------------------------------------------
def _train_then_resume(tmp: Path):
    """Epoch 1 on 2 ranks; snapshot it; resume the original to epoch 2 on 2 ranks."""
    data = _binary_data()
    pgm.fit(_autoencoder(), data, **FIT, out=tmp / "ddp")
    if distributed.is_main():
        shutil.copytree(tmp / "ddp", tmp / "ddp-epoch1")
    pgm.fit(_autoencoder(), data, **{**FIT, "epochs": 2}, out=tmp / "ddp", resume=True)


def _diverge_on_rank_1(tmp: Path):
    model = _autoencoder()
    calls = {"n": 0}

    def poison(module, inputs, output):  # epoch 1: 3 steps + 1 validation batch, then NaN
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 4 else output

    if distributed.rank() == 1:
        model.decoder.register_forward_hook(poison)
    try:
        pgm.fit(model, _binary_data(), **{**FIT, "epochs": 3}, out=tmp / "nan")
    except TrainingDivergedError as e:
        (tmp / f"error-{distributed.rank()}.txt").write_text(str(e))


def _train_with_the_cli(tmp: Path):
    """``pgm train`` as torchrun would start it on each rank (main() leaves the group)."""
    with open(tmp / f"stdout-{distributed.rank()}.txt", "w") as f, contextlib.redirect_stdout(f):
        code = main(["train", "vae", "--data", "digits", "--epochs", "1", "--hidden", "16",
                     "--no-ae-baseline", "--no-progress", "--device", "cpu",
                     "--out", str(tmp / "cli"), "--log", "tensorboard"])
    assert code == 0


EVAL = EvalConfig(ks=(1, 25), n=8, batch_size=2, ais_steps=20, ais_chains=2, ais_n=6,
                  bdmc=True, gaps=True, gaps_n=4, gaps_steps=5, posterior_check=0, device="cpu")


def _evaluation_inputs():
    torch.manual_seed(0)
    return LinearGaussian(data_dim=6, latent_dim=2, sigma=0.5), _dataset(torch.randn(20, 6), 6, 6)


def _evaluate_sharded(tmp: Path):
    ev = evaluate(*_evaluation_inputs(), EVAL)
    if distributed.is_main():
        torch.save({k: e.per_datapoint for k, e in ev.estimators.items()}, tmp / "sharded.pt")


def _fit_a_locked_run(tmp: Path):
    """Another process holds tmp/locked (the fixture's Holder): every rank stops, not rank 0
    alone (the others would wait for it in the first collective)."""
    try:
        pgm.fit(_autoencoder(), _binary_data(), **FIT, out=tmp / "locked")
    except RunLockedError as e:
        (tmp / f"locked-{distributed.rank()}.txt").write_text(str(e))


def _scenarios(tmp: Path):
    _fit_a_locked_run(tmp)
    _train_then_resume(tmp)
    _diverge_on_rank_1(tmp)
    _evaluate_sharded(tmp)
    _train_with_the_cli(tmp)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What 2 ranks leave in a folder after every scenario; rank 1 writing fails them."""
    tmp = tmp_path_factory.mktemp("ranks")
    holder = Holder(tmp / "locked")
    try:
        _spawn(_scenarios, tmp)
    finally:
        holder.kill()
    (tmp / "holder.pid").write_text(str(holder.pid))
    return tmp


def test_ddp_steps_equal_one_process_on_the_union_of_the_rank_batches(ranks):
    data = _binary_data()
    pgm.fit(_autoencoder(), data, **FIT, out=ranks / "one")
    _assert_same_weights(ranks / "ddp-epoch1", ranks / "one")
    ddp, one = (io.read_history(ranks / r / io.HISTORY)[0] for r in ("ddp-epoch1", "one"))
    assert ddp["train_elbo"] == pytest.approx(one["train_elbo"], rel=1e-5)
    assert ddp["valid_elbo"] == pytest.approx(one["valid_elbo"], rel=1e-5)


def test_a_two_rank_run_resumes_on_one_rank_and_on_two(ranks):
    pgm.fit(_autoencoder(), _binary_data(), **{**FIT, "epochs": 2}, out=ranks / "ddp-epoch1",
            resume=True)
    _assert_same_weights(ranks / "ddp", ranks / "ddp-epoch1")
    for run in ("ddp", "ddp-epoch1"):
        assert [r["epoch"] for r in pgm.load_run(ranks / run).history] == [1, 2]


def test_a_run_another_process_holds_stops_every_rank(ranks):
    pid = (ranks / "holder.pid").read_text()
    for rank in range(WORLD):
        assert f"being written by process {pid}" in (ranks / f"locked-{rank}.txt").read_text()
    assert [p.name for p in (ranks / "locked").iterdir()] == [".lock"]


def test_nan_on_one_rank_stops_every_rank_and_keeps_the_checkpoint(ranks):
    for rank in range(WORLD):
        message = (ranks / f"error-{rank}.txt").read_text()
        assert "non-finite on rank 1 of 2 in epoch 2, step 1" in message
        assert "last good checkpoint" in message
    ckpt = io.load_checkpoint(ranks / "nan" / io.CHECKPOINT)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert len(pgm.load_run(ranks / "nan").history) == 1


def test_sharded_evaluation_gives_the_unsharded_per_datapoint_values(ranks):
    sharded = torch.load(ranks / "sharded.pt")
    ev = evaluate(*_evaluation_inputs(), EVAL)
    assert {"elbo", "iwae_25", "exact", "ais", "bdmc_upper", "gap_amortization"} <= set(sharded)
    assert sharded.keys() == ev.estimators.keys()
    for name, est in ev.estimators.items():
        torch.testing.assert_close(sharded[name], est.per_datapoint, rtol=0, atol=1e-10,
                                   msg=name)


# ---- the command line under torchrun -------------------------------------------------------
def _torchrun(*argv: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -- pgm ARGV`` (``--`` keeps torchrun from
    reading pgm's options such as ``--n`` as its own)."""
    pgm_script = Path(sys.executable).parent / "pgm"
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(WORLD), "--", str(pgm_script), *argv], capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def test_train_and_evaluate_on_two_ranks_write_a_single_process_run_directory(ranks):
    run = ranks / "cli"
    assert "run directory:" in (ranks / "stdout-0.txt").read_text()
    assert (ranks / "stdout-1.txt").read_text() == ""  # rank 0 alone prints
    assert {p.name for p in run.iterdir()} == {"config.json", "model.safetensors",
                                               "checkpoint.pt", "history.csv", "figures",
                                               "tensorboard", "tracking.json"}
    assert len(pgm.load_run(run).history) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((run / "tensorboard").iterdir())) == 1  # rank 0 alone logs
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("valid_elbo")] == [
        (1, pytest.approx(pgm.load_run(run).history[0]["valid_elbo"], rel=1e-6))]
    done = _torchrun("evaluate", str(run), "--n", "20", "--k", "1,25", "--ais-steps", "10",
                     "--ais-n", "4", "--batch-size", "5", "--no-exact", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("wrote ") == 1
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["world_size"] == WORLD and results["n"] == 20
    assert results["estimators"]["ais"]["n"] == 4
    assert {"report.md", "report.html", "per_datapoint.npz"} <= {
        p.name for p in (run / "eval").iterdir()}
