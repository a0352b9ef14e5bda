"""The catalogue of bad inputs: each one gets one clear line naming the problem and the fix,
exit status 2, no traceback, and leaves the store as it was.

docs/bad-inputs.md is this catalogue as a table; `python tests/test_bad_inputs.py` prints it, and
a test checks that the two agree.
"""

from __future__ import annotations

import gzip
import pickle
import re
import sqlite3
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rethink.cli import main
from writers import (
    cifar_batch,
    idx_images_bytes,
    idx_labels_bytes,
    png_bytes,
    write_cifar,
    write_image_folder,
    write_mnist,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"
RUN = ["run", "--epochs", "1", "--quiet"]


@dataclass(frozen=True)
class Case:
    problem: str  # what is wrong, as the docs table says it
    argv: Callable[[Path], list[str]]  # the command line, given a scratch folder
    says: str  # a fragment of the one-line message


def run(*flags: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [*RUN, "--dataset", "digits", *flags]


def run_on(make_data: Callable[[Path], str], *flags: str) -> Callable[[Path], list[str]]:
    """``rethink run`` on a dataset that ``make_data(tmp)`` writes; it returns the --dataset value."""

    def argv(tmp: Path) -> list[str]:
        dataset = make_data(tmp)
        return [*RUN, "--dataset", dataset, "--data-dir", str(tmp / "data"), *flags]

    return argv


def rng():
    return np.random.default_rng(0)


# -- dataset files written broken -------------------------------------------------------------
def mnist_with(file_index: int, content: bytes, gz: bool = True) -> Callable[[Path], str]:
    """The four MNIST files, one of them (train images 0, train labels 1, ...) replaced."""

    def make(tmp: Path) -> str:
        names = write_mnist(tmp / "data", rng(), gz=gz)
        name = list(names)[file_index]
        (tmp / "data" / (f"{name}.gz" if gz else name)).write_bytes(content)
        return "mnist"

    return make


IMAGES = idx_images_bytes(np.zeros((12, 28, 28), np.uint8))


def cifar_with(**change) -> Callable[[Path], str]:
    """CIFAR-10 pickles whose first training batch has ``change`` applied (None deletes a key)."""

    def make(tmp: Path) -> str:
        batch = cifar_batch(rng())
        for key, value in change.items():
            if value is None:
                del batch[key.encode()]
            else:
                batch[key.encode()] = value
        write_cifar(tmp / "data", rng(), batches=None)
        with open(tmp / "data" / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
            pickle.dump(batch, f, protocol=2)
        return "cifar10"

    return make


def image_folder(damage: Callable[[Path], None]) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        write_image_folder(tmp / "data", rng())
        damage(tmp / "data")
        return "imagefolder"

    return make


def odd_size_image(root: Path) -> None:
    (root / "train" / "cat" / "big.png").write_bytes(png_bytes(np.zeros((9, 9), np.uint8)))


def unreadable_image(root: Path) -> None:
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")


def empty_image_folder(tmp: Path) -> str:
    for split in ("train", "test"):
        (tmp / "data" / split / "cat").mkdir(parents=True)
    return "imagefolder"


def npz_labels_out_of_range(tmp: Path) -> str:
    (tmp / "data").mkdir()
    x = np.zeros((6, 4, 4), np.float32)
    np.savez(
        tmp / "data" / "d.npz",
        x_train=x,
        y_train=np.array([0, 1, 2, 0, 1, 12]),
        x_test=x,
        y_test=np.arange(6) % 2,
        class_names=np.array(["a", "b", "c"]),
    )
    return f"npz:{tmp / 'data' / 'd.npz'}"


def npz_one_class(tmp: Path) -> str:
    (tmp / "data").mkdir()
    x = np.random.default_rng(0).random((6, 4, 4), np.float32)
    np.savez(tmp / "data" / "one.npz", x_train=x, y_train=np.zeros(6, int), x_test=x, y_test=np.zeros(6, int))
    return f"npz:{tmp / 'data' / 'one.npz'}"


# -- spec files, stores, output paths -------------------------------------------------------------
def with_file(name: str, content: bytes | str, *argv_template: str) -> Callable[[Path], list[str]]:
    """Write ``content`` to tmp/name, then the command with {file} replaced by its path."""

    def argv(tmp: Path) -> list[str]:
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return [a.replace("{file}", str(path)) for a in argv_template]

    return argv


def old_schema_store(tmp: Path) -> list[str]:
    path = tmp / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE runs (run_id TEXT)")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    return [*RUN, "--dataset", "digits", "--store", str(path)]


def under_a_file(*argv_template: str) -> Callable[[Path], list[str]]:
    """A path whose parent is a regular file, which no one can create (even root)."""

    def argv(tmp: Path) -> list[str]:
        (tmp / "a-file").write_text("x")
        return [a.replace("{blocked}", str(tmp / "a-file" / "sub")) for a in argv_template]

    return argv


CATALOGUE = [
    # dataset files
    Case("gzip file cut short", run_on(mnist_with(0, gzip.compress(IMAGES)[:40])), "truncated"),
    Case(
        "gzip file with corrupt contents",
        run_on(mnist_with(0, b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"garbage" * 9)),
        "train-images",
    ),
    Case(
        "IDX file with a wrong magic number", run_on(mnist_with(0, b"\x00\x00\x09\x03" + IMAGES[4:], gz=False)), "magic"
    ),
    Case(
        "IDX file whose dimensions disagree with its data",
        run_on(mnist_with(0, struct.pack(">IIII", 0x803, 12, 27, 28) + IMAGES[16:], gz=False)),
        "train-images",
    ),
    Case("IDX file with truncated data", run_on(mnist_with(0, IMAGES[:-100], gz=False)), "train-images"),
    Case(
        "IDX label file with a different count than its images",
        run_on(mnist_with(1, idx_labels_bytes(np.arange(5) % 10), gz=False)),
        "labels",
    ),
    Case("IDX labels out of range", run_on(mnist_with(1, idx_labels_bytes(np.arange(12) + 3), gz=False)), "label"),
    Case(
        "IDX dataset with no training images",
        run_on(mnist_with(0, idx_images_bytes(np.zeros((0, 28, 28), np.uint8)), gz=False)),
        "train-images",
    ),
    Case("CIFAR-10 pickle missing a key", run_on(cifar_with(data=None)), "data"),
    Case(
        "CIFAR-10 pickle with the wrong image shape",
        run_on(cifar_with(data=np.zeros((4, 3000), np.uint8))),
        "data_batch_1",
    ),
    Case("CIFAR-10 pickle with the wrong types", run_on(cifar_with(labels="cat dog")), "data_batch_1"),
    Case(
        "CIFAR-10 pickle that is not a pickle",
        run_on(
            lambda tmp: (
                write_cifar(tmp / "data", rng()),
                (tmp / "data/cifar-10-batches-py/data_batch_2").write_bytes(b"PK\x03\x04zip?"),
                "cifar10",
            )[-1]
        ),
        "data_batch_2",
    ),
    Case(
        "CIFAR-10 folder missing a batch",
        run_on(
            lambda tmp: (
                write_cifar(tmp / "data", rng()),
                (tmp / "data/cifar-10-batches-py/data_batch_3").unlink(),
                "cifar10",
            )[-1]
        ),
        "data_batch_3",
    ),
    Case("image folder with mixed image sizes", run_on(image_folder(odd_size_image)), "big.png"),
    Case("image folder with an unreadable image", run_on(image_folder(unreadable_image)), "broken.png"),
    Case("empty image folder", run_on(empty_image_folder), "no images"),
    Case("npz labels out of range", run_on(npz_labels_out_of_range), "label"),
    Case(
        "dataset files not found",
        lambda tmp: [*RUN, "--dataset", "mnist", "--data-dir", str(tmp / "nowhere")],
        "nowhere",
    ),
    # spec values
    Case("train size larger than the dataset", run("--train-size", "5000"), "larger than"),
    Case("test size larger than the test set", run("--test-size", "5000"), "larger than"),
    Case("p outside [0, 1]", run("--randomize", "partial-labels", "--p", "1.5"), "outside [0, 1]"),
    Case("p given without partial-labels", run("--p", "0.3"), "only applies to --randomize partial-labels"),
    Case("unknown dataset name", run("--dataset", "fashion-mnst"), "did you mean 'fashion-mnist'"),
    Case("unknown model name", run("--model", "mlp1x521"), "mlp1x512"),
    Case("unknown randomization name", run("--randomize", "random-label"), "random-labels"),
    Case("model module that cannot be imported", run("--model", "no_such_module_xyz:make"), "could not import module"),
    Case("model factory missing from its module", run("--model", "json:no_such_factory"), "no_such_factory"),
    Case("non-positive learning rate", run("--lr", "-0.1"), "must be positive"),
    Case("zero batch size", run("--batch-size", "0"), "positive whole number"),
    Case("zero epochs", run("--epochs", "0"), "positive"),
    Case("epochs that are not a number", run("--epochs", "two"), "not a valid value"),
    Case("unknown flag", run("--learning-rate", "0.1"), "--learning-rate"),
    Case("NaN in a spec", run("--lr", "nan"), "finite"),
    Case(
        "infinity in a spec file",
        with_file("inf.toml", "dataset = 'digits'\nlr = inf\n", *RUN, "--spec", "{file}"),
        "finite",
    ),
    Case("unknown augmentation", run("--augment", "rotate"), "crop, flip, color"),
    Case("crop larger than the images", run("--crop", "99"), "larger than"),
    Case(
        "malformed TOML spec",
        with_file("bad.toml", "dataset = 'digits\nepochs = 1\n", *RUN, "--spec", "{file}"),
        "bad.toml",
    ),
    Case(
        "unknown spec key",
        with_file("key.toml", "dataset = 'digits'\nlearning_rate = 0.1\n", *RUN, "--spec", "{file}"),
        "learning_rate",
    ),
    Case("spec file that does not exist", lambda tmp: [*RUN, "--spec", str(tmp / "none.toml")], "does not exist"),
    Case(
        "sweep grid with an unknown field",
        with_file("g.toml", "[base]\ndataset = 'digits'\n[[grid]]\nwidht = [1, 2]\n", "sweep", "{file}"),
        "widht",
    ),
    Case(
        "sweep grid with a seed in its base",
        with_file("g.toml", "[base]\ndataset = 'digits'\nseed = 1\n", "sweep", "{file}"),
        "seeds = [1]",
    ),
    Case("unknown recipe", lambda tmp: ["reproduce", "figure9", "--scale", "smoke"], "figure1b"),
    # stores and output paths
    Case(
        "store file that is not SQLite",
        with_file("junk.sqlite", b"this is not a database" * 100, *RUN, "--dataset", "digits", "--store", "{file}"),
        "not a rethink SQLite store",
    ),
    Case("store with an incompatible schema version", old_schema_store, "schema version 99"),
    Case(
        "store path that cannot be created",
        under_a_file(*RUN, "--dataset", "digits", "--store", "{blocked}/s.sqlite"),
        "--store",
    ),
    Case(
        "checkpoint folder that cannot be created",
        under_a_file(*RUN, "--dataset", "digits", "--checkpoint-dir", "{blocked}"),
        "--checkpoint-dir",
    ),
    Case("report path that cannot be written", under_a_file("report", "--out", "{blocked}/report.html"), "--out"),
    Case("export path that cannot be written", under_a_file("export", "--out", "{blocked}/m.csv"), "--out"),
    # wrong diagnoses, tracebacks and inputs once accepted silently
    Case(
        "kernel --max-memory below what the solve needs",
        lambda tmp: ["kernel", "--dataset", "digits", "--max-memory", "0.01", "--quiet"],
        "use --max-memory",
    ),
    Case(
        "sweep grid file that does not exist",
        lambda tmp: ["sweep", str(tmp / "none.toml")],
        "path given to rethink sweep",
    ),
    Case("model factory that raises", run("--model", "operator:truediv"), "'operator:truediv' raised TypeError"),
    Case("train size that leaves classes out", run("--train-size", "5"), "use --train-size 10 or more"),
    Case("dataset whose training images are all one class", run_on(npz_one_class), "in one class"),
    Case("negative checkpoint interval", run("--checkpoint-interval", "-5"), "--checkpoint-interval"),
    Case(
        "read command on a store that does not exist",
        lambda tmp: ["runs", "--store", str(tmp / "typo.sqlite")],
        "does not exist",
    ),
    Case(
        "report on a store in a folder that does not exist",
        lambda tmp: ["report", "--store", str(tmp / "missing" / "x.sqlite")],
        "does not exist",
    ),
    Case(
        "export of a run id not in the store",
        lambda tmp: ["export", "--run-id", "0123456789abcdef", "--out", "-"],
        "not in the store",
    ),
    Case("--store that is a folder", lambda tmp: [*RUN, "--dataset", "digits", "--store", str(tmp)], "is a folder"),
    Case("no CPU threads", run("--threads", "0"), "--threads 0 must be at least 1"),
    # measures and bounds of stored runs
    Case(
        "measure of a run id not in the store",
        lambda tmp: ["measure", "--run-id", "0123456789abcdef"],
        "not in the store",
    ),
    Case(
        "measure that does not exist", lambda tmp: ["measure", "--all", "--measures", "margn"], "did you mean 'margin'"
    ),
    Case("measure without a run named", lambda tmp: ["measure"], "give --run-id ID (repeatable) or --all"),
    Case(
        "measure on a store that does not exist",
        lambda tmp: ["measure", "--all", "--store", str(tmp / "typo.sqlite")],
        "does not exist",
    ),
    Case(
        "bound of a run id not in the store", lambda tmp: ["bound", "--run-id", "0123456789abcdef"], "not in the store"
    ),
    Case("bound with no weight samples", lambda tmp: ["bound", "--run-id", "x", "--samples", "0"], "--samples 0"),
    # memorization
    Case(
        "--track-examples on a streamed image folder",
        lambda tmp: [*RUN, "--dataset", f"imagefolder:{tmp}", "--stream", "--track-examples"],
        "--track-examples needs the training set in memory",
    ),
    Case(
        "memorization of a run id not in the store",
        lambda tmp: ["memorization", "--run-id", "0123456789abcdef", "--out", str(tmp / "m")],
        "not in the store",
    ),
]


def dump(path: Path) -> list[str] | None:
    """A store's whole content as SQL, or None when there is none."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.iterdump())
    finally:
        db.close()


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory) -> Path:
    """A store holding one finished run: the catalogue's commands must leave it as it is."""
    path = tmp_path_factory.mktemp("store") / "runs.sqlite"
    assert main([*RUN, "--dataset", "digits", "--train-size", "200", "--store", str(path)]) == 0
    return path


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.problem for c in CATALOGUE])
def test_bad_input(case, tmp_path, filled_store, capsys, monkeypatch):
    monkeypatch.setenv("RETHINK_DATA", str(tmp_path / "no-data"))
    argv = case.argv(tmp_path)
    if "--store" not in argv and argv[0] in (
        "run",
        "sweep",
        "reproduce",
        "report",
        "export",
        "measure",
        "bound",
        "memorization",
    ):
        argv = [*argv, "--store", str(filled_store)]
    before = dump(filled_store)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert case.says in err and "Traceback" not in err, err
    assert dump(filled_store) == before, "the store changed"


def test_catalogue_is_large_and_distinct():
    assert len(CATALOGUE) >= 30
    assert len({c.problem for c in CATALOGUE}) == len(CATALOGUE)


def catalogue_markdown() -> str:
    rows = "\n".join(f"| {i} | {c.problem} | `{c.says}` |" for i, c in enumerate(CATALOGUE, 1))
    return (
        "# Bad inputs\n\nEach of these is answered by one line on stderr that names the problem and the fix, "
        "exit status 2, no traceback, and an unchanged store. Every row is a case of "
        "`tests/test_bad_inputs.py` (`python tests/test_bad_inputs.py` prints this table).\n\n"
        "| # | bad input | the message contains |\n|---:|:---|:---|\n" + rows + "\n"
    )


def test_docs_table_matches_the_catalogue():
    assert DOC.read_text() == catalogue_markdown(), "regenerate: python tests/test_bad_inputs.py > docs/bad-inputs.md"


def test_readme_gives_no_count_of_the_catalogue_that_can_go_stale():
    readme = (DOC.parent.parent / "README.md").read_text()
    link = readme.index("(docs/bad-inputs.md)")
    counts = [int(n) for n in re.findall(r"(\d+) (?:cases|bad inputs)", readme[link - 300 : link + 300])]
    assert all(n == len(CATALOGUE) for n in counts), f"the README says {counts} beside a catalogue of {len(CATALOGUE)}"


if __name__ == "__main__":
    sys.stdout.write(catalogue_markdown())
