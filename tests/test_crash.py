"""Crash safety: a run killed with SIGKILL at any point resumes to bitwise the same results, and
several processes share one store without losing or corrupting rows."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import torch

from rethink.cli import main
from rethink.store import Store

RUN = [
    "run",
    "--dataset",
    "digits",
    "--train-size",
    "300",
    "--model",
    "mlp",
    "--hidden",
    "64",
    "--lr",
    "0.1",
    "--lr-decay",
    "0.9",
    "--epochs",
    "10",
    "--no-stop-on-fit",
    "--augment",
    "flip",
    "--dropout",
    "0.2",
    "--randomize",
    "random-labels",
    "--checkpoint-interval",
    "0",
    "--quiet",
]
TIME_FIELDS = {"seconds", "train_seconds", "eval_seconds"}

# Run ``rethink`` in a child that SIGKILLs itself at one point: the Nth training step, halfway
# through writing the Nth checkpoint, or inside the store transaction that records the run.
KILLER = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    import rethink.store, rethink.train.engine as engine
    from rethink.cli import main

    point, n = sys.argv[1], int(sys.argv[2])
    calls = 0

    def nth():
        global calls
        calls += 1
        return calls == n

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "step":
        real_step = torch.optim.SGD.step
        def step(self, *a, **k):
            if nth():
                die()
            return real_step(self, *a, **k)
        torch.optim.SGD.step = step
    elif point == "checkpoint":
        real_save = torch.save
        def save(obj, f, *a, **k):
            if nth():  # half of the file reaches the disk, then the process dies
                buf = io.BytesIO()
                real_save(obj, buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                die()
            return real_save(obj, f, *a, **k)
        engine.torch.save = save
    elif point == "store":  # after the Nth SQL statement that writes metrics
        real_init = rethink.store.Store.__init__
        def init(self, *a, **k):
            real_init(self, *a, **k)
            self.db.set_trace_callback(lambda sql: die() if sql.startswith("INSERT INTO steps") and nth() else None)
        rethink.store.Store.__init__ = init
    sys.exit(main(sys.argv[3:]))
""")


def rethink(*args: str, kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    prog = ["-c", KILLER, *map(str, kill)] if kill else ["-m", "rethink"]
    return subprocess.run([sys.executable, *prog, *args], capture_output=True, text=True, timeout=300)


def stored(store: str) -> dict:
    """Everything a store holds about its runs, wall-clock fields left out."""
    db = Store(store)
    out = {}
    for r in db.runs():
        summary = {k: v for k, v in r["summary"].items() if k not in TIME_FIELDS}
        summary["time_to_fit"] = {k: v for k, v in (summary["time_to_fit"] or {}).items() if k not in TIME_FIELDS}
        evals = [{k: v for k, v in e.items() if k not in TIME_FIELDS} for e in db.evals(r["run_id"])]
        out[r["run_id"]] = (r["status"], json.dumps(summary, sort_keys=True), evals, db.step_losses(r["run_id"]))
    db.close()
    return out


def final_weights(folder) -> dict:
    (ckpt,) = [f for f in os.listdir(folder) if f.endswith(".pt")]
    return torch.load(os.path.join(folder, ckpt), weights_only=False)["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref")
    p = rethink(*RUN, "--store", str(folder / "s.sqlite"))
    assert p.returncode == 0, p.stderr
    return folder


# 300 images at batch 128: 3 steps per epoch, 30 steps in all; a checkpoint after every epoch.
KILL_POINTS = [
    ("step", 1),
    ("step", 14),
    ("step", 30),
    ("checkpoint", 1),
    ("checkpoint", 6),
    ("checkpoint", 10),
    ("store", 1),
]


@pytest.mark.parametrize("point, n", KILL_POINTS, ids=[f"{p}-{n}" for p, n in KILL_POINTS])
def test_sigkill_then_rerun_gives_identical_results(reference, tmp_path, point, n):
    store = str(tmp_path / "s.sqlite")
    killed = rethink(*RUN, "--store", store, kill=(point, n))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = rethink(*RUN, "--store", store)
    assert again.returncode == 0, again.stderr
    assert stored(store) == stored(str(reference / "s.sqlite"))
    ref_weights, weights = final_weights(reference / "s.checkpoints"), final_weights(tmp_path / "s.checkpoints")
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights), "final weights differ"
    leftovers = [f for f in os.listdir(tmp_path / "s.checkpoints") if not f.endswith(".pt")]
    assert point != "checkpoint" or leftovers, "the half-written checkpoint was a temporary file"


def test_a_half_written_checkpoint_never_replaces_the_last_good_one(tmp_path):
    store = str(tmp_path / "s.sqlite")
    assert rethink(*RUN, "--store", store, kill=("checkpoint", 4)).returncode == -signal.SIGKILL
    (ckpt,) = [f for f in os.listdir(tmp_path / "s.checkpoints") if f.endswith(".pt")]
    state = torch.load(tmp_path / "s.checkpoints" / ckpt, weights_only=False)
    assert state["epoch"] == 3, "the checkpoint on disk is the last complete one"
    row = Store(store).runs()[0]
    assert row["status"] == "running" and not Store(store).evals(row["run_id"]), "no partial metrics"


def test_concurrent_processes_share_one_store(tmp_path):
    """Two sweeps and two single runs, all at once, on one store (processes that would train the
    same run refuse it instead: tests/test_store.py)."""
    store = str(tmp_path / "shared.sqlite")
    grid = tmp_path / "g.toml"
    grid.write_text(
        '[base]\ndataset = "digits"\ntrain_size = 200\nmodel = "mlp"\nhidden = [32]\nepochs = 3\n'
        '[[grid]]\nrandomize = "partial-labels"\np = [0.0, 0.25, 0.5, 0.75, 1.0]\n'
    )
    grid2 = tmp_path / "g2.toml"
    grid2.write_text(grid.read_text().replace("[0.0, 0.25, 0.5, 0.75, 1.0]", "[0.1, 0.6, 0.9]"))
    exe = [sys.executable, "-m", "rethink"]
    commands = [
        [*exe, "sweep", str(grid), "--store", store, "--quiet"],
        [*exe, "sweep", str(grid2), "--store", store, "--quiet"],
        [
            *exe,
            "run",
            "--dataset",
            "digits",
            "--train-size",
            "200",
            "--epochs",
            "3",
            "--seed",
            "7",
            "--store",
            store,
            "--quiet",
        ],
        [
            *exe,
            "run",
            "--dataset",
            "digits",
            "--train-size",
            "200",
            "--epochs",
            "3",
            "--seed",
            "8",
            "--store",
            store,
            "--quiet",
        ],
    ]
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 5 + 3 + 2
    assert db.execute("SELECT count(*) FROM runs WHERE status IN ('fitted', 'budget')").fetchone()[0] == 10
    per_run = db.execute("SELECT run_id, count(*) FROM evals GROUP BY run_id").fetchall()
    assert len(per_run) == 10 and all(n == 4 for _, n in per_run), per_run  # step 0 and after each of 3 epochs
    steps = db.execute("SELECT run_id, count(*) FROM steps GROUP BY run_id").fetchall()
    assert len(steps) == 10 and all(n == 6 for _, n in steps), steps  # 2 steps per epoch
    # and the store is still usable by the tools
    assert main(["runs", "--store", store]) == 0
