"""One recipe per figure and table of the paper: its runs (a grid of specs, per scale) and how
they become figures and tables beside the paper's own numbers.

``reproduce(name, scale)`` runs the recipe's sweep (skipping runs the store already has), records
which runs make up the output, renders it and writes it under ``results/NAME/``.
"""

from __future__ import annotations

import os
import sys
import time

from .. import api, distributed
from ..errors import UserError
from ..measures.stored import stored_values
from ..report import Output, close, save
from ..store import Store
from ..sweep import run_sweep
from .common import PROTOCOLS, RECIPES, SCALES, Recipe

# Importing the recipe modules registers their recipes, in this order (the order names are listed in).
# isort: off
from . import figure1, figure2, tables, table2, generalization  # noqa: F401
# isort: on


def get(name: str) -> Recipe:
    """The recipe called ``name``; a UserError naming the nearest recipes when there is none."""
    return RECIPES[name]


def recipe_specs(name: str, scale: str, options: dict, seeds: int):
    if seeds < 1:
        raise UserError(f"--seeds {seeds} must be at least 1")
    recipe = get(name)
    return recipe.specs(recipe.protocol(scale), options, seeds)


def render(name: str, scale: str, options: dict, seeds: int, results, db: Store) -> Output:
    recipe = get(name)
    if recipe.measure is not None:
        values = stored_values(db, {r.run_id for r in results})
        for r in results:
            r.measures = values.get(r.run_id, {})
    figures, tabs = recipe.render(results, recipe.protocol(scale), options, seeds)
    runs = [
        {
            "run_id": r.run_id,
            "status": r.status,
            "model": r.spec.model,
            "randomize": r.spec.randomize,
            "p": r.spec.p,
            "seed": r.spec.seed,
            "train_acc": r.train_acc,
            "test_acc": r.test_acc,
            "time_to_fit": r.time_to_fit,
        }
        for r in results
    ]
    return Output(name, scale, tabs, figures, [r.spec.to_dict() for r in results], runs)


def reproduce(
    name: str,
    scale: str = "cpu",
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    seeds: int = 1,
    out: str | None = None,
    store: str = api.DEFAULT_STORE,
    executor: str = "local",
    workers: int = 1,
    progress: bool = True,
    compile: bool | None = None,
    tensorboard: str | None = None,
) -> tuple[Output, list[str]]:
    """Run (or read back) the recipe's runs, then write its figures and tables to ``out``.
    ``compile``: runs that train alone train through ``torch.compile`` (True), or none do (False);
    None: the runs of the models the scale's protocol names (``Protocol.compiled``).
    ``tensorboard``: a folder for the live scalars of the runs it trains (see :func:`run_sweep`)."""
    options = {"dataset": dataset, "data_dir": data_dir}
    specs = recipe_specs(name, scale, options, seeds)
    if compile is None:
        compiled = get(name).protocol(scale).compiled
        compile = lambda spec: spec.model in compiled  # noqa: E731
    out = out or os.path.join("results", name)
    t0 = time.perf_counter()
    db = Store(store)
    results = run_sweep(
        specs, db, executor=executor, workers=workers, progress=progress, compile=compile, tensorboard=tensorboard
    )
    failed = [r.run_id for r in results if r.status == "failed"]
    if failed:
        raise UserError(
            f"{len(failed)} runs failed ({', '.join(failed)}; see 'rethink runs'); "
            "run the same command again to retry them"
        )
    recipe, lead = get(name), distributed.rank() == 0  # under torchrun, rank 0 alone measures and writes
    if lead:
        if recipe.measure is not None:
            recipe.measure(db, results, recipe.protocol(scale), log=_log if progress else lambda message: None)
        db.record_recipe(name, scale, {**options, "seeds": seeds}, [r.run_id for r in results])
    output = render(name, scale, options, seeds, results, db)
    paths = save(output, out) if lead else []
    close(output)
    if progress:
        print(f"{name} ({scale}): {len(results)} runs, {time.perf_counter() - t0:.0f} s; wrote {out}/", file=sys.stderr)
    return output, paths


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def stored_outputs(db: Store) -> list[Output]:
    """Every recipe output the store can make: each recorded recipe (one per name, scale and
    options) whose runs are all finished in the store."""
    outputs = []
    for rec in db.recipes():
        if rec["name"] not in RECIPES:
            continue
        results = [api.load_result(db, rid) for rid in rec["run_ids"]]
        if any(r is None or r.status not in api.FINISHED for r in results):
            continue
        opts = {k: v for k, v in rec["options"].items() if k != "seeds"}
        outputs.append(render(rec["name"], rec["scale"], opts, rec["options"].get("seeds", 1), results, db))
    return outputs


def user_runs(db: Store) -> list[dict]:
    """The store's runs that belong to no recorded recipe (the user's own runs and sweeps)."""
    in_recipes = {rid for rec in db.recipes() for rid in rec["run_ids"]}
    return [r for r in db.runs() if r["run_id"] not in in_recipes]


__all__ = ["RECIPES", "SCALES", "PROTOCOLS", "Recipe", "get", "reproduce", "stored_outputs", "user_runs"]
