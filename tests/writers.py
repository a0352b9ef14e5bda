"""Writers of the real dataset formats (IDX, CIFAR-10 pickles, image folders), for tests."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from rethink.data import formats, sources

IDX_NAMES = sources.IDX_FILES


def idx_images_bytes(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels_bytes(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def write_mnist(folder: Path, rng, n_train=12, n_test=6, gz=True, label_offset=0):
    """The four MNIST IDX files (gzipped if ``gz``) in ``folder``; returns the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        IDX_NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX_NAMES[1]: (np.arange(n_train) + label_offset) % 10,
        IDX_NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX_NAMES[3]: (np.arange(n_test) * 3 + label_offset) % 10,
    }
    for name, arr in arrays.items():
        data = idx_images_bytes(arr) if arr.ndim == 3 else idx_labels_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def cifar_batch(rng, n=4, label="training batch"):
    """A CIFAR-10 batch dict with bytes keys, as Python 2 pickled it."""
    return {
        b"batch_label": label.encode(),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def write_cifar(root: Path, rng, n=4, batches=None, meta=True) -> dict:
    """``root/cifar-10-batches-py`` with the five data batches, test_batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = batches or {name: cifar_batch(rng, n) for name in [*formats.CIFAR_TRAIN_FILES, "test_batch"]}
    for name, obj in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    if meta:
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({b"num_cases_per_batch": n, b"label_names": CIFAR_NAMES, b"num_vis": 3072}, f, protocol=2)
    return batches


def tar_folder(folder: Path, tar_path: Path, arcname: str) -> Path:
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return tar_path


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickle byte for byte as Python 2 + numpy 1.x wrote it (str opcodes, numpy.core)."""

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING, Python 2's str
        return b"U" + bytes([len(b)]) + b

    n = len(data)
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + b"K\x00\x85"
        + s(b"b")
        + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
        + b"(K\x01"
        + b"M"
        + struct.pack("<H", n)
        + b"M"
        + struct.pack("<H", 3072)
        + b"\x86"
        + b"cnumpy\ndtype\n"
        + s(b"u1")
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + s(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # dtype state
        + b"\x89"
        + b"T"
        + struct.pack("<I", data.size)
        + data.tobytes()
        + b"tb"  # array state
    )
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (
        b"\x80\x02}("
        + s(b"data")
        + array
        + s(b"labels")
        + label_list
        + s(b"batch_label")
        + s(b"testing batch 1 of 1")
        + b"u."
    )


def png_bytes(arr: np.ndarray, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_image_folder(root: Path, rng, mode="L", size=(5, 7), test_split="test", fmt="PNG"):
    """train/ and test/ folders of three classes; returns {split: [(class, file name, bytes)]}.

    Files are written out of name order and classes out of sorted order to test the sorting.
    """
    ext = ".png" if fmt == "PNG" else ".jpg"
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    layout = {"train": {"dog": 3, "cat": 2, "bird": 2}, test_split: {"dog": 1, "bird": 2}}
    written = {}
    for split, classes in layout.items():
        written[split] = []
        for cls, count in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in reversed(range(count)):
                data = png_bytes(rng.integers(0, 256, shape, dtype=np.uint8), fmt)
                (root / split / cls / f"img{i}{ext}").write_bytes(data)
                written[split].append((cls, f"img{i}{ext}", data))
    return written


def expected_images(written, classes, split):
    """The arrays an image folder should give: classes and files in sorted order, NCHW uint8."""
    entries = sorted(written[split], key=lambda e: (classes.index(e[0]), e[1]))
    arrays = [np.asarray(Image.open(io.BytesIO(e[2]))) for e in entries]
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return x, np.array([classes.index(e[0]) for e in entries])
