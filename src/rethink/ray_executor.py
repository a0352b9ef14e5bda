"""Sweeps on a Ray cluster: ``rethink sweep GRID.toml --executor ray [--address ...]``.

Every run is a Ray task asking for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (a fraction
such as 0.25 packs four small models onto one GPU). Results come back to the driver as each task
ends, and the driver alone writes the store (:func:`rethink.sweep.run_sweep`), so the store never
needs to be reachable from the workers. A task whose worker or node dies, or that raises, is
retried ``max_retries`` times (resuming from its checkpoint when it wrote one) and then recorded
as ``failed``; a failed run is run again when the sweep is resubmitted, a finished one is not. A
user mistake (bad data path, unknown model) is not retried: it ends the sweep like locally.

Without ``address`` a local Ray instance is started with this machine's cores and stopped at the
end. With ``address`` ("auto" for the cluster this machine belongs to, or ``ray://HOST:10001``
for Ray Client) the tasks run on that cluster, whose nodes must have rethink installed and reach
the data (``--data-dir``) and the checkpoint folder (``--checkpoint-dir``) at the same paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from . import api
from .errors import UserCodeError, UserError
from .train.engine import speed_settings

EXTRA = "pip install 'rethink[cluster]'"


def _task(work: Callable, job, threads: int):
    """One run (a :class:`rethink.executors.Job`) trained by ``work`` in a Ray worker; a user
    mistake is returned (so Ray does not retry it), not raised."""
    import torch

    torch.set_num_threads(threads)
    speed_settings()  # a Ray worker process is the sweep's own
    if job.checkpoint_path:  # the driver made the folder, but maybe not on this node
        os.makedirs(os.path.dirname(job.checkpoint_path), exist_ok=True)
    try:
        return work(job)
    except UserCodeError:
        raise
    except UserError as e:
        return e


def task_threads(cpus_per_run: float) -> int:
    """The torch threads of a task that asks for ``cpus_per_run`` CPUs."""
    return max(1, int(cpus_per_run))


class RayExecutor:
    """Runs every job as a Ray task that trains it with ``work`` (:func:`rethink.executors.work`,
    passed in so that this module needs nothing of the executors); ``run`` yields results in the
    order they finish."""

    def __init__(
        self,
        work: Callable,
        address: str | None = None,
        cpus_per_run: float = 1.0,
        gpus_per_run: float = 0.0,
        max_retries: int = 2,
    ):
        try:
            import ray
        except ImportError:
            raise UserError(f"--executor ray needs Ray, which is not installed; {EXTRA}") from None
        if cpus_per_run <= 0 or gpus_per_run < 0 or max_retries < 0:
            raise UserError(
                f"--cpus-per-run {cpus_per_run:g} must be positive, --gpus-per-run {gpus_per_run:g} and "
                f"--max-retries {max_retries} at least 0"
            )
        self.ray, self.pending = ray, {}
        self.started = not ray.is_initialized()  # a Ray session opened by the caller is used and left open
        if self.started:
            try:
                ray.init(
                    address=address,
                    num_cpus=None if address else os.cpu_count(),
                    include_dashboard=False,
                    logging_level="ERROR",
                )
            except ConnectionError as e:
                raise UserError(
                    f"cannot reach the Ray cluster at --address {address} ({e}); start one with "
                    "'ray start --head' or drop --address for a local instance"
                ) from None
        self.task = ray.remote(_task).options(
            num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=max_retries, retry_exceptions=True
        )
        self.work, self.threads, self.max_retries = work, task_threads(cpus_per_run), max_retries

    def run(self, jobs, on_start=None, on_progress=None):  # progress: as tasks finish (none from inside them)
        self.pending = {self.task.remote(self.work, job, self.threads): job for job in jobs}
        while self.pending:
            (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
            job = self.pending.pop(ref)
            try:
                out = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:
                yield self.failed(job, e)
                continue
            if isinstance(out, UserError):
                raise out
            yield out

    def failed(self, job, error: Exception) -> api.RunResult:
        """The result recorded for a run that failed on every try."""
        lines = [line for line in str(error).splitlines() if line.strip()]
        message = f"{type(error).__name__}: {lines[-1] if lines else ''}"
        api.warn(f"run {job.spec.run_id} failed after {self.max_retries} retries ({message})")
        return api.RunResult(job.spec.run_id, "failed", job.spec, {"error": message})

    def close(self, interrupted: bool = False):
        if interrupted:
            for ref in self.pending:  # runs in flight resume from their checkpoints next time
                self.ray.cancel(ref, force=True)
        if self.started:
            self.ray.shutdown()
