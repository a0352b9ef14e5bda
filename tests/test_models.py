"""Tests for the model registry and the paper's architectures."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from rethink.cli import main
from rethink.errors import UserError
from rethink.models import build, describe, model_names, num_params, options_of
from rethink.models.alexnet import LocalResponseNorm
from rethink.models.inception import ShiftBatchNorm2d

PAPER_COUNTS = {
    "mlp1x512": 1_209_866,
    "mlp3x512": 1_735_178,
    "alexnet": 1_387_786,
    "inception": 1_649_402,
    "inception-nobn": 1_649_402,
}
SHAPES = [(3, 28, 28), (1, 28, 28), (1, 8, 8), (3, 32, 32)]
BUILTIN = ["mlp", "mlp1x512", "mlp3x512", "alexnet", "inception", "inception-nobn"]


def small(name, shape=(3, 28, 28), classes=10, **opts):
    """A narrow version, to keep CPU forward passes fast."""
    if name.startswith("inception"):
        opts.setdefault("width", 0.25)
    return build(name, shape, classes, **opts)


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name,count", sorted(PAPER_COUNTS.items()))
def test_paper_parameter_counts(name, count):
    assert num_params(build(name, (3, 28, 28), 10)) == count


def test_num_params_counts_only_trainable():
    model = build("mlp1x512", (3, 28, 28), 10)
    model.out.weight.requires_grad_(False)
    assert num_params(model) == PAPER_COUNTS["mlp1x512"] - 512 * 10


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("classes", [10, 2])
def test_forward_shape(name, shape, classes):
    model = small(name, shape, classes)
    x = torch.rand(3, *shape)
    out = model(x)
    assert out.shape == (3, classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_registry_covers_builtins():
    assert model_names() == BUILTIN + ["inception-v3"]  # the optional extra: tests/test_imagenet.py


def test_spatial_sizes_halve_with_ceil():
    feats = build("alexnet", (3, 28, 28), 10).features
    assert feats(torch.zeros(1, 3, 28, 28)).shape == (1, 64, 7, 7)
    assert feats(torch.zeros(1, 3, 7, 9)).shape == (1, 64, 2, 3)
    net = small("inception")
    x = torch.zeros(1, 3, 28, 28)
    sizes = {}
    for name, mod in net.named_children():
        x = mod(x)
        sizes[name] = tuple(x.shape[-2:]) if x.dim() == 4 else None
    assert sizes["down1"] == (14, 14) and sizes["down2"] == (7, 7)


# ---------------------------------------------------------------- architecture details


def test_inception_batchnorm_has_shift_but_no_scale():
    model = build("inception", (3, 28, 28), 10)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 2 * 8 + 2  # stem, 8 inception modules x 2 branches, 2 downsample convs
    for bn in bns:
        assert isinstance(bn, ShiftBatchNorm2d)
        assert bn.weight is None
        assert isinstance(bn.bias, nn.Parameter) and bn.bias.requires_grad
        assert bn.running_mean is not None
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith("bn.weight") for n in names)


@pytest.mark.parametrize("shape, width", [((3, 28, 28), 1.0), ((1, 8, 8), 0.125)])
def test_inception_nobn_hands_its_classifier_a_signal_at_initialization(shape, width):
    # without batch norm, PyTorch's default conv init shrinks the signal ~20x over the 20 layers
    torch.manual_seed(0)
    model = build("inception-nobn", shape, 10, width=width)
    with torch.no_grad():
        features = model[:-1](torch.randn(16, *shape))
    assert features.std() > 0.3, float(features.std())


def test_inception_nobn_has_no_batchnorm_and_conv_biases():
    model = build("inception-nobn", (3, 28, 28), 10)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(c.bias is not None for c in model.modules() if isinstance(c, nn.Conv2d))


def test_shift_batchnorm_learns_shift():
    bn = ShiftBatchNorm2d(4)
    with torch.no_grad():
        bn.bias.fill_(2.0)
    out = bn(torch.randn(8, 4, 3, 3))
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.full((4,), 2.0), atol=1e-5)


def test_alexnet_lrn_constants_and_layers():
    model = build("alexnet", (3, 28, 28), 10)
    lrns = [m for m in model.modules() if isinstance(m, LocalResponseNorm)]
    assert len(lrns) == 2
    for lrn in lrns:
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.band.shape[0]) == (9, 0.001, 0.75, 1.0, 64)
    assert not any("band" in k for k in model.state_dict())  # a constant, not part of checkpoints
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding, c.bias is not None) for c in convs] == [
        (64, (5, 5), (2, 2), True)
    ] * 2
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(3, 2, 1)] * 2
    linears = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [384, 192, 10]


@pytest.mark.parametrize("channels", [5, 64])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_local_response_norm_equals_pytorchs(channels, layout):
    """The banded-convolution LRN computes nn.LocalResponseNorm's numbers and gradients, also with
    fewer channels than the window and near the edges."""
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(16, channels, 7, 7, generator=g)).contiguous(memory_format=layout).requires_grad_()
    ours, torchs = LocalResponseNorm(channels), nn.LocalResponseNorm(9, 0.001, 0.75, 1.0)
    a, b = ours(x), torchs(x)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    w = torch.randn(a.shape, generator=g)
    ga, gb = (torch.autograd.grad((y * w).sum(), x)[0] for y in (a, b))
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


def test_mlp_hidden_option():
    model = build("mlp", (1, 8, 8), 2, hidden=(7, 5))
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [7, 5, 2]
    assert num_params(build("mlp", (1, 8, 8), 2, hidden=())) == 64 * 2 + 2
    assert num_params(build("mlp", (3, 28, 28), 10, hidden=(512,))) == PAPER_COUNTS["mlp1x512"]


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("name", BUILTIN)
def test_dropout_random_in_train_deterministic_in_eval(name):
    torch.manual_seed(0)
    model = small(name, (1, 8, 8), 10, dropout=0.5)
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", BUILTIN)
def test_no_dropout_by_default_and_same_state_dict_keys(name):
    plain = small(name, (1, 8, 8), 10)
    dropped = small(name, (1, 8, 8), 10, dropout=0.3)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain(x), plain(x))  # train mode, no dropout: deterministic


@pytest.mark.parametrize("name", BUILTIN)
def test_width_shrinks_params(name):
    full = num_params(build(name, (3, 28, 28), 10))
    half = build(name, (3, 28, 28), 10, width=0.5)
    assert num_params(half) < full
    assert half(torch.rand(2, 3, 28, 28)).shape == (2, 10)
    tiny = build(name, (1, 8, 8), 2, width=0.001)  # every layer keeps at least one unit
    assert tiny(torch.rand(2, 1, 8, 8)).shape == (2, 2)


def test_width_rounds_units():
    model = build("alexnet", (3, 28, 28), 10, width=0.5)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [192, 96, 10]
    assert model.features.conv1.out_channels == 32
    model = build("mlp", (3, 4, 4), 10, hidden=(3,), width=0.5)  # 1.5 rounds half up
    assert model.fc1.out_features == 2


@pytest.mark.parametrize(
    "opts,match",
    [
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": "0.5"}, "dropout"),
        ({"width": 0}, "width"),
        ({"width": float("nan")}, "width"),
        ({"hidden": (512, 0)}, "hidden"),
        ({"hidden": "512"}, "hidden"),
    ],
)
def test_bad_option_values(opts, match):
    with pytest.raises(UserError, match=match):
        build("mlp", (3, 28, 28), 10, **opts)


def test_unknown_option_names_option_and_valid_ones():
    with pytest.raises(UserError) as e:
        build("alexnet", (3, 28, 28), 10, hidden=(512,))
    msg = str(e.value)
    assert "'hidden'" in msg and "dropout" in msg and "width" in msg and "\n" not in msg
    assert options_of("mlp") == ["hidden", "dropout", "width"]


def test_bad_input_shape():
    with pytest.raises(UserError, match="input_shape"):
        build("mlp", (28, 28), 10)
    with pytest.raises(UserError, match="num_classes"):
        build("alexnet", (3, 28, 28), 0)


# ---------------------------------------------------------------- seeding / functional use


@pytest.mark.parametrize("name", BUILTIN)
def test_builders_follow_caller_seed(name):
    torch.manual_seed(123)
    a = small(name, (1, 8, 8), 10)
    torch.manual_seed(123)
    b = small(name, (1, 8, 8), 10)
    torch.manual_seed(124)
    c = small(name, (1, 8, 8), 10)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", BUILTIN)
def test_vmap_functional_call_ensemble(name):
    models = [small(name, (1, 8, 8), 3).eval() for _ in range(3)]
    params, buffers = stack_module_state(models)
    base = small(name, (1, 8, 8), 3).to("meta").eval()
    x = torch.rand(5, 1, 8, 8)

    def f(p, b):
        return functional_call(base, (p, b), (x,))

    out = torch.vmap(f)(params, buffers)
    expected = torch.stack([m(x) for m in models])
    assert out.shape == (3, 5, 3)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp1x512", "alexnet", "inception-nobn"])
def test_per_sample_grads_with_vmap(name):
    model = small(name, (1, 8, 8), 2)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 1, 0])

    def loss(p, xi, yi):
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0))

    grads = torch.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    g0 = torch.func.grad(loss)(params, x[0], y[0])
    for k in params:
        assert grads[k].shape == (4, *params[k].shape)
        torch.testing.assert_close(grads[k][0], g0[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", BUILTIN)
def test_channels_last_matches(name):
    model = small(name, (3, 32, 32), 10).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_backward_updates_batchnorm_shift():
    model = small("inception", (1, 8, 8), 2)
    out = model(torch.rand(4, 1, 8, 8))
    out.sum().backward()
    bn = model.stem.bn
    assert bn.bias.grad is not None and bn.weight is None


# ---------------------------------------------------------------- names


def test_unknown_name_suggests_nearest():
    with pytest.raises(UserError) as e:
        build("alexnett", (3, 28, 28), 10)
    msg = str(e.value)
    assert "did you mean 'alexnet'" in msg
    assert all(n in msg for n in BUILTIN)
    assert "\n" not in msg
    with pytest.raises(UserError, match="'inception-nobn'"):
        build("inception_nobn", (3, 28, 28), 10)


def test_describe_lists_all():
    entries = describe()
    assert [n for n, _ in entries] == model_names()
    assert all(isinstance(d, str) and d and "\n" not in d for _, d in entries)


# ---------------------------------------------------------------- user models

USER_MODULE = """
    import torch
    from torch import nn

    def make_model(input_shape, num_classes, hidden=16):
        c, h, w = input_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def make_kwargs_only(input_shape, num_classes):
        return make_model(input_shape, num_classes)

    def not_a_module(input_shape, num_classes):
        return "hello"

    def wrong_classes(input_shape, num_classes):
        return make_model(input_shape, num_classes + 1)

    def wrong_signature():
        return nn.Linear(1, 1)

    def raises(input_shape, num_classes):
        raise ValueError("no GPU here")

    NOT_CALLABLE = 3
"""


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "rt_userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(USER_MODULE))
    (pkg / "broken.py").write_text("import rt_no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "rt_userpkg"
    import sys

    for mod in [m for m in sys.modules if m.startswith("rt_userpkg")]:
        del sys.modules[mod]


def test_user_model_builds(user_pkg):
    model = build(f"{user_pkg}.nets:make_model", (1, 8, 8), 2)
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 2)
    assert num_params(model) == 64 * 16 + 16 + 16 * 2 + 2
    wide = build(f"{user_pkg}.nets:make_model", (1, 8, 8), 2, hidden=4)
    assert num_params(wide) == 64 * 4 + 4 + 4 * 2 + 2


def test_user_model_build_does_not_touch_global_rng(user_pkg):
    torch.manual_seed(0)
    build(f"{user_pkg}.nets:make_model", (1, 8, 8), 2)
    after_build = torch.rand(3)
    torch.manual_seed(0)
    torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    assert torch.equal(after_build, torch.rand(3))


@pytest.mark.parametrize(
    "spec,match",
    [
        ("rt_no_such_pkg_xyz.nets:make_model", "could not import module 'rt_no_such_pkg_xyz.nets'"),
        ("{pkg}.broken:make_model", "rt_no_such_dependency_xyz"),
        ("{pkg}.nets:missing", "has no attribute 'missing'"),
        ("{pkg}.nets:NOT_CALLABLE", "not callable"),
        ("{pkg}.nets:not_a_module", "returned str, not a torch.nn.Module"),
        ("{pkg}.nets:wrong_classes", r"must return logits of shape \(N, 2\)"),
        ("{pkg}.nets:wrong_signature", "cannot be called as factory"),
        ("{pkg}.nets:", "expected package.module:factory"),
        (":make_model", "expected package.module:factory"),
    ],
)
def test_user_model_failures(user_pkg, spec, match):
    with pytest.raises(UserError, match=match) as e:
        build(spec.format(pkg=user_pkg), (1, 8, 8), 2)
    msg = str(e.value)
    assert "\n" not in msg
    assert "mypkg.nets:make_model" in msg or "logits" in msg


def test_user_factory_that_raises_is_one_line_with_its_traceback_on_demand(user_pkg, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RETHINK_DEBUG", raising=False)
    argv = [
        "run",
        "--dataset",
        "digits",
        "--train-size",
        "100",
        "--epochs",
        "1",
        "--quiet",
        "--model",
        f"{user_pkg}.nets:raises",
        "--store",
        str(tmp_path / "s.sqlite"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"model factory '{user_pkg}.nets:raises' raised ValueError: no GPU here" in err and "--debug" in err
    for command, debug_env in ((["--debug", *argv], None), ([*argv, "--debug"], None), (argv, "1")):
        if debug_env:
            monkeypatch.setenv("RETHINK_DEBUG", debug_env)
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and 'raise ValueError("no GPU here")' in err  # the user's own line
        assert err.splitlines()[-1].startswith("rethink: error: model factory")


def test_user_model_unknown_option(user_pkg):
    with pytest.raises(UserError, match="cannot be called"):
        build(f"{user_pkg}.nets:make_kwargs_only", (1, 8, 8), 2, dropout=0.5)


def test_dotted_name_without_colon_explains_form(user_pkg):
    with pytest.raises(UserError) as e:
        build(f"{user_pkg}.nets.make_model", (1, 8, 8), 2)
    msg = str(e.value)
    assert "unknown model" in msg and "package.module:factory" in msg and "mypkg.nets:make_model" in msg
