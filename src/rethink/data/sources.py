"""The dataset registry: names -> :class:`~rethink.data.dataset.Dataset`.

Names:

* ``digits``: scikit-learn's bundled 8x8 digits (no files needed), split 1,437 train / 360 test
  by a fixed, seeded, stratified split. The default that always works.
* ``mnist``, ``fashion-mnist``: the four IDX files (gzipped or not).
* ``cifar10``: the CIFAR-10 python pickles (folder or the original tarball).
* ``imagefolder:PATH``: ``train/<class>/*`` and ``test/<class>/*`` images (folder or .tar.gz).
* ``npz:PATH``: a ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``.

File-based datasets are looked up in ``data_dir`` if given (it or its ``<name>`` subfolder),
else in ``$RETHINK_DATA/<name>`` and then ``SYSTEM_DATA_DIR/<name>`` (Debian's
``dataset-fashion-mnist`` package installs ``/usr/share/datasets/fashion-mnist``). ``NAME:PATH``
works for every file-based name and means ``data_dir=PATH`` (it wins over a ``data_dir`` argument).

A new dataset is one function ``load(location) -> Dataset`` decorated with :func:`register`.
"""

from __future__ import annotations

import hashlib
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rethink.data import formats
from rethink.data.dataset import Dataset, array_checksum
from rethink.errors import UserError
from rethink.registry import Registry

#: Where system packages put datasets; a module constant so tests can point it elsewhere.
SYSTEM_DATA_DIR = "/usr/share/datasets"
#: Environment variable naming a folder with one subfolder per dataset.
DATA_ENV_VAR = "RETHINK_DATA"

DIGIT_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: The four IDX files of MNIST and Fashion-MNIST, in the order they are read and hashed.
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Source:
    """How to load one registered dataset."""

    load: Callable[[str | None], Dataset]  # location (a folder or file, or None: the usual places) -> Dataset
    how_to_get: str = ""  # appended to "not found" errors
    needs_path: bool = False  # named as NAME:PATH


#: Registered name -> :class:`Source`; names that need a path are listed as ``NAME:PATH``.
DATASETS: Registry[Source] = Registry(
    "dataset", listed=lambda name: f"{name}:PATH" if DATASETS[name].needs_path else name
)


def register(
    name: str, description: str, *, aliases: tuple[str, ...] = (), how_to_get: str = "", needs_path: bool = False
) -> Callable[[Callable], Callable]:
    """Decorator registering ``load(location) -> Dataset`` as dataset ``name``."""

    def decorator(load: Callable[[str | None], Dataset]) -> Callable[[str | None], Dataset]:
        DATASETS.add(name, Source(load, how_to_get, needs_path), description, aliases)
        return load

    return decorator


def dataset_names() -> list[str]:
    """The registered dataset names (``imagefolder`` and ``npz`` take ``:PATH``)."""
    return DATASETS.names()


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load a dataset by name; see the module docstring for names and where files are looked for.

    Raises :class:`UserError` for an unknown name, a dataset that cannot be found, or a file that
    is not what it should be.
    """
    kind, sep, path = str(name).strip().partition(":")
    source = DATASETS[kind.lower().replace("_", "-")]
    return source.load(path if sep and path else data_dir)


# --------------------------------------------------------------------------------------------
# Building and checking the Dataset


def _to_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] (one conversion, divided in place); floats as they are."""
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        out /= 255
        return out
    return np.ascontiguousarray(x, dtype=np.float32)


def _build(
    name: str,
    splits: formats.Splits,
    *,
    num_classes: int,
    class_names,
    checksum: str,
    source: str,
    extra: dict | None = None,
) -> Dataset:
    """Check the splits (non-empty, one label per image, labels in range) and make a Dataset."""
    for split in ("train", "test"):
        x, y = getattr(splits, f"x_{split}"), getattr(splits, f"y_{split}")
        if len(x) == 0:
            raise UserError(f"{source}: the {split} set of {name} is empty; it needs at least one image")
        if len(y) != len(x):
            raise UserError(f"{source}: {len(x)} {split} images but {len(y)} labels")
        formats.check_label_range(y, num_classes, f"{source}: {split} labels")
    return Dataset(
        name=name,
        x_train=_to_float(splits.x_train),
        y_train=splits.y_train.astype(np.int64, copy=False),
        x_test=_to_float(splits.x_test),
        y_test=splits.y_test.astype(np.int64, copy=False),
        num_classes=int(num_classes),
        class_names=tuple(class_names),
        checksum=checksum,
        source=source,
        extra=dict(extra or {}),
    )


def _candidates(name: str, location: str | None) -> list[Path]:
    """Folders to look in, in order: the given location (and its <name> subfolder), else
    $RETHINK_DATA/<name>, then SYSTEM_DATA_DIR/<name>."""
    if location:
        p = Path(location).expanduser()
        return [p, p / name]
    env = os.environ.get(DATA_ENV_VAR)
    return ([Path(env).expanduser() / name] if env else []) + [Path(SYSTEM_DATA_DIR) / name]


def _not_found(name: str, looked: list[Path], what: str) -> UserError:
    places = ", ".join(str(p) for p in looked)
    return UserError(f"{name} not found: looked for {what} in {places}; {DATASETS[name].how_to_get}")


def require_location(kind: str, location: str | None) -> Path:
    """The existing path ``location`` for dataset ``kind``; a UserError when it is missing or absent."""
    if not location:
        raise UserError(f"{kind} needs a path: use {kind}:PATH or --data-dir PATH")
    p = Path(location).expanduser()
    if not p.exists():
        what = (
            "an .npz file"
            if kind == "npz"
            else "a folder or .tar.gz with train/<class>/<image> and test/<class>/<image>"
        )
        raise UserError(f"{p}: not found; {kind} expects {what}")
    return p


# --------------------------------------------------------------------------------------------
# The datasets


@register("digits", "scikit-learn's bundled 8x8 digits (no files needed), 1,437 train / 360 test")
def _load_digits(location: str | None = None) -> Dataset:
    """scikit-learn's 8x8 digits, values 0..16 scaled by 1/16, split 1,437 / 360 (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    splits = formats.Splits(x_train, y_train, x_test, y_test)
    return _build(
        "digits",
        splits,
        num_classes=10,
        class_names=DIGIT_CLASSES,
        checksum=array_checksum(x_train, y_train, x_test, y_test),
        source="sklearn.datasets.load_digits",
        extra={"split": "train_test_split(test_size=0.2, random_state=0, stratify=y)"},
    )


def _idx_file(folder: Path, base: str) -> Path | None:
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


@register(
    "mnist",
    "MNIST: the four IDX files (gzipped or not)",
    how_to_get="download the four IDX .gz files (train-images-idx3-ubyte.gz, ...) from "
    "https://ossci-datasets.s3.amazonaws.com/mnist/ into a folder and pass --data-dir DIR "
    f"(or put them in ${DATA_ENV_VAR}/mnist)",
)
def _load_mnist(location: str | None = None) -> Dataset:
    return _load_idx("mnist", location)


@register(
    "fashion-mnist",
    "Fashion-MNIST: the four IDX files (gzipped or not)",
    aliases=("fashion", "fashionmnist"),
    how_to_get="apt-get install dataset-fashion-mnist, or download the four IDX .gz files "
    "from https://github.com/zalandoresearch/fashion-mnist and pass --data-dir DIR "
    f"(or set {DATA_ENV_VAR})",
)
def _load_fashion_mnist(location: str | None = None) -> Dataset:
    return _load_idx("fashion-mnist", location)


def _load_idx(name: str, location: str | None) -> Dataset:
    """MNIST or Fashion-MNIST from the four IDX files of the first folder that has any of them."""
    looked = _candidates(name, location)
    folder = next((d for d in looked if d.is_dir() and any(_idx_file(d, b) for b in IDX_FILES)), None)
    if folder is None:
        raise _not_found(name, looked, f"{IDX_FILES[0]}[.gz] and the other IDX files")
    paths = []
    for base in IDX_FILES:
        p = _idx_file(folder, base)
        if p is None:
            raise UserError(
                f"{folder / base}[.gz]: missing; {name} needs "
                f"{', '.join(IDX_FILES)} (each optionally .gz); {DATASETS[name].how_to_get}"
            )
        paths.append(p)

    hasher = hashlib.sha256()
    arrays = [formats.read_idx(p, hasher) for p in paths]
    xy = []
    for (images, labels), (pi, pl) in zip((arrays[0:2], arrays[2:4]), (paths[0:2], paths[2:4])):
        if images.ndim != 3 or images.dtype != np.uint8:
            raise UserError(
                f"{pi}: holds {images.dtype} data of shape {images.shape}; expected "
                "uint8 images (N, H, W), IDX magic 0x00000803"
            )
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise UserError(
                f"{pl}: holds {labels.dtype} data of shape {labels.shape}; expected "
                "uint8 labels (N,), IDX magic 0x00000801"
            )
        if len(images) != len(labels):
            raise UserError(
                f"{pl}: {len(labels)} labels but {pi} has {len(images)} images; the files do not belong together"
            )
        y = labels.astype(np.int64)
        formats.check_label_range(y, 10, str(pl))
        xy += [images[:, None], y]
    class_names = FASHION_MNIST_CLASSES if name == "fashion-mnist" else DIGIT_CLASSES
    return _build(
        name,
        formats.Splits(*xy),
        num_classes=10,
        class_names=class_names,
        checksum=hasher.hexdigest()[:16],
        source=str(folder),
        extra={"format": "idx"},
    )


@register(
    "cifar10",
    "CIFAR-10: the python pickles (folder or the original tarball)",
    aliases=("cifar-10",),
    how_to_get="download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and pass "
    f"--data-dir pointing at it or its folder (or put it in ${DATA_ENV_VAR}/cifar10)",
)
def _load_cifar10(location: str | None = None) -> Dataset:
    """CIFAR-10 from the batches folder, its parent, or cifar-10-python.tar.gz."""
    looked = _candidates("cifar10", location)
    found = next((f for f in map(formats.find_cifar10, looked) if f is not None), None)
    if found is None:
        raise _not_found("cifar10", looked, f"{formats.CIFAR_DIRNAME}/ or {formats.CIFAR_TARNAME}")
    return _read_named_classes("cifar10", formats.read_cifar10, found, "cifar-python")


@register(
    "imagefolder",
    "train/<class>/* and test/<class>/* images (folder or .tar.gz)",
    aliases=("image-folder",),
    needs_path=True,
)
def _load_image_folder(location: str | None = None) -> Dataset:
    path = require_location("imagefolder", location)
    return _read_named_classes("imagefolder", formats.read_image_folder, path, "imagefolder")


def _read_named_classes(name: str, reader, path, fmt: str) -> Dataset:
    """Read with ``reader`` (a format whose files name their classes), hashing what it reads."""
    hasher = hashlib.sha256()
    splits = reader(path, hasher)
    return _build(
        name,
        splits,
        num_classes=len(splits.class_names),
        class_names=splits.class_names,
        checksum=hasher.hexdigest()[:16],
        source=str(path),
        extra={"format": fmt},
    )


@register("npz", "an .npz with x_train, y_train, x_test, y_test (optionally class_names)", needs_path=True)
def _load_npz(location: str | None = None) -> Dataset:
    path = require_location("npz", location)
    hasher = hashlib.sha256()
    splits = formats.read_npz(path, hasher)
    num_classes = int(max(splits.y_train.max(), splits.y_test.max())) + 1
    class_names = splits.class_names
    if class_names is None:
        class_names = tuple(str(i) for i in range(num_classes))
    elif len(class_names) < num_classes:
        raise UserError(
            f"{path}: class_names has {len(class_names)} names but the labels go up "
            f"to {num_classes - 1}; give one name per class"
        )
    return _build(
        "npz",
        splits,
        num_classes=len(class_names),
        class_names=class_names,
        checksum=hasher.hexdigest()[:16],
        source=str(path),
        extra={"format": "npz"},
    )


# --------------------------------------------------------------------------------------------
# Subsets


def _check_size(size, available: int, flag: str, what: str) -> int:
    try:
        size = operator.index(size)
    except TypeError:
        raise UserError(f"{flag} must be a whole number, got {size!r}") from None
    if size < 1:
        raise UserError(f"{flag} must be at least 1, got {size}")
    if size > available:
        raise UserError(f"{flag} {size} is larger than the {available} {what}; use at most {available}")
    return size


def _stratified(y: np.ndarray, size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a class-stratified sample of exactly ``size`` of ``y``: each class's
    :func:`_quota` of indices, drawn without replacement with ``rng``."""
    n = len(y)
    if size == n:
        return np.arange(n)
    quota = _quota(np.bincount(y, minlength=num_classes).astype(np.int64), size)
    chosen = [rng.choice(np.flatnonzero(y == k), q, replace=False) for k, q in enumerate(quota) if q > 0]
    return np.sort(np.concatenate(chosen))


def _quota(counts: np.ndarray, size: int) -> np.ndarray:
    """Examples per class in a stratified sample of ``size``: ``size * count / n`` rounded by
    largest remainder (ties to the lower class index)."""
    quota, remainder = np.divmod(counts * size, counts.sum())
    order = np.lexsort((np.arange(len(counts)), -remainder))  # largest remainder first
    quota[order[: size - int(quota.sum())]] += 1
    return quota


def _class_name(ds: Dataset, k: int) -> str:
    return repr(ds.class_names[k]) if k < len(ds.class_names) else str(k)


def _check_training_classes(ds: Dataset, size: int | None) -> None:
    """Refuse a training set of one class, or a training subset of ``size`` that leaves out a
    class the training set has (naming the classes and the smallest size that has them all)."""
    counts = np.bincount(ds.y_train, minlength=ds.num_classes).astype(np.int64)
    if (counts > 0).sum() < 2:  # a one-class set is "fitted" before its first step: nothing is measured
        only = int(np.argmax(counts))
        raise UserError(
            f"{ds.source}: every training image of {ds.name} is in one class "
            f"({_class_name(ds, only)}); training needs at least two classes; add images (or labels) "
            "of another class"
        )
    if size is None:
        return
    missing = np.flatnonzero((counts > 0) & (_quota(counts, size) == 0))
    if not len(missing):
        return
    # Every class gets at least one example at size >= n / (smallest count), so the search ends there.
    enough = next(s for s in range(size + 1, len(ds.y_train) + 1) if (_quota(counts, s)[counts > 0] > 0).all())
    names = ", ".join(_class_name(ds, k) for k in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    raise UserError(
        f"--train-size {size} leaves {len(missing)} of the {int((counts > 0).sum())} classes of "
        f"{ds.name} out of the stratified subset ({names}{more}); use --train-size {enough} or more, "
        "the smallest that has every class"
    )


def subset(
    ds: Dataset, train_size: int | None, test_size: int | None, rng: np.random.Generator, training: bool = False
) -> Dataset:
    """A class-stratified subset of ``ds`` with exactly ``train_size`` / ``test_size`` examples.

    ``None`` keeps a split whole. Sizes below the number of classes are allowed (stratification
    is then best effort) unless ``training``: then a training set of one class, or a training
    subset without some class of the training set, raises a UserError. Indices keep the original
    order, and ``rng`` decides which examples of each class are taken (train first, then test), so
    a seed fixes the subset. Everything else, the checksum included, is kept.
    """
    if training:
        _check_training_classes(
            ds,
            None
            if train_size is None
            else _check_size(train_size, len(ds.y_train), "--train-size", f"training images of {ds.name}"),
        )
    changes = {}
    for split, size, flag, what in (
        ("train", train_size, "--train-size", "training images"),
        ("test", test_size, "--test-size", "test images"),
    ):
        if size is None:
            continue
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        size = _check_size(size, len(y), flag, f"{what} of {ds.name}")
        idx = _stratified(y, size, ds.num_classes, rng)
        changes[f"x_{split}"], changes[f"y_{split}"] = x[idx], y[idx]
    return ds.replace(**changes) if changes else ds
