"""Executors: where a sweep's jobs train. ``local`` runs them one after another in this process,
``process`` in spawned worker processes, ``ray`` as tasks on a Ray cluster
(:mod:`rethink.ray_executor`, imported only when asked for: Ray is an optional extra).

An executor's ``run(jobs, on_start, on_progress)`` yields each job's result (a batched group's: a
list) as it comes back, passing on the jobs' progress, and ``close(interrupted)`` ends it. Every
executor trains a job with :func:`work`; the driver (:func:`rethink.sweep.run_sweep`) alone reads
and writes the store.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import api
from .batching import GroupJob, execute_group
from .registry import Registry
from .spec import RunSpec
from .train.engine import speed_settings, stop_requested


@dataclass
class Job:
    spec: RunSpec
    checkpoint_path: str | None
    checkpoint_interval: float
    resume: bool
    compile: bool = False  # train through torch.compile (runs that train alone)
    store_id: str | None = None  # the store the run belongs to, recorded in its checkpoints
    tensorboard: str | None = None  # the folder of live scalars (rethink.tensorboard), written where it trains


def job_key(job: Job | GroupJob) -> str:
    """A job's name in progress reports: its (first) run's id."""
    return (job.jobs[0] if isinstance(job, GroupJob) else job).spec.run_id


def work(job: Job | GroupJob, on_progress=None) -> api.RunResult | list[api.RunResult]:
    """Train one job (in whichever process runs it) and return its result (a group: a list).
    ``on_progress(key, step, total_steps, finished)`` follows its training (in a worker process:
    sent to the driver); ``finished`` counts a group's runs that have ended."""
    report = _throttled(job_key(job), on_progress or (_progress_queue.put if _progress_queue else None))
    if isinstance(job, GroupJob):
        result = execute_group(job, on_progress=report)
    else:
        result = api.execute(
            job.spec,
            job.checkpoint_path,
            checkpoint_interval=job.checkpoint_interval,
            resume=job.resume,
            compile=job.compile,
            store_id=job.store_id,
            tensorboard=job.tensorboard,
            on_progress=report and (lambda step, total, row: report(step, total, 0)),
        )
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
            yield work(job, on_progress and (lambda msg: on_progress(*msg)))
            if stop_requested() is not None:  # a signal came as the run ended: stop before the next
                raise KeyboardInterrupt

    def close(self, interrupted: bool = False):
        pass


_in_worker = False  # whether this process is a ProcessExecutor's worker
_progress_queue = None  # in a worker: where its progress reports go to the driver


def _init_worker(threads: int, driver: int, progress=None) -> None:
    import signal

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
    speed_settings()  # a worker process is the sweep's own


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
        results = self.pool.imap_unordered(work, jobs, chunksize=1)
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


# ``EXECUTORS[name](workers, **options)`` makes an executor (an unknown name: a UserError); the
# options are the Ray executor's (address, cpus_per_run, gpus_per_run, max_retries), which the others ignore
EXECUTORS: Registry[Callable[..., object]] = Registry("executor")


@EXECUTORS.register("local", "one process: runs train one after another")
def _local(workers: int = 1, **options) -> LocalExecutor:
    return LocalExecutor()


@EXECUTORS.register("process", "worker processes (--workers), each with its share of the threads")
def _process(workers: int = 2, **options) -> ProcessExecutor:
    return ProcessExecutor(workers)


@EXECUTORS.register("ray", "tasks on a Ray cluster (pip install 'rethink[cluster]')")
def _ray(workers: int = 1, **options):
    from .ray_executor import RayExecutor  # a leaf that trains with the ``work`` it is given, so no cycle

    return RayExecutor(work, **options)
