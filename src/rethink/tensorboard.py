"""``--tensorboard DIR``: live scalars of each run, written with PyTorch's own
``torch.utils.tensorboard.SummaryWriter`` (needs the ``rethink[tensorboard]`` extra).

One subfolder of ``DIR`` per run, ``<model>-<test>-<run_id>``. The training loop feeds a run's
:class:`Board` (``Member.board``) the step losses as it records them (``train/step_loss``, at
steps 1, 2, ...) and every evaluation (``eval/<metric>`` and ``train/lr`` at the evaluation's
step), flushing at each evaluation. A run resumed from its checkpoint at step s opens its writer
with ``purge_step=s + 1``: what the stopped process wrote after the checkpoint is discarded and the
curves go on from there; a fresh start purges from step 0 (a forced rerun replaces the curves).
"""

from __future__ import annotations

import json
import os
import re

from .errors import UserError, make_folder
from .spec import RunSpec
from .store import METRICS

INSTALL = "pip install 'rethink[tensorboard]'"


def require() -> None:
    """A :class:`UserError` naming the fix when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError(f"--tensorboard needs the tensorboard package; install it: {INSTALL}") from None


def run_folder(spec: RunSpec) -> str:
    """A run's subfolder name: model, randomization test (with p for partial-labels), run id."""
    test = spec.randomize + (f"-p{spec.p:g}" if spec.randomize == "partial-labels" else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{spec.model}-{test}-{spec.run_id}")


class Board:
    """One run's writer. ``resumed_step``: the step of the checkpoint the run resumes from (None:
    a fresh start, which also writes the spec as text)."""

    def __init__(self, folder: str, spec: RunSpec, resumed_step: int | None = None):
        require()
        from torch.utils.tensorboard import SummaryWriter

        make_folder(folder, "TensorBoard folder", "--tensorboard")
        path = os.path.join(folder, run_folder(spec))
        self.writer = SummaryWriter(path, purge_step=0 if resumed_step is None else resumed_step + 1)
        if resumed_step is None:
            self.writer.add_text("spec", json.dumps(spec.to_dict(), indent=2), 0)
            self.writer.flush()

    def step_losses(self, first_step: int, losses: list[float]) -> None:
        """Losses of the steps ``first_step``, ``first_step + 1``, ..."""
        for k, loss in enumerate(losses):
            self.writer.add_scalar("train/step_loss", loss, first_step + k)
        if losses:
            self.writer.flush()

    def evaluation(self, row: dict) -> None:
        """An evaluation row (its step, lr and metrics); flushed at once."""
        step = row["step"]
        for name in METRICS:
            value = row.get(name)
            if value is not None:
                self.writer.add_scalar(f"eval/{name}", value, step)
        if row.get("lr") is not None:
            self.writer.add_scalar("train/lr", row["lr"], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_board(folder: str | None, spec: RunSpec, resume: dict | None) -> Board | None:
    """The run's :class:`Board` under ``folder`` (None without one); ``resume``: its checkpoint."""
    if folder is None:
        return None
    return Board(folder, spec, None if resume is None else resume["result"]["steps"])
