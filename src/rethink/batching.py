"""Which runs of a sweep train together as one batch (:mod:`rethink.train.batched`), and
training such a group.

The rule is fixed and reads nothing but the specs, so the same sweep always makes the same groups
and a run's numbers never depend on the machine's load:

- runs may share a batch when they differ only in what each model keeps for itself: the seed, the
  randomization test and its p, the test-set options and the stop rules (fit threshold, stop on
  fit, stop loss). MLPs may also differ in their hidden widths (they are zero-padded to the widest,
  which is exact); other models must have the same architecture;
- such a group trains batched when it has two or more runs and one training step of its (widest)
  model needs at most ``MAX_STEP_FLOPS`` floating-point operations on the run's device
  (:func:`rethink.train.flops.step_flops`): a step that small is mostly fixed per-step overhead,
  which the batch shares, while a larger one keeps the device busy on its own;
- batch-norm models batch too, each with its own statistics (batched, their convolutions run in
  the default layout; tests/test_batched.py bounds how far that takes them from a solo run);
- runs with dropout (its masks come from one global random stream), user models
  (``package.module:factory``), streamed image folders and runs under torchrun train alone; at
  most ``MAX_MODELS`` runs share a batch.

Every run records the size of the batch it trained in (``models_in_batch`` in its summary).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch
from torch import nn

from . import api, distributed
from . import tensorboard as tb
from .models.mlp import mlp
from .spec import FIELD_NAMES, RunSpec
from .train.batched import Member, train_batched
from .train.flops import step_flops

# The largest training step (FLOPs of one model on one batch) that trains batched, by device.
# Measured with benchmarks/batch_rule.py (CPU); the CUDA value is an untested guess.
MAX_STEP_FLOPS = {"cpu": 100e6, "cuda": 2e9}
MAX_MODELS = 16
MLPS = ("mlp", "mlp1x512", "mlp3x512")
# Fields each model of a batch keeps for itself (MLPs also their widths).
PER_MODEL = (
    "seed",
    "randomize",
    "p",
    "test_labels",
    "test_inputs",
    "fit_threshold",
    "stop_on_fit",
    "stop_loss",
    "track_examples",
)
MLP_SHAPE = ("model", "hidden", "width")


@dataclass
class GroupJob:
    """Sweep jobs (:class:`rethink.executors.Job`) that train as one batch."""

    jobs: list


def group_key(spec: RunSpec) -> tuple | None:
    """Runs with equal keys may share a batch; None: this run trains alone."""
    if spec.dropout or ":" in spec.model or getattr(spec, "stream", False) or distributed.world_size() > 1:
        return None
    # what each model keeps for itself changes neither the key nor the step's size: a sweep's
    # runs share one look at the model (a meta forward pass, ~10 ms)
    return _shared_key(_shape_only(spec))


_PER_MODEL_DEFAULTS = {f.name: f.default for f in fields(RunSpec) if f.name in PER_MODEL}


def _shape_only(spec: RunSpec) -> RunSpec:
    """The spec without what each model of a batch keeps for itself."""
    return spec.replace(**_PER_MODEL_DEFAULTS)


@functools.lru_cache(maxsize=64)
def _shared_key(spec: RunSpec) -> tuple | None:
    if not small_enough([spec]):
        return None
    mlp_depth = len(_hidden(_meta_model(spec, (1, 1, 1), 2))) if spec.model in MLPS else None
    varying = PER_MODEL + (MLP_SHAPE if mlp_depth is not None else ())
    shared = {k: getattr(spec, k) for k in FIELD_NAMES if k not in varying}
    shared["lr"] = spec.resolved_lr
    return tuple(sorted(shared.items(), key=lambda kv: kv[0])) + (("mlp_depth", mlp_depth),)


def plan(jobs: list, parts: int = 1) -> list:
    """The jobs, with those that train batched gathered into :class:`GroupJob` s (each group takes
    the place of its first job). With ``parts`` (the workers that train at once), the largest
    groups are split until there are that many jobs where the groups allow, so that every worker
    gets work; a group's runs are dealt out in turn, so that each part gets a share of the slow ones."""
    groups: dict = {}
    for job in jobs:
        key = group_key(job.spec)
        groups.setdefault(id(job) if key is None else key, []).append(job)
    planned = []
    for members in groups.values():
        for i in range(0, len(members), MAX_MODELS):
            chunk = members[i : i + MAX_MODELS]
            # one shape: group_key has sized its step already; MLPs of several widths: the padded one
            shapes = list(dict.fromkeys(_shape_only(j.spec) for j in chunk))
            planned.extend(
                [GroupJob(chunk)] if len(chunk) > 1 and (len(shapes) == 1 or small_enough(shapes)) else chunk
            )
    while len(planned) < parts:
        largest = max((j for j in planned if isinstance(j, GroupJob)), key=lambda g: len(g.jobs), default=None)
        if largest is None:
            break
        k = min(len(largest.jobs), parts - len(planned) + 1)
        at = planned.index(largest)
        # a part of MLPs of several widths is no wider than the whole, so it stays small enough
        planned[at : at + 1] = [GroupJob(js) if len(js) > 1 else js[0] for js in (largest.jobs[i::k] for i in range(k))]
    return planned


def _input(spec: RunSpec) -> tuple:
    """The spec's input shape (after the crop) and number of classes."""
    ds = api.cached_dataset(spec.dataset, spec.data_dir)
    c, h, w = ds.x_train.shape[1:]
    crop = api.resolve_crop(spec.crop, w)
    return ((c, crop, crop) if crop else (c, h, w)), ds.num_classes


def small_enough(specs: list[RunSpec]) -> bool:
    """Whether one training step of the specs' model (padded to the widest, when they differ) needs
    at most ``MAX_STEP_FLOPS`` on their device."""
    spec = specs[0]
    shape, num_classes = _input(spec)
    template = _template([_meta_model(s, shape, num_classes) for s in specs], shape, num_classes)
    cuda = spec.device.startswith("cuda") or (spec.device == "auto" and torch.cuda.is_available())
    return step_flops(template, shape, spec.batch_size) <= MAX_STEP_FLOPS["cuda" if cuda else "cpu"]


def _meta_model(spec: RunSpec, shape, num_classes: int) -> nn.Module:
    """The spec's model without weights (on the meta device), leaving the random streams alone."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return api.build_model(spec, shape, num_classes)


def _template(models: list[nn.Module], shape, num_classes: int) -> nn.Module:
    """The architecture a batch of these models runs: theirs when they are all alike, else (MLPs
    of other widths) the MLP with the widest of their layers."""
    shapes = [[p.shape for p in m.parameters()] for m in models]
    if all(s == shapes[0] for s in shapes):
        return models[0]
    units = [max(widths) for widths in zip(*(_hidden(m) for m in models))]
    with torch.device("meta"):
        return mlp(shape, num_classes, hidden=tuple(units))


def _hidden(model: nn.Module) -> list[int]:
    """An MLP's hidden widths."""
    return [m.out_features for m in model.modules() if isinstance(m, nn.Linear)][:-1]


def execute_group(group: GroupJob, on_progress=None) -> list[api.RunResult]:
    """Train a group's runs as one batch (resuming each from its checkpoint where it has one);
    their results in the group's order. Safe to call in a worker process. ``on_progress(step,
    total_steps, finished)``: see :func:`rethink.train.batched.train_batched`."""
    specs = [job.spec for job in group.jobs]
    device = api.resolve_device(specs[0].device)
    api.set_deterministic(device)
    members, prepared, boards = [], [], []
    for job in group.jobs:
        p = api.prepare(job.spec, device)
        model = api.build_model(job.spec, p.input_shape, p.num_classes).to(device)
        checksum = p.dataset.checksum
        state = (
            api.load_checkpoint(job.checkpoint_path, job.spec, checksum, device, job.store_id) if job.resume else None
        )
        boards.append(tb.open_board(job.tensorboard, job.spec, state))
        members.append(
            Member(
                model,
                p.data,
                api.train_config(job.spec),
                job.checkpoint_path,
                state,
                {"run_id": job.spec.run_id, "data_checksum": checksum, "store_id": job.store_id},
                boards[-1],
            )
        )
        prepared.append(p)
    template = _template([m.model for m in members], prepared[0].input_shape, prepared[0].num_classes)
    try:
        results = train_batched(
            members, template=template, checkpoint_interval=group.jobs[0].checkpoint_interval, on_progress=on_progress
        )
    finally:
        for board in boards:
            if board is not None:
                board.close()
    return [
        api.summarize(s, p, m.model, m.cfg, r, device, models_in_batch=len(members))
        for s, p, m, r in zip(specs, prepared, members, results)
    ]
