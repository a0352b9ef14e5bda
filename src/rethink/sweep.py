"""Sweeps: grids of run specs, trained by an executor (:mod:`rethink.executors`: local, process,
ray).

Workers only train (``api.execute``) and hand their results back; the driver alone reads and
writes the store. A re-run sweep skips finished runs and resumes interrupted ones from their
checkpoints.

Grid files (TOML)::

    seeds = 3                    # or a list: [0, 1, 2]; default [0]

    [base]                       # fields shared by every run (the names of `rethink run`'s flags)
    dataset = "digits"
    lr_decay = 1.0

    [[grid]]                     # a product over the listed values ...
    model = ["mlp1x512", "mlp3x512"]
    randomize = ["partial-labels"]
    p = [0.0, 0.5, 1.0]

    [[grid]]                     # ... and any number of further products, concatenated
    randomize = ["random-labels", "gaussian"]
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable

from . import api, distributed
from . import tensorboard as tb
from .batching import plan
from .errors import UserError
from .executors import EXECUTORS, Job, job_key
from .spec import FIELD_NAMES, LIST_FIELDS, RunSpec, from_dict, load_toml
from .store import Store


def expand(base: dict, grids: list[dict] | None = None, seeds=(0,)) -> list[RunSpec]:
    """The specs of a grid: for every ``grid`` table the product of its value lists over ``base``,
    times every seed; duplicates (same run id) are dropped, order kept."""
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if "seed" in base:  # it would be replaced by every seed of ``seeds`` without a word
        raise UserError(
            f"the grid's base sets seed = {base['seed']!r}; give the seeds at the top level instead, "
            "e.g. seeds = [1] (or seeds = 3 for 0, 1, 2)"
        )
    if not seeds:
        raise UserError("the grid has no seeds; give seeds = N (a count) or a list such as seeds = [0, 1]")
    specs, seen = [], set()
    for grid in grids or [{}]:
        for k, v in grid.items():
            if k not in FIELD_NAMES or k == "seed":
                raise UserError(
                    f"unknown grid key {k!r}; use spec fields ({', '.join(FIELD_NAMES)}) and a top-level seeds"
                )
            if isinstance(v, list) and not v:
                raise UserError(f"grid key {k!r} has an empty list; give at least one value")
        keys = list(grid)
        values = [_choices(k, v) for k, v in grid.items()]
        for combo in itertools.product(*values):
            for seed in seeds:
                spec = from_dict({**base, **dict(zip(keys, combo)), "seed": seed})
                if spec.run_id not in seen:
                    seen.add(spec.run_id)
                    specs.append(spec)
    return specs


def _choices(key: str, value) -> list:
    """A grid entry's values: a list is a list of choices, except for the list-valued fields
    (augment, hidden), whose choices are a list of lists; anything else is one choice."""
    if key in LIST_FIELDS:
        return value if value and all(isinstance(v, list) for v in value) else [value]
    return value if isinstance(value, list) else [value]


def load_grid(path: str) -> list[RunSpec]:
    """Read a grid file (see the module docstring) into its specs."""
    doc = load_toml(path, "grid file", "rethink sweep (its GRID.toml argument)")
    unknown = set(doc) - {"base", "grid", "seeds"}
    if unknown:
        raise UserError(
            f"grid file {path}: unknown top-level key {sorted(unknown)[0]!r}; use seeds, [base] and [[grid]] tables"
        )
    grids = doc.get("grid", [])
    if isinstance(grids, dict):
        grids = [grids]
    return expand(doc.get("base", {}), grids, doc.get("seeds", [0]))


def describe(spec: RunSpec) -> str:
    """A short label of a run for progress lines."""
    test = spec.randomize + (f" p={spec.p:g}" if spec.randomize == "partial-labels" else "")
    return f"{spec.model} {test} seed {spec.seed} ({spec.run_id[:8]})"


# -- the driver -----------------------------------------------------------------------------------


def run_sweep(
    specs: list[RunSpec],
    store: str | Store = api.DEFAULT_STORE,
    *,
    executor: str = "local",
    workers: int = 1,
    force: bool = False,
    checkpoint_dir: str | None = None,
    checkpoint_interval: float = 60.0,
    progress: bool = True,
    executor_options: dict | None = None,
    batch: bool = True,
    compile: bool | Callable[[RunSpec], bool] = False,
    tensorboard: str | None = None,
) -> list[api.RunResult]:
    """Run every spec not already finished in ``store``; returns results in the order of ``specs``.

    The driver alone writes the store: each result is recorded (in its own transaction) as soon as
    it comes back, so an interrupted sweep keeps every finished run. KeyboardInterrupt is raised
    again after recording what finished. With ``batch`` (and the local or process executor), runs
    of small models train several at once where :mod:`rethink.batching`'s rule says so. With
    ``compile`` (or the specs for which ``compile(spec)`` is true), runs that train alone train
    through ``torch.compile`` (a batch never does; each run's summary says whether it was compiled).
    ``tensorboard``: a folder for each trained run's live scalars, written where the run trains (a
    worker process or Ray task, with ``tensorboard`` a path it can reach); stored runs write none.
    """
    make_executor = EXECUTORS[executor]  # an unknown name: a UserError naming the executors
    if tensorboard is not None:
        tb.require()  # before any training
    if workers < 1:
        raise UserError(f"--workers {workers} must be at least 1")
    writes = distributed.rank() == 0  # under torchrun every rank trains each run, rank 0 alone writes
    if distributed.world_size() > 1 and executor != "local":
        raise UserError(f"under torchrun every run is data-parallel over the ranks; drop --executor {executor}")
    db = store if isinstance(store, Store) else Store(store)

    def job(spec):
        compiled = compile if isinstance(compile, bool) else compile(spec)
        checkpoint = api.checkpoint_file(db, spec, checkpoint_dir)
        return Job(spec, checkpoint, checkpoint_interval, not force, compiled, db.store_id, tensorboard)

    results, todo = _split(db, specs, force, job)
    pool = make_executor(workers, **(executor_options or {})) if todo else None  # before any write
    if writes and todo:
        try:  # refuses, before training anything, runs that another live process trains
            api.start(db, [job.spec for job in todo], status="queued")
        except UserError:
            pool.close(False)
            raise
    if batch and executor != "ray":  # Ray packs runs onto devices by its own resources (--gpus-per-run)
        todo = plan(todo, parts=workers if executor == "process" else 1)
    bar, interrupted = _Bar(todo, len(specs), len(results), progress), False
    try:
        for out in pool.run(todo, on_start=bar.show, on_progress=bar.advance) if pool else ():
            finished = out if isinstance(out, list) else [out]  # a batched group's results come together
            _record(db if writes else None, finished, results)
            bar.ended(finished)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close(interrupted)
    return [results[s.run_id] for s in specs]


def _record(db: Store | None, finished: list[api.RunResult], results: dict) -> None:
    """Record a job's results (in ``db`` unless None, and in ``results``); KeyboardInterrupt, carrying
    the interrupted ones, when a signal stopped them (they tell the CLI where they stopped)."""
    for result in finished:
        if db is not None:
            api.record(db, result)
        results[result.run_id] = result
    if any(result.status == "interrupted" for result in finished):
        raise KeyboardInterrupt(*[result for result in finished if result.status == "interrupted"])


def _split(db: Store, specs: list[RunSpec], force: bool, job) -> tuple[dict[str, api.RunResult], list[Job]]:
    """The specs' finished runs in ``db`` (none with ``force``), by run id, and a ``job(spec)`` for each other."""
    results, todo = {}, []
    for spec in specs:
        stored = None if force else api.lookup(db, spec)
        if stored is not None:
            results[spec.run_id] = stored
        else:
            todo.append(job(spec))
    return results, todo


class _Bar:
    """A sweep's progress bar: runs done, and the step each running job is at."""

    def __init__(self, todo: list, total: int, done: int, enabled: bool):
        from tqdm import tqdm

        self.tqdm = tqdm(total=total, initial=done, file=sys.stderr, unit="run", desc="sweep", disable=not enabled)
        self.labels = {
            job_key(j): describe(j.spec) if isinstance(j, Job) else f"{len(j.jobs)} runs batched" for j in todo
        }
        self.running: dict[str, str] = {}  # job key -> what the bar says of it
        self.counted: dict[str, int] = {}  # job key -> its runs that the bar counts already (a group's that ended)

    def show(self, job) -> None:
        self.running[job_key(job)] = f"running {self.labels[job_key(job)]}"
        self.tqdm.set_postfix_str("; ".join(self.running.values()))

    def advance(self, key: str, step: int, total: int, ended: int) -> None:
        """A job's progress: the bar counts a group's runs as they end, the postfix shows its step."""
        self.tqdm.update(ended - self.counted.get(key, 0))
        self.counted[key] = ended
        self.running[key] = f"{self.labels[key]}: step {step}/{total}"
        self.tqdm.set_postfix_str("; ".join(self.running.values()))

    def ended(self, finished: list) -> None:
        key = finished[0].run_id  # the job's key: its first run's id
        self.running.pop(key, None)
        self.tqdm.update(len(finished) - self.counted.pop(key, 0))
        last = finished[-1]
        self.tqdm.set_postfix_str("; ".join(self.running.values()) or f"{describe(last.spec)}: {last.status}")

    def close(self) -> None:
        self.tqdm.close()
