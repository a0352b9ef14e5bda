"""Sweeps on Ray (--executor ray): a local Ray instance started by the command gives the same stored
results as the local executor; failed and lost tasks are retried, then recorded as failed; finished
runs are skipped on resubmission; without Ray the command names the extra to install."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from rethink.cli import main
from rethink.ray_executor import task_threads
from rethink.store import Store
from rethink.sweep import expand, load_grid, run_sweep
from test_sweep import stored, torch_threads

GRID = """
seeds = 2
[base]
dataset = "digits"
train_size = 300
model = "mlp1x512"
lr = 0.1
lr_decay = 1.0
epochs = 20
stop_on_fit = false
[[grid]]
randomize = "partial-labels"
p = [0.0, 0.25, 0.5, 1.0]
"""

# User models for the failure test: the first try of `dies_once` kills its Ray worker (a lost
# task); every try of `always_fails` raises. Each try leaves a file in $ATTEMPTS.
FLAKY = textwrap.dedent("""
    import os, uuid
    from rethink.models import build

    def _attempt(name):
        folder = os.environ["ATTEMPTS"]
        first = not any(f.startswith(name) for f in os.listdir(folder))
        open(os.path.join(folder, f"{name}-{uuid.uuid4().hex}"), "w").close()
        return first

    def dies_once(input_shape, num_classes):
        if _attempt("dies_once"):
            os._exit(1)
        return build("mlp1x512", input_shape, num_classes)

    def always_fails(input_shape, num_classes):
        _attempt("always_fails")
        raise RuntimeError("boom")
""")


@pytest.fixture()
def grid_file(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    return str(path)


@pytest.mark.slow
def test_ray_sweep_matches_the_local_executor(grid_file, tmp_path, capsys):
    pytest.importorskip("ray")
    local = str(tmp_path / "local" / "s.sqlite")
    with torch_threads(task_threads(1.0)):  # one run at a time, as a Ray task with the default --cpus-per-run 1
        run_sweep(load_grid(grid_file), local, progress=False, batch=False)
    store = str(tmp_path / "ray" / "s.sqlite")
    assert main(["sweep", grid_file, "--executor", "ray", "--store", store, "--quiet"]) == 0  # starts local Ray
    assert len(stored(store)) == 8 and stored(store) == stored(local)
    assert main(["sweep", grid_file, "--executor", "ray", "--store", store, "--json", "--quiet"]) == 0
    assert '"cached": false' not in capsys.readouterr().out, "finished runs are not submitted again"


@pytest.mark.slow
def test_failed_and_lost_tasks_are_retried_then_recorded(tmp_path):
    ray = pytest.importorskip("ray")
    (tmp_path / "flaky.py").write_text(FLAKY)
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    specs = expand(
        {"dataset": "digits", "train_size": 200, "lr": 0.1, "epochs": 3, "stop_on_fit": False},
        [{"model": ["flaky:dies_once", "flaky:always_fails", "mlp1x512"]}],
    )
    store = str(tmp_path / "s.sqlite")
    # A Ray session opened by the caller is used (and left open) by the executor.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        runtime_env={"env_vars": {"PYTHONPATH": str(tmp_path), "ATTEMPTS": str(attempts)}},
    )
    try:
        results = run_sweep(specs, store, executor="ray", progress=False, executor_options={"max_retries": 1})
        assert [r.status for r in results] == ["budget", "failed", "budget"]
        assert "RuntimeError: boom" in Store(store).get_run(results[1].run_id)["summary"]["error"]
        tries = sorted(f.split("-")[0] for f in os.listdir(attempts))
        assert tries == ["always_fails"] * 2 + ["dies_once"] * 2, "one retry each: a lost worker and an exception"
        again = run_sweep(specs, store, executor="ray", progress=False, executor_options={"max_retries": 0})
        assert [r.cached for r in again] == [True, False, True], "only the failed run is submitted again"
        assert ray.is_initialized()
    finally:
        ray.shutdown()


def test_ray_flags_and_a_missing_ray(grid_file, tmp_path, monkeypatch, capsys):
    store = str(tmp_path / "s.sqlite")
    assert main(["sweep", grid_file, "--store", store, "--address", "auto"]) == 2
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["sweep", grid_file, "--executor", "ray", "--store", store]) == 2
    err = capsys.readouterr().err
    assert "--address names a Ray cluster; add --executor ray" in err
    assert "--executor ray needs Ray, which is not installed; pip install 'rethink[cluster]'" in err
    assert Store(store).runs() == [], "nothing was queued"
