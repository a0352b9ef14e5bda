"""Inception V3 (torchvision's, the optional extra rethink[imagenet]) and the Table 2 recipe on a tiny
generated JPEG folder at Inception V3's smallest input size. Runs in the venv of `make test-imagenet`
(torchvision imports only beside its own torch build); skipped where torchvision is missing."""

import pytest
import torch

from jpeg_folder import write_jpeg_folder
from rethink.errors import UserError
from rethink.models import build, num_params
from rethink.recipes import reproduce
from rethink.store import Store

pytestmark = pytest.mark.imagenet
pytest.importorskip("torchvision", reason="needs rethink[imagenet]; run 'make test-imagenet'")


def test_inception_v3_is_torchvisions_with_a_dropout_option():
    torch.manual_seed(0)
    assert num_params(build("inception-v3", (3, 299, 299), 1000)) == 23_834_568  # without the auxiliary head
    model = build("inception-v3", (3, 75, 75), 10, dropout=0.2)
    assert model.dropout.p == 0.2 and build("inception-v3", (3, 75, 75), 10).dropout.p == 0.0
    model.train()
    assert model(torch.rand(2, 3, 75, 75)).shape == (2, 10), "one output in training mode too (no aux logits)"
    with pytest.raises(UserError, match="at least 75x75"):
        build("inception-v3", (3, 64, 64), 10)


def test_table2_recipe_on_a_generated_folder(tmp_path):
    folder = write_jpeg_folder(tmp_path / "imagenet")
    store = str(tmp_path / "s.sqlite")
    output, paths = reproduce(
        "table2", "smoke", data_dir=str(folder), out=str(tmp_path / "out"), store=store, progress=False
    )
    (table,) = output.tables
    assert [r[:4] for r in table.rows] == [
        ["true", "yes", "yes", "yes"],
        ["true", "yes", "no", "no"],
        ["true", "no", "no", "yes"],
        ["true", "no", "no", "no"],
        ["random", "no", "no", "no"],
        ["random", "yes", "yes", "yes"],
    ]
    assert table.rows[0][8:11] == ["92.18", "77.84", "93.92"], "the paper's numbers beside ours"
    runs = Store(store).runs()
    assert len(runs) == 6 and {r["status"] for r in runs} == {"budget"}
    for r in runs:
        s = r["summary"]
        assert s["input_shape"] == [3, 75, 75] and s["n_train"] == 24 and s["n_test"] == 12
        assert s["num_params"] == num_params(build("inception-v3", (3, 75, 75), 3))
        assert 0 <= s["test_acc"] <= s["best_test_acc"] <= 1 and s["test_top5"] == 1.0  # 3 classes
    assert all(0 <= float(cell) <= 100 for row in table.rows for cell in row[4:8]), "top-1/5 and best test in %"
    assert any(p.endswith("table2.md") for p in paths)
