"""`rethink measure` and `rethink bound` on runs in a store: final weights from the run's last
checkpoint, its initialization rebuilt from its seed, its own (randomized) training set."""

import json
import os

import pytest

from rethink.cli import main
from rethink.store import Store

RUN = ["run", "--dataset", "digits", "--train-size", "200", "--test-size", "100", "--model", "mlp", "--hidden", "32"]
RUN += ["--lr", "0.1", "--lr-decay", "1", "--epochs", "30", "--quiet", "--json"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with a true-labels and a random-labels run, both trained to their end."""
    path = str(tmp_path_factory.mktemp("measure") / "s.sqlite")
    for test in ("none", "random-labels"):
        assert main([*RUN, "--randomize", test, "--store", path]) == 0
    return path


def run_ids(path):
    return [r["run_id"] for r in Store(path, readonly=True).runs()]


def test_measure_every_run_stores_plain_values(store, capsys):
    capsys.readouterr()
    assert main(["measure", "--store", store, "--all", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out) == sorted(run_ids(store))
    for values in out.values():
        assert values["_unsupported"] == {}
        assert values["params"] == 64 * 32 + 32 + 32 * 10 + 10
        assert values["frobenius_init_distance"] > 0 and len(values["margins"]) == 200
    true, rand = (out[r["run_id"]] for r in sorted(Store(store).runs(), key=lambda r: r["spec"]["randomize"]))
    assert true["margin"] > 0 > rand["margin"], "the fitted true-labels run has all margins positive"
    stored = {(m["run_id"], m["name"]): m["value"] for m in Store(store, readonly=True).measures()}
    assert all(stored[(run_id, "margin")] == values["margin"] for run_id, values in out.items())


def test_measure_a_subset_and_named_measures(store, capsys):
    run_id = run_ids(store)[0]
    assert main(["measure", "--store", store, "--run-id", run_id, "--measures", "margin,params", "--subset", "50"]) == 0
    table = capsys.readouterr().out
    assert "margin" in table and "params" in table and "path_norm" not in table
    kept = [m for m in Store(store, readonly=True).measures(run_id) if m["options"]["subset"] == 50]
    assert {m["name"] for m in kept} == {"margin", "params", "_unsupported", "_examples"}
    assert next(m["value"] for m in kept if m["name"] == "_examples") == 50


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--run-id", "nosuchrun"], "not in the store"),
        (["--all", "--measures", "margn"], "did you mean 'margin'"),
        (["--all", "--subset", "0"], "--subset 0"),
        ([], "give --run-id"),
    ],
)
def test_bad_measure_requests_are_one_line_and_change_nothing(store, capsys, args, expected):
    before = Store(store, readonly=True).measures()
    assert main(["measure", "--store", store, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert Store(store, readonly=True).measures() == before


def test_a_run_without_its_checkpoint_says_so(tmp_path, capsys):
    path = str(tmp_path / "s.sqlite")
    assert main([*RUN, "--epochs", "2", "--store", path]) == 0
    (run_id,) = run_ids(path)
    os.remove(tmp_path / "s.checkpoints" / f"{run_id}.pt")
    capsys.readouterr()
    assert main(["measure", "--store", path, "--run-id", run_id]) == 2
    assert "no final checkpoint" in capsys.readouterr().err
    assert main(["measure", "--store", str(tmp_path / "none.sqlite"), "--all"]) == 2
    assert not os.path.exists(tmp_path / "none.sqlite")


def test_bound_certifies_a_stored_run(store, capsys):
    run_id = run_ids(store)[0]
    capsys.readouterr()
    assert main(["bound", "--store", store, "--run-id", run_id, "--steps", "100", "--samples", "20", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "100 optimization steps, 20 weight samples; about" in captured.err
    assert 0 < out["e_mc"] <= out["e_up"] <= out["bound"] <= 1 and out["kl"] >= 0 and out["m"] == 200
    stored = {m["name"]: m["value"] for m in Store(store, readonly=True).measures(run_id)}
    assert stored["pacbayes_bound"] == out["bound"] and stored["_pacbayes"] == out
    assert out["chance_error"] == 0.9 and "vacuous when at least 0.9" in captured.err


def test_correlate_ranks_the_stored_measures(tmp_path, capsys):
    """Three runs that differ in p: tau of each measure with the gap, written as a table and figure."""
    path = str(tmp_path / "s.sqlite")
    for p in ("0", "0.5", "1"):
        assert main([*RUN, "--randomize", "partial-labels", "--p", p, "--epochs", "10", "--store", path]) == 0
    assert main(["measure", "--store", path, "--all", "--measures", "margin,param_norm,params"]) == 0
    capsys.readouterr()
    out = tmp_path / "corr"
    assert main(["correlate", "--store", path, "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["axes"] == ["p"] and {m["name"] for m in result["measures"]} >= {"margin", "param_norm"}
    assert (out / "correlate.md").exists() and (out / "correlate.png").exists()
    assert main(["report", "--store", path, "--out", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "Measures <span" in page and "(every run in the store)" in page and "Kendall&#x27;s tau" in page
    assert "No correlation table" not in page
    capsys.readouterr()
    assert main(["correlate", "--store", str(tmp_path / "none.sqlite"), "--out", str(out)]) == 2


def test_report_measures_section_says_why_there_is_no_correlation(store, tmp_path, capsys):
    """Two runs are too few to correlate: the report still shows their measures, and says why."""
    assert main(["measure", "--store", store, "--all", "--measures", "margin"]) == 0
    assert main(["report", "--store", store, "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "No correlation table: correlate needs at least 3 finished runs with measures; 2 have them" in page
    assert '<th class="num">margin</th>' in page and "mlp random-labels" in page


def test_the_bound_estimate_counts_the_posterior_steps(store):
    """The printed estimate grows with the steps: the first call's warm-up once made the step time 0."""
    from rethink.measures.stored import _estimate, trained_run

    _, model, init, prepared = trained_run(Store(store, readonly=True), run_ids(store)[0])
    assert _estimate(model, init, prepared.data, steps=100_000, samples=0) > 0.1  # about 1 ms per step here
