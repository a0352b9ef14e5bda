"""Readers of the real on-disk dataset formats.

Every reader here is pure: it reads one file, folder or archive and returns arrays, and it turns
every way the input can be wrong (missing, truncated, corrupt, malformed) into a one-line
:class:`~rethink.errors.UserError` that names the file. Readers never convert pixels to float;
that happens once, in :mod:`rethink.data.sources`.

Each reader takes an optional ``hasher`` (a ``hashlib`` object). The bytes it reads are fed to it
in a fixed order so the caller can checksum exactly what was loaded. Compressed or archived inputs
are hashed after decompression, so ``x.gz`` and ``x`` (or a folder and a ``.tar.gz`` of it) give
the same checksum.

Formats:

* IDX (MNIST, Fashion-MNIST): :func:`read_idx`.
* CIFAR-10 python pickles: :func:`find_cifar10`, :func:`read_cifar10`.
* Image folders ``train/<class>/*`` and ``test/<class>/*``: :func:`read_image_folder`.
* ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``: :func:`read_npz`.
"""

from __future__ import annotations

import gzip
import importlib
import io
import os
import pickle
import pickletools
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rethink.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Splits:
    """Train and test arrays as read from disk.

    ``x_*`` are (N, C, H, W) arrays, either uint8 raw pixels (to be divided by 255) or float32
    values to keep as they are; ``y_*`` are int64 labels. ``class_names`` is None where the file
    names no classes.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...] | None = None


# --------------------------------------------------------------------------------------------
# Shared helpers


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a file, or a UserError naming it if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e}); check its permissions") from None


def gunzip_if_gzipped(data: bytes, where: str) -> bytes:
    """Decompress ``data`` if it starts with the gzip magic bytes 1f 8b, else return it unchanged."""
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{where}: corrupt or truncated gzip data ({e}); download the file again") from None


def _tar_files(path: Path) -> dict[tuple[str, ...], bytes]:
    """All regular, non-hidden files of a tar archive (gz/bz2/xz or plain), read in memory.

    Keys are the parts of each member's path, without a leading ``./``. The archive is read as a
    stream in one pass (random access into a .tar.gz would decompress it again for every member).
    """
    files: dict[tuple[str, ...], bytes] = {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
                if not parts or any(p.startswith(".") for p in parts):
                    continue  # hidden files (.DS_Store, ._x) and anything with ".."
                f = tar.extractfile(member)
                files[parts] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: not a readable .tar/.tar.gz archive ({e}); download or pack it again") from None
    return files


def _hash(hasher, *chunks: bytes) -> None:
    if hasher is not None:
        for chunk in chunks:
            hasher.update(chunk)


def _labels_array(labels, where: str) -> np.ndarray:
    """A 1-D int64 array from a list of ints or an integer array, else a UserError."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise UserError(
                f"{where}: labels are a {labels.dtype} array of shape {labels.shape}; "
                "expected a 1-D array of integer class indices"
            )
        return labels.astype(np.int64)
    if isinstance(labels, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
            raise UserError(f"{where}: labels must be a list of integer class indices")
        try:
            return np.array(labels, dtype=np.int64).reshape(-1)
        except OverflowError:
            raise UserError(f"{where}: a label does not fit in 64 bits") from None
    raise UserError(f"{where}: labels are a {type(labels).__name__}; expected a list or 1-D array of integers")


def check_label_range(y: np.ndarray, num_classes: int, where: str) -> None:
    """Raise a UserError naming ``where`` if a label is outside [0, num_classes)."""
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise UserError(f"{where}: label {bad} is out of range; expected class indices 0..{num_classes - 1}")


# --------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)

#: IDX type codes (third magic byte) and the big-endian dtypes they stand for.
IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, where: str) -> np.ndarray:
    """Parse the (already decompressed) bytes of an IDX file into an array in native byte order.

    The header is two zero bytes, a type code, the number of dimensions, then each dimension as a
    big-endian uint32. The data that follows must be exactly the product of the dimensions.
    """
    if len(data) < 4:
        raise UserError(f"{where}: only {len(data)} bytes, too short for an IDX header; download the file again")
    if data[0:2] != b"\x00\x00" or data[2] not in IDX_TYPES or data[3] == 0:
        magic = int.from_bytes(data[:4], "big")
        raise UserError(
            f"{where}: bad magic number 0x{magic:08x}, not an IDX file (expected e.g. 0x00000803 "
            "for images, 0x00000801 for labels); check the file name and download it again"
        )
    dtype, ndim = IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(
            f"{where}: IDX header truncated (needs {header} bytes, file has {len(data)}); download the file again"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = 1
    for d in dims:
        count *= d
    expected, got = count * dtype.itemsize, len(data) - header
    if got < expected:
        raise UserError(
            f"{where}: truncated: dimensions {dims} need {expected} bytes of data but only {got} "
            "are there; download the file again"
        )
    if got > expected:
        raise UserError(
            f"{where}: {got - expected} unexpected bytes after the data of dimensions {dims}; "
            "the file is corrupt, download it again"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr if dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, hasher=None) -> np.ndarray:
    """Read an IDX file, gzipped or not (gzip is detected by its magic bytes, not the name)."""
    data = gunzip_if_gzipped(read_bytes(path), str(path))
    _hash(hasher, data)
    return parse_idx(data, str(path))


# --------------------------------------------------------------------------------------------
# CIFAR-10 python pickles

CIFAR_DIRNAME = "cifar-10-batches-py"
CIFAR_TARNAME = "cifar-10-python.tar.gz"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
CIFAR_META_FILE = "batches.meta"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The only globals a CIFAR pickle needs: numpy arrays, and _codecs.encode (Python 3 protocol-2
# pickles write bytes that way). Anything else is refused, so a crafted file cannot run code.
_PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``_PICKLE_GLOBALS``."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        # numpy 2 moved numpy.core to numpy._core; map either spelling to the one that exists.
        if module.startswith(("numpy.core", "numpy._core")):
            tail = module.split(".", 2)[2]
            core = "numpy._core" if hasattr(np, "_core") else "numpy.core"
            module = f"{core}.{tail}"
        return getattr(importlib.import_module(module), name)


def _check_memo(data: bytes) -> None:
    """Refuse memo indexes beyond the file's size. The unpickler grows its memo table to the
    largest index it is given and zeroes it, so one corrupt 4-byte index (a flipped byte suffices)
    asks for up to 32 GB; a real pickle numbers its memo entries from 0, one per object."""
    for op, arg, _ in pickletools.genops(data):
        if "PUT" in op.name or "GET" in op.name:
            if isinstance(arg, int) and arg >= len(data):
                raise ValueError(f"memo index {arg} at {op.name} is beyond the file's {len(data)} bytes")
        if op.name == "STOP":
            return


def _unpickle(data: bytes, where: str):
    """Load a pickle written by Python 2 or 3, with bytes for Python 2 strings."""
    try:
        _check_memo(data)
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any failure to decode untrusted bytes means a broken file
        raise UserError(
            f"{where}: not a readable CIFAR-10 python pickle ({type(e).__name__}: {e}); download {CIFAR_TARNAME} again"
        ) from None


def _get_key(d: dict, key: str, where: str):
    """``d[key]`` where the key may be str or bytes (Python 2 pickles have bytes keys)."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise UserError(
        f"{where}: missing key '{key}' (keys: {sorted(map(repr, d))[:6]}); "
        f"expected a CIFAR-10 python batch, download {CIFAR_TARNAME} again"
    )


def parse_cifar_batch(data: bytes, where: str, num_classes: int = 10):
    """Parse one CIFAR-10 batch pickle into uint8 images (N, 3, 32, 32) and int64 labels."""
    batch = _unpickle(data, where)
    if not isinstance(batch, dict):
        raise UserError(
            f"{where}: holds a {type(batch).__name__}; expected a dict with "
            "'data' and 'labels' (a CIFAR-10 python batch)"
        )
    x, labels = _get_key(batch, "data", where), _get_key(batch, "labels", where)
    if not isinstance(x, np.ndarray):
        raise UserError(f"{where}: 'data' is a {type(x).__name__}; expected a uint8 numpy array")
    if x.dtype != np.uint8:
        raise UserError(f"{where}: 'data' has dtype {x.dtype}; expected uint8")
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise UserError(f"{where}: 'data' has shape {x.shape}; expected (N, 3072) for 32x32 colour images")
    y = _labels_array(labels, where)
    if len(y) != len(x):
        raise UserError(f"{where}: {len(x)} images but {len(y)} labels; the file is corrupt")
    check_label_range(y, num_classes, where)
    return x.reshape(-1, 3, 32, 32), y


def parse_cifar_meta(data: bytes, where: str) -> tuple[str, ...]:
    """The class names of ``batches.meta`` (CIFAR-10's ten names if it has no label_names)."""
    meta = _unpickle(data, where)
    if not isinstance(meta, dict):
        raise UserError(f"{where}: holds a {type(meta).__name__}; expected a dict with 'label_names'")
    if b"label_names" not in meta and "label_names" not in meta:
        return CIFAR10_CLASSES
    names = _get_key(meta, "label_names", where)
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise UserError(f"{where}: 'label_names' must be a non-empty list of strings")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


def find_cifar10(path: str | os.PathLike) -> Path | None:
    """Where CIFAR-10 is under ``path``: the batches folder, the original tarball, or None.

    ``path`` may be the ``cifar-10-batches-py`` folder, its parent, the folder holding
    ``cifar-10-python.tar.gz``, or the tarball itself.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        return None
    names = (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE, CIFAR_META_FILE)
    if any((p / n).exists() for n in names):
        return p
    if (p / CIFAR_DIRNAME).is_dir():
        return p / CIFAR_DIRNAME
    if (p / CIFAR_TARNAME).is_file():
        return p / CIFAR_TARNAME
    return None


def read_cifar10(path: str | os.PathLike, hasher=None) -> Splits:
    """Read CIFAR-10 from its batches folder or the original ``cifar-10-python.tar.gz``.

    Needs ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``; ``batches.meta`` is optional
    (it gives the class names). Tar members are matched by file name and read in memory.
    """
    path = Path(path)
    wanted = (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE)
    found: dict[str, tuple[str, bytes]] = {}  # file name -> (where, bytes)
    if path.is_file():
        for parts, data in _tar_files(path).items():
            found.setdefault(parts[-1], (f"{path}:{'/'.join(parts)}", data))
    else:
        for name in (*wanted, CIFAR_META_FILE):
            if (path / name).exists():
                found[name] = (str(path / name), read_bytes(path / name))
    missing = [n for n in wanted if n not in found]
    if missing:
        raise UserError(
            f"{path}: missing {', '.join(missing)}; CIFAR-10 needs data_batch_1..5 and "
            f"test_batch, download {CIFAR_TARNAME} again"
        )

    class_names = CIFAR10_CLASSES
    meta = found.get(CIFAR_META_FILE)
    if meta is not None:
        class_names = parse_cifar_meta(meta[1], meta[0])

    parts = []
    for name in wanted:
        where, data = found.pop(name)  # drop the raw bytes as soon as they are parsed
        _hash(hasher, data)
        parts.append(parse_cifar_batch(data, where, len(class_names)))
    if meta is not None:
        _hash(hasher, meta[1])
    train, test = parts[:-1], parts[-1]
    return Splits(
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=test[0],
        y_test=test[1],
        class_names=class_names,
    )


# --------------------------------------------------------------------------------------------
# Image folders

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TEST_SPLITS = ("test", "val")
_GRAY_MODES = {"1", "L", "LA", "La"}
_COLOUR_MODES = {"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
PIL_FORMATS = ("PNG", "JPEG")  # only these decoders are tried, whatever the extension says
_LAYOUT = "train/<class>/<image> and test/<class>/<image> (or val/)"


def folder_entries(root: Path) -> dict[tuple[str, ...], Path]:
    """The non-hidden files under ``root/train`` and ``root/test|val``, by relative path parts."""
    entries = {}
    for split in ("train", *TEST_SPLITS):
        for dirpath, dirnames, filenames in os.walk(root / split):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(root).parts
            for f in filenames:
                if not f.startswith("."):
                    entries[(*rel_dir, f)] = Path(dirpath) / f
    return entries


def folder_root(path: Path) -> Path:
    """``path`` itself if it has ``train/``, or its single subfolder if that has one."""
    if (path / "train").is_dir():
        return path
    subdirs = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir():
        return subdirs[0]
    raise UserError(f"{path}: no train/ folder; an image folder must hold {_LAYOUT}")


def _strip_top_dir(files: dict[tuple[str, ...], bytes], where: str) -> dict:
    """Drop a single top-level folder (``cifar10/train/...``) from archive paths if present."""
    if any(p[0] == "train" for p in files):
        return files
    tops = {p[0] for p in files}
    if len(tops) == 1:
        stripped = {p[1:]: d for p, d in files.items() if len(p) > 1}
        if any(p[0] == "train" for p in stripped):
            return stripped
    raise UserError(f"{where}: no train/ folder in the archive; it must hold {_LAYOUT}")


def _decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode one image to uint8, (H, W) if grayscale or (H, W, 3) if colour."""
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:
            mode = im.mode
            target = "L" if mode in _GRAY_MODES else "RGB" if mode in _COLOUR_MODES else None
            if target is not None:
                return np.asarray(im if mode == target else im.convert(target))
    except Exception as e:  # Pillow raises many types on damaged files; all mean "unreadable"
        raise UserError(f"{where}: unreadable image ({type(e).__name__}: {e}); replace or remove the file") from None
    raise UserError(
        f"{where}: unsupported image mode {mode}; expected 8-bit grayscale or "
        "colour (convert it to PNG with mode L or RGB)"
    )


def image_folder_layout(sources: dict, path, where) -> tuple[list[str], list[tuple], list[tuple]]:
    """The classes (sorted names of the train/ class folders) and the image files of train/ and of
    test/ (or val/), each sorted by class and name. ``sources`` maps relative path parts to files;
    ``where(rel)`` names a file in messages. A layout mistake is a :class:`UserError`."""
    by_split: dict[str, list[tuple[str, ...]]] = {}
    for rel in sources:  # anything at the wrong depth is a layout mistake
        if rel[0] not in ("train", *TEST_SPLITS) or not rel[-1].lower().endswith(IMAGE_EXTENSIONS):
            continue
        if len(rel) != 3:
            raise UserError(f"{where(rel)}: image at the wrong depth; images must be at {_LAYOUT}")
        by_split.setdefault(rel[0], []).append(rel)
    test_split = next((s for s in TEST_SPLITS if by_split.get(s)), None)
    if not by_split.get("train"):
        raise UserError(f"{path}: no images under train/; expected {_LAYOUT}")
    if test_split is None:
        raise UserError(f"{path}: no images under test/ or val/; expected {_LAYOUT}")
    classes = sorted({rel[1] for rel in by_split["train"]})
    index = {c: i for i, c in enumerate(classes)}
    for rel in by_split[test_split]:
        if rel[1] not in index:
            raise UserError(
                f"{where(rel)}: class '{rel[1]}' is not among the train/ "
                f"classes ({', '.join(classes)}); every test class needs train images"
            )
    train, test = (sorted(by_split[s], key=lambda r: (index[r[1]], r[2])) for s in ("train", test_split))
    return classes, train, test


def read_image_folder(path: str | os.PathLike, hasher=None) -> Splits:
    """Read ``train/<class>/*`` and ``test/<class>/*`` (``val/`` if there is no ``test/``).

    ``path`` is a folder or a tar archive (.tar.gz etc.) of that layout, optionally inside one
    top-level folder. Classes are the sorted names of the train/ class folders; files are read in
    name order. PNG and JPEG files (by extension) are decoded with Pillow; other files are
    ignored. All images must share one size; they are converted to L if all are grayscale, else
    to RGB. Returns uint8 NCHW arrays.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        root = folder_root(path)
        sources: dict = folder_entries(root)
        prefix = f"{root}/"
    elif path.is_file():
        sources = _strip_top_dir(_tar_files(path), str(path))
        prefix = f"{path}:"  # archive members are shown as ARCHIVE:member/path
    else:
        raise UserError(f"{path}: not found; expected a folder or .tar.gz holding {_LAYOUT}")

    def where(rel: tuple[str, ...]) -> str:
        return prefix + "/".join(rel)

    classes, train_files, test_files = image_folder_layout(sources, path, where)
    index = {c: i for i, c in enumerate(classes)}
    first_size, first_file = None, None
    images, labels, colour = [], [], False
    for rel in train_files + test_files:
        src = sources[rel]
        data = src if isinstance(src, bytes) else read_bytes(src)
        _hash(hasher, f"{'/'.join(rel)}\0{len(data)}\0".encode(), data)
        img = _decode_image(data, where(rel))
        size = img.shape[:2]
        if first_size is None:
            first_size, first_file = size, where(rel)
        elif size != first_size:
            raise UserError(
                f"{where(rel)}: image is {size[1]}x{size[0]} but {first_file} is "
                f"{first_size[1]}x{first_size[0]}; all images must have one size, resize them"
            )
        colour |= img.ndim == 3
        images.append(img)
        labels.append(index[rel[1]])

    channels = 3 if colour else 1
    x = np.empty((len(images), channels, *first_size), dtype=np.uint8)
    for i, img in enumerate(images):
        x[i] = img.transpose(2, 0, 1) if img.ndim == 3 else img  # grayscale broadcasts to RGB
    y = np.asarray(labels, dtype=np.int64)
    n_train = len(train_files)
    return Splits(x[:n_train], y[:n_train], x[n_train:], y[n_train:], tuple(classes))


# --------------------------------------------------------------------------------------------
# npz

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_images(x: np.ndarray, where: str) -> np.ndarray:
    """User images in any accepted layout -> NCHW, uint8 kept, floats as finite float32."""
    if x.ndim == 2:
        x = x[:, None, None, :]
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)
    else:
        raise UserError(f"{where}: shape {x.shape}; expected (N, H, W), (N, H, W, C), (N, C, H, W) or flat (N, D)")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind != "f":
        raise UserError(f"{where}: dtype {x.dtype}; expected uint8 pixels (0..255) or floats")
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise UserError(f"{where}: contains NaN or infinite values (or values too large for float32); fix the array")
    return x


def _npz_arrays(path: str | os.PathLike, hasher) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, the required ones checked present."""
    raw = read_bytes(path)
    _hash(hasher, raw)
    try:
        npz = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as e:  # np.load raises many types on a damaged or non-npz file
        raise UserError(
            f"{path}: not a readable .npz file ({type(e).__name__}: {e}); save it "
            "with numpy.savez(path, x_train=..., y_train=..., x_test=..., "
            "y_test=...)"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise UserError(f"{path}: is a single .npy array; expected an .npz holding {', '.join(NPZ_KEYS)} (numpy.savez)")
    with npz:
        missing = [k for k in NPZ_KEYS if k not in npz.files]
        if missing:
            raise UserError(
                f"{path}: missing {', '.join(missing)} (has {', '.join(npz.files)}); "
                f"expected arrays {', '.join(NPZ_KEYS)}"
            )
        try:
            arrays = {k: npz[k] for k in (*NPZ_KEYS, "class_names") if k in npz.files}
        except Exception as e:
            raise UserError(
                f"{path}: an array cannot be read ({type(e).__name__}: {e}); the file is corrupt, save it again"
            ) from None
    return arrays


def read_npz(path: str | os.PathLike, hasher=None) -> Splits:
    """Read ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and optional ``class_names``).

    Images may be (N, H, W), (N, H, W, C) with C in {1, 3, 4}, (N, C, H, W), or flat (N, D)
    (-> (N, 1, 1, D)); uint8 is kept for later scaling by 1/255, floats must be finite. Labels
    are 1-D non-negative integers, one per image.
    """
    arrays = _npz_arrays(path, hasher)
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        wx, wy = f"{path}: x_{split}", f"{path}: y_{split}"
        if x.ndim == 0 or x.size == 0:
            raise UserError(f"{wx} is empty; both splits need at least one image")
        out[f"x_{split}"] = _npz_images(x, wx)
        out[f"y_{split}"] = _labels_array(y, wy)
        if len(out[f"y_{split}"]) != len(x):
            raise UserError(f"{path}: x_{split} has {len(x)} images but y_{split} has {len(out[f'y_{split}'])} labels")
        if out[f"y_{split}"].min() < 0:
            raise UserError(f"{wy} has negative label {out[f'y_{split}'].min()}; expected class indices 0, 1, 2, ...")
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise UserError(
            f"{path}: x_train images are {out['x_train'].shape[1:]} but x_test "
            f"images are {out['x_test'].shape[1:]}; they must match (as C, H, W)"
        )
    if out["x_train"].dtype != out["x_test"].dtype:
        raise UserError(
            f"{path}: x_train is {out['x_train'].dtype} but x_test is {out['x_test'].dtype}; use one dtype for both"
        )

    class_names = None
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US" or names.size == 0:
            raise UserError(f"{path}: class_names must be a non-empty 1-D array of strings")
        class_names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names.tolist())
    return Splits(out["x_train"], out["y_train"], out["x_test"], out["y_test"], class_names)
