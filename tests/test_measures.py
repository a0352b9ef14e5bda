"""Measures of rethink.measures (MEASURES.md sec. 1) on tiny networks computed by hand."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rethink.errors import UserError
from rethink.measures import MEASURES, Context, UnsupportedLayer, compute
from rethink.measures.layers import extract, recording_input_shapes, spectral_norm
from rethink.models import build


def linear(weight, bias=None) -> nn.Linear:
    weight = torch.tensor(weight, dtype=torch.float32)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


def context(model, x=None, y=None, **kw) -> Context:
    x = torch.randn(4, model[0].in_features) if x is None else x
    y = torch.zeros(len(x), dtype=torch.long) if y is None else y
    return Context(model=model.eval(), x=x, y=y, **kw)


def test_spectral_norm_of_a_2x2_linear_layer():
    ctx = context(nn.Sequential(linear([[1.0, 1.0], [0.0, 1.0]])))
    assert ctx.spectral_norms == pytest.approx([(1 + math.sqrt(5)) / 2], rel=1e-12)
    assert MEASURES["spectral_product"](ctx) == pytest.approx((1 + math.sqrt(5)) ** 2 / 4, rel=1e-12)


@pytest.mark.parametrize(("stride", "padding", "shape"), [(1, 1, (1, 4, 4)), (2, 1, (1, 4, 4)), (2, 1, (2, 5, 5))])
def test_conv_operator_norm_is_the_norm_of_the_explicit_conv_matrix(stride, padding, shape):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[0], 3, 3, stride=stride, padding=padding, bias=False)
    model = nn.Sequential(conv).eval()
    with recording_input_shapes(model) as shapes:
        model(torch.randn(2, *shape))
    (layer,) = extract(model, shapes)
    assert layer.in_shape == shape
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    matrix = F.conv2d(basis, conv.weight.detach().double(), stride=stride, padding=padding).reshape(n, -1).T
    assert spectral_norm(layer) == pytest.approx(float(torch.linalg.matrix_norm(matrix, ord=2)), rel=1e-6)


def test_batch_norm_is_folded_into_the_layer_before_it():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
    fc, bn1 = nn.Linear(48, 5), nn.BatchNorm1d(5)
    with torch.no_grad():
        for norm in (bn, bn1):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.uniform_(0.5, 2)
            norm.bias.uniform_(-1, 1)
    model = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), fc, bn1).eval()
    layers = extract(model)
    assert [(a.kind, a.bn_path) for a in layers] == [("conv", "1"), ("linear", "5")]
    for layer, (lin, norm) in zip(layers, [(conv, bn), (fc, bn1)]):
        scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).double()
        expected = lin.weight.double() * scale.reshape(-1, *[1] * (lin.weight.dim() - 1))
        torch.testing.assert_close(layer.weight, expected)
    # the folded conv plus the folded shift gives the conv -> BN outputs in eval mode
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    folded = F.conv2d(x, layers[0].weight, padding=1) + shift[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(folded, bn.double()(conv.double()(x)))


def test_frobenius_measures_of_a_two_layer_net_by_hand():
    # ||W1||_F^2 = 1 + 4 + 9 + 16 = 30, ||W2||_F^2 = 2
    ctx = context(nn.Sequential(linear([[1.0, 2.0], [3.0, 4.0]], [5.0, 5.0]), nn.ReLU(), linear([[1.0, -1.0]])))
    assert MEASURES["frobenius_product"](ctx) == pytest.approx(60.0)
    assert MEASURES["frobenius_sum"](ctx) == pytest.approx(2 * math.sqrt(60.0))
    assert MEASURES["param_norm"](ctx) == pytest.approx(32.0)
    assert MEASURES["params"](ctx) == 4 + 2 + 2


def test_path_norm_of_a_two_layer_relu_net_by_hand():
    # squared weights [[1, 4], [9, 0]] on ones give [5, 9]; [[1, 1], [4, 0]] on that give [14, 20]; biases excluded
    model = nn.Sequential(linear([[1.0, -2.0], [3.0, 0.0]], [-10.0, 1.0]), nn.ReLU(), linear([[1.0, -1.0], [2.0, 0.0]]))
    ctx = context(model)
    assert MEASURES["path_norm"](ctx) == pytest.approx(34.0)
    assert model[0].bias[0].item() == -10.0  # the model itself is untouched


def test_margins_and_their_percentile_by_hand():
    x = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 1.0, 1.0]])
    ctx = context(nn.Sequential(linear(torch.eye(3).tolist())), x, torch.tensor([0, 1, 2]))
    assert MEASURES["margins"](ctx) == pytest.approx([2.0, -3.0, 0.0])
    assert MEASURES["margin"](ctx) == pytest.approx(float(np.percentile([2.0, -3.0, 0.0], 10)))
    ctx5 = context(nn.Sequential(linear(torch.eye(3).tolist())), x, torch.tensor([0, 1, 2]), percentile=50)
    assert MEASURES["margin"](ctx5) == pytest.approx(0.0)


def test_spectral_complexity_of_a_two_layer_linear_net_by_hand():
    model = nn.Sequential(linear([[3.0, 0.0], [0.0, 1.0]]), nn.ReLU(), linear([[1.0, 1.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    ctx = context(model, x, torch.zeros(2, dtype=torch.long))
    # sigmas 3 and sqrt 2; (2,1) norms: columns of W1 have norms 3 and 1, of W2 1 and 1
    r_a = 3 * math.sqrt(2) * ((4 / 3) ** (2 / 3) + (2 / math.sqrt(2)) ** (2 / 3)) ** 1.5
    assert MEASURES["spectral_complexity"](ctx) == pytest.approx(r_a)
    # with init W1^0 = I and W2^0 = 0: W1 - W1^0 = diag(2, 0) has column norms 2 and 0
    init = nn.Sequential(linear([[1.0, 0.0], [0.0, 1.0]]), nn.ReLU(), linear([[0.0, 0.0]]))
    ctx = context(model, x, torch.zeros(2, dtype=torch.long), init=init)
    r_a = 3 * math.sqrt(2) * ((2 / 3) ** (2 / 3) + (2 / math.sqrt(2)) ** (2 / 3)) ** 1.5
    assert MEASURES["spectral_complexity"](ctx) == pytest.approx(r_a)
    # normalized margins of a one-layer net: margin_i / (R_A ||X||_2 / m), ||X||_2 = sqrt(1 + 4), m = 2
    model2 = nn.Sequential(linear([[3.0, 0.0], [0.0, 1.0]]))
    ctx = context(model2, x, torch.tensor([0, 1]))
    margins = [3.0 - 0.0, 2.0 - 0.0]
    r_a = 3.0 * ((4 / 3) ** (2 / 3)) ** 1.5
    expected = [v / (r_a * math.sqrt(5.0) / 2) for v in margins]
    assert MEASURES["normalized_margins"](ctx) == pytest.approx(expected)


def test_optimization_measures_from_evaluation_rows():
    evals = [
        {"step": 300, "train_loss": 0.005},
        {"step": 100, "train_loss": 0.5},
        {"step": 200, "train_loss": 0.09},
        {"step": 250, "train_loss": None},
    ]
    ctx = context(nn.Sequential(linear([[1.0]])), evals=evals)
    assert MEASURES["steps_to_loss_0.1"](ctx) == 200
    assert MEASURES["steps_0.1_to_0.01"](ctx) == 100
    ctx = context(nn.Sequential(linear([[1.0]])), evals=evals[1:])
    assert MEASURES["steps_to_loss_0.1"](ctx) == 200
    assert MEASURES["steps_0.1_to_0.01"](ctx) is None
    ctx = context(nn.Sequential(linear([[1.0]])), evals=[])
    assert MEASURES["steps_to_loss_0.1"](ctx) is None
    assert MEASURES["steps_0.1_to_0.01"](ctx) is None


def test_distances_from_init_are_zero_at_init_and_none_without_it():
    torch.manual_seed(0)
    model = build("inception", (3, 8, 8), 4, width=0.1).eval()
    x = torch.randn(3, 3, 8, 8)
    names = ["spectral_init_distance", "frobenius_init_distance"]
    got = compute(model, x, torch.zeros(3, dtype=torch.long), init=copy.deepcopy(model), measures=names)
    assert got == {"spectral_init_distance": 0.0, "frobenius_init_distance": 0.0, "_unsupported": {}}
    got = compute(model, x, torch.zeros(3, dtype=torch.long), measures=names)
    assert got == {"spectral_init_distance": None, "frobenius_init_distance": None, "_unsupported": {}}


def test_an_unsupported_layer_is_reported_per_measure():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    got = compute(model, torch.randn(5, 4), torch.zeros(5, dtype=torch.long), measures=["params", "spectral_product"])
    assert got["params"] == 20 + 8 + 15 and got["spectral_product"] is None
    assert got["_unsupported"] == {
        "spectral_product": "measure spectral_product is not supported for layer LayerNorm (2)"
    }
    with pytest.raises(UnsupportedLayer, match="Embedding"):
        extract(nn.Sequential(nn.Embedding(10, 3)))
    with pytest.raises(UnsupportedLayer, match="LSTM"):
        extract(nn.Sequential(nn.Linear(2, 2), nn.LSTM(2, 2)))


def test_an_unknown_measure_name_suggests_the_nearest():
    with pytest.raises(UserError, match="did you mean 'spectral_product'"):
        compute(
            nn.Sequential(nn.Linear(2, 2)),
            torch.randn(2, 2),
            torch.zeros(2, dtype=torch.long),
            measures=["spectral_prodcut"],
        )


@pytest.mark.parametrize(
    ("name", "shape", "options"),
    [
        ("mlp1x512", (1, 8, 8), {}),
        ("alexnet", (3, 28, 28), {"width": 0.125}),
        ("inception", (3, 16, 16), {"width": 0.1}),
    ],
)
def test_compute_gives_finite_numbers_for_every_measure_on_the_real_models(name, shape, options):
    torch.manual_seed(0)
    init = build(name, shape, 10, **options)
    model = copy.deepcopy(init)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(6, *shape)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # the model's own predictions, so gamma > 0 and every /gamma^2 form is defined
    evals = [{"step": 10, "train_loss": 0.05}, {"step": 20, "train_loss": 0.001}]
    # the flatness searches (tests/test_flatness.py) take minutes on the convolutional models here
    names = [n for n in MEASURES.names() if name == "mlp1x512" or not MEASURES[n].__module__.endswith("flatness")]
    got = compute(model, x, y, init=init, evals=evals, measures=names)
    assert got.pop("_unsupported") == {}
    assert list(got) == names
    for key, value in got.items():
        values = value if isinstance(value, list) else [value]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), (key, value)


def test_importing_rethink_does_not_import_the_measures():
    code = "import sys, rethink; print('rethink.measures' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
