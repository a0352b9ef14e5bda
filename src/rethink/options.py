"""The flags of the commands whose work takes plain arguments (``run``'s and ``sweep``'s store and
checkpoints, ``sweep``, ``reproduce``, the store's readers), one dataclass per group (see flags.py).
A command takes several groups; the spec's, the kernel's and the theory commands' flags are fields
of RunSpec, KernelConfig and rethink.theory.commands."""

from __future__ import annotations

from dataclasses import dataclass

from .api import DEFAULT_STORE
from .flags import option, seconds
from .recipes import RECIPES, SCALES

COMPILE_HELP = (
    "train through torch.compile: same numbers to float rounding; compiling takes up to a minute per "
    "run; it pays off for Inception, not for the MLPs and AlexNet (runs trained batched are not "
    "compiled)"
)

TENSORBOARD_HELP = (
    "write live scalars (step loss, evaluations, learning rate) and each run's spec to a subfolder "
    "per run of DIR for 'tensorboard --logdir DIR' (needs rethink[tensorboard])"
)

RAY_ADDRESS_HELP = (
    "--executor ray: the cluster, auto (the one this machine belongs to) or ray://HOST:10001; default: start a local "
    "Ray instance with this machine's cores"
)


@dataclass(frozen=True)
class StoreOptions:
    store: str = option(DEFAULT_STORE, "SQLite results file")


@dataclass(frozen=True)
class ThreadOptions:
    threads: int | None = option(
        None,
        "CPU threads to train with (default: the cores); --executor process shares "
        "them among its workers. Jobs running at once on one machine should share "
        "the cores: give each its part",
        metavar="N",
    )


@dataclass(frozen=True)
class TrainOptions(StoreOptions):
    """How ``run`` and ``sweep`` train: where results and checkpoints go, what they print."""

    checkpoint_dir: str | None = option(
        None, "checkpoint folder (default: NAME.checkpoints/ beside the store NAME.sqlite)"
    )
    checkpoint_interval: float = option(
        60.0,
        "checkpoint at the first epoch end after this many seconds (0: every "
        "epoch); Ctrl-C or SIGTERM checkpoints at once, after the current step",
        type=seconds,
        metavar="SECONDS",
    )
    force: bool = option(False, "run again even if the store has it finished")
    json: bool = option(False, "print the results as JSON on stdout")
    quiet: bool = option(False, "no progress bar or table")
    compile: bool = option(False, COMPILE_HELP)
    tensorboard: str | None = option(None, TENSORBOARD_HELP, metavar="DIR")


@dataclass(frozen=True)
class SweepOptions:
    grid: str = option(help="grid file (see examples/grid.toml)", name="grid", metavar="GRID.toml")
    executor: str = option("local", "local (one process), process (worker processes) or ray (tasks on a Ray cluster)")
    workers: int = option(2, "worker processes for --executor process")
    address: str | None = option(None, RAY_ADDRESS_HELP)
    cpus_per_run: float = option(1.0, "--executor ray: CPUs each run asks for")
    gpus_per_run: float = option(
        0.0,
        "--executor ray: GPUs each run asks for; a fraction packs small models onto "
        "one GPU (0.25: four runs per GPU; 0: train on CPUs)",
    )
    max_retries: int = option(2, "--executor ray: retries of a failed or lost run before it is recorded as failed")
    batch: bool = option(
        True,
        "train every run on its own (default: runs of small models train several at once, as "
        "a fixed rule over the specs decides; see rethink.batching)",
    )


@dataclass(frozen=True)
class ReproduceOptions:
    name: str = option(help=", ".join(RECIPES), name="name")
    scale: str = option(
        "cpu", "smoke (seconds, for tests), cpu (about an hour on 2 cores), paper (CIFAR-10, full size)", choices=SCALES
    )
    dataset: str | None = option(None, "replace the scale's dataset (e.g. imagefolder, cifar10)")
    data_dir: str | None = option(None, "where the dataset's files are")
    seeds: int = option(1, "seeds per setting (means with spread when > 1)")
    out: str | None = option(None, "output folder (default results/NAME)")
    executor: str = option("local", "local or process")
    workers: int = option(2, "worker processes for --executor process")
    quiet: bool = option(False, "no progress bars")
    compile: bool | None = option(
        None, COMPILE_HELP + "; default: the scale's choice (cpu: Inception compiled, the rest not), --no-compile: none"
    )
    tensorboard: str | None = option(None, TENSORBOARD_HELP, metavar="DIR")


@dataclass(frozen=True)
class ReportOptions(StoreOptions):
    out: str = option("report.html", "the HTML file")


@dataclass(frozen=True)
class DemoOptions:
    out: str = option("demo-out", "folder for the table, the learning-curve PNG and (without --store) demo.sqlite")


@dataclass(frozen=True)
class ModelsOptions:
    input_shape: str = option("3,28,28", "C,H,W")
    num_classes: int = option(10, "classes of the output layer")


@dataclass(frozen=True)
class ExportOptions(StoreOptions):
    out: str = option("-", "the file (-: stdout, CSV only)")
    what: str = option("evals", "evaluations, training steps or one row per run", choices=("evals", "steps", "runs"))
    format: str = option(
        "csv",
        "csv, or parquet (the same columns, typed; needs pandas and pyarrow: rethink[analysis])",
        choices=("csv", "parquet"),
    )
    run_id: list[str] | None = option(None, "only this run (repeatable)", action="append")


@dataclass(frozen=True)
class MeasureOptions(StoreOptions):
    """``rethink measure``: which stored runs, which measures, on how much of their training sets."""

    run_id: list[str] | None = option(None, "a run to measure (repeatable)", action="append")
    all: bool = option(False, "measure every finished run in the store")
    measures: str | None = option(None, "comma-separated measure names (default: all; 'rethink measure --list')")
    list_measures: bool = option(False, "list the measures and exit", name="--list")
    subset: int | None = option(None, "measure on the first N training examples of the run (default: all)", metavar="N")
    percentile: float = option(10.0, "the margin gamma: this percentile of the training margins")
    checkpoint_dir: str | None = option(None, "where the runs' checkpoints are (default: beside the store)")
    json: bool = option(False, "print the measures as JSON on stdout")


@dataclass(frozen=True, kw_only=True)
class BoundOptions(StoreOptions):
    """``rethink bound``: Dziugaite & Roy's PAC-Bayes certificate of one stored run."""

    run_id: str = option(help="the run to certify ('rethink runs' lists them)")
    steps: int = option(20000, "optimization steps of the posterior (more: a tighter bound, and slower)")
    samples: int = option(200, "weight samples for the Monte Carlo training and test errors")
    checkpoint_dir: str | None = option(None, "where the run's checkpoint is (default: beside the store)")
    json: bool = option(False, "print the certificate as JSON on stdout")


@dataclass(frozen=True, kw_only=True)
class MemorizationOptions(StoreOptions):
    """``rethink memorization``: what a run trained with --track-examples learned when."""

    run_id: str = option(help="a run trained with --track-examples ('rethink runs' lists them)")
    out: str = option("results/memorization", "folder for the table (Markdown, LaTeX) and the figure")
    json: bool = option(False, "print the summary as JSON on stdout")


@dataclass(frozen=True)
class CorrelateOptions(StoreOptions):
    """``rethink correlate``: which measure tracks generalization across the store's runs."""

    target: str = option("gap", "gap (train minus test accuracy) or test_error", choices=("gap", "test_error"))
    out: str = option("results/correlate", "folder for the table (Markdown, LaTeX) and the figure")
    json: bool = option(False, "print the correlations as JSON on stdout")
