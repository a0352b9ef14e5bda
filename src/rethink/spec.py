"""RunSpec: everything that describes one run, validated, with a stable hash as its identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, fields

from .data.randomize import KINDS
from .data.transforms import AUGMENTATIONS
from .errors import UserError
from .flags import option
from .registry import unknown_name

# Learning rates of the paper (Appendix A): 0.1 for the Inceptions, 0.01 for AlexNet and MLPs.
DEFAULT_LR = {"inception": 0.1, "inception-nobn": 0.1, "inception-v3": 0.1}
FALLBACK_LR = 0.01

# Fields that never change a run's numbers, left out of its hash. The data checksum is stored
# beside each run, so a different directory holding the same files is the same run.
NOT_HASHED = ("data_dir", "loader_workers")
# Fields added after stores existed, with their defaults: hashed only when set to another value,
# so the runs stored before them keep their ids.
HASHED_IF_SET = {"stream": False, "image_size": 299, "binary": False, "track_examples": False}
# Fields whose value is itself a list (in flags: a comma list).
LIST_FIELDS = ("augment", "hidden")


@dataclass(frozen=True)
class RunSpec:
    """Each field is a flag of ``rethink run`` (see flags.py) and a key of spec files."""

    # data
    dataset: str = option(
        "digits", "digits (embedded), fashion-mnist, mnist, cifar10, imagefolder, imagefolder:PATH or npz:PATH"
    )
    data_dir: str | None = option(
        None, "where the dataset's files are (else $RETHINK_DATA/<name>, else /usr/share/datasets/<name>)"
    )
    train_size: int | None = option(None, "a seeded, class-stratified subset of the training set (default: all)")
    test_size: int | None = option(None, "a seeded, class-stratified subset of the test set (default: all)")
    preprocess: str = option(
        "standard", "standard (centre crop + per-image standardization) or none (pixels in [0, 1])"
    )
    crop: str | int = option("auto", "centre crop: auto (32 -> 28, else none), none, or a side length")
    stream: bool = option(
        False,
        "image folders too large for memory (ImageNet): decode images as they are read, "
        "with the Inception V3 input pipeline at --image-size",
    )
    image_size: int = option(
        299, "with --stream: side of the network's input; images are cropped and resized to it (Inception V3: 299)"
    )
    binary: bool = option(
        False,
        "two classes: 1 for the upper half of the dataset's classes, 0 for the lower (Dziugaite & Roy's "
        "'digit > 4'); the randomization tests then act on these labels",
    )
    # randomization
    randomize: str = option("none", "none, partial-labels, random-labels, shuffled-pixels, random-pixels or gaussian")
    p: float = option(0.0, "label corruption probability for partial-labels")
    test_labels: str = option("clean", "clean (the paper) or corrupted (test labels corrupted with the same p)")
    test_inputs: str = option(
        "randomized", "pixel/gaussian tests: randomized (test images treated like training images) or clean"
    )
    # model
    model: str = option("mlp1x512", "a registered model (see 'rethink models') or package.module:factory")
    hidden: tuple[int, ...] | None = option(None, "hidden layer widths for --model mlp, e.g. 512,512")
    width: float = option(1.0, "width multiplier for narrower or wider models")
    dropout: float = option(0.0, "dropout probability")
    # optimizer and schedule
    lr: float | None = option(None, "initial learning rate (default: the paper's, 0.1 for Inception, 0.01 otherwise)")
    lr_decay: float = option(0.95, "learning rate factor after every epoch (paper: 0.95; 1 keeps it constant)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(0.0, "L2 weight decay on weights (not biases)")
    batch_size: int = option(128, "mini-batch size")
    epochs: int = option(100, "epoch budget")
    max_steps: int | None = option(None, "step budget (whichever of epochs and steps ends first)")
    augment: tuple[str, ...] = option(
        (),
        "comma list of crop, flip, color (batched on the device); crop takes random "
        "windows of the cropped size (32x32 -> 28x28); images without a crop (8x8 "
        "digits, 28x28 MNIST) are zero-padded by an eighth of their side (at least 1 "
        "pixel) first, so crop shifts them by up to that many pixels",
    )
    # measurement and stopping
    eval_every: int | None = option(None, "evaluate every N steps (default: once per epoch)")
    fit_threshold: float = option(1.0, "training accuracy that counts as fitted")
    stop_on_fit: bool = option(True, "train to the budget even after fitting (time to fit is still recorded)")
    stop_loss: float | None = option(
        None, "end the run when the full training loss falls to this value (status converged)"
    )
    track_examples: bool = option(
        False,
        "record at every evaluation which training examples the model classifies as their training label, "
        "and each one's loss (for 'rethink memorization')",
    )
    # execution
    seed: int = option(0, "one seed for data randomization, subset, initialization, batch order and augmentation")
    device: str = option("auto", "auto, cpu or cuda")
    loader_workers: int = option(4, "with --stream: DataLoader processes decoding images (0: in the training process)")

    def __post_init__(self):
        _validate(self)

    # -- identity ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def run_id(self) -> str:
        """A stable hash over every field that can change the results."""
        d = {
            k: v
            for k, v in self.to_dict().items()
            if k not in NOT_HASHED and not (k in HASHED_IF_SET and v == HASHED_IF_SET[k])
        }
        if d["lr"] is None:
            d["lr"] = self.resolved_lr
        d["augment"] = sorted(d["augment"])
        blob = json.dumps(d, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.model, FALLBACK_LR)

    def replace(self, **changes) -> RunSpec:
        return from_dict({**self.to_dict(), **changes})


FIELD_NAMES = tuple(f.name for f in fields(RunSpec))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _finite(spec, name):
    v = getattr(spec, name)
    if v is not None and not math.isfinite(v):
        raise UserError(f"{_flag(name)} is {v}; give a finite number")


def _choice(spec, name, options):
    if getattr(spec, name) not in options:
        raise UserError(unknown_name(_flag(name), getattr(spec, name), options))


def _validate(s: RunSpec) -> None:
    for name in ("p", "lr", "lr_decay", "momentum", "weight_decay", "width", "dropout", "fit_threshold", "stop_loss"):
        _finite(s, name)
    _choice(s, "randomize", KINDS)
    _choice(s, "preprocess", ("standard", "none"))
    _choice(s, "test_labels", ("clean", "corrupted"))
    _choice(s, "test_inputs", ("randomized", "clean"))
    if not 0.0 <= s.p <= 1.0:
        raise UserError(f"--p {s.p} is outside [0, 1]; give a corruption probability such as --p 0.5")
    if s.p and s.randomize != "partial-labels":
        raise UserError(
            f"--p {s.p} only applies to --randomize partial-labels; drop --p or set --randomize partial-labels"
        )
    if s.lr is not None and s.lr <= 0:
        raise UserError(f"--lr {s.lr} must be positive; the paper uses 0.01 (0.1 for Inception)")
    if not 0 < s.lr_decay <= 1:
        raise UserError(f"--lr-decay {s.lr_decay} must be in (0, 1]; the paper uses 0.95, 1 keeps the rate constant")
    if not 0 <= s.momentum < 1:
        raise UserError(f"--momentum {s.momentum} must be in [0, 1); the paper uses 0.9")
    if s.weight_decay < 0:
        raise UserError(f"--weight-decay {s.weight_decay} must be >= 0")
    if not 0 <= s.dropout < 1:
        raise UserError(f"--dropout {s.dropout} must be in [0, 1)")
    if s.width <= 0:
        raise UserError(f"--width {s.width} must be positive (1 is the paper's width)")
    if not 0 < s.fit_threshold <= 1:
        raise UserError(f"--fit-threshold {s.fit_threshold} must be in (0, 1]; 1.0 means 100% training accuracy")
    if s.stop_loss is not None and s.stop_loss <= 0:
        raise UserError(f"--stop-loss {s.stop_loss} must be positive, e.g. 0.01")
    for name in ("batch_size", "epochs"):
        if getattr(s, name) < 1:
            raise UserError(f"{_flag(name)} {getattr(s, name)} must be a positive whole number")
    for name in ("train_size", "test_size", "max_steps", "eval_every"):
        v = getattr(s, name)
        if v is not None and v < 1:
            raise UserError(f"{_flag(name)} {v} must be a positive whole number (or left out)")
    if s.seed < 0:
        raise UserError(f"--seed {s.seed} must be >= 0")
    for a in s.augment:
        if a not in AUGMENTATIONS:
            raise UserError(f"--augment {a!r} is unknown; give a comma list of {', '.join(AUGMENTATIONS)}")
    if s.hidden is not None and (not s.hidden or any(h < 1 for h in s.hidden)):
        raise UserError(f"--hidden {s.hidden} must list positive layer widths, e.g. --hidden 512,512")
    if s.crop not in ("auto", "none") and (not isinstance(s.crop, int) or s.crop < 1):
        raise UserError(f"--crop {s.crop!r} must be auto, none or a positive side length such as 28")
    if s.device not in ("auto", "cpu", "cuda") and not s.device.startswith("cuda:"):
        raise UserError(f"--device {s.device!r} is not valid; choose auto, cpu or cuda")
    _validate_stream(s)


STREAM_RANDOMIZE = ("none", "partial-labels", "random-labels")
STREAM_AUGMENT = ("crop", "flip")


def _validate_stream(s: RunSpec) -> None:
    if s.image_size < 1:
        raise UserError(f"--image-size {s.image_size} must be a positive whole number, e.g. 299")
    if s.loader_workers < 0:
        raise UserError(f"--loader-workers {s.loader_workers} must be 0 or more")
    if not s.stream:
        if s.image_size != HASHED_IF_SET["image_size"]:
            raise UserError(
                f"--image-size {s.image_size} applies only to streamed image folders; add --stream or drop it"
            )
        return
    if s.dataset.partition(":")[0].strip().lower().replace("_", "-") not in ("imagefolder", "image-folder"):
        raise UserError(f"--stream reads image folders, not {s.dataset!r}; use --dataset imagefolder:PATH")
    if s.randomize not in STREAM_RANDOMIZE:
        raise UserError(
            f"--randomize {s.randomize} needs the images in memory; with --stream use "
            f"{', '.join(STREAM_RANDOMIZE)}, or drop --stream"
        )
    for a in s.augment:
        if a not in STREAM_AUGMENT:
            raise UserError(
                f"--augment {a} is not available with --stream; use {','.join(STREAM_AUGMENT)} or drop --stream"
            )
    if s.crop != "auto":
        raise UserError(f"--crop {s.crop} applies to in-memory data; with --stream images are cropped to --image-size")
    if s.track_examples:
        raise UserError(
            "--track-examples needs the training set in memory (it records every example at every evaluation); "
            "drop --stream, or drop --track-examples"
        )


# -- construction from plain values (CLI flags, TOML, JSON) ------------------------------------


def _coerce(name: str, value):
    """Turn a flag/TOML value into the field's type, with a clear error for the wrong kind."""
    if value is None:
        return None
    try:
        if name == "augment":
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()] if value not in ("", "none") else []
            return tuple(str(v).strip() for v in value)
        if name == "hidden":
            if isinstance(value, str):
                value = value.split(",")
            if isinstance(value, int):
                value = [value]
            return tuple(int(v) for v in value)
        if name == "crop":
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                return int(value)
            return str(value)
        kind = {f.name: f.type for f in fields(RunSpec)}[name]
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if "int" in kind and "float" not in kind:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if "float" in kind:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{_flag(name)} got {value!r}, which is not a valid value for it") from None


def from_dict(values: dict) -> RunSpec:
    """Build a spec from plain values; unknown keys are errors naming the nearest valid key."""
    unknown = [k for k in values if k not in FIELD_NAMES]
    if unknown:
        raise UserError(unknown_name("spec key", unknown[0], FIELD_NAMES))
    return RunSpec(**{k: _coerce(k, v) for k, v in values.items()})


def load_toml(path, what: str = "spec file", given_to: str = "--spec") -> dict:
    """Read a TOML file (a spec file: the flags' names with underscores) into plain values.

    ``what`` and ``given_to`` name the file and where the user gave its path, for the messages.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist; check the path given to {given_to}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{what} {path} is not valid TOML ({e}); fix the file") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path} ({e.strerror}); check its permissions") from None
