"""The command line: runs, --json, spec files, user models and data, listings, error paths."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rethink.cli import main

FAST = ["--dataset", "digits", "--train-size", "200", "--epochs", "3", "--quiet"]


def cli(*args, cwd=None):
    """Run the real console command in a subprocess."""
    exe = os.path.join(os.path.dirname(sys.executable), "rethink")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_run_json_prints_exactly_one_object(tmp_path):
    p = cli(
        "run",
        "--dataset",
        "digits",
        "--train-size",
        "300",
        "--randomize",
        "random-labels",
        "--lr",
        "0.1",
        "--lr-decay",
        "1",
        "--epochs",
        "300",
        "--json",
        "--store",
        str(tmp_path / "s.sqlite"),
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)  # the whole of stdout is one JSON object
    for key in ("run_id", "status", "num_params", "train_acc", "test_acc", "time_to_fit"):
        assert key in out
    assert out["status"] == "fitted" and out["train_acc"] == 1.0 and out["num_params"] == 38410
    assert set(out["time_to_fit"]) >= {"steps", "epochs", "seconds"}
    assert "time to fit" in p.stderr  # the summary table goes to stderr


def test_spec_file_flags_override_and_unknown_key(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'dataset = "digits"\ntrain_size = 200\nepochs = 2\nrandomize = "partial-labels"\np = 0.5\naugment = ["flip"]\n'
    )
    store = str(tmp_path / "s.sqlite")
    assert main(["run", "--spec", str(spec), "--epochs", "3", "--json", "--quiet", "--store", store]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["spec"]["epochs"] == 3 and out["spec"]["p"] == 0.5 and out["spec"]["augment"] == ["flip"]
    bad = tmp_path / "bad.toml"
    bad.write_text('dataset = "digits"\nlearning_rate = 0.1\n')
    assert main(["run", "--spec", str(bad), "--store", store]) == 2
    assert "unknown spec key 'learning_rate'" in capsys.readouterr().err


def test_user_model_and_npz_dataset(tmp_path):
    (tmp_path / "mynets.py").write_text(
        textwrap.dedent("""
        import torch
        def tiny(input_shape, num_classes):
            c, h, w = input_shape
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * w, 32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, num_classes))
    """)
    )
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 20))
    ytr, yte = rng.integers(0, 3, 300), rng.integers(0, 3, 90)
    np.savez(
        tmp_path / "blobs.npz",
        x_train=centers[ytr] + 0.3 * rng.normal(size=(300, 20)),
        y_train=ytr,
        x_test=centers[yte] + 0.3 * rng.normal(size=(90, 20)),
        y_test=yte,
    )
    p = cli(
        "run",
        "--dataset",
        "npz:blobs.npz",
        "--model",
        "mynets:tiny",
        "--preprocess",
        "none",
        "--epochs",
        "50",
        "--lr",
        "0.05",
        "--json",
        "--store",
        "s.sqlite",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["num_params"] == 20 * 32 + 32 + 32 * 3 + 3
    assert out["train_acc"] == 1.0 and out["test_acc"] > 0.95


def test_models_lists_paper_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, count in [
        ("mlp1x512", "1,209,866"),
        ("mlp3x512", "1,735,178"),
        ("alexnet", "1,387,786"),
        ("inception", "1,649,402"),
        ("inception-nobn", "1,649,402"),
    ]:
        assert any(line.startswith(name + " ") and count in line for line in out.splitlines()), name
    assert main(["models", "--input-shape", "1,8,8", "--num-classes", "2"]) == 0
    assert "params @ 1,8,8, 2 classes" in capsys.readouterr().out


def test_runs_and_export(tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    assert main(["run", *FAST, "--store", store]) == 0
    assert main(["run", *FAST, "--randomize", "gaussian", "--store", store]) == 0
    capsys.readouterr()
    assert main(["runs", "--store", store]) == 0
    listing = capsys.readouterr().out
    rows = listing.splitlines()[2:]
    assert len(rows) == 2 and "gaussian" in rows[1] and all(r.split()[1] in ("budget", "fitted") for r in rows)
    csv_path = tmp_path / "m.csv"
    assert main(["export", "--store", store, "--out", str(csv_path)]) == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("run_id,step,epoch,seconds,lr,train_loss,train_acc")
    assert len(lines) == 1 + 2 * 4  # two runs, evaluations at steps 0..3 (2 steps per epoch here: 200/128)
    assert main(["export", "--store", store, "--what", "steps", "--out", str(csv_path)]) == 0
    assert len(csv_path.read_text().splitlines()) == 1 + 2 * 6


def test_store_errors(tmp_path, capsys):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    assert main(["run", *FAST, "--store", str(junk)]) == 2
    assert "not a rethink SQLite store" in capsys.readouterr().err
    assert junk.read_bytes() == b"this is not a database" * 100, "a foreign file is left untouched"


def test_argparse_errors_are_one_line():
    p = cli("run", "--no-such-flag")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--no-such-flag" in p.stderr


@pytest.mark.parametrize("command", [["datasets"], ["export"], ["models", "--input-shape", "1,8,8"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, command):
    """`rethink export | head`: stdout's reader closes early; no traceback, the exit status of SIGPIPE."""
    if command == ["export"]:
        store = str(tmp_path / "s.sqlite")
        assert main(["run", *FAST, "--store", store]) == 0
        command = ["export", "--store", store]
    exe = os.path.join(os.path.dirname(sys.executable), "rethink")
    p = subprocess.Popen([exe, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the command has written anything: its first write fails
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141 and err == "", err


def test_augment_crop_on_images_without_a_crop_is_documented_and_shifts_by_an_eighth(capsys):
    import torch

    from rethink.data.transforms import augment

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "8x8 digits" in text and "zero-padded by an eighth of their side (at least 1 pixel)" in text
    x = torch.rand(64, 1, 8, 8) + 1  # no zeros: padding shows as zeros
    out = augment(x, ("crop",), None, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    shifts = [
        next(((dy, dx) for dy in range(3) for dx in range(3) if torch.equal(p[:, dy : dy + 8, dx : dx + 8], o)), None)
        for p, o in zip(padded, out)
    ]
    assert None not in shifts and len(set(shifts)) > 1  # every crop is a shift by at most one pixel


def test_threads_apply_to_the_command_and_are_restored_after_it(tmp_path, monkeypatch):
    """--threads sets the command's torch threads; main() called in-process (Python, tests) gives the
    caller its own count back, as it does its SIGTERM handler (one test's count once leaked into the
    next tests' numerics)."""
    import torch

    before, seen = torch.get_num_threads(), []
    monkeypatch.setattr("rethink.cli.speed_settings", lambda: seen.append(torch.get_num_threads()))
    target = 1 if before != 1 else 2
    store = str(tmp_path / "s.sqlite")
    assert main(["run", "--dataset", "no-such-set", "--threads", str(target), "--store", store]) == 2
    assert seen == [target] and torch.get_num_threads() == before
