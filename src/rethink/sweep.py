"""Sweeps: grids of run specs, executed locally or in worker processes.

Workers only train (``api.execute``) and hand their results back; the driver alone reads and
writes the store. A re-run sweep skips finished runs and resumes interrupted ones from their
checkpoints. Executors: local, process, and ray (every run a task on a Ray cluster, see
:mod:`rethink.ray_executor`), all behind :func:`make_executor`.

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
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import api, distributed
from .batching import GroupJob, execute_group, plan
from .errors import UserError
from .spec import FIELD_NAMES, LIST_FIELDS, RunSpec, from_dict, load_toml
from .store import Store
from .train.engine import stop_requested

EXECUTORS = ("local", "process", "ray")


def expand(base: dict, grids: list[dict] | None = None, seeds=(0,)) -> list[RunSpec]:
    """The specs of a grid: for every ``grid`` table the product of its value lists over ``base``,
    times every seed; duplicates (same run id) are dropped, order kept."""
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if "seed" in base:  # it would be replaced by every seed of ``seeds`` without a word
        raise UserError(f"the grid's base sets seed = {base['seed']!r}; give the seeds at the top level instead, "
                        "e.g. seeds = [1] (or seeds = 3 for 0, 1, 2)")
    if not seeds:
        raise UserError("the grid has no seeds; give seeds = N (a count) or a list such as seeds = [0, 1]")
    specs, seen = [], set()
    for grid in grids or [{}]:
        for k, v in grid.items():
            if k not in FIELD_NAMES or k == "seed":
                raise UserError(f"unknown grid key {k!r}; use spec fields ({', '.join(FIELD_NAMES)}) and a top-level seeds")
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
        raise UserError(f"grid file {path}: unknown top-level key {sorted(unknown)[0]!r}; "
                        "use seeds, [base] and [[grid]] tables")
    grids = doc.get("grid", [])
    if isinstance(grids, dict):
        grids = [grids]
    return expand(doc.get("base", {}), grids, doc.get("seeds", [0]))


# -- executors ------------------------------------------------------------------------------------

@dataclass
class Job:
    spec: RunSpec
    checkpoint_path: str | None
    checkpoint_interval: float
    resume: bool
    compile: bool = False  # train through torch.compile (runs that train alone)
    store_id: str | None = None  # the store the run belongs to, recorded in its checkpoints


def job_key(job: Job | GroupJob) -> str:
    """A job's name in progress reports: its (first) run's id."""
    return (job.jobs[0] if isinstance(job, GroupJob) else job).spec.run_id


def _work(job: Job | GroupJob, on_progress=None) -> api.RunResult | list[api.RunResult]:
    """Train one job (in whichever process runs it) and return its result (a group: a list).
    ``on_progress(key, step, total_steps, finished)`` follows its training (in a worker process:
    sent to the driver); ``finished`` counts a group's runs that have ended."""
    report = _throttled(job_key(job), on_progress or (_progress_queue.put if _progress_queue else None))
    if isinstance(job, GroupJob):
        result = execute_group(job, on_progress=report)
    else:
        result = api.execute(job.spec, job.checkpoint_path, checkpoint_interval=job.checkpoint_interval,
                             resume=job.resume, compile=job.compile, store_id=job.store_id,
                             on_progress=report and (lambda step, total, row: report(step, total, 0)))
    if _in_worker and stop_requested() is not None:
        # SIGTERM (the pool's terminate, or the driver's death) stopped training after a checkpoint;
        # nobody reads results any more and the worker must not take another job
        os._exit(128 + stop_requested())
    return result


def _throttled(key: str, send, interval: float = 0.5):
    """``send`` with the job's key, at most every ``interval`` seconds unless a run has ended
    (progress crosses a process boundary: a few messages a second are plenty)."""
    if send is None:
        return None
    last = {"t": -math.inf, "finished": 0}

    def report(step, total, finished):
        now = time.monotonic()
        if now - last["t"] >= interval or finished != last["finished"]:
            last.update(t=now, finished=finished)
            send((key, step, total, finished))

    return report


class LocalExecutor:
    """Runs jobs one after another in this process."""

    def run(self, jobs, on_start=None, on_progress=None):
        for job in jobs:
            if on_start:
                on_start(job)
            yield _work(job, on_progress and (lambda msg: on_progress(*msg)))
            if stop_requested() is not None:  # a signal came as the run ended: stop before the next
                raise KeyboardInterrupt

    def close(self, interrupted: bool = False):
        pass


_in_worker = False  # whether this process is a ProcessExecutor's worker
_progress_queue = None  # in a worker: where its progress reports go to the driver


def _init_worker(threads: int, driver: int, progress=None) -> None:
    import signal

    import torch

    global _in_worker, _progress_queue
    _in_worker, _progress_queue = True, progress
    # The driver handles Ctrl-C and ends the workers with SIGTERM, which an idle worker dies of at
    # once and a training one turns into a checkpoint and an exit (engine.stop_on_signals).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):  # a driver that dies any other way (kill, SIGKILL) ends them too
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != driver:  # it died before the line above
            os._exit(1)
    torch.set_num_threads(threads)


def worker_threads(workers: int, total: int | None = None) -> int:
    """Each of ``workers`` processes' share of ``total`` CPU threads (default: this process's,
    which ``--threads`` sets)."""
    return max(1, (total or torch.get_num_threads()) // workers)


class ProcessExecutor:
    """Runs jobs in ``workers`` spawned processes, each with its share of ``threads`` CPU threads
    (default: this process's, which ``--threads`` sets)."""

    def __init__(self, workers: int = 2, threads: int | None = None):
        self.workers = workers
        ctx = multiprocessing.get_context("spawn")
        self.progress = ctx.SimpleQueue()  # the workers' progress reports
        self.pool = ctx.Pool(self.workers, _init_worker, (worker_threads(workers, threads), os.getpid(), self.progress))

    def run(self, jobs, on_start=None, on_progress=None):
        results = self.pool.imap_unordered(_work, jobs, chunksize=1)
        while True:
            try:
                out = results.next(timeout=0.25)  # between results, pass the workers' progress on
            except multiprocessing.TimeoutError:
                out = None
            except StopIteration:
                return
            while not self.progress.empty():
                msg = self.progress.get()
                if on_progress:
                    on_progress(*msg)
            if out is not None:
                yield out

    def close(self, interrupted: bool = False):
        if interrupted:
            self.pool.terminate()  # runs in flight resume from their checkpoints next time
        else:
            self.pool.close()
        self.pool.join()


def make_executor(name: str, workers: int, **options):
    """An executor: an object whose ``run(jobs, on_start, on_progress)`` yields results (and passes
    on the jobs' progress, see :func:`_work`) and ``close(interrupted)`` ends it. ``options`` go to
    the Ray executor (address, cpus_per_run, gpus_per_run, max_retries)."""
    if name == "local":
        return LocalExecutor()
    if name == "process":
        return ProcessExecutor(workers)
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(**options)
    raise UserError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


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
) -> list[api.RunResult]:
    """Run every spec not already finished in ``store``; returns results in the order of ``specs``.

    The driver alone writes the store: each result is recorded (in its own transaction) as soon as
    it comes back, so an interrupted sweep keeps every finished run. KeyboardInterrupt is raised
    again after recording what finished. With ``batch`` (and the local or process executor), runs
    of small models train several at once where :mod:`rethink.batching`'s rule says so. With
    ``compile`` (or the specs for which ``compile(spec)`` is true), runs that train alone train
    through ``torch.compile`` (a batch never does; each run's summary says whether it was compiled).
    """
    from tqdm import tqdm

    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise UserError(f"--workers {workers} must be at least 1")
    writes = distributed.rank() == 0  # under torchrun every rank trains each run, rank 0 alone writes
    if distributed.world_size() > 1 and executor != "local":
        raise UserError(f"under torchrun every run is data-parallel over the ranks; drop --executor {executor}")
    db = store if isinstance(store, Store) else Store(store)
    results: dict[str, api.RunResult] = {}
    todo = []
    for spec in specs:
        stored = None if force else api.lookup(db, spec)
        if stored is not None:
            results[spec.run_id] = stored
        else:
            todo.append(Job(spec, api.checkpoint_file(db, spec, checkpoint_dir), checkpoint_interval, not force,
                            compile if isinstance(compile, bool) else compile(spec), db.store_id))
    pool = make_executor(executor, workers, **(executor_options or {})) if todo else None  # before any write
    if writes and todo:
        try:  # refuses, before training anything, runs that another live process trains
            api.start(db, [job.spec for job in todo], status="queued")
        except UserError:
            pool.close(False)
            raise
    if batch and executor != "ray":  # Ray packs runs onto devices by its own resources (--gpus-per-run)
        todo = plan(todo, parts=workers if executor == "process" else 1)
    bar = tqdm(total=len(specs), initial=len(results), file=sys.stderr, unit="run", desc="sweep",
               disable=not progress)
    interrupted = False
    labels = {job_key(j): describe(j.spec) if isinstance(j, Job) else f"{len(j.jobs)} runs batched" for j in todo}
    running: dict[str, str] = {}  # job key -> what the bar says of it
    counted: dict[str, int] = {}  # job key -> its runs that the bar counts already (a group's that ended)

    def show(job):
        running[job_key(job)] = f"running {labels[job_key(job)]}"
        bar.set_postfix_str("; ".join(running.values()))

    def advance(key, step, total, ended):
        """A job's progress: the bar counts a group's runs as they end, the postfix shows its step."""
        bar.update(ended - counted.get(key, 0))
        counted[key] = ended
        running[key] = f"{labels[key]}: step {step}/{total}"
        bar.set_postfix_str("; ".join(running.values()))

    try:
        for out in pool.run(todo, on_start=show, on_progress=advance) if pool else ():
            finished = out if isinstance(out, list) else [out]  # a batched group's results come together
            for result in finished:
                if writes:
                    api.record(db, result)
                results[result.run_id] = result
            key = finished[0].run_id  # the job's key: its first run's id
            running.pop(key, None)
            bar.update(len(finished) - counted.pop(key, 0))
            bar.set_postfix_str("; ".join(running.values()) or f"{describe(finished[-1].spec)}: {finished[-1].status}")
            if any(result.status == "interrupted" for result in finished):  # they tell the CLI where they stopped
                raise KeyboardInterrupt(*[result for result in finished if result.status == "interrupted"])
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close(interrupted)
    return [results[s.run_id] for s in specs]
