"""--track-examples: every evaluation records which training examples the model classifies as their
training label and each one's loss, in the solo and batched engines, through a kill and resume, into
the store compactly."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from rethink import api
from rethink.batching import GroupJob, execute_group, group_key
from rethink.cli import main
from rethink.executors import Job
from rethink.memorization.tracking import unpack, unpack_losses
from rethink.spec import RunSpec
from rethink.store import Store
from test_interrupt import SOLO, ctrl_c_handled  # noqa: F401  (the fixture applies here too)

# test_interrupt's run (300 digits in batches of 32, flips and dropout, evaluated every 5 steps)
# at 40% label noise and 6 epochs, tracked
BASE = {**SOLO, "randomize": "partial-labels", "p": 0.4, "epochs": 6, "track_examples": True}


def decoded(result, n=300):
    return [(e["step"], unpack(e["correct"], n), unpack_losses(e["loss"])) for e in result.examples]


def test_every_evaluation_records_each_example_consistent_with_its_row(tmp_path):
    result = api.execute(RunSpec(**BASE), str(tmp_path / "run.pt"))
    records = decoded(result)
    assert [s for s, _, _ in records] == [e["step"] for e in result.evals] == list(range(0, 61, 5))
    for (_, correct, losses), row in zip(records, result.evals):
        assert correct.mean() == pytest.approx(row["train_acc"], abs=1e-12)
        assert losses.mean() == pytest.approx(row["train_loss"], rel=0.03)
        assert "examples" not in row  # the records travel beside the rows, not in them
    assert records[-1][1].mean() > records[0][1].mean() + 0.3, "training learns examples"


def test_a_run_without_the_flag_records_nothing_and_keeps_its_id(tmp_path):
    plain = RunSpec(**{**BASE, "track_examples": False})
    assert plain.run_id == RunSpec(**{k: v for k, v in BASE.items() if k != "track_examples"}).run_id
    assert plain.run_id != RunSpec(**BASE).run_id, "the flag is part of the run's hash"
    assert api.execute(plain, str(tmp_path / "plain.pt")).examples == []


def test_records_after_a_kill_and_resume_are_bitwise_those_of_an_uninterrupted_run(tmp_path):
    spec = RunSpec(**BASE)
    reference = api.execute(spec, str(tmp_path / "ref.pt"), checkpoint_interval=3600.0)

    def signal_at_35(step, total, row):
        if step == 35:
            signal.raise_signal(signal.SIGINT)

    path = str(tmp_path / "run.pt")
    stopped = api.execute(spec, path, checkpoint_interval=3600.0, on_progress=signal_at_35)
    assert stopped.status == "interrupted" and stopped.summary["checkpoint_step"] == 35
    assert [e["step"] for e in stopped.examples] == [e["step"] for e in stopped.evals] == list(range(0, 36, 5))
    resumed = api.execute(spec, path, checkpoint_interval=3600.0)
    assert resumed.examples == reference.examples


def test_the_batched_engine_records_each_tracked_member_as_alone(tmp_path):
    base = {**BASE, "dropout": 0.0}  # the batched engine trains models without dropout (rethink.batching)
    specs = [RunSpec(**base), RunSpec(**{**base, "p": 0.0, "seed": 1}), RunSpec(**{**base, "track_examples": False})]
    assert len({group_key(s) for s in specs}) == 1
    together = execute_group(GroupJob([Job(s, os.path.join(tmp_path, f"{s.run_id}.pt"), 60.0, True) for s in specs]))
    assert together[0].summary["models_in_batch"] == 3 and together[2].examples == []
    for spec, b in zip(specs[:2], together):
        a = api.execute(spec, None)
        (ra, rb) = decoded(a), decoded(b)
        assert [s for s, _, _ in ra] == [s for s, _, _ in rb]
        for (_, ca, la), (_, cb, lb), row in zip(ra, rb, b.evals):
            assert cb.mean() == pytest.approx(row["train_acc"], abs=1e-12)
            assert (ca == cb).mean() >= 0.99  # float rounding may move an example at its decision boundary
            assert np.median(np.abs(la / lb - 1)) < 0.03


def test_the_store_keeps_the_records_compactly_and_runs_shows_their_size(tmp_path, capsys):
    path = str(tmp_path / "s.sqlite")
    args = ["run", "--dataset", "digits", "--train-size", "300", "--model", "mlp", "--hidden", "32", "--epochs", "3"]
    assert main([*args, "--lr", "0.1", "--track-examples", "--store", path, "--quiet"]) == 0
    assert main([*args, "--lr", "0.1", "--store", path, "--quiet"]) == 0
    db = Store(path, readonly=True)
    tracked = next(r for r in db.runs() if r["spec"]["track_examples"])
    records = db.examples(tracked["run_id"])
    assert [r["step"] for r in records] == [e["step"] for e in db.evals(tracked["run_id"])]
    assert all(len(r["correct"]) == 38 and len(r["loss"]) == 300 for r in records)  # ceil(300 / 8) bytes
    sizes = db.examples_bytes()
    assert list(sizes) == [tracked["run_id"]] and 0 < sizes[tracked["run_id"]] <= len(records) * (38 + 300)
    capsys.readouterr()
    assert main(["runs", "--store", path]) == 0
    out = capsys.readouterr().out
    assert "tracked" in out and f"{sizes[tracked['run_id']] / 1024:.1f} KiB" in out


def test_streamed_data_cannot_be_tracked(tmp_path, capsys):
    assert main(["run", "--dataset", f"imagefolder:{tmp_path}", "--stream", "--track-examples"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--track-examples needs the training set in memory" in err and len(err.splitlines()) == 1


def test_memorization_of_a_tracked_run_splits_clean_from_corrupted(tmp_path, capsys):
    """Clean examples are learned before corrupted ones (Arpit et al.): the command's summary says so,
    and agrees with the records it was made from."""
    path, out = str(tmp_path / "s.sqlite"), tmp_path / "m"
    run = ["run", "--dataset", "digits", "--model", "mlp", "--hidden", "128", "--epochs", "30", "--lr", "0.05"]
    assert (
        main(
            [*run, "--lr-decay", "1", "--randomize", "partial-labels", "--p", "0.4", "--track-examples"]
            + ["--store", path, "--quiet"]
        )
        == 0
    )
    (r,) = Store(path, readonly=True).runs()
    capsys.readouterr()
    assert main(["memorization", "--store", path, "--run-id", r["run_id"], "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    changed = r["summary"]["changed_fraction"]
    assert result["corrupted"]["examples"] == round(changed * 1437) and result["clean"]["examples"] == 1437 - round(
        changed * 1437
    )
    assert result["median_ratio"] > 3, "corrupted examples are learned later than clean ones"
    assert result["clean"]["fraction_learned"][-1] > result["corrupted"]["fraction_learned"][-1]
    assert len(result["learned_first"]) == len(result["learned_last"]) == 16
    assert (out / "memorization.md").exists() and (out / "memorization.png").exists()


def test_memorization_of_a_run_without_records_is_one_line_and_changes_nothing(tmp_path, capsys):
    path = str(tmp_path / "s.sqlite")
    assert main(["run", "--dataset", "digits", "--train-size", "200", "--epochs", "1", "--store", path, "--quiet"]) == 0
    (r,) = Store(path, readonly=True).runs()
    before = os.path.getmtime(path)
    capsys.readouterr()
    assert main(["memorization", "--store", path, "--run-id", r["run_id"], "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no per-example records; train it again with --track-examples" in err and len(err.splitlines()) == 1
    assert os.path.getmtime(path) == before and not (tmp_path / "m").exists()
