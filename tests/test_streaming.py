"""Streamed image folders (--stream): training on a generated JPEG folder, the Inception input
pipeline, labels randomized once like in-memory data, and the errors of the optional extra."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import rethink
from jpeg_folder import write_jpeg_folder
from rethink import api
from rethink.cli import main
from rethink.data.streaming import load_view
from rethink.errors import UserError
from rethink.spec import RunSpec
from rethink.store import Store

STREAM = {
    "stream": True,
    "image_size": 32,
    "model": "mlp1x512",
    "lr": 0.01,
    "lr_decay": 1.0,
    "batch_size": 8,
    "loader_workers": 2,
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_jpeg_folder(tmp_path_factory.mktemp("jpeg") / "imagenet")


def strip_time(evals):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in evals]


def test_streaming_trains_on_the_generated_folder(folder, tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    args = [
        "run",
        "--dataset",
        f"imagefolder:{folder}",
        "--stream",
        "--image-size",
        "32",
        "--model",
        "mlp1x512",
        "--lr",
        "0.01",
        "--lr-decay",
        "1",
        "--batch-size",
        "8",
        "--epochs",
        "6",
        "--augment",
        "crop,flip",
        "--loader-workers",
        "2",
        "--store",
        store,
        "--json",
        "--quiet",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_train"] == 24 and out["n_test"] == 12, "val/ is the test split"
    assert out["status"] == "fitted" and out["test_acc"] > 0.9, "one colour per class is learnt"
    summary = Store(store).get_run(out["run_id"])["summary"]
    assert summary["input_shape"] == [3, 32, 32] and summary["test_top5"] == 1.0  # 3 classes: top-5 is all
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["cached"], "the stored run is reused"


def test_random_labels_drawn_once_fixed_and_as_in_memory(tmp_path, monkeypatch):
    """With one image size the same folder also loads into memory: same subset, same random labels."""
    root = write_jpeg_folder(tmp_path / "square", train_per_class=10, seed=1)
    for f in root.rglob("*.JPEG"):
        Image.open(f).resize((40, 40)).save(f)
    spec = RunSpec(dataset=f"imagefolder:{root}", train_size=21, randomize="random-labels", **STREAM)
    calls = []
    real = api.randomize
    monkeypatch.setattr(api, "randomize", lambda *a, **k: calls.append(1) or real(*a, **k))
    streamed = api.prepare(spec, torch.device("cpu")).data
    in_memory = api.prepare(
        RunSpec(dataset=f"imagefolder:{root}", train_size=21, randomize="random-labels"), torch.device("cpu")
    ).data
    assert torch.equal(streamed.y_train, in_memory.y_train) and torch.equal(streamed.changed, in_memory.changed)
    assert streamed.changed.any() and len(streamed.train_files) == 21
    calls.clear()
    r = rethink.run(spec.replace(epochs=3, stop_on_fit=False), store=None)
    assert len(calls) == 1, "one draw for the whole 3-epoch run"
    assert len(r.evals) == 4 and r.summary["changed_fraction"] == pytest.approx(float(streamed.changed.double().mean()))


def test_results_do_not_depend_on_the_number_of_loader_workers(folder):
    spec = RunSpec(
        dataset=f"imagefolder:{folder}",
        randomize="partial-labels",
        p=0.5,
        epochs=3,
        stop_on_fit=False,
        augment=("crop", "flip"),
        **STREAM,
    )
    a = rethink.run(spec, store=None)
    b = rethink.run(spec.replace(loader_workers=0), store=None)
    assert a.run_id == b.run_id, "the worker count is not part of the run's identity"
    assert a.step_losses == b.step_losses and strip_time(a.evals) == strip_time(b.evals)


def test_inception_pipeline_views(folder):
    path = str(next((folder / "train").rglob("*.JPEG")))
    w, h = Image.open(path).size
    central = load_view(path, 32)
    assert central.shape == (3, 32, 32) and central.dtype == np.uint8
    assert np.array_equal(central, load_view(path, 32, (), seed=5)), "no augmentation: no randomness"
    crops = [load_view(path, 32, ("crop",), seed=s) for s in range(4)]
    assert np.array_equal(crops[0], load_view(path, 32, ("crop",), seed=0)), "one seed, one view"
    assert len({c.tobytes() for c in crops}) == 4
    flips = [load_view(path, 32, ("flip",), seed=s) for s in range(8)]
    assert all(np.array_equal(f, central) or np.array_equal(f, central[:, :, ::-1]) for f in flips)
    assert any(np.array_equal(f, central[:, :, ::-1]) for f in flips) and any(np.array_equal(f, central) for f in flips)
    assert min(w, h) < 90, "assorted sizes are cropped and resized to one"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset", "digits", "--stream"], "--stream reads image folders"),
        (["--stream", "--randomize", "gaussian"], "needs the images in memory"),
        (["--stream", "--augment", "color"], "--augment color is not available with --stream"),
        (["--stream", "--crop", "24"], "with --stream images are cropped to --image-size"),
        (["--image-size", "64"], "applies only to streamed image folders"),
        (["--stream", "--loader-workers", "-1"], "--loader-workers -1 must be 0 or more"),
    ],
)
def test_stream_spec_mistakes(folder, tmp_path, capsys, flags, message):
    base = ["run", "--dataset", f"imagefolder:{folder}", "--store", str(tmp_path / "s.sqlite"), "--quiet"]
    assert main(base + flags) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_archive_and_unreadable_image_are_one_line_errors(folder, tmp_path, capsys):
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(b"")
    with pytest.raises(UserError, match="--stream reads a folder, not an archive"):
        rethink.run(RunSpec(dataset=f"imagefolder:{archive}", **STREAM), store=None)
    broken = write_jpeg_folder(tmp_path / "broken")
    bad = next((broken / "val").rglob("*.JPEG"))
    bad.write_bytes(b"not a jpeg")
    assert (
        main(
            [
                "run",
                "--dataset",
                f"imagefolder:{broken}",
                "--stream",
                "--image-size",
                "32",
                "--loader-workers",
                "2",
                "--store",
                str(tmp_path / "s.sqlite"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "unreadable image" in err


def test_inception_v3_without_torchvision_names_the_extra(tmp_path, capsys):
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision is installed here; tests/test_imagenet.py covers the model")
    except ImportError:
        pass
    assert main(["run", "--model", "inception-v3", "--store", str(tmp_path / "s.sqlite"), "--quiet"]) == 2
    assert "pip install 'rethink[imagenet]'" in capsys.readouterr().err
