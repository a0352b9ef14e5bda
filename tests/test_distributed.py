"""Data-parallel runs under a real torchrun (2 CPU processes, gloo): for the same global batches the
numbers match a single-process run within TOLERANCE; rank 0 alone writes the store and the
checkpoints; a run killed on one rank resumes to bitwise the same results."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rethink
from jpeg_folder import write_jpeg_folder
from rethink import distributed
from rethink.cli import make_parser, spec_from_args
from rethink.errors import UserError
from rethink.store import Store

# Losses (every step's, every evaluation's) within this absolute difference of one process's, and
# accuracies within one example. Measured: 3.6e-7 for RUN (90 steps), the accuracies equal.
TOLERANCE = 1e-5
# 301 examples in batches of 128: the last batch of every epoch (45) splits 23 / 22 over the ranks.
RUN = [
    "--dataset",
    "digits",
    "--train-size",
    "301",
    "--model",
    "mlp1x512",
    "--lr",
    "0.1",
    "--lr-decay",
    "0.95",
    "--epochs",
    "30",
    "--no-stop-on-fit",
    "--augment",
    "crop,flip",
    "--randomize",
    "partial-labels",
    "--p",
    "0.3",
]
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")

# Rank 1 SIGKILLs itself at its Nth optimizer step; torchrun then ends rank 0 too.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    from rethink.cli import main

    n, calls, real_step = int(sys.argv[1]), 0, torch.optim.SGD.step

    def step(self, *a, **k):
        global calls
        calls += 1
        if calls == n and os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, *a, **k)

    torch.optim.SGD.step = step
    sys.exit(main(sys.argv[2:]))
""")


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TORCHRUN, "--standalone", "--nproc-per-node", "2", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def single_process(flags: list[str]) -> rethink.RunResult:
    return rethink.run(spec_from_args(make_parser().parse_args(["run", *flags])), store=None)


def stored(store: str) -> tuple:
    db = Store(store)
    (run,) = db.runs()
    evals = [{k: v for k, v in e.items() if k != "seconds"} for e in db.evals(run["run_id"])]
    summary = {k: v for k, v in run["summary"].items() if not k.endswith("seconds") and k != "time_to_fit"}
    return run["status"], summary, evals, db.step_losses(run["run_id"])


def assert_close_to_single_process(store: str, flags: list[str]) -> None:
    status, summary, evals, losses = stored(store)
    ref = single_process(flags)
    assert status == ref.status and len(losses) == len(ref.step_losses) and len(evals) == len(ref.evals)
    assert np.max(np.abs(np.array(losses) - ref.step_losses)) < TOLERANCE
    for e, r in zip(evals, ref.evals):
        assert abs(e["train_loss"] - r["train_loss"]) < TOLERANCE and abs(e["test_loss"] - r["test_loss"]) < TOLERANCE
        assert abs(e["train_acc"] - r["train_acc"]) <= 1 / summary["n_train"] + 1e-12
        assert abs(e["test_acc"] - r["test_acc"]) <= 1 / summary["n_test"] + 1e-12


@pytest.mark.slow
def test_torchrun_matches_one_process_and_resumes_after_a_kill(tmp_path):
    flags = [*RUN, "--checkpoint-interval", "0", "--quiet"]
    whole = str(tmp_path / "whole" / "s.sqlite")
    p = torchrun("-m", "rethink", "run", *flags, "--store", whole, "--json")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count('"run_id"') == 1, "rank 0 alone reports"
    assert os.listdir(tmp_path / "whole" / "s.checkpoints") == [f"{Store(whole).runs()[0]['run_id']}.pt"]
    assert_close_to_single_process(whole, flags)

    killed = str(tmp_path / "killed" / "s.sqlite")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    p = torchrun(str(script), "40", "run", *flags, "--store", killed)
    assert p.returncode != 0 and "Signal 9 (SIGKILL) received" in p.stderr, "rank 1 is killed at step 40 of 90"
    # rank 0 ends by torchrun's SIGTERM, or as interrupted when it is quick enough to record that
    assert Store(killed).runs()[0]["state"] == "interrupted"
    assert os.listdir(tmp_path / "killed" / "s.checkpoints"), "rank 0 checkpointed every epoch until then"
    p = torchrun("-m", "rethink", "run", *flags, "--store", killed)
    assert p.returncode == 0, p.stderr
    assert "resuming run" in p.stderr
    assert stored(killed) == stored(whole), "a resumed data-parallel run ends with bitwise the same numbers"


@pytest.mark.slow
def test_streamed_folder_under_torchrun(tmp_path):
    """Each rank decodes its shard of every batch and evaluates its share of both sets."""
    folder = write_jpeg_folder(tmp_path / "imagenet", train_per_class=9, val_per_class=3)
    flags = [
        "--dataset",
        f"imagefolder:{folder}",
        "--stream",
        "--image-size",
        "24",
        "--model",
        "mlp1x512",
        "--lr",
        "0.01",
        "--lr-decay",
        "1",
        "--batch-size",
        "10",
        "--epochs",
        "4",
        "--no-stop-on-fit",
        "--augment",
        "crop,flip",
        "--randomize",
        "random-labels",
        "--loader-workers",
        "1",
        "--quiet",
    ]
    store = str(tmp_path / "s.sqlite")
    p = torchrun("-m", "rethink", "run", *flags, "--store", store)
    assert p.returncode == 0, p.stderr
    assert_close_to_single_process(store, flags)
    assert stored(store)[1]["test_top5"] == 1.0


def test_every_batch_needs_one_example_per_process(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.check_batches(301, 128)
    with pytest.raises(UserError, match="leave a batch of 1 for 2 processes"):
        distributed.check_batches(257, 128)
    with pytest.raises(UserError, match="every batch needs one example per process"):
        distributed.check_batches(10, 1)
