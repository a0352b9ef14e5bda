"""The main job (`rethink demo`) and the real CIFAR-10 JPEG copy that measurements use."""

import os
from pathlib import Path

import pytest

from rethink.cli import main

CIFAR_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.mark.slow
def test_demo_fits_every_test_and_writes_its_files(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    table = (tmp_path / "demo.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "status" not in line]
    assert len(rows) == 9, "six tests (true labels counted once) plus the partial-label levels"
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "fitted" and cells[2] == "100.0", row
    true_test = float(rows[0].split("|")[4])
    random_test = float(rows[1].split("|")[4])
    assert true_test > 90 and random_test < 25
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in err


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_JPEG.exists(), reason=f"needs the CIFAR-10 JPEG copy at {CIFAR_JPEG}")
def test_real_cifar10_jpeg_folder():
    from rethink.data import load_dataset

    ds = load_dataset("imagefolder", str(CIFAR_JPEG))
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert ds.class_names[:3] == ("airplane", "automobile", "bird") and ds.num_classes == 10
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert sorted(set(ds.y_train.tolist())) == list(range(10))
    assert os.path.basename(ds.source) == "cifar10-jpeg.tar.gz"


def test_demo_figure_tells_its_five_learning_curves_apart(tmp_path, monkeypatch):
    """Curves that fall on top of each other (true labels and shuffled pixels on digits) must
    still be told apart: each of the five has its own line style and marker, and a legend entry."""
    from types import SimpleNamespace

    import matplotlib.pyplot as plt
    import numpy as np

    from rethink.demo import demo_specs, plot_demo

    losses = list(np.linspace(2.3, 0.01, 156))  # every curve the same: only their styles tell them apart
    results = [
        (
            name,
            SimpleNamespace(
                spec=spec,
                step_losses=losses,
                test_acc=0.5,
                time_to_fit={"steps": 156, "epochs": 13, "seconds": 1.0},
                summary={"n_train": 1437, "n_test": 360, "epochs": 13},
            ),
        )
        for name, spec in demo_specs()
    ]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure plot_demo closes
    plot_demo(results, str(tmp_path / "demo.png"), "caption")
    ax = figures[0].axes[0]
    handles, labels = ax.get_legend_handles_labels()
    curves = [name for name, _ in results if not name.startswith("partial")]
    assert labels == curves
    styles = {(h.get_linestyle(), h.get_marker()) for h in handles}
    assert len(styles) == len(curves), styles
    assert all(h.get_marker() not in ("None", "", None) for h in handles)
