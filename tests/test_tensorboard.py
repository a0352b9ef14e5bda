"""--tensorboard DIR: live scalars per run, read back with tensorboard's EventAccumulator; a resumed
run continues its curves without duplicates; batched runs get a subfolder each; without the
package, one line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from rethink import api  # noqa: E402
from rethink.cli import main  # noqa: E402
from rethink.spec import RunSpec  # noqa: E402
from rethink.store import Store  # noqa: E402
from rethink.tensorboard import run_folder  # noqa: E402
from test_interrupt import SOLO, ctrl_c_handled  # noqa: E402, F401  (the fixture applies here too)

EVAL_TAGS = ("train_loss", "train_acc", "test_loss", "test_acc")

# test_interrupt's run (300 digits in batches of 32, evaluated every 5 steps), narrower, without
# dropout or flips, 4 epochs
SPEC = {**SOLO, "hidden": (32,), "dropout": 0.0, "augment": (), "epochs": 4}


def events(folder: str) -> EventAccumulator:
    acc = EventAccumulator(folder, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def test_a_run_writes_its_step_losses_evaluations_and_spec(tmp_path):
    board, path = tmp_path / "tb", str(tmp_path / "r.sqlite")
    argv = ["run", "--dataset", "digits", "--train-size", "200", "--model", "mlp", "--hidden", "32"]
    argv += ["--epochs", "3", "--lr", "0.1", "--randomize", "partial-labels", "--p", "0.5"]
    assert main([*argv, "--tensorboard", str(board), "--store", path, "--quiet"]) == 0
    (run,) = Store(path).runs()
    run_id = run["run_id"]
    (sub,) = os.listdir(board)
    assert sub.startswith("mlp-partial-labels-p0.5-") and sub.endswith(run_id)
    acc = events(str(board / sub))
    evals = Store(path).evals(run_id)
    assert len(evals) > 1
    for name in (*EVAL_TAGS, "corrupted_acc_noisy", "corrupted_acc_true", "clean_acc"):
        written = acc.Scalars(f"eval/{name}")
        assert [e.step for e in written] == [row["step"] for row in evals]
        assert [e.value for e in written] == [np.float32(row[name]) for row in evals]
    assert steps(acc, "train/lr") == [row["step"] for row in evals]
    losses = Store(path).step_losses(run_id)
    assert (
        steps(acc, "train/step_loss") == list(range(1, len(losses) + 1)) == list(range(1, run["summary"]["steps"] + 1))
    )
    assert [e.value for e in acc.Scalars("train/step_loss")] == [np.float32(v) for v in losses]
    (text,) = acc.Tensors("spec/text_summary")
    assert json.loads(text.tensor_proto.string_val[0].decode()) == run["spec"]

    # read back from the store: nothing is written
    before = sorted(os.listdir(board / sub))
    assert main([*argv, "--tensorboard", str(board), "--store", path, "--quiet"]) == 0
    assert sorted(os.listdir(board / sub)) == before


def test_a_resumed_run_continues_its_curves_without_duplicates(tmp_path):
    spec = RunSpec(**SPEC)
    api.execute(spec, str(tmp_path / "ref.pt"), tensorboard=str(tmp_path / "ref"))

    def signal_at_15(step, total, row):
        if step == 15:
            signal.raise_signal(signal.SIGINT)

    board, ckpt = str(tmp_path / "tb"), str(tmp_path / "run.pt")
    kw = dict(checkpoint_interval=3600.0, tensorboard=board)
    stopped = api.execute(spec, ckpt, on_progress=signal_at_15, **kw)
    assert stopped.status == "interrupted" and stopped.summary["checkpoint_step"] == 15
    # what a process killed after its checkpoint may have written: dropped on resume
    late = SummaryWriter(os.path.join(board, run_folder(spec)))
    for s in (16, 17, 20):
        late.add_scalar("train/step_loss", 99.0, s)
        late.add_scalar("eval/test_acc", 99.0, s)
    late.close()
    resumed = api.execute(spec, ckpt, **kw)
    assert resumed.status == "budget"

    ref, acc = events(os.path.join(tmp_path / "ref", run_folder(spec))), events(os.path.join(board, run_folder(spec)))
    for tag in (*(f"eval/{t}" for t in EVAL_TAGS), "train/lr", "train/step_loss"):
        got = steps(acc, tag)
        assert got == sorted(set(got)) == steps(ref, tag), tag
        assert 99.0 not in [e.value for e in acc.Scalars(tag)]
    assert steps(acc, "train/step_loss") == list(range(1, 41))
    assert [e.value for e in acc.Scalars("eval/test_acc")] == [np.float32(r["test_acc"]) for r in resumed.evals]
    assert len(acc.Tensors("spec/text_summary")) == 1


GRID = """
[base]
dataset = "digits"
train_size = 200
model = "mlp"
hidden = [32]
lr = 0.1
epochs = 2
stop_on_fit = false
device = "cpu"
[[grid]]
randomize = "partial-labels"
p = [0.0, 0.5, 1.0]
"""


def test_a_batched_sweep_writes_one_subfolder_per_run(tmp_path):
    grid, board, path = tmp_path / "grid.toml", tmp_path / "tb", str(tmp_path / "s.sqlite")
    grid.write_text(GRID)
    assert main(["sweep", str(grid), "--store", path, "--tensorboard", str(board), "--quiet"]) == 0
    runs = Store(path).runs()
    assert len(runs) == 3 and all(r["summary"]["models_in_batch"] == 3 for r in runs)
    assert sorted(os.listdir(board)) == sorted(run_folder(api.load_result(Store(path), r["run_id"]).spec) for r in runs)
    for r in runs:
        acc = events(str(board / run_folder(api.load_result(Store(path), r["run_id"]).spec)))
        evals = Store(path).evals(r["run_id"])
        assert steps(acc, "eval/test_acc") == [row["step"] for row in evals]
        assert [e.value for e in acc.Scalars("eval/test_acc")] == [np.float32(row["test_acc"]) for row in evals]
        assert steps(acc, "train/step_loss") == list(range(1, r["summary"]["steps"] + 1))


def test_without_the_package_it_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import fails
    path = tmp_path / "r.sqlite"
    argv = ["run", "--dataset", "digits", "--train-size", "200", "--model", "mlp", "--hidden", "32"]
    assert main([*argv, "--tensorboard", str(tmp_path / "tb"), "--store", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 'rethink[tensorboard]'" in err
    assert not (tmp_path / "tb").exists() and not path.exists()  # before any training
