"""End-to-end runs through the Python API: real training, determinism, the store, resume."""

import numpy as np
import pytest
import torch

import rethink
from rethink import api
from rethink.api import build_model, prepare
from rethink.spec import RunSpec
from rethink.store import Store

SMALL = dict(dataset="digits", train_size=500, model="mlp1x512", lr=0.1, lr_decay=1.0, epochs=300)


def strip_time(evals):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in evals]


def test_mlp_fits_random_labels_and_generalizes_on_true_labels(tmp_path):
    store = str(tmp_path / "s.sqlite")
    rand = rethink.run({**SMALL, "randomize": "random-labels"}, store)
    assert rand.status == "fitted" and rand.train_acc == 1.0
    assert rand.test_acc < 0.25, "random labels: test accuracy near chance (10%)"
    assert rand.summary["changed_fraction"] == pytest.approx(0.9, abs=0.05)
    true = rethink.run({**SMALL, "randomize": "none"}, store)
    assert true.status == "fitted" and true.test_acc > 0.9
    ttf = rand.time_to_fit
    assert ttf["steps"] > true.time_to_fit["steps"], "random labels take longer to fit"
    assert ttf["resolution_steps"] == 4 and ttf["steps"] % 4 == 0  # 500 / 128 -> 4 steps per epoch
    assert ttf["epochs"] == ttf["steps"] / 4 and ttf["seconds"] > 0


def test_randomization_is_drawn_once_per_run(monkeypatch):
    calls = []
    real = api.randomize

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(api, "randomize", counting)
    spec = RunSpec(**{**SMALL, "randomize": "random-pixels", "epochs": 5})
    prepared = prepare(spec, torch.device("cpu"))
    before = prepared.data.x_train.clone(), prepared.data.y_train.clone()
    r = rethink.run(spec, store=None)
    assert len(calls) == 2, "one draw in prepare() above, one for the whole 5-epoch run"
    assert len(r.evals) == 6
    # training reads the fixed tensors and never changes them
    model = build_model(spec, prepared.input_shape, prepared.num_classes)
    from rethink.train.engine import train

    train(model, prepared.data, api.train_config(spec))
    assert torch.equal(prepared.data.x_train, before[0]) and torch.equal(prepared.data.y_train, before[1])


def test_same_seed_same_numbers_and_other_seed_differs():
    spec = {**SMALL, "randomize": "partial-labels", "p": 0.3, "epochs": 6, "augment": "crop,flip"}
    a = rethink.run(spec, store=None)
    b = rethink.run(spec, store=None)
    assert a.step_losses == b.step_losses
    assert strip_time(a.evals) == strip_time(b.evals)
    c = rethink.run({**spec, "seed": 1}, store=None)
    assert c.step_losses != a.step_losses


def test_same_subset_and_initialization_at_every_p():
    base = RunSpec(**{**SMALL, "randomize": "partial-labels"})
    d = torch.device("cpu")
    lo, hi = prepare(base.replace(p=0.2), d), prepare(base.replace(p=0.6), d)
    assert torch.equal(lo.data.x_train, hi.data.x_train) and torch.equal(lo.data.y_train_true, hi.data.y_train_true)
    corrupted_lo = lo.data.y_train != lo.data.y_train_true
    assert torch.equal(hi.data.y_train[corrupted_lo], lo.data.y_train[corrupted_lo]), "nested across p"
    m1 = build_model(base.replace(p=0.2), lo.input_shape, 10)
    m2 = build_model(base.replace(p=0.6), hi.input_shape, 10)
    assert all(torch.equal(x, y) for x, y in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_eval_metrics_split_corrupted_and_clean_parts():
    r = rethink.run({**SMALL, "randomize": "partial-labels", "p": 0.5, "epochs": 400}, store=None)
    last = r.evals[-1]
    assert r.status == "fitted"
    assert last["corrupted_acc_noisy"] == 1.0 and last["clean_acc"] == 1.0
    assert last["corrupted_acc_true"] < 0.5, "a memorized wrong label is not the true one"
    assert r.evals[0]["step"] == 0 and [e["step"] for e in r.evals][1:4] == [4, 8, 12]


def test_eval_every_and_no_stop_on_fit():
    r = rethink.run({**SMALL, "epochs": 30, "eval_every": 10, "stop_on_fit": False}, store=None)
    steps = [e["step"] for e in r.evals]
    assert steps[:4] == [0, 10, 20, 30] and steps[-1] == 120 and all(s % 10 == 0 for s in steps)
    assert r.status == "budget" and r.time_to_fit is not None and r.time_to_fit["resolution_steps"] == 10
    assert r.summary["steps"] == 120 and len(r.step_losses) == 120


def test_max_steps_and_lr_decay():
    r = rethink.run({**SMALL, "epochs": 100, "max_steps": 10, "lr_decay": 0.5}, store=None)
    assert r.status in ("budget", "fitted") and len(r.step_losses) <= 10
    lrs = [e["lr"] for e in r.evals[1:]]
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.05)


def test_divergence_is_recorded_not_raised(tmp_path):
    store = str(tmp_path / "s.sqlite")
    r = rethink.run({**SMALL, "lr": 1e6, "epochs": 5}, store)
    assert r.status == "diverged"
    row = Store(store).get_run(r.run_id)
    assert row["status"] == "diverged" and Store(store).evals(r.run_id)


def test_store_skips_finished_runs_and_force_reruns(tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    spec = {**SMALL, "epochs": 3}
    first = rethink.run(spec, store)
    again = rethink.run(spec, store)
    assert again.cached and again.run_id == first.run_id
    assert strip_time(again.evals) == strip_time(first.evals) and again.step_losses == first.step_losses
    db = Store(store)
    db.db.execute("UPDATE runs SET package_version = '0.0.0' WHERE run_id = ?", (first.run_id,))
    rethink.run(spec, store)
    assert "different package version" in capsys.readouterr().err
    forced = rethink.run(spec, store, force=True)
    assert not forced.cached and len(db.runs()) == 1
    row = db.get_run(first.run_id)
    assert row["data_checksum"] and row["num_params"] == 38410 and row["spec"]["epochs"] == 3


def test_interrupted_run_resumes_to_identical_results(tmp_path, capsys):
    spec = {**SMALL, "randomize": "random-labels", "epochs": 12, "augment": "flip", "dropout": 0.2}
    reference = rethink.run(spec, store=None)
    store = str(tmp_path / "s.sqlite")

    def stop_at_step_30(step, total, row):
        if step >= 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rethink.run(spec, store, checkpoint_interval=0, on_progress=stop_at_step_30)
    assert Store(store).get_run(reference.run_id)["status"] == "interrupted"
    capsys.readouterr()
    resumed = rethink.run(spec, store, checkpoint_interval=0)
    assert "from its checkpoint at step 28" in capsys.readouterr().err  # epoch 7 of 4 steps (stopped at 30)
    assert resumed.step_losses == reference.step_losses
    assert strip_time(resumed.evals) == strip_time(reference.evals)
    assert Store(store).get_run(reference.run_id)["status"] == resumed.status


@pytest.mark.parametrize("kind", ["random-pixels", "gaussian", "random-labels"])
def test_every_epoch_sees_the_same_randomized_data(kind):
    """The engine feeds the same (drawn-once) inputs and labels in every epoch, only reordered."""
    spec = RunSpec(**{**SMALL, "randomize": kind, "train_size": 300, "epochs": 3})
    prepared = prepare(spec, torch.device("cpu"))
    model = build_model(spec, prepared.input_shape, prepared.num_classes)
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if self.training:
                seen.append(x.detach().clone())
            return self.inner(x)

    from rethink.train.engine import train

    train(Recorder(model), prepared.data, api.train_config(spec))
    per_epoch = [torch.cat(seen[i * 3 : (i + 1) * 3]) for i in range(3)]  # 300 / 128 -> 3 steps an epoch

    def canonical(x):
        rows = x.reshape(len(x), -1).numpy()
        return rows[np.lexsort(rows.T[::-1])]

    reference = canonical(prepared.data.x_train)
    for x in per_epoch:
        assert np.array_equal(canonical(x), reference)
    assert not torch.equal(per_epoch[0], per_epoch[1]), "batch order changes between epochs"


def test_stop_loss_ends_a_run_as_converged():
    r = rethink.run({**SMALL, "stop_on_fit": False, "stop_loss": 0.05, "epochs": 400}, store=None)
    assert r.status == "converged"
    assert r.evals[-1]["train_loss"] <= 0.05 < min(e["train_loss"] for e in r.evals[:-1])
    assert r.evals[-1]["train_acc"] > 0.95 and r.summary["steps"] == r.evals[-1]["step"]


DENORMAL_PROBE = "import torch; print((torch.tensor([1e-39]) * torch.tensor([1.0])).item() != 0)"


def _denormals_kept_after(code: str) -> bool:
    """Whether float32 denormals survive a product in a fresh process after running ``code``."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", f"{code}\n{DENORMAL_PROBE}"], capture_output=True, text=True, check=True, timeout=300
    )
    return out.stdout.strip().splitlines()[-1] == "True"


def test_api_leaves_the_process_settings_alone_and_the_command_line_sets_them():
    """rethink.run must not flush denormals (or tune malloc) behind a notebook user's back;
    speed_settings() does it when asked, and the command line asks."""
    run = "import rethink; rethink.run(dict(dataset='digits', train_size=200, epochs=1), store=None)"
    assert _denormals_kept_after(run)
    assert not _denormals_kept_after("import rethink; rethink.speed_settings()")
    assert not _denormals_kept_after("from rethink.cli import main; main(['datasets'])")


def test_binary_labels_split_the_classes_in_halves_before_randomization():
    """--binary: 1 for the upper half of the classes, 0 for the lower, on the same images as the
    10-class run; the randomization tests draw from the two classes; a new field, so the ids of
    runs without it do not change."""
    spec = RunSpec(dataset="digits", train_size=300, test_size=100)
    two = spec.replace(binary=True)
    assert two.run_id != spec.run_id
    assert spec.run_id == RunSpec(**{k: v for k, v in spec.to_dict().items() if k != "binary"}).run_id
    ten, binary = prepare(spec, torch.device("cpu")), prepare(two, torch.device("cpu"))
    assert binary.num_classes == 2 and torch.equal(ten.data.x_train, binary.data.x_train)
    assert torch.equal(binary.data.y_train, (ten.data.y_train >= 5).long())
    assert torch.equal(binary.data.y_test, (ten.data.y_test >= 5).long())
    rand = prepare(two.replace(randomize="random-labels"), torch.device("cpu"))
    assert set(rand.data.y_train.tolist()) == {0, 1} and 0.3 < rand.data.changed.float().mean() < 0.7
    result = rethink.run(two.replace(epochs=2), store=None)
    assert result.status in ("fitted", "budget") and result.test_acc > 0.5
