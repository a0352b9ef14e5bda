"""Tests of the dataset layer on small files written in exactly the real formats."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rethink.data import Dataset, dataset_names, formats, load_dataset, sources, subset
from rethink.errors import UserError
from writers import (
    CIFAR_NAMES,
    IDX_NAMES,
    cifar_batch,
    expected_images,
    idx_images_bytes,
    idx_labels_bytes,
    png_bytes,
    py2_cifar_pickle,
    tar_folder,
    write_cifar,
    write_image_folder,
    write_mnist,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_ambient_data(monkeypatch, tmp_path):
    """No test sees the real $RETHINK_DATA or /usr/share/datasets unless it asks to."""
    monkeypatch.delenv(sources.DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", str(tmp_path / "no-system-datasets"))


def user_error(fragment: str, fn, *args, **kwargs) -> str:
    """Call fn, expect a one-line UserError whose message contains ``fragment``."""
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------
# Registry basics and digits


def test_dataset_names():
    assert dataset_names() == ["digits", "mnist", "fashion-mnist", "cifar10", "imagefolder", "npz"]


@pytest.mark.parametrize(
    "typo, suggestion", [("fashon-mnist", "fashion-mnist"), ("cifar", "cifar10"), ("digit", "digits")]
)
def test_unknown_name_suggests_nearest(typo, suggestion):
    message = user_error(f"did you mean '{suggestion}'", load_dataset, typo)
    assert typo in message and "choose one of" in message and "npz:PATH" in message


def test_unknown_name_without_close_match_lists_names():
    message = user_error("choose one of: digits", load_dataset, "zzzzzz")
    assert "did you mean" not in message


def test_digits_split_is_fixed_and_stratified():
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset)
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.num_classes == 10 and ds.class_names == tuple("0123456789")
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # values are k/16 exactly
    assert np.array_equal(ds.x_train * 16, np.round(ds.x_train * 16))
    # stratified: each class's test share is about 20 %
    counts_train, counts_test = np.bincount(ds.y_train), np.bincount(ds.y_test)
    assert np.all(np.abs(counts_test / (counts_train + counts_test) - 0.2) < 0.02)
    again = load_dataset("DIGITS")
    assert again.checksum == ds.checksum
    assert np.array_equal(again.x_test, ds.x_test) and np.array_equal(again.y_train, ds.y_train)


# --------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_images_bytes(arr)
    assert data[:4] == b"\x00\x00\x08\x03"
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(data) if gz else data)
    out = formats.read_idx(path)
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_read_idx_detects_gzip_by_magic_not_name(tmp_path):
    labels = np.array([3, 1, 4], dtype=np.uint8)
    (tmp_path / "gzipped-without-suffix").write_bytes(gzip.compress(idx_labels_bytes(labels)))
    (tmp_path / "plain-with-suffix.gz").write_bytes(idx_labels_bytes(labels))
    assert np.array_equal(formats.read_idx(tmp_path / "gzipped-without-suffix"), labels)
    assert np.array_equal(formats.read_idx(tmp_path / "plain-with-suffix.gz"), labels)


def test_read_idx_rejects_trailing_bytes_and_zero_dims(tmp_path):
    data = idx_labels_bytes(np.arange(5, dtype=np.uint8))
    (tmp_path / "long").write_bytes(data + b"\x00")
    user_error("1 unexpected bytes", formats.read_idx, tmp_path / "long")
    (tmp_path / "zero").write_bytes(b"\x00\x00\x08\x00")
    user_error("bad magic number 0x00000800", formats.read_idx, tmp_path / "zero")


def test_read_idx_other_types_big_endian(tmp_path):
    arr = np.array([[1, -2], [300000, 7]], dtype=">i4")
    (tmp_path / "ints").write_bytes(struct.pack(">III", 0x00000C02, 2, 2) + arr.tobytes())
    out = formats.read_idx(tmp_path / "ints")
    assert out.dtype == np.int32 and out.tolist() == [[1, -2], [300000, 7]]


@pytest.mark.parametrize("name, gz", [("fashion-mnist", True), ("mnist", False)])
def test_load_idx_dataset_values(tmp_path, name, gz):
    arrays = write_mnist(tmp_path / name, np.random.default_rng(0), gz=gz)
    ds = load_dataset(name, str(tmp_path / name))
    assert ds.name == name and ds.source == str(tmp_path / name)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (6, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int64
    assert np.array_equal(ds.x_train[:, 0], arrays[IDX_NAMES[0]].astype(np.float32) / 255)
    assert np.array_equal(ds.x_test[:, 0], arrays[IDX_NAMES[2]].astype(np.float32) / 255)
    assert np.array_equal(ds.y_train, arrays[IDX_NAMES[1]])
    assert np.array_equal(ds.y_test, arrays[IDX_NAMES[3]])
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    if name == "fashion-mnist":
        assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    else:
        assert ds.class_names == tuple("0123456789")
    assert len(ds.checksum) == 16


def test_idx_checksum_same_for_gz_and_plain_and_changes_with_content(tmp_path):
    write_mnist(tmp_path / "a", np.random.default_rng(0), gz=True)
    write_mnist(tmp_path / "b", np.random.default_rng(0), gz=False)
    write_mnist(tmp_path / "c", np.random.default_rng(1), gz=False)
    a, b, c = (load_dataset("mnist", str(tmp_path / d)).checksum for d in "abc")
    assert a == b != c


def test_name_path_form_and_data_dir_parent(tmp_path):
    write_mnist(tmp_path / "mnist", np.random.default_rng(0))
    assert load_dataset(f"mnist:{tmp_path / 'mnist'}").source == str(tmp_path / "mnist")
    # data_dir may be the folder holding a <name>/ subfolder
    assert load_dataset("mnist", str(tmp_path)).source == str(tmp_path / "mnist")


def _idx_case(folder: Path, case: str) -> Path:
    """Break the train images file of a valid gzipped MNIST folder; return the broken file."""
    path = folder / f"{IDX_NAMES[0]}.gz"
    data = gzip.decompress(path.read_bytes())
    gz = gzip.compress(data)
    broken = {
        "wrong magic": lambda: gzip.compress(b"\x00\x00\x07\x03" + data[4:]),
        "nonzero magic": lambda: gzip.compress(b"\x12\x34" + data[2:]),
        "dims too large": lambda: gzip.compress(data[:4] + struct.pack(">I", 13) + data[8:]),
        "dims too small": lambda: gzip.compress(data[:4] + struct.pack(">I", 11) + data[8:]),
        "truncated data": lambda: gzip.compress(data[:-100]),
        "truncated header": lambda: gzip.compress(data[:10]),
        "empty": lambda: b"",
        "truncated gzip": lambda: gz[: len(gz) // 2],
        "corrupt gzip": lambda: gz[:20] + bytes(b ^ 0xFF for b in gz[20:60]) + gz[60:],
        "labels magic": lambda: gzip.compress(idx_labels_bytes(np.zeros(12, np.uint8))),
    }[case]()
    path.write_bytes(broken)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "wrong magic",
        "nonzero magic",
        "dims too large",
        "dims too small",
        "truncated data",
        "truncated header",
        "empty",
        "truncated gzip",
        "corrupt gzip",
        "labels magic",
    ],
)
def test_broken_idx_raises_user_error_naming_file(tmp_path, case):
    write_mnist(tmp_path, np.random.default_rng(0))
    path = _idx_case(tmp_path, case)
    user_error(str(path), load_dataset, "fashion-mnist", str(tmp_path))


def test_idx_label_count_mismatch_and_out_of_range(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0))
    labels = tmp_path / f"{IDX_NAMES[1]}.gz"
    labels.write_bytes(gzip.compress(idx_labels_bytes(np.zeros(11, np.uint8))))
    user_error(str(labels), load_dataset, "mnist", str(tmp_path))
    labels.write_bytes(gzip.compress(idx_labels_bytes(np.full(12, 10, np.uint8))))
    message = user_error(str(labels), load_dataset, "mnist", str(tmp_path))
    assert "label 10" in message


def test_idx_missing_one_file_is_named(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0))
    (tmp_path / f"{IDX_NAMES[3]}.gz").unlink()
    user_error(str(tmp_path / IDX_NAMES[3]), load_dataset, "mnist", str(tmp_path))


def test_idx_empty_train_set(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0), n_train=0)
    user_error("empty", load_dataset, "mnist", str(tmp_path))


def test_lookup_order_data_dir_then_env_then_system(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for where, offset in (("given", 1), ("env", 2), ("system", 3)):
        write_mnist(tmp_path / where / "fashion-mnist", rng, label_offset=offset)
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", str(tmp_path / "system"))
    monkeypatch.setenv("RETHINK_DATA", str(tmp_path / "env"))

    def first_label(data_dir=None):
        return int(load_dataset("fashion-mnist", data_dir).y_train[0])

    assert first_label(str(tmp_path / "given" / "fashion-mnist")) == 1
    assert first_label() == 2
    # $RETHINK_DATA without this dataset: fall through to the system folder
    monkeypatch.setenv("RETHINK_DATA", str(tmp_path / "elsewhere"))
    assert first_label() == 3
    monkeypatch.delenv("RETHINK_DATA")
    assert first_label() == 3
    assert load_dataset("fashion-mnist").source == str(tmp_path / "system" / "fashion-mnist")


def test_missing_dataset_lists_places_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RETHINK_DATA", str(tmp_path / "env"))
    message = user_error("fashion-mnist not found", load_dataset, "fashion-mnist")
    assert str(tmp_path / "env" / "fashion-mnist") in message
    assert str(tmp_path / "no-system-datasets" / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
    # an explicit data_dir is the only place looked
    message = user_error(str(tmp_path / "nowhere"), load_dataset, "mnist", str(tmp_path / "nowhere"))
    assert "env" not in message


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", str(FASHION_DIR.parent))
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10 and set(np.unique(ds.y_train)) == set(range(10))
    assert np.all(np.bincount(ds.y_train) == 6000) and np.all(np.bincount(ds.y_test) == 1000)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    small = subset(ds, 1000, 500, np.random.default_rng(0))
    assert np.all(np.bincount(small.y_train) == 100) and np.all(np.bincount(small.y_test) == 50)
    user_error(
        "--train-size 70000 is larger than the 60000 training images of fashion-mnist; use at most 60000",
        subset,
        ds,
        70000,
        None,
        np.random.default_rng(0),
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10


def _check_cifar(ds, batches):
    train = [batches[n] for n in formats.CIFAR_TRAIN_FILES]
    x_train = np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert np.array_equal(ds.x_train, x_train.astype(np.float32) / 255)
    assert np.array_equal(ds.y_train, sum((b[b"labels"] for b in train), []))
    test = batches["test_batch"]
    assert np.array_equal(ds.x_test, test[b"data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    assert np.array_equal(ds.y_test, test[b"labels"])
    assert ds.num_classes == 10 and ds.class_names == tuple(n.decode() for n in CIFAR_NAMES)
    # CHW order: the first 1024 bytes of a row are the red plane
    assert np.array_equal(ds.x_train[0, 0].ravel(), x_train.reshape(20, -1)[0, :1024] / np.float32(255))


def test_cifar_folder_parent_and_tarball(tmp_path):
    batches = write_cifar(tmp_path / "data", np.random.default_rng(0))
    folder = tmp_path / "data" / "cifar-10-batches-py"
    from_folder = load_dataset("cifar10", str(folder))
    _check_cifar(from_folder, batches)
    assert from_folder.source == str(folder)
    assert load_dataset("cifar10", str(tmp_path / "data")).source == str(folder)

    (tmp_path / "dl").mkdir()
    tar = tar_folder(folder, tmp_path / "dl" / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    for where in (tar, tar.parent):
        ds = load_dataset("cifar10", str(where))
        _check_cifar(ds, batches)
        assert ds.source == str(tar) and ds.checksum == from_folder.checksum


def test_cifar_python2_pickle_bytes(tmp_path):
    rng = np.random.default_rng(0)
    batches = write_cifar(tmp_path, rng)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(py2_cifar_pickle(data, [9, 0, 4]))
    ds = load_dataset("cifar10", str(tmp_path))
    assert np.array_equal(ds.x_test, data.reshape(3, 3, 32, 32) / np.float32(255))
    assert ds.y_test.tolist() == [9, 0, 4]
    assert np.array_equal(ds.y_train[:4], batches["data_batch_1"][b"labels"])


def test_cifar_str_keys_array_labels_and_no_meta(tmp_path):
    rng = np.random.default_rng(0)
    batches = {
        name: {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": np.array([0, 1, 2, 9])}
        for name in [*formats.CIFAR_TRAIN_FILES, "test_batch"]
    }
    write_cifar(tmp_path, rng, batches=batches, meta=False)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.class_names == formats.CIFAR10_CLASSES
    assert ds.y_test.tolist() == [0, 1, 2, 9]


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing labels", "missing key 'labels'"),
        ("missing data", "missing key 'data'"),
        ("wrong shape", "shape"),
        ("wrong dtype", "dtype float32"),
        ("data is a list", "'data' is a list"),
        ("labels are a string", "labels"),
        ("float labels", "integer"),
        ("label count", "labels"),
        ("label out of range", "label 10"),
        ("negative label", "label -1"),
        ("not a dict", "holds a list"),
        ("truncated", "not a readable"),
        ("garbage", "not a readable"),
        ("code", "refusing"),
    ],
)
def test_broken_cifar_batch_raises_user_error_naming_file(tmp_path, case, fragment):
    rng = np.random.default_rng(0)
    write_cifar(tmp_path, rng)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    good = cifar_batch(rng)
    obj = {
        "missing labels": {b"data": good[b"data"]},
        "missing data": {b"labels": good[b"labels"]},
        "wrong shape": {**good, b"data": good[b"data"][:, :3000]},
        "wrong dtype": {**good, b"data": good[b"data"].astype(np.float32)},
        "data is a list": {**good, b"data": good[b"data"].tolist()},
        "labels are a string": {**good, b"labels": b"0123"},
        "float labels": {**good, b"labels": [0.0, 1.0, 2.0, 3.0]},
        "label count": {**good, b"labels": good[b"labels"][:3]},
        "label out of range": {**good, b"labels": [0, 1, 10, 2]},
        "negative label": {**good, b"labels": [0, -1, 1, 2]},
        "not a dict": [good[b"data"], good[b"labels"]],
    }.get(case)
    if obj is not None:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif case == "garbage":
        path.write_bytes(b"this is not a pickle at all")
    else:  # a pickle that would run code when loaded with plain pickle.load
        path.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    user_error(str(path), load_dataset, "cifar10", str(tmp_path))
    user_error(fragment, load_dataset, "cifar10", str(tmp_path))
    assert not (tmp_path / "pwned").exists()


def test_cifar_missing_batch_and_broken_tarball(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(0))
    folder = tmp_path / "cifar-10-batches-py"
    tar = tar_folder(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    (folder / "test_batch").unlink()
    message = user_error(str(folder), load_dataset, "cifar10", str(folder))
    assert "test_batch" in message
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    user_error(str(tar), load_dataset, "cifar10", str(tar))
    tar.write_bytes(b"\x1f\x8b" + os.urandom(200))
    user_error(str(tar), load_dataset, "cifar10", str(tar))


def test_cifar_bad_meta(tmp_path):
    write_cifar(tmp_path, np.random.default_rng(0))
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({b"label_names": 5}, protocol=2))
    user_error(str(meta), load_dataset, "cifar10", str(tmp_path))
    meta.write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2))
    user_error("out of range", load_dataset, "cifar10", str(tmp_path))


def test_cifar_not_found(tmp_path):
    message = user_error("cifar10 not found", load_dataset, "cifar10", str(tmp_path / "x"))
    assert "cifar-10-python.tar.gz" in message


# --------------------------------------------------------------------------------------------
# Image folders


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_png_image_folder_round_trip(tmp_path, mode):
    written = write_image_folder(tmp_path / "imgs", np.random.default_rng(0), mode=mode)
    ds = load_dataset("imagefolder", str(tmp_path / "imgs"))
    classes = ["bird", "cat", "dog"]
    assert ds.class_names == tuple(classes) and ds.num_classes == 3
    for split in ("train", "test"):
        x, y = expected_images(written, classes, split)
        assert np.array_equal(getattr(ds, f"x_{split}"), x.astype(np.float32) / 255)
        assert np.array_equal(getattr(ds, f"y_{split}"), y)
    assert ds.x_train.shape == (7, 1 if mode == "L" else 3, 7, 5)
    assert ds.y_train.tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_jpeg_image_folder_val_split_and_name_form(tmp_path):
    written = write_image_folder(tmp_path, np.random.default_rng(0), mode="RGB", test_split="val", fmt="JPEG")
    ds = load_dataset(f"imagefolder:{tmp_path}")
    x, y = expected_images(written, ["bird", "cat", "dog"], "val")
    assert np.array_equal(ds.x_test, x.astype(np.float32) / 255) and np.array_equal(ds.y_test, y)


def test_mixed_gray_and_colour_becomes_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    colour = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        (tmp_path / split / "a" / "1.png").write_bytes(png_bytes(gray))
        (tmp_path / split / "a" / "2.png").write_bytes(png_bytes(colour))
    ds = load_dataset("imagefolder", str(tmp_path))
    assert ds.x_train.shape == (2, 3, 4, 4)
    assert np.array_equal(ds.x_train[0], np.stack([gray] * 3) / np.float32(255))
    assert np.array_equal(ds.x_train[1], colour.transpose(2, 0, 1) / np.float32(255))


def test_image_folder_tarball_with_top_dir(tmp_path):
    write_image_folder(tmp_path / "cifar10", np.random.default_rng(0), mode="RGB")
    (tmp_path / "cifar10" / "train" / "cat" / "notes.txt").write_text("ignored")
    from_dir = load_dataset("imagefolder", str(tmp_path / "cifar10"))
    for arcname in ("cifar10", "."):
        tar = tar_folder(tmp_path / "cifar10", tmp_path / f"imgs{len(arcname)}.tar.gz", arcname)
        ds = load_dataset(f"imagefolder:{tar}")
        assert np.array_equal(ds.x_train, from_dir.x_train)
        assert np.array_equal(ds.y_test, from_dir.y_test)
        assert ds.class_names == from_dir.class_names and ds.checksum == from_dir.checksum


def test_image_folder_mixed_sizes_names_file_and_expected_size(tmp_path):
    write_image_folder(tmp_path, np.random.default_rng(0), size=(5, 7))
    odd = tmp_path / "test" / "dog" / "img0.png"
    odd.write_bytes(png_bytes(np.zeros((7, 6), np.uint8)))
    message = user_error(str(odd), load_dataset, "imagefolder", str(tmp_path))
    assert "6x7" in message and "5x7" in message


@pytest.mark.parametrize("content", [b"not an image", "truncated"])
def test_image_folder_unreadable_image(tmp_path, content):
    write_image_folder(tmp_path, np.random.default_rng(0))
    bad = tmp_path / "train" / "cat" / "img1.png"
    bad.write_bytes(bad.read_bytes()[:40] if content == "truncated" else content)
    user_error(str(bad), load_dataset, "imagefolder", str(tmp_path))


def test_image_folder_unreadable_image_in_tarball(tmp_path):
    write_image_folder(tmp_path / "d", np.random.default_rng(0))
    (tmp_path / "d" / "test" / "bird" / "img0.png").write_bytes(b"garbage")
    tar = tar_folder(tmp_path / "d", tmp_path / "d.tar.gz", "d")
    user_error(f"{tar}:test/bird/img0.png", load_dataset, "imagefolder", str(tar))


def test_image_folder_layout_errors(tmp_path):
    write_image_folder(tmp_path / "a", np.random.default_rng(0))
    (tmp_path / "a" / "test" / "horse").mkdir()
    (tmp_path / "a" / "test" / "horse" / "x.png").write_bytes(png_bytes(np.zeros((7, 5), np.uint8)))
    user_error("class 'horse'", load_dataset, "imagefolder", str(tmp_path / "a"))

    write_image_folder(tmp_path / "b", np.random.default_rng(0))
    for f in (tmp_path / "b" / "test").rglob("*.png"):
        f.unlink()
    user_error("no images under test/", load_dataset, "imagefolder", str(tmp_path / "b"))

    (tmp_path / "c" / "images").mkdir(parents=True)
    user_error("no train/", load_dataset, "imagefolder", str(tmp_path / "c"))
    user_error(str(tmp_path / "missing"), load_dataset, "imagefolder", str(tmp_path / "missing"))
    user_error("needs a path", load_dataset, "imagefolder")

    bad_tar = tmp_path / "broken.tar.gz"
    bad_tar.write_bytes(gzip.compress(b"x" * 1000)[:30])
    user_error(str(bad_tar), load_dataset, "imagefolder", str(bad_tar))


# --------------------------------------------------------------------------------------------
# npz


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((6, 5, 4), (6, 1, 5, 4)),
        ((6, 5, 4, 3), (6, 3, 5, 4)),
        ((6, 5, 4, 1), (6, 1, 5, 4)),
        ((6, 3, 5, 4), (6, 3, 5, 4)),
        ((6, 20), (6, 1, 1, 20)),
    ],
)
def test_npz_shapes_and_uint8_scaling(tmp_path, shape, expected):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.arange(6) % 3, x_test=x[:2], y_test=np.array([4, 0]))
    ds = load_dataset(f"npz:{path}")
    assert ds.x_train.shape == expected and ds.x_train.dtype == np.float32
    want = x.transpose(0, 3, 1, 2) if len(shape) == 4 and shape[1] != 3 else x.reshape(expected)
    assert np.array_equal(ds.x_train, want.astype(np.float32) / 255)
    assert ds.num_classes == 5 and ds.class_names == ("0", "1", "2", "3", "4")
    assert ds.y_test.dtype == np.int64 and ds.y_test.tolist() == [4, 0]


def test_npz_float_kept_and_class_names(tmp_path):
    x = np.linspace(-1, 2, 6 * 4, dtype=np.float64).reshape(6, 2, 2)
    path = tmp_path / "f.npz"
    np.savez(
        path,
        x_train=x,
        y_train=np.array([0, 1] * 3),
        x_test=x,
        y_test=np.zeros(6, int),
        class_names=np.array(["no", "yes"]),
    )
    ds = load_dataset("npz", str(path))
    assert np.array_equal(ds.x_train[:, 0], x.astype(np.float32))
    assert ds.class_names == ("no", "yes") and ds.num_classes == 2


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing key", "missing y_test"),
        ("nan", "NaN"),
        ("inf", "NaN or infinite"),
        ("length mismatch", "5 labels"),
        ("negative label", "negative"),
        ("empty", "empty"),
        ("float labels", "integer"),
        ("2-D labels", "1-D"),
        ("5-D images", "shape"),
        ("scalar images", "empty"),
        ("int images", "dtype int64"),
        ("test shape differs", "must match"),
        ("few class names", "class_names"),
        ("garbage", "not a readable .npz"),
        ("truncated", "d.npz"),
        ("npy", "single .npy"),
    ],
)
def test_broken_npz_raises_user_error_naming_file(tmp_path, case, fragment):
    path = tmp_path / "d.npz"
    x = np.zeros((6, 4, 4), np.float32)
    arrays = dict(x_train=x, y_train=np.arange(6) % 2, x_test=x, y_test=np.arange(6) % 2)
    change = {
        "missing key": {"y_test": None},
        "nan": {"x_test": np.where(np.eye(4, dtype=bool), np.nan, x)},
        "inf": {"x_train": np.full((6, 4, 4), np.inf)},
        "length mismatch": {"y_train": np.arange(5)},
        "negative label": {"y_test": -(np.arange(6) % 2)},
        "empty": {"x_test": np.zeros((0, 4, 4), np.float32), "y_test": np.zeros(0, int)},
        "float labels": {"y_train": np.arange(6) * 1.0},
        "2-D labels": {"y_train": np.zeros((6, 1), int)},
        "5-D images": {"x_train": np.zeros((6, 1, 1, 4, 4))},
        "scalar images": {"x_train": np.float32(0.5)},
        "int images": {"x_train": np.zeros((6, 4, 4), np.int64)},
        "test shape differs": {"x_test": np.zeros((6, 5, 4), np.float32)},
        "few class names": {"class_names": np.array(["only one"])},
    }.get(case, {})
    arrays = {k: v for k, v in {**arrays, **change}.items() if v is not None}
    np.savez(path, **arrays)
    if case == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif case == "npy":
        np.save(tmp_path / "d.npy", x)
        os.replace(tmp_path / "d.npy", path)
    user_error(str(path), load_dataset, f"npz:{path}")
    user_error(fragment, load_dataset, f"npz:{path}")


def test_npz_missing_file(tmp_path):
    user_error(str(tmp_path / "nope.npz"), load_dataset, f"npz:{tmp_path / 'nope.npz'}")


# --------------------------------------------------------------------------------------------
# subset


def _toy(n_train=103, n_test=50, num_classes=4, seed=0) -> Dataset:
    """A dataset whose x encodes each example's index, with unbalanced classes."""
    rng = np.random.default_rng(seed)
    y_train = rng.choice(num_classes, n_train, p=np.linspace(1, 2, num_classes) / np.linspace(1, 2, num_classes).sum())
    y_test = rng.integers(0, num_classes, n_test)
    x_train = np.arange(n_train, dtype=np.float32).reshape(-1, 1, 1, 1)
    x_test = np.arange(n_test, dtype=np.float32).reshape(-1, 1, 1, 1)
    return Dataset(
        "toy", x_train, y_train, x_test, y_test, num_classes, tuple(map(str, range(num_classes))), "abc", "here", {}
    )


def _check_stratified(full_y, sub_y, size, num_classes):
    assert len(sub_y) == size
    exact = np.bincount(full_y, minlength=num_classes) * size / len(full_y)
    assert np.all(np.abs(np.bincount(sub_y, minlength=num_classes) - exact) < 1)


def test_subset_exact_stratified_sorted_deterministic():
    ds = _toy()
    small = subset(ds, 37, 11, np.random.default_rng(5))
    _check_stratified(ds.y_train, small.y_train, 37, 4)
    _check_stratified(ds.y_test, small.y_test, 11, 4)
    idx = small.x_train.ravel().astype(int)
    assert np.all(np.diff(idx) > 0)  # original order, no repeats
    assert np.array_equal(ds.y_train[idx], small.y_train)
    again = subset(ds, 37, 11, np.random.default_rng(5))
    assert np.array_equal(again.x_train, small.x_train) and np.array_equal(again.x_test, small.x_test)
    other = subset(ds, 37, 11, np.random.default_rng(6))
    assert not np.array_equal(other.x_train, small.x_train)
    assert small.checksum == ds.checksum and small.num_classes == 4 and small.name == "toy"


def test_subset_none_full_and_tiny_sizes():
    ds = _toy()
    assert subset(ds, None, None, np.random.default_rng(0)) is ds
    whole = subset(ds, 103, None, np.random.default_rng(0))
    assert np.array_equal(whole.x_train, ds.x_train) and whole.x_test is ds.x_test
    tiny = subset(ds, 2, 1, np.random.default_rng(0))
    assert len(tiny.y_train) == 2 and len(tiny.y_test) == 1


def test_subset_size_errors():
    ds = _toy()
    rng = np.random.default_rng(0)
    user_error(
        "--train-size 104 is larger than the 103 training images of toy; use at most 103", subset, ds, 104, None, rng
    )
    user_error("--test-size 51 is larger than the 50 test images of toy", subset, ds, None, 51, rng)
    user_error("--train-size must be at least 1", subset, ds, 0, None, rng)
    user_error("whole number", subset, ds, 2.5, None, rng)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=200), st.data())
def test_subset_stratification_property(labels, data):
    y = np.array(labels)
    size = data.draw(st.integers(1, len(y)))
    ds = Dataset(
        "p",
        y.reshape(-1, 1, 1, 1).astype(np.float32),
        y,
        y[:1].reshape(-1, 1, 1, 1).astype(np.float32),
        y[:1],
        6,
        tuple("012345"),
        "c",
    )
    _check_stratified(y, subset(ds, size, None, np.random.default_rng(0)).y_train, size, 6)


# --------------------------------------------------------------------------------------------
# Fuzzing: broken inputs load or raise UserError, never anything else

_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_VALID_IDX_GZ = gzip.compress(idx_labels_bytes(np.arange(40, dtype=np.uint8) % 10))
_VALID_CIFAR = pickle.dumps(cifar_batch(np.random.default_rng(0), n=2), protocol=2)


def _mutations(valid: bytes):
    """Random bytes, truncations and byte flips of a valid file."""
    n = len(valid)
    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, n - 1).map(lambda k: valid[:k]),
        st.tuples(st.integers(0, n - 1), st.integers(1, 255)).map(
            lambda t: valid[: t[0]] + bytes([valid[t[0]] ^ t[1]]) + valid[t[0] + 1 :]
        ),
    )


@_FUZZ
@given(_mutations(_VALID_IDX_GZ))
def test_fuzz_idx_reader(tmp_path, data):
    path = tmp_path / "fuzz-idx1-ubyte.gz"
    path.write_bytes(data)
    try:
        out = formats.read_idx(path)
    except UserError as e:
        assert str(path) in str(e)
    else:
        assert isinstance(out, np.ndarray)


def test_corrupt_memo_index_in_a_cifar_pickle_is_refused_without_allocating(tmp_path):
    """A flipped byte can turn a pickle's memo index into ~2^31; the unpickler would then zero a
    16 GB memo table (the fuzz test below once got the test run killed for memory). Run in a
    child process limited to 2 GB of address space, so a regression fails instead of exhausting
    the machine."""
    write_cifar(tmp_path, np.random.default_rng(0), n=2)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"\x80\x02}r" + (2**31 - 7).to_bytes(4, "little") + b".")  # {} memoized at index 2^31 - 7
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from rethink.data import formats
        from rethink.errors import UserError
        try:
            formats.read_cifar10({str(tmp_path / "cifar-10-batches-py")!r})
        except UserError as e:
            print(e)
            sys.exit(0)
        sys.exit(1)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test_batch: not a readable CIFAR-10 python pickle" in out.stdout and "memo index" in out.stdout


@_FUZZ
@given(_mutations(_VALID_CIFAR))
def test_fuzz_cifar_reader(tmp_path, data):
    if not (tmp_path / "cifar-10-batches-py").exists():
        write_cifar(tmp_path, np.random.default_rng(0), n=2)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(data)
    try:
        splits = formats.read_cifar10(tmp_path / "cifar-10-batches-py")
    except UserError as e:
        assert str(path) in str(e)
    else:
        assert splits.x_test.shape[1:] == (3, 32, 32) and len(splits.y_test) == len(splits.x_test)


def _valid_npz() -> bytes:
    buf = io.BytesIO()
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez(buf, x_train=x, y_train=np.array([0, 1]), x_test=x, y_test=np.array([1, 0]))
    return buf.getvalue()


@_FUZZ
@given(_mutations(_valid_npz()))
def test_fuzz_npz_reader(tmp_path, data):
    path = tmp_path / "fuzz.npz"
    path.write_bytes(data)
    try:
        splits = formats.read_npz(path)
    except UserError as e:
        assert str(path) in str(e)
    else:
        assert len(splits.x_train) == len(splits.y_train) and len(splits.x_test) == len(splits.y_test)


@_FUZZ
@given(_mutations(png_bytes(np.arange(35, dtype=np.uint8).reshape(5, 7))))
def test_fuzz_image_folder_reader(tmp_path, data):
    if not (tmp_path / "train").exists():
        write_image_folder(tmp_path, np.random.default_rng(0))
    path = tmp_path / "train" / "cat" / "img0.png"
    path.write_bytes(data)
    try:
        splits = formats.read_image_folder(tmp_path)
    except UserError as e:
        assert "img0.png" in str(e)
    else:
        assert splits.x_train.shape[1:] == splits.x_test.shape[1:]
