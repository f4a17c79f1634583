"""Data-parallel speed on this machine: 1 rank against W ranks (gloo on the CPU).

Each world size runs in fresh processes set up as torchrun would (RANK, WORLD_SIZE, ...);
rounds alternate between world sizes, so drift in the machine's load hits all of them.
Reported, median over rounds:

- seconds per training epoch: ``pgm.fit`` on the 784-400-20 VAE of bench/svi_throughput.py
  (mnist5k, global batch 128, so each of W ranks takes 128 / W per step), epochs after the
  first;
- seconds per evaluated datapoint: ``pgm.evaluate`` (ELBO/IWAE up to K = 1000, AIS with 100
  steps x 16 chains) on ``--eval-n`` test datapoints, wall time of the whole call;
- the core share: rank 0's CPU time over wall time during that call (below 1 when the
  ranks share cores with each other or with other work, and no speed-up can follow);
- the communication share of a DDP step (W > 1): the same steps timed with the gradient
  all-reduce (and the NaN flag) and without (``no_sync``); share = 1 - t_nosync / t_sync.
  Also the bare all-reduce of a gradient-sized tensor.

    python bench/distributed.py [--ranks 1,2] [--rounds 2] [--epochs 3] [--eval-n 40]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

import pgm
from pgm import distributed as dist
from pgm.evaluation import EvalConfig, evaluate
from pgm.inference.objectives import make_objective

H, L, BATCH = 400, 20, 128
COMM_STEPS = 30


def comm_share(model, data) -> dict:
    """Time COMM_STEPS DDP steps with and without the gradient all-reduce."""
    loss_fn = dist.data_parallel(model, make_objective(model))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = dist.shard(data.x_train[:BATCH])  # this rank's part of one global batch

    def steps(sync: bool) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(COMM_STEPS):
            with contextlib.nullcontext() if sync else loss_fn.no_sync():
                loss = loss_fn(x, None, 1.0)
                if sync:
                    dist.first_failed_rank(torch.isfinite(loss))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return (time.perf_counter() - t0) / COMM_STEPS

    steps(True)  # warm-up: DDP builds its buckets on the first steps
    t_sync, t_nosync = steps(True), steps(False)
    grad = torch.zeros(sum(p.numel() for p in model.parameters()))
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(COMM_STEPS):
        dist.all_sum(grad)
    return {"step_s": t_sync, "step_nosync_s": t_nosync, "comm_share": 1 - t_nosync / t_sync,
            "allreduce_s": (time.perf_counter() - t0) / COMM_STEPS,
            "grad_mb": grad.numel() * 4 / 1e6}


def rank_main(rank: int, world: int, port: int, args, result: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init("cpu")
    try:
        data = pgm.load_dataset("mnist5k")
        torch.manual_seed(0)
        model = pgm.VAE(data_dim=data.data_dim, latent_dim=L, hidden=(H,))
        history = pgm.fit(model, data, epochs=args.epochs, batch_size=BATCH, patience=None,
                          progress=False, device="cpu")
        out = {"epoch_s": statistics.median(r["seconds"] for r in history[1:])}
        cfg = EvalConfig(ks=(1, 10, 100, 1000), n=args.eval_n, batch_size=args.eval_batch,
                         ais_steps=100, ais_chains=16, ais_n=args.eval_n, exact=False,
                         posterior_check=0, device="cpu")
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        evaluate(model, data, cfg)
        wall = time.perf_counter() - t0
        out.update(datapoint_s=wall / args.eval_n, core_share=(time.process_time() - c0) / wall)
        if world > 1:
            out.update(comm_share(model, data))
        if dist.is_main():
            Path(result).write_text(json.dumps(out))
    finally:
        dist.close()


def run(world: int, args) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "result.json")
        mp.spawn(rank_main, args=(world, port, args, result), nprocs=world)
        return json.loads(Path(result).read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2", help="world sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eval-n", type=int, default=40)
    p.add_argument("--eval-batch", type=int, default=10,
                   help="datapoints per evaluation batch; ranks take whole batches")
    args = p.parse_args()
    worlds = [int(w) for w in args.ranks.split(",")]
    runs: dict[int, list[dict]] = {w: [] for w in worlds}
    for _ in range(args.rounds):
        for w in worlds:
            runs[w].append(run(w, args))

    def med(w, key):
        return statistics.median(r[key] for r in runs[w])

    base = worlds[0]
    print(f"{'ranks':>5} {'s/epoch':>8} {'speed-up':>8} {'s/datapoint':>11} {'speed-up':>8}"
          f" {'core share':>10} {'step ms':>8} {'comm share':>10} {'all-reduce ms':>13}")
    for w in worlds:
        comm = (f" {1e3 * med(w, 'step_s'):8.1f} {med(w, 'comm_share'):10.0%}"
                f" {1e3 * med(w, 'allreduce_s'):13.2f}" if w > 1 else "")
        print(f"{w:5d} {med(w, 'epoch_s'):8.2f} {med(base, 'epoch_s') / med(w, 'epoch_s'):8.2f}x"
              f" {med(w, 'datapoint_s'):11.3f}"
              f" {med(base, 'datapoint_s') / med(w, 'datapoint_s'):8.2f}x"
              f" {med(w, 'core_share'):10.2f}{comm}")
    if any(w > 1 for w in worlds):
        w = max(worlds)
        print(f"(gradient {runs[w][0]['grad_mb']:.1f} MB; {os.cpu_count()} CPU cores; "
              f"torch {torch.__version__})")


if __name__ == "__main__":
    main()
