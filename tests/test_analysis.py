"""rethink.load: a store as pandas DataFrames equal to what Store returns; export --format parquet."""

import dataclasses
import json
import math
import sys

import pytest

import rethink
from rethink.cli import main
from rethink.errors import UserError
from rethink.spec import RunSpec
from rethink.store import EVAL_COLUMNS, Store

pd = pytest.importorskip("pandas")

TINY = ["--dataset", "digits", "--test-size", "100", "--model", "mlp", "--hidden", "32", "--lr", "0.1", "--quiet"]
RUNS = [
    ["--train-size", "200", "--epochs", "3", "--augment", "flip"],
    ["--train-size", "200", "--epochs", "3", "--randomize", "partial-labels", "--p", "0.2"],
    ["--train-size", "30", "--epochs", "40", "--randomize", "random-labels"],  # fits
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("analysis") / "s.sqlite")
    for flags in RUNS:
        assert main(["run", *TINY, *flags, "--store", path]) == 0
    db = Store(path)
    first, second = (r["run_id"] for r in db.runs()[:2])
    db.record_measures(first, {"margin": 0.5, "sigma": None, "norm": 3}, {"subset": 100})
    db.record_measures(first, {"margin": 0.25}, {"subset": 50})
    db.record_measures(second, {"margin": 0.75}, {"subset": 100})
    db.close()
    return path


def same(frame_value, stored) -> bool:
    """A frame's cell against the store's value: None is NaN (or None), a list a tuple."""
    if stored is None or (isinstance(stored, float) and math.isnan(stored)):
        return frame_value is None or pd.isna(frame_value)
    if isinstance(stored, list):
        return frame_value == tuple(stored)
    return frame_value == stored


def test_runs_hold_status_every_spec_field_and_every_summary_value(store):
    frames = rethink.load(store)
    stored = Store(store, readonly=True).runs()
    assert list(frames.runs.run_id) == [r["run_id"] for r in stored]
    for r, (_, row) in zip(stored, frames.runs.iterrows()):
        assert row.status == r["state"] and row.created == r["created"] and row.git_commit == r["git_commit"]
        for f in dataclasses.fields(RunSpec):
            assert same(row[f.name], r["spec"][f.name]), f.name
        summary = r["summary"]
        for key, value in summary.items():
            name = f"summary_{key}" if key in r["spec"] else key
            if key == "time_to_fit":
                for k in ("steps", "epochs", "seconds"):
                    assert same(row[f"time_to_fit_{k}"], (value or {}).get(k)), k
            else:
                assert same(row[name], value), name
        assert row.num_params == r["num_params"] and row.summary_lr == 0.1 and row.summary_epochs == summary["epochs"]
    assert frames.runs.hidden.tolist() == [(32,)] * 3 and frames.runs.augment.tolist() == [("flip",), (), ()]
    assert frames.runs.status.tolist() == ["budget", "budget", "fitted"]
    assert frames.runs.time_to_fit_steps.notna().tolist() == [False, False, True]
    assert frames.runs.test_acc.dtype == float and frames.runs.steps.dtype == "int64"


def test_evals_steps_and_measures_equal_the_store(store):
    frames = rethink.load(store)
    db = Store(store, readonly=True)
    assert list(frames.evals.columns) == ["run_id", *EVAL_COLUMNS]
    assert list(frames.steps.columns) == ["run_id", "step", "loss"]
    for r in db.runs():
        rid = r["run_id"]
        evals = frames.evals[frames.evals.run_id == rid].to_dict("records")
        assert len(evals) == len(db.evals(rid)) > 1
        for got, want in zip(evals, db.evals(rid)):
            assert all(same(got[c], want[c]) for c in EVAL_COLUMNS), (got, want)
        steps = frames.steps[frames.steps.run_id == rid]
        assert steps.step.tolist() == list(range(1, len(db.step_losses(rid)) + 1))
        assert steps.loss.tolist() == db.step_losses(rid)
    partial = frames.evals[frames.evals.run_id == db.runs()[1]["run_id"]]
    assert partial.corrupted_acc_noisy.notna().all() and frames.evals.corrupted_acc_noisy.isna().any()

    assert frames.measures.value.dtype == float
    assert list(frames.measures.columns) == ["run_id", "name", "options", "value"]
    want = db.measures()
    assert len(frames.measures) == len(want) == 5
    for got, m in zip(frames.measures.to_dict("records"), want):
        assert got["run_id"] == m["run_id"] and got["name"] == m["name"]
        assert json.loads(got["options"]) == m["options"] and same(got["value"], m["value"])
    assert frames.measures.set_index(["name", "options"]).value.loc[("norm", '{"subset": 100}')] == 3.0


def test_groupby_just_works(store):
    runs = rethink.load(store).runs
    means = runs.groupby(["model", "p"]).test_acc.mean()
    assert means.loc[("mlp", 0.2)] == runs.test_acc[runs.p == 0.2].item()
    assert means.loc[("mlp", 0.0)] == pytest.approx(runs.test_acc[runs.p == 0.0].mean())
    by_test = runs.groupby(["randomize", "hidden", "augment"]).size()
    assert by_test.loc[("none", (32,), ("flip",))] == 1 and by_test.sum() == 3


def test_an_open_store_and_an_empty_or_older_one(tmp_path, store):
    db = Store(store, readonly=True)
    assert len(rethink.load(db).runs) == 3 and db.runs()  # left open
    path = str(tmp_path / "e.sqlite")
    Store(path).close()
    empty = rethink.load(path)
    assert empty.runs.empty and {"run_id", "status", "model", "p", "train_acc", "time_to_fit_steps"} <= set(
        empty.runs.columns
    )
    assert empty.evals.empty and empty.steps.empty and empty.measures.empty
    assert list(empty.measures.columns) == ["run_id", "name", "options", "value"]
    writer = Store(path)  # a run whose spec predates most fields, not ended, with a list-valued measure
    writer.start_run("r1", {"dataset": "mnist", "hidden": [8, 8]})
    writer.record_measures("r1", {"margins": [0.1, None], "margin": 1}, {})
    writer.close()
    frames = rethink.load(path)
    row = frames.runs.iloc[0]
    assert row.status == "running" and row.dataset == "mnist" and row.hidden == (8, 8)
    assert row.image_size == 299 and row.augment == () and math.isnan(row.train_acc)
    values = dict(zip(frames.measures.name, frames.measures.value))
    assert values["margin"] == 1.0 and values["margins"][0] == 0.1 and math.isnan(values["margins"][1])


def test_missing_pandas_or_pyarrow_is_one_line(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # (an import of a None entry raises ImportError)
    assert main(["export", "--store", store, "--format", "parquet", "--out", str(tmp_path / "e.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs pyarrow" in err and "pip install 'rethink[analysis]'" in err
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(UserError) as e:
        rethink.load(store)
    assert str(e.value) == "rethink.load needs pandas, which is not installed; pip install 'rethink[analysis]'"
    assert main(["export", "--store", store, "--format", "parquet", "--out", str(tmp_path / "e.parquet")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "e.parquet").exists()


@pytest.mark.parametrize("what", ["evals", "steps", "runs"])
def test_parquet_export_equals_the_csv_and_the_frames(store, tmp_path, what):
    pytest.importorskip("pyarrow")
    csv_path, parquet = tmp_path / "m.csv", tmp_path / "m.parquet"
    assert main(["export", "--store", store, "--what", what, "--out", str(csv_path)]) == 0
    assert main(["export", "--store", store, "--what", what, "--format", "parquet", "--out", str(parquet)]) == 0
    got = pd.read_parquet(parquet)
    pd.testing.assert_frame_equal(got, pd.read_csv(csv_path), check_dtype=False)
    if what != "runs":
        pd.testing.assert_frame_equal(got, getattr(rethink.load(store), what))
    else:
        assert got.spec.map(json.loads).tolist() == [r["spec"] for r in Store(store, readonly=True).runs()]
    rid = got.run_id.iloc[-1]
    one = tmp_path / "one.parquet"
    argv = ["export", "--store", store, "--what", what, "--format", "parquet", "--out", str(one), "--run-id", rid]
    assert main(argv) == 0
    assert set(pd.read_parquet(one).run_id) == {rid}


def test_missing_store_and_parquet_to_stdout_are_one_line_errors(store, tmp_path, capsys):
    missing = tmp_path / "typo.sqlite"
    with pytest.raises(UserError, match="does not exist"):
        rethink.load(missing)
    assert not missing.exists(), "a reader creates no store"
    for argv in (
        ["export", "--store", str(missing), "--format", "parquet", "--out", str(tmp_path / "x.parquet")],
        ["export", "--store", store, "--format", "parquet"],
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("rethink: error:"), err
    assert "pass --out FILE.parquet" in err
