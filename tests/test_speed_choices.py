"""The engine's speed choices leave the numbers as they were, to float tolerance: the fused MLP
step, fused SGD, channels_last convolutions, evaluation in large batches, torch.compile, and
autocast (a no-op on CPU). Speed itself is measured by benchmarks/, never asserted here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rethink import api
from rethink.models import build
from rethink.spec import RunSpec
from rethink.train import engine, fused_mlp

SPEC = RunSpec(
    dataset="digits",
    train_size=300,
    model="mlp1x512",
    lr=0.1,
    lr_decay=0.9,
    weight_decay=5e-4,
    epochs=20,
    stop_on_fit=False,
    randomize="partial-labels",
    p=0.5,
    device="cpu",
)


def trained(spec=SPEC, **cfg):
    p = api.prepare(spec, torch.device("cpu"))
    model = api.build_model(spec, p.input_shape, p.num_classes)
    result = engine.train(model, p.data, dataclasses.replace(api.train_config(spec), **cfg))
    return result, model


def close(a, b, rtol, rounding_steps=0):
    """Equal trajectories: the first ``rounding_steps`` to float rounding, all within ``rtol``."""
    np.testing.assert_allclose(a.step_losses[:rounding_steps], b.step_losses[:rounding_steps], rtol=1e-5)
    np.testing.assert_allclose(a.step_losses, b.step_losses, rtol=rtol)
    np.testing.assert_allclose([e["train_loss"] for e in a.evals], [e["train_loss"] for e in b.evals], rtol=rtol)


@pytest.mark.parametrize(
    "spec", [SPEC, SPEC.replace(model="mlp3x512", width=0.25, momentum=0.5, epochs=10)], ids=["mlp1x512", "mlp3x128"]
)
def test_fused_mlp_step_matches_autograd_and_sgd(monkeypatch, spec):
    fused, fused_model = trained(spec)
    monkeypatch.setattr(engine, "FUSED_MLP", False)
    plain, plain_model = trained(spec)
    assert fused.step_losses != plain.step_losses  # two paths were taken (they sum in other orders)
    close(fused, plain, rtol=1e-5)
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fused_mlp_step_applies_to_plain_mlps_only():
    shape = (1, 8, 8)

    def opt(m):
        return engine.make_optimizer(m, api.train_config(SPEC))

    for name, kwargs, plain in [
        ("mlp1x512", {}, True),
        ("mlp3x512", {}, True),
        ("mlp1x512", {"dropout": 0.1}, False),
        ("alexnet", {"width": 0.125}, False),
    ]:
        model = build(name, shape, 10, **kwargs)
        assert (fused_mlp.fused_step(model, opt(model)) is not None) == plain, name
    model = build("mlp1x512", shape, 10)
    nesterov = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    assert fused_mlp.fused_step(model, nesterov) is None


def test_fused_mlp_checkpoints_resume_on_the_autograd_path(tmp_path, monkeypatch):
    spec = SPEC.replace(epochs=12)
    whole, _ = trained(spec)
    path = str(tmp_path / "ck.pt")
    p = api.prepare(spec, torch.device("cpu"))
    model = api.build_model(spec, p.input_shape, p.num_classes)
    cut = engine.train(model, p.data, dataclasses.replace(api.train_config(spec), max_steps=18), checkpoint_path=path)
    state = torch.load(path, weights_only=False)
    assert cut.steps == 18 and state["epoch"] == 6
    buffers = state["optimizer"]["state"].values()
    assert len(buffers) == 4 and all("momentum_buffer" in s for s in buffers)
    monkeypatch.setattr(engine, "FUSED_MLP", False)
    model = api.build_model(spec, p.input_shape, p.num_classes)
    resumed = engine.train(model, p.data, api.train_config(spec), resume=state)
    assert len(resumed.step_losses) == len(whole.step_losses) == 36
    close(whole, resumed, rtol=1e-5)


def test_fused_sgd_matches_the_foreach_and_plain_steps(monkeypatch):
    monkeypatch.setattr(engine, "FUSED_MLP", False)  # the optimizer's own step
    fused, model = trained()
    real = engine.make_optimizer
    assert all(g["fused"] for g in real(model, api.train_config(SPEC)).param_groups)
    for kind in ("foreach", "plain"):

        def make(m, cfg, kind=kind):
            opt = real(m, cfg)
            for g in opt.param_groups:
                g["fused"], g["foreach"] = False, kind == "foreach"
            return opt

        monkeypatch.setattr(engine, "make_optimizer", make)
        other, other_model = trained()
        assert len(other.step_losses) == 60
        close(fused, other, rtol=1e-5)
        for a, b in zip(model.parameters(), other_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_evaluation_in_large_batches_matches_one_example_at_a_time():
    result, model = trained(SPEC.replace(epochs=2))
    p = api.prepare(SPEC, torch.device("cpu"))
    loss, pred = engine.predict(model, p.data.x_train, p.data.y_train)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[None]) for x in p.data.x_train])
    assert torch.equal(pred, logits.argmax(1))
    assert loss == pytest.approx(F.cross_entropy(logits, p.data.y_train).item(), rel=1e-5)
    assert result.evals[-1]["train_loss"] == pytest.approx(loss, rel=1e-6)


def test_channels_last_matches_the_default_layout(monkeypatch):
    spec = SPEC.replace(model="inception", width=0.0625, epochs=8, lr=0.01)
    default, model = trained(spec)
    assert model.inc1.branch3.conv.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(engine, "channels_last", lambda model: False)
    plain, model = trained(spec)
    assert not model.inc1.branch3.conv.weight.is_contiguous(memory_format=torch.channels_last)
    # rounding differences grow in training: a 1e-7 change of the initial weights alone moves
    # this model's losses by ~1e-3 after 24 steps
    close(default, plain, rtol=1e-2, rounding_steps=16)


def test_autocast_is_off_on_cpu():
    a, _ = trained(SPEC.replace(epochs=3), bf16=True)
    b, _ = trained(SPEC.replace(epochs=3), bf16=False)
    assert a.step_losses == b.step_losses


@pytest.mark.slow
def test_compiled_training_matches_eager():
    eager, _ = trained(SPEC.replace(epochs=5))
    compiled, _ = trained(SPEC.replace(epochs=5), compile=True)
    close(eager, compiled, rtol=1e-4)
