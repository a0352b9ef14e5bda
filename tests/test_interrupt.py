"""Ctrl-C and SIGTERM keep the run: training finishes its step, checkpoints where it stands (inside
an epoch too) and stops; the rerun resumes there to bitwise the numbers of an uninterrupted run, in
the solo engine, the batched engine and sweeps. And processes training at once see each other's
threads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from rethink import api
from rethink.batching import GroupJob, execute_group
from rethink.executors import Job
from rethink.spec import RunSpec
from rethink.store import Store
from rethink.train import batched, threads
from test_batched import assert_same_trajectory, strip
from test_crash import stored

# 300 images in batches of 32: 10 steps per epoch
SOLO = dict(
    dataset="digits",
    train_size=300,
    model="mlp",
    hidden=(64,),
    dropout=0.2,
    augment=("flip",),
    randomize="random-labels",
    lr=0.1,
    batch_size=32,
    epochs=8,
    eval_every=5,
    stop_on_fit=False,
    device="cpu",
)


@pytest.fixture(autouse=True)
def ctrl_c_handled():
    """SIGINT as an interactive shell leaves it: a test runner started in the background (CI, `make
    test &`) inherits it ignored, which rethink respects, and so would every process started here."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def execute(spec, path, **kw):
    return api.execute(spec, str(path), checkpoint_interval=3600.0, **kw)


def load(path):
    return api.read_checkpoint(path, "cpu")  # as a resume reads it: tensors, numbers and strings only


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_inside_the_epoch_and_the_resume_is_bitwise(tmp_path, sig):
    """Augmentation, dropout and momentum: every stream is where it was at step 45 (epoch 4, batch 5)."""
    spec = RunSpec(**SOLO)
    reference = execute(spec, tmp_path / "ref.pt")
    assert load(tmp_path / "ref.pt")["finished"] is True

    def signal_at_45(step, total, row):
        if step == 45:
            signal.raise_signal(sig)

    path, before = tmp_path / "run.pt", signal.getsignal(sig)
    stopped = execute(spec, path, on_progress=signal_at_45)
    assert stopped.status == "interrupted" and stopped.summary["steps"] == 45
    assert stopped.summary["checkpoint_step"] == 45
    state = load(path)
    assert (state["epoch"], state["batch"], state["finished"]) == (4, 5, False)
    assert state["aug_rng"] is not None and len(state["result"]["step_losses"]) == 45
    assert signal.getsignal(sig) == before, "the handlers are restored"
    resumed = execute(spec, path)
    assert resumed.status == reference.status == "budget"
    assert resumed.step_losses == reference.step_losses and strip(resumed.evals) == strip(reference.evals)
    assert same_weights(load(path)["model"], load(tmp_path / "ref.pt")["model"])


def test_a_second_signal_stops_at_once_without_a_checkpoint(tmp_path):
    def twice(step, total, row):
        if step == 45:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    stopped = execute(RunSpec(**SOLO), tmp_path / "run.pt", on_progress=twice)
    assert stopped.status == "interrupted" and stopped.summary["checkpoint_step"] is None
    assert not os.path.exists(tmp_path / "run.pt")


def test_an_epoch_end_checkpoint_of_an_older_version_still_resumes(tmp_path):
    spec = RunSpec(**SOLO)
    reference = api.execute(spec, None)

    def stop(step, total, row):
        if step == 45:
            raise KeyboardInterrupt

    path = tmp_path / "run.pt"
    assert api.execute(spec, str(path), checkpoint_interval=0.0, on_progress=stop).status == "interrupted"
    state = load(path)
    assert (state["epoch"], state["batch"], state["result"]["steps"]) == (4, 0, 40)
    torch.save({k: v for k, v in state.items() if k not in ("batch", "finished", "aug_rng")}, path)  # the old format
    resumed = execute(spec, path)
    assert resumed.step_losses == reference.step_losses and strip(resumed.evals) == strip(reference.evals)


BATCHED = {**SOLO, "model": "mlp1x512", "hidden": None, "dropout": 0.0, "randomize": "partial-labels", "epochs": 4}


def group(specs, folder):
    return GroupJob([Job(s, str(folder / f"{s.run_id}.pt"), 3600.0, True) for s in specs])


def test_the_batched_engine_checkpoints_inside_the_epoch_and_either_engine_resumes(tmp_path, monkeypatch):
    specs = [RunSpec(**BATCHED, p=p) for p in (0.0, 0.5, 1.0)]
    for sub in "abc":
        os.makedirs(tmp_path / sub)
    reference = execute_group(group(specs, tmp_path / "a"))
    real_step, calls = batched._Stack.step, []

    def step(self, *args):
        real_step(self, *args)
        calls.append(1)
        if len(calls) == 13:  # epoch 1, batch 3
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(batched._Stack, "step", step)
    stopped = execute_group(group(specs, tmp_path / "b"))
    monkeypatch.setattr(batched._Stack, "step", real_step)
    assert [(r.status, r.summary["steps"]) for r in stopped] == [("interrupted", 13)] * 3
    for s in specs:
        state = load(tmp_path / "b" / f"{s.run_id}.pt")
        assert (state["epoch"], state["batch"], state["finished"]) == (1, 3, False) and state["aug_rng"] is not None
        shutil.copy(tmp_path / "b" / f"{s.run_id}.pt", tmp_path / "c" / f"{s.run_id}.pt")
    resumed = execute_group(group(specs, tmp_path / "b"))
    for a, b, s in zip(reference, resumed, specs):
        assert a.status == b.status == "budget"
        assert a.step_losses == b.step_losses and strip(a.evals) == strip(b.evals)
        ckpt = f"{s.run_id}.pt"
        assert same_weights(load(tmp_path / "a" / ckpt)["model"], load(tmp_path / "b" / ckpt)["model"])
    alone = execute(specs[1], tmp_path / "c" / f"{specs[1].run_id}.pt")  # the solo engine resumes it too
    assert_same_trajectory(reference[1], alone, rtol=1e-3, close_from=13)


def test_the_batched_engine_resumes_the_solo_engines_mid_epoch_checkpoint(tmp_path):
    spec = RunSpec(**BATCHED)
    reference = execute(spec, tmp_path / "ref.pt")

    def signal_at_25(step, total, row):
        if step == 25:
            signal.raise_signal(signal.SIGINT)

    assert execute(spec, tmp_path / f"{spec.run_id}.pt", on_progress=signal_at_25).status == "interrupted"
    assert load(tmp_path / f"{spec.run_id}.pt")["batch"] == 5
    (resumed,) = execute_group(group([spec], tmp_path))
    assert_same_trajectory(reference, resumed, rtol=1e-3, close_from=25)


# -- real processes --------------------------------------------------------------------------------

# 1000 images in batches of 32: 32 steps per epoch, 1920 steps in all (a few seconds)
RUN = [
    "--dataset",
    "digits",
    "--train-size",
    "1000",
    "--model",
    "mlp1x512",
    "--batch-size",
    "32",
    "--epochs",
    "60",
    "--no-stop-on-fit",
    "--randomize",
    "random-labels",
    "--augment",
    "flip",
    "--dropout",
    "0.2",
    "--eval-every",
    "50",
]
GRID = """
seeds = 1
[base]
dataset = "digits"
train_size = 1000
model = "mlp1x512"
batch_size = 32
epochs = 40
stop_on_fit = false
augment = ["flip"]
eval_every = 50
[[grid]]
randomize = "partial-labels"
p = [0.0, 0.5, 1.0]
"""


def env(tmp_path):
    """Each test its own temporary directory, so that it sees no other test's training processes."""
    os.makedirs(tmp_path / "tmp", exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp_path / "tmp")}


def rethink(tmp_path, *args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "rethink", *args], capture_output=True, text=True, timeout=600, env=env(tmp_path), **kw
    )


def interrupt(tmp_path, args, sig, trainers=1):
    """Start ``rethink args``, send ``sig`` once ``trainers`` processes train (soon after their first
    evaluation, well before a checkpoint is due), and wait for its end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rethink", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(tmp_path),
    )
    folder = os.path.join(tmp_path / "tmp", f"rethink-threads-{os.getuid()}")
    deadline = time.monotonic() + 300
    while not (os.path.isdir(folder) and len(os.listdir(folder)) >= trainers):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    return err


def checkpoints(store):
    folder = [
        os.path.join(os.path.dirname(store), f)
        for f in os.listdir(os.path.dirname(store))
        if os.path.isdir(os.path.join(os.path.dirname(store), f))
    ]
    return {f: load(os.path.join(d, f)) for d in folder for f in os.listdir(d) if f.endswith(".pt")}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref")
    p = rethink(folder, "run", *RUN, "--threads", "1", "--store", str(folder / "s.sqlite"), "--quiet")
    assert p.returncode == 0, p.stderr
    return str(folder / "s.sqlite")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_rethink_run_interrupted_early_resumes_from_its_step(reference_run, tmp_path, sig):
    store = str(tmp_path / "s.sqlite")
    args = ["run", *RUN, "--threads", "1", "--store", store, "--quiet"]
    err = interrupt(tmp_path, args, sig)
    ((name, state),) = checkpoints(store).items()
    step = state["result"]["steps"]
    assert 0 < step < 1920 and not state["finished"], "a checkpoint well before the 60 s interval"
    assert f"stopped at step {step} and saved a checkpoint there; run the same command again" in err
    assert Store(store).runs()[0]["status"] == "interrupted"
    again = rethink(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    assert f"from its checkpoint at step {step}" in again.stderr
    assert stored(store) == stored(reference_run)
    assert same_weights(checkpoints(store)[name]["model"], checkpoints(reference_run)[name]["model"])


@pytest.mark.parametrize("executor", ["local", "process"])
def test_an_interrupted_sweep_resumes_bitwise(tmp_path, executor):
    """Local: the three runs train as one batch; process: each alone, in two workers of one thread."""
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    how = (
        ["--threads", "1"]
        if executor == "local"
        else ["--executor", "process", "--workers", "2", "--threads", "2", "--no-batch"]
    )
    ref, store = str(tmp_path / "ref" / "s.sqlite"), str(tmp_path / "s.sqlite")
    os.makedirs(tmp_path / "ref")
    assert rethink(tmp_path, "sweep", str(grid), *how, "--store", ref, "--quiet").returncode == 0
    sig = signal.SIGINT if executor == "local" else signal.SIGTERM
    interrupt(tmp_path, ["sweep", str(grid), *how, "--store", store, "--quiet"], sig, 1 if executor == "local" else 2)
    saved = checkpoints(store)
    assert len(saved) >= (3 if executor == "local" else 2), "every run that was training checkpointed"
    # a worker that started late may have found a run already ended (its checkpoint marked finished)
    stopped = [s for s in saved.values() if not s["finished"]]
    ended = [s for s in saved.values() if s["finished"]]
    assert stopped and all(0 < s["result"]["steps"] < 1280 for s in stopped), {
        f: (s["result"]["steps"], s["finished"], s["epoch"], s["batch"]) for f, s in saved.items()
    }
    assert all(s["result"]["steps"] == 1280 for s in ended) and len(ended) <= (0 if executor == "local" else 1)
    again = rethink(tmp_path, "sweep", str(grid), *how, "--store", store, "--quiet")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("from its checkpoint at step") == len(stopped)
    assert stored(store) == stored(ref)


def test_processes_training_at_once_see_each_others_threads(tmp_path, monkeypatch):
    """The second of two training processes that together take more threads than the cores warns,
    naming the first; none once the first has stopped."""
    cores = os.cpu_count() or 1
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rethink",
            "run",
            *RUN,
            "--epochs",
            "2000",
            "--threads",
            str(cores),
            "--store",
            str(tmp_path / "a.sqlite"),
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env(tmp_path),
    )
    try:
        folder = os.path.join(tmp_path / "tmp", f"rethink-threads-{os.getuid()}")
        deadline = time.monotonic() + 300
        while not (os.path.isdir(folder) and os.listdir(folder)):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.02)
        assert os.listdir(folder) == [str(first.pid)]
        short = ["run", *RUN, "--epochs", "1", "--quiet", "--json"]
        second = rethink(tmp_path, *short, "--threads", "1", "--store", str(tmp_path / "b.sqlite"))
        assert second.returncode == 0, second.stderr
        (warning,) = [line for line in second.stderr.splitlines() if "other rethink process" in line]
        assert f"pid {first.pid}: {cores} threads" in warning and "--threads" in warning
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        assert threads.others() == {first.pid: cores}
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=300)
    assert not os.listdir(folder), "a process removes its entry when it stops training"
    alone = rethink(tmp_path, *short, "--threads", str(cores), "--store", str(tmp_path / "c.sqlite"))
    assert alone.returncode == 0 and "other rethink process" not in alone.stderr
    assert json.loads(alone.stdout)["run_id"] == json.loads(second.stdout)["run_id"], "--threads is not in the spec"
