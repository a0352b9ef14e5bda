"""A store as pandas DataFrames (the ``rethink[analysis]`` extra), and ``rethink export --format parquet``.

``rethink.load(path).runs.groupby(["model", "p"]).test_acc.mean()``: the store is opened
read-only and read once; the frames are plain pandas, detached from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING

from .errors import UserError
from .spec import RunSpec
from .store import EVAL_COLUMNS, Store

if TYPE_CHECKING:
    import pandas as pd

FIX = "pip install 'rethink[analysis]'"
# Columns of ``runs`` before the spec's fields, and summary columns present even before any run ends.
RUN_INFO = ("run_id", "status", "created", "updated", "package_version", "git_commit")
SUMMARY = ("train_acc", "test_acc", "steps", "num_params")
SUMMARY += tuple(f"time_to_fit_{k}" for k in ("steps", "epochs", "seconds"))


@dataclasses.dataclass(frozen=True)
class Frames:
    """A store's contents as DataFrames.

    ``runs``: one row per run, oldest first. ``run_id``; ``status`` (as ``rethink runs`` shows it:
    fitted, budget, converged, failed, running, queued, or interrupted for a running run whose
    process is gone); ``created`` and ``updated`` (Unix seconds), ``package_version``,
    ``git_commit``; then every RunSpec field under its own name (a field the run's spec predates
    holds its default; the list fields ``hidden`` and ``augment`` are tuples, so that groupby takes
    them; ``hidden`` is None where unset, which groupby drops unless ``dropna=False``); then every
    summary value under its own name: ``train_acc``, ``test_acc`` (the last evaluation's),
    ``best_test_acc``, ``steps``, ``train_seconds``, ``num_params``, ``n_train``, ... (NaN for a run
    that has not ended). A summary value named like a spec field is prefixed ``summary_``:
    ``summary_epochs`` (epochs trained; ``epochs`` is the budget), ``summary_lr`` (the learning rate
    used; ``lr`` is None for the default), ``summary_device`` (the device it ran on). A dict is
    flattened: ``time_to_fit_steps``, ``time_to_fit_epochs``, ``time_to_fit_seconds``,
    ``time_to_fit_resolution_steps`` (NaN: not fitted); a list (``input_shape``) is a tuple.

    ``evals``: one row per evaluation: ``run_id``, ``step``, ``epoch``, ``seconds`` (training time
    so far), ``lr``, and the metrics ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``,
    ``corrupted_acc_noisy``, ``corrupted_acc_true``, ``clean_acc`` (NaN where not measured).

    ``steps``: one row per training step: ``run_id``, ``step`` (from 1), ``loss`` (NaN: not finite).

    ``measures``: one row per stored measure: ``run_id``, ``name``, ``options`` (the options it was
    computed with, as sorted JSON), ``value`` (a float, NaN for none; a tuple of floats for a
    list-valued measure).
    """

    runs: pd.DataFrame
    evals: pd.DataFrame
    steps: pd.DataFrame
    measures: pd.DataFrame


def load(store: str | os.PathLike | Store) -> Frames:
    """The store at ``store`` (a path, opened read-only, or an open :class:`Store`) as :class:`Frames`."""
    pd = _pandas("rethink.load")
    db = store if isinstance(store, Store) else Store(os.fspath(store), readonly=True)
    try:
        runs = [_run_row(r) for r in db.runs()]
        columns = dict.fromkeys([*RUN_INFO, *(f.name for f in dataclasses.fields(RunSpec)), *SUMMARY])
        for row in runs:
            columns.update(dict.fromkeys(row))
        measures = [
            {**m, "options": json.dumps(m["options"], sort_keys=True), "value": _number(m["value"])}
            for m in db.measures()
        ]
        measures = pd.DataFrame(measures, columns=["run_id", "name", "options", "value"])
        if not any(isinstance(v, tuple) for v in measures["value"]):
            measures = measures.astype({"value": float})
        return Frames(
            runs=pd.DataFrame(runs, columns=list(columns)),
            evals=_frame(pd, *db.export_rows("evals")),
            steps=_frame(pd, *db.export_rows("steps")),
            measures=measures,
        )
    finally:
        if db is not store:
            db.close()


def export_parquet(db: Store, path: str, what: str = "evals", run_ids: list[str] | None = None) -> int:
    """Write what ``rethink export`` writes as CSV (the same columns) as a parquet file instead,
    with numbers kept as numbers; returns the row count."""
    pd = _pandas("--format parquet")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UserError(f"--format parquet needs pyarrow, which is not installed; {FIX}") from None
    if path == "-":
        raise UserError("--format parquet writes a file, not stdout; pass --out FILE.parquet")
    df = _frame(pd, *db.export_rows(what, run_ids))
    try:
        df.to_parquet(path, index=False)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}); pass --out with a writable path") from None
    return len(df)


def _pandas(what: str):
    try:
        import pandas
    except ImportError:
        raise UserError(f"{what} needs pandas, which is not installed; {FIX}") from None
    return pandas


def _frame(pd, header: list[str], rows) -> pd.DataFrame:
    """Export rows as a DataFrame, with the metric columns as floats (a metric never measured is NaN)."""
    df = pd.DataFrame(list(rows), columns=header)
    return df.astype({c: float for c in (*EVAL_COLUMNS, "loss") if c in header and c != "step"})


def _run_row(r: dict) -> dict:
    row = {k: r[k] for k in RUN_INFO}
    row["status"] = r["state"]
    for f in dataclasses.fields(RunSpec):
        row[f.name] = _cell(r["spec"].get(f.name, f.default))
    for key, value in (r["summary"] or {}).items():
        name = f"summary_{key}" if key in row else key
        if isinstance(value, dict) or key == "time_to_fit":  # (None: not fitted)
            row.update({f"{name}_{k}": _cell(v) for k, v in (value or {}).items()})
        else:
            row[name] = _cell(value)
    return row


def _cell(value):
    return tuple(value) if isinstance(value, list) else value


def _number(value):
    if isinstance(value, list):
        return tuple(_number(v) for v in value)
    return float("nan") if value is None else float(value) if isinstance(value, int | float) else value
