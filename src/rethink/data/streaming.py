"""Image folders that do not fit in memory (ImageNet): images decoded as training reads them.

``--dataset imagefolder:PATH --stream`` keeps only the file lists and the labels. Pillow decodes
each image in DataLoader worker processes, with the input pipeline of Inception V3 (the paper's
ImageNet network) at ``--image-size`` (299):

* evaluation, and training without augmentation: the central square of 87.5% of the shorter side,
  resized to size x size (bilinear);
* ``--augment crop``: a random crop of 8% to 100% of the area with aspect ratio 3/4 to 4/3 (the
  Inception crop), resized to size x size; ``--augment flip``: a horizontal flip with probability
  1/2.

Pixels are divided by 255 and, with ``--preprocess standard``, standardized per image as
everywhere else. Labels are randomized once, before training, exactly as for in-memory data (the
same subset and the same labels for the same folder and seed); every augmentation draw is a
per-image seed taken from the run's augmentation stream, so results do not depend on the number
of loader workers, and under torchrun each rank decodes only its shard of every batch.

:class:`StreamingData` offers the two methods the training engine uses, ``batches`` and
``evaluate``, like :class:`rethink.train.engine.TrainData`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import multiprocessing
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..distributed import Shard
from ..errors import UserError
from . import formats
from .dataset import Dataset
from .sources import require_location
from .transforms import standardize

EVAL_FRACTION = 0.875  # the Inception pipeline's central crop
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


@functools.lru_cache(maxsize=4)
def index_folder(name: str, data_dir: str | None) -> Dataset:
    """The image folder of ``imagefolder:PATH`` (or ``data_dir``) as a :class:`Dataset` whose ``x``
    arrays hold indices into ``extra["files"]["train" | "test"]`` (file paths) instead of pixels,
    so that the usual subset and label randomization apply. The checksum covers every file's
    relative path and size (reading 140 GB to hash it would take longer than an epoch)."""
    _, sep, path = name.partition(":")
    path = require_location("imagefolder", path if sep and path else data_dir)
    if not path.is_dir():
        raise UserError(f"{path}: --stream reads a folder, not an archive; extract it (tar xf) and pass the folder")
    root = formats.folder_root(path)
    sources = formats.folder_entries(root)
    classes, train, test = formats.image_folder_layout(sources, path, lambda rel: f"{root}/" + "/".join(rel))
    index = {c: i for i, c in enumerate(classes)}
    hasher = hashlib.sha256()
    for rel in train + test:
        hasher.update(f"{'/'.join(rel)}\0{sources[rel].stat().st_size}\0".encode())
    files = {split: [str(sources[rel]) for rel in rels] for split, rels in (("train", train), ("test", test))}
    y_train, y_test = (np.array([index[rel[1]] for rel in rels], dtype=np.int64) for rels in (train, test))
    return Dataset(
        "imagefolder",
        np.arange(len(train)),
        y_train,
        np.arange(len(test)),
        y_test,
        len(classes),
        tuple(classes),
        hasher.hexdigest()[:16],
        str(root),
        {"format": "imagefolder-stream", "files": files},
    )


def central_box(w: int, h: int) -> tuple[float, float, float, float]:
    """The central square of ``EVAL_FRACTION`` of the shorter side."""
    side = min(w, h) * EVAL_FRACTION
    left, top = (w - side) / 2, (h - side) / 2
    return left, top, left + side, top + side


def inception_box(w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random crop of 8% to 100% of the area with aspect ratio 3/4 to 4/3 (10 tries, then the
    central square), as in the Inception training pipeline."""
    for _ in range(10):
        area = w * h * rng.uniform(*CROP_AREA)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return left, top, left + cw, top + ch
    return central_box(w, h)


def load_view(path: str, size: int, kinds: tuple[str, ...] = (), seed: int | None = None) -> np.ndarray:
    """One image as uint8 (3, size, size): decoded, converted to RGB, cropped and resized (see the
    module docstring); ``kinds`` (crop, flip) draw from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    try:
        with Image.open(path, formats=formats.PIL_FORMATS) as im:
            img = im.convert("RGB")
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on damaged files; all mean "unreadable"
        raise UserError(f"{path}: unreadable image ({type(e).__name__}: {e}); replace or remove the file") from None
    box = inception_box(*img.size, rng) if "crop" in kinds else central_box(*img.size)
    img = img.resize((size, size), Image.BILINEAR, box=box)
    if "flip" in kinds and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img).transpose(2, 0, 1).copy()


class _Views(torch.utils.data.Dataset):
    """Decodes ``files[i]`` for an item ``(i, seed)``; runs in the DataLoader's workers."""

    def __init__(self, files: list[str], size: int, kinds: tuple[str, ...] = ()):
        self.files, self.size, self.kinds = files, size, kinds

    def __len__(self):
        return len(self.files)

    def __getitem__(self, item):
        i, seed = item
        return torch.from_numpy(load_view(self.files[i], self.size, self.kinds, seed))


@dataclass
class StreamingData:
    """File lists and labels (on the training device); images are decoded as they are read."""

    train_files: list[str]
    test_files: list[str]
    y_train: torch.Tensor  # the training labels trained on (randomized)
    y_test: torch.Tensor
    y_train_true: torch.Tensor
    changed: torch.Tensor  # bool: training label differs from the true one
    image_size: int
    standardize: bool
    workers: int  # DataLoader worker processes
    eval_batch_size: int
    device: torch.device

    def _stream(self, files: list[str], kinds: tuple[str, ...], plan: list[list[tuple]]):
        """Decoded, preprocessed batches of ``plan`` (lists of (file index, seed)) on the device."""
        daemon = multiprocessing.current_process().daemon  # a process-pool worker may have no children
        loader = torch.utils.data.DataLoader(
            _Views(files, self.image_size, kinds),
            batch_sampler=plan,
            num_workers=0 if daemon else self.workers,
            pin_memory=self.device.type == "cuda",
        )
        try:
            for batch in loader:
                x = batch.to(self.device, non_blocking=True).float().div_(255)
                yield standardize(x) if self.standardize else x
        except UserError as e:  # raised in a worker: keep the message's last line, its own
            raise UserError(str(e).strip().splitlines()[-1].split("UserError: ")[-1]) from None

    def batches(
        self, perm, batch_size: int, kinds: tuple[str, ...], aug_gen, shard: Shard, first: int = 0, aug_state=None
    ):
        """For every global batch of ``perm`` from the ``first``-th on: this rank's images and labels,
        and the global batch's size (see :meth:`rethink.train.engine.TrainData.batches`). The
        epoch's seeds are all drawn first from the fresh ``aug_gen``, so ``aug_state`` is not needed."""
        order = perm.tolist()
        seeds = (
            torch.randint(0, 2**62, (len(order),), generator=aug_gen, device=aug_gen.device).tolist()
            if kinds
            else [None] * len(order)
        )
        starts = range(first * batch_size, len(order), batch_size)
        plan = [shard.take([(order[p], seeds[p]) for p in range(s, min(s + batch_size, len(order)))]) for s in starts]
        for items, xb, s in zip(plan, self._stream(self.train_files, kinds, plan), starts):
            idx = torch.tensor([i for i, _ in items], device=self.device)
            yield xb, self.y_train[idx], min(batch_size, len(order) - s)

    def _logits(self, files: list[str], model: torch.nn.Module, shard: Shard):
        """(indices, logits) over this rank's share of ``files``, in evaluation batches."""
        mine = list(range(shard.rank, len(files), shard.world))
        plan = [
            [(i, None) for i in mine[s : s + self.eval_batch_size]] for s in range(0, len(mine), self.eval_batch_size)
        ]
        for items, xb in zip(plan, self._stream(files, (), plan)):
            yield torch.tensor([i for i, _ in items], device=self.device), model(xb).float()

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, shard: Shard) -> dict:
        """The metrics of :func:`rethink.train.engine.evaluate`, plus top-5 test accuracy; every
        rank evaluates its share of both sets and the sums are added up over ranks."""
        shard.broadcast_buffers(model)  # every rank evaluates with rank 0's batch-norm statistics
        was_training = model.training
        model.eval()
        s = torch.zeros(9, dtype=torch.float64, device=self.device)
        for idx, logits in self._logits(self.train_files, model, shard):
            y, ch, pred = self.y_train[idx], self.changed[idx], logits.argmax(1)
            hit, hit_true = pred == y, pred == self.y_train_true[idx]
            s[:6] += torch.stack(
                [
                    F.cross_entropy(logits, y, reduction="sum").double(),
                    hit.sum(),
                    (hit & ch).sum(),
                    (hit_true & ch).sum(),
                    (hit & ~ch).sum(),
                    ch.sum(),
                ]
            ).double()
        for idx, logits in self._logits(self.test_files, model, shard):
            y = self.y_test[idx]
            top5 = (logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]).any(1)
            s[6:9] += torch.stack(
                [F.cross_entropy(logits, y, reduction="sum").double(), (logits.argmax(1) == y).sum(), top5.sum()]
            ).double()
        model.train(was_training)
        loss, hit, hit_ch, hit_true_ch, hit_clean, n_ch, test_loss, test_hit, test_top5 = shard.sum(s).tolist()
        n, n_test = len(self.train_files), len(self.test_files)
        return {
            "train_loss": loss / n,
            "train_acc": hit / n,
            "test_loss": test_loss / n_test,
            "test_acc": test_hit / n_test,
            "corrupted_acc_noisy": hit_ch / n_ch if n_ch else None,
            "corrupted_acc_true": hit_true_ch / n_ch if n_ch else None,
            "clean_acc": hit_clean / (n - n_ch) if n > n_ch else None,
            "test_top5": test_top5 / n_test,
        }


def streaming_data(
    ds: Dataset,
    r,
    device: torch.device,
    *,
    image_size: int,
    standardize_images: bool,
    workers: int,
    eval_batch_size: int,
) -> StreamingData:
    """:class:`StreamingData` of an :func:`index_folder` dataset (subset) and its randomization ``r``."""
    files = ds.extra["files"]

    def labels(a, dtype=torch.long):
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    return StreamingData(
        [files["train"][i] for i in r.x_train],
        [files["test"][i] for i in r.x_test],
        labels(r.y_train),
        labels(r.y_test),
        labels(r.y_train_true),
        labels(r.changed, torch.bool),
        image_size,
        standardize_images,
        workers,
        eval_batch_size,
        device,
    )


__all__ = ["StreamingData", "index_folder", "load_view", "streaming_data"]
