"""Measures of the runs in a store: each run's final weights from its last checkpoint, its
initialization rebuilt from its seed, its own training set with its (randomized) training labels."""

from __future__ import annotations

import copy
import os

import torch

from .. import api
from ..errors import UserError
from ..spec import from_dict
from ..store import Store
from . import compute

FINISHED = ("fitted", "budget", "converged")  # the statuses of runs that trained to their end
DEFAULT_OPTIONS = {"subset": None, "percentile": 10.0}  # what 'rethink measure' stores by default


def measure_run(
    db: Store,
    run_id: str,
    *,
    measures: list[str] | None = None,
    subset: int | None = None,
    percentile: float = 10.0,
    checkpoint_dir: str | None = None,
) -> dict:
    """Compute the measures of stored run ``run_id`` and record them in ``db``; returns them."""
    if subset is not None and subset < 1:
        raise UserError(f"--subset {subset} must be at least 1")
    _, model, init, prepared = trained_run(db, run_id, checkpoint_dir)
    x, y = prepared.data.x_train[:subset], prepared.data.y_train[:subset]
    values = compute(model, x, y, init=init, evals=db.evals(run_id), measures=measures, percentile=percentile)
    values["_examples"] = len(x)  # m, for the normalization sqrt(v / m) across runs
    db.record_measures(run_id, values, {"subset": subset, "percentile": percentile})
    return values


def stored_values(db: Store, run_ids: set[str] | None = None) -> dict[str, dict]:
    """{run_id: {measure: value}} of the stored measures (of ``run_ids``, or all): per run and measure
    the value stored with :data:`DEFAULT_OPTIONS` when there is one, else the first stored."""
    chosen: dict[tuple[str, str], tuple[bool, object]] = {}
    for m in db.measures():
        if run_ids is not None and m["run_id"] not in run_ids:
            continue
        key, preferred = (m["run_id"], m["name"]), m["options"] == DEFAULT_OPTIONS
        if key not in chosen or (preferred and not chosen[key][0]):
            chosen[key] = (preferred, m["value"])
    out: dict[str, dict] = {}
    for (run_id, name), (_, value) in chosen.items():
        out.setdefault(run_id, {})[name] = value
    return out


def trained_run(db: Store, run_id: str, checkpoint_dir: str | None = None):
    """A finished run's spec, its trained model (final weights), its initialization (rebuilt from its
    seed) and its prepared data (the same subset and randomization it trained on)."""
    run = db.get_run(run_id)
    if run is None:
        raise UserError(f"run {run_id!r} is not in the store {db.path}; 'rethink runs --store {db.path}' lists them")
    if run["status"] not in FINISHED:
        raise UserError(f"run {run_id} is {run['status']}; only finished runs are measured (train it to its end first)")
    spec = from_dict(run["spec"])
    state = _final_weights(db, run_id, checkpoint_dir)
    prepared = api.prepare(spec, torch.device("cpu"))
    init = api.build_model(spec, prepared.input_shape, prepared.num_classes)
    model = copy.deepcopy(init)
    model.load_state_dict(state["model"])
    return spec, model.eval(), init.eval(), prepared


def _final_weights(db: Store, run_id: str, checkpoint_dir: str | None) -> dict:
    """The run's last checkpoint (written when it ended), as :func:`rethink.api.checkpoint_file` names it."""
    folder = checkpoint_dir or api.checkpoint_dir_of(db.path)
    for name in (f"{run_id}.{db.store_id}.pt", f"{run_id}.pt"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            state = api.read_checkpoint(path, "cpu")
            if state.get("store_id") in (None, db.store_id) and state.get("finished"):
                return state
    raise UserError(
        f"run {run_id} has no final checkpoint in {folder}; its final weights are needed: give --checkpoint-dir "
        "if it trained with one, or train it again with 'rethink run --force' into this store"
    )


def bound_run(
    db: Store,
    run_id: str,
    *,
    steps: int = 20000,
    samples: int = 200,
    checkpoint_dir: str | None = None,
    log=print,
) -> dict:
    """Dziugaite & Roy's PAC-Bayes certificate (:func:`rethink.pacbayes.bound`) for stored run
    ``run_id``: the posterior around its final weights, the prior around its initialization, its
    training set (with its training labels) and its test set; recorded in ``db`` and returned."""
    from .. import pacbayes

    spec, model, init, prepared = trained_run(db, run_id, checkpoint_dir)
    d = prepared.data
    seconds = _estimate(model, init, d, steps, samples)
    log(f"bound of run {run_id}: {steps} optimization steps, {samples} weight samples; about {seconds / 60:.1f} min")
    out = pacbayes.bound(
        model, init, d.x_train, d.y_train, d.x_test, d.y_test, steps=steps, samples=samples, seed=spec.seed
    )
    out["chance_error"] = 1.0 - 1.0 / prepared.num_classes  # a bound at or above it says nothing
    stored = {"pacbayes_bound": out["bound"], "pacbayes_kl": out["kl"], "_pacbayes": out}
    db.record_measures(run_id, stored, {"steps": steps, "samples": samples})
    return out


def _estimate(model, init, data, steps: int, samples: int) -> float:
    """Seconds the certificate should take: twenty timed posterior steps and one timed weight sample
    over the training and test sets, scaled to ``steps`` and ``samples``."""
    import time

    from .. import pacbayes

    w0, spent = pacbayes.flat_params(init), []
    for steps_timed in (1, 1, 21):  # the first call warms up (about a second); the difference of the
        t0 = time.perf_counter()  # other two leaves out the set-up they share
        post = pacbayes.optimize_posterior(model, w0, None, data.x_train, data.y_train, steps=steps_timed)
        spent.append(time.perf_counter() - t0)
    step = max(spent[2] - spent[1], 0.0) / 20
    t0 = time.perf_counter()
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        pacbayes.mc_error(model, post["w"], post["s"], x, y, 1)
    return step * steps + (time.perf_counter() - t0) * samples
