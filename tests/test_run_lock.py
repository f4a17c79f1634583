"""One writer per run: a second `pgm train`/`pgm evaluate`/`pgm.fit` on a run that another
process holds stops at once with one line naming it and changes nothing; a killed holder frees
the run; the lock is re-entrant in one process; taking it removes stale temporary files.

The other process holds the lock until the test kills it or closes its stdin: no sleeps."""

import os

import pytest
from lock_holder import PGM, RAW, SILENT, Holder
from run_files import hashes, one_line

import pgm
from pgm import runlock
from pgm.cli import main
from pgm.errors import RunLockedError

TRAIN = ["--data", "digits", "--hidden", "16", "--no-progress"]
EVALUATE = ["--k", "1,5", "--n", "20", "--ais-steps", "0", "--no-exact", "--posterior-check",
            "0", "--no-progress"]


@pytest.fixture
def holder():
    held = []

    def start(run, script=RAW):
        held.append(Holder(run, script))
        return held[-1]

    yield start
    for h in held:
        h.kill()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("lock") / "vae"
    assert main(["train", "vae", "--epochs", "1", "--out", str(out), *TRAIN]) == 0
    return out


@pytest.mark.parametrize("argv", [
    ["train", "vae", "--epochs", "2", "--resume", *TRAIN],
    ["train", "vae", "--epochs", "1", *TRAIN],
    ["evaluate", *EVALUATE],
    ["sample", "-n", "4"],
], ids=["train-resume", "train-new", "evaluate", "sample"])
def test_a_second_writer_stops_with_one_line_and_changes_nothing(trained, holder, argv, capsys):
    h = holder(trained)
    before = hashes(trained)
    argv = [*argv, str(trained)] if argv[0] in ("evaluate", "sample") else \
        [*argv, "--out", str(trained)]
    assert main(argv) == 2
    line = one_line(capsys)
    assert f"process {h.pid} (pgm train)" in line and str(trained) in line
    assert line.startswith(f"pgm {argv[0]}: error: ")
    assert hashes(trained) == before
    assert not runlock.held(trained)


def test_samples_written_outside_a_held_run_need_no_lock(trained, holder, tmp_path):
    holder(trained)
    assert main(["sample", str(trained), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file() and (tmp_path / "s.npy").is_file()


def test_a_gan_stops_too_and_leaves_the_folder_as_it_was(tmp_path, holder, capsys):
    run = tmp_path / "gan"
    h = holder(run)
    assert main(["train", "gan", "--data", "digits", "--epochs", "1", "--out", str(run),
                 "--no-progress"]) == 2
    assert f"process {h.pid}" in one_line(capsys)
    assert [p.name for p in run.iterdir()] == [".lock"]


def test_fit_and_fit_gan_take_the_lock_when_given_out(tmp_path, holder):
    data = pgm.load_dataset("digits")
    run = tmp_path / "run"
    h = holder(run)
    model = pgm.VAE(pgm.VAE.Config(data_dim=data.data_dim, hidden=(8,)))
    with pytest.raises(RunLockedError, match=f"process {h.pid}"):
        pgm.fit(model, data, epochs=1, out=run, progress=False)
    from pgm.inference.adversarial import train_gan

    with pytest.raises(RunLockedError, match=f"process {h.pid}"):
        train_gan(data, run, epochs=1, progress=False)
    assert [p.name for p in run.iterdir()] == [".lock"]


def test_a_killed_holder_frees_the_run(trained, holder, capsys):
    h = holder(trained, PGM)
    assert main(["evaluate", str(trained), *EVALUATE]) == 2
    assert f"process {h.pid} (pgm train)" in one_line(capsys)
    h.kill()
    lock = trained / runlock.LOCK
    assert lock.read_text().split()[0] == str(h.pid)  # left behind, naming a dead process
    stale = [trained / ".checkpoint.pt.abcd_123.tmp", trained / "ae-baseline" / ".x.12345678.tmp"]
    for path in stale:
        path.write_bytes(b"a write the kill interrupted")
    assert main(["train", "vae", "--epochs", "2", "--resume", "--out", str(trained),
                 *TRAIN]) == 0
    assert len((trained / "history.csv").read_text().splitlines()) == 1 + 2
    assert not lock.exists() and not runlock.held(trained)
    assert not any(path.exists() for path in stale)  # the run's, and its ae-baseline's


def test_a_holder_without_a_record_is_another_process(tmp_path, holder):
    holder(tmp_path, SILENT)  # waited for a moment (1 s), as if its PID were being written
    with pytest.raises(RunLockedError, match="being written by another process;"):
        with runlock.hold(tmp_path):
            pass


def test_the_lock_is_reentrant_in_one_process_and_freed_at_the_end(tmp_path):
    run = tmp_path / "run"
    with runlock.hold(run, "outer"):
        assert (run / runlock.LOCK).read_text() == f"{os.getpid()} outer\n"
        with runlock.hold(run, "inner"):
            assert runlock.held(run)
        assert runlock.held(run) and (run / runlock.LOCK).exists()
        data = pgm.load_dataset("digits")
        model = pgm.VAE(pgm.VAE.Config(data_dim=data.data_dim, hidden=(8,)))
        pgm.fit(model, data, epochs=1, out=run, progress=False)  # inside: no deadlock
        assert runlock.held(run) and (run / "checkpoint.pt").is_file()
    assert not runlock.held(run) and not (run / runlock.LOCK).exists()
    with runlock.hold(run):  # taken again at once
        pass


def test_a_lock_that_made_the_folder_removes_it_if_nothing_was_written(tmp_path):
    run = tmp_path / "new" / "run"
    with runlock.hold(run):
        assert run.is_dir()
    assert not run.exists() and (tmp_path / "new").is_dir()


def test_taking_the_lock_removes_stale_temporary_files(tmp_path):
    run = tmp_path / "run"
    for folder in ("figures", "eval/old", "ae-baseline", "other"):
        (run / folder).mkdir(parents=True)
    stale = [run / ".checkpoint.pt.k3_x9abq.tmp", run / "figures" / ".elbo.png.a1b2c3d4.tmp",
             run / "eval" / "old" / ".results.json.zz_00000.tmp"]
    kept = [run / "checkpoint.pt", run / ".notes.tmp", run / "figures" / "x.tmp",
            run / "ae-baseline" / ".history.csv.abcdefgh.tmp",  # cleaned when it is locked
            run / "other" / ".data.npz.abcdefgh.tmp"]  # not a folder pgm writes
    for path in stale + kept:
        path.write_bytes(b"x")
    with runlock.hold(run):
        assert [p for p in stale if p.exists()] == []
        assert all(p.exists() for p in kept)


def test_a_run_directory_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", "vae", "--epochs", "1", "--out", str(tmp_path / "file" / "run"),
                 *TRAIN]) == 2
    assert "cannot lock the run directory" in one_line(capsys)
