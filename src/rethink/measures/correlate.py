"""How well each stored measure predicts generalization across a store's runs (MEASURES.md sec. 4):
Kendall's tau with the gap, the granulated consistency psi_i / Psi of Jiang et al. (2020) and the
PGDL (NeurIPS 2020 competition) conditional-mutual-information score.

Pure functions of numbers, plus :func:`correlate` (reads a store) and :func:`correlation_output`
(a report :class:`~rethink.report.Output`).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..errors import UserError
from ..report import Figure, Output, Table
from ..spec import NOT_HASHED
from ..store import Store
from .stored import FINISHED, stored_values

# Not hyperparameter axes: seeds are replicates of one setting, the rest say where or how a run ran.
NOT_AXES = ("seed", "device", *NOT_HASHED)
TARGETS = ("gap", "test_error")


def kendall_tau(a, b) -> float:
    """Kendall's tau over all pairs of runs (MEASURES.md sec. 4), in the form Jiang et al. (2020) use:
    sum over pairs i < j of sign(a_i - a_j) * sign(b_i - b_j), divided by the number of pairs
    n(n - 1)/2. A pair tied in ``a`` or ``b`` adds 0 (this is tau-a; it equals scipy's tau-b when
    there are no ties). NaN for fewer than 2 runs."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"kendall_tau needs two 1-d sequences of one length, got shapes {a.shape} and {b.shape}")
    n = len(a)
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, k=1)
    return float(np.sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])) / len(i))


def _codes(values: list) -> np.ndarray:
    """Each run's axis value as a small integer (values are compared for equality only)."""
    index: dict = {}
    return np.array([index.setdefault(_hashable(v), len(index)) for v in values], dtype=np.int64)


def _hashable(v):
    # Spec fields such as hidden and augment come back from JSON as lists.
    return tuple(_hashable(x) for x in v) if isinstance(v, list | tuple) else v


def _varying(axes: dict, n: int) -> dict[str, np.ndarray]:
    """The axes (as codes) that take at least 2 distinct values over the runs, in the given order."""
    out = {}
    for name, values in axes.items():
        if len(values) != n:
            raise ValueError(f"axis {name!r} has {len(values)} values for {n} runs")
        codes = _codes(list(values))
        if len(np.unique(codes)) > 1:
            out[name] = codes
    return out


def _check_varying(axes: dict, n: int, what: str) -> dict[str, np.ndarray]:
    varying = _varying(axes, n)
    if not varying:
        raise UserError(f"{what}: every axis is constant; vary at least one of {', '.join(axes) or '(no axes given)'}")
    return varying


def granulated(values, gaps, axes: dict) -> dict:
    """Granulated consistency of Jiang et al. (2020) (MEASURES.md sec. 4).

    ``axes`` maps each hyperparameter axis to its value in each run. For each axis i that varies,
    the runs are grouped by their values on every other varying axis; a group holding at least 2
    distinct values of axis i is one setting of the other axes, and its tau is :func:`kendall_tau`
    over all pairs of runs in the group (replicates included). psi_i is the mean of these taus over
    the groups (NaN when no group qualifies); Psi is the mean of the psi_i that are not NaN.
    An axis with one value across all runs is left out; when every axis is constant: UserError.
    Returns ``{"psi": {axis: psi_i}, "Psi": Psi}``.
    """
    values, gaps = np.asarray(values, dtype=float), np.asarray(gaps, dtype=float)
    varying = _check_varying(axes, len(values), "granulated consistency")
    psi = {}
    for axis, codes in varying.items():
        others = [c for name, c in varying.items() if name != axis]
        keys = np.stack(others, axis=1) if others else np.zeros((len(values), 0), dtype=np.int64)
        _, group = np.unique(keys, axis=0, return_inverse=True)
        group = group.reshape(-1)
        taus = []
        for g in np.unique(group):
            members = group == g
            if len(np.unique(codes[members])) >= 2:
                taus.append(kendall_tau(values[members], gaps[members]))
        psi[axis] = float(np.mean(taus)) if taus else float("nan")
    finite = [v for v in psi.values() if not math.isnan(v)]
    return {"psi": psi, "Psi": float(np.mean(finite)) if finite else float("nan")}


def _entropy(*columns: np.ndarray) -> float:
    """Plug-in joint entropy (nats) of the given discrete columns."""
    _, counts = np.unique(np.stack(columns, axis=1), axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-np.sum(p * np.log(p)))


def pgdl_score(values, gaps, axes: dict) -> float:
    """The PGDL (NeurIPS 2020 competition) score (MEASURES.md sec. 4), x 100.

    The samples are all ordered pairs (a, b) of distinct runs (both orders, so that the score does not
    depend on how the runs are listed), with V_g = sign(gap_a - gap_b) and V_m = sign(value_a -
    value_b) (0 on a tie: a third value). For a pair of varying axes (i, j) the conditioning variable
    U is the pair's (i, j) values in both runs: (i_a, j_a, i_b, j_b). The score of the axis pair is
    the plug-in conditional mutual information I(V_m; V_g | U) divided by the entropy of V_g, taken
    conditioned on the same U, H(V_g | U), as Jiang et al. (2020) and the competition normalize (so a
    measure that orders every pair as the gap does scores exactly 1). Ordered pairs of axes (i, j)
    and (j, i) condition on the same U, so each unordered pair is computed once; with only one
    varying axis, U is that axis's values in both runs. The score is the minimum over axis pairs,
    x 100; an axis pair with H(V_g | U) = 0 (the axes fix every gap order, e.g. two axes and no
    replicates) is skipped, and NaN is returned when every pair is skipped. Constant axes are left
    out; when every axis is constant: UserError.
    """
    values, gaps = np.asarray(values, dtype=float), np.asarray(gaps, dtype=float)
    varying = _check_varying(axes, len(values), "PGDL score")
    n = len(values)
    a, b = np.nonzero(~np.eye(n, dtype=bool))
    vg, vm = np.sign(gaps[a] - gaps[b]), np.sign(values[a] - values[b])
    names = list(varying)
    subsets = list(itertools.combinations(names, 2)) if len(names) > 1 else [(names[0],)]
    scores = []
    for subset in subsets:
        u = [col for name in subset for col in (varying[name][a], varying[name][b])]
        h_u, h_gu = _entropy(*u), _entropy(vg, *u)
        h_g_given_u = h_gu - h_u
        if h_g_given_u <= 1e-12:
            continue
        cmi = h_gu + _entropy(vm, *u) - _entropy(vg, vm, *u) - h_u
        scores.append(max(cmi, 0.0) / h_g_given_u)
    return 100.0 * min(scores) if scores else float("nan")


def _numeric(values: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{measure: {run_id: value}} from {run_id: {measure: value}}, keeping finite numbers only
    (list, None and non-finite values are left out, as are the names starting with '_')."""
    out: dict[str, dict[str, float]] = {}
    for run_id, named in values.items():
        for name, value in named.items():
            finite = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if finite and not name.startswith("_"):
                out.setdefault(name, {})[run_id] = float(value)
    return out


def _target(summary: dict | None, target: str) -> float | None:
    s = summary or {}
    train, test = s.get("train_acc"), s.get("test_acc")
    if target == "gap":
        return None if train is None or test is None else train - test
    return None if test is None else 1.0 - test


def correlate(db: Store, target: str = "gap") -> dict:
    """:func:`correlate_runs` over the store's finished runs and their stored measures
    (:func:`rethink.measures.stored.stored_values`)."""
    runs = [r for r in db.runs() if r["status"] in FINISHED]
    return correlate_runs(runs, stored_values(db, {r["run_id"] for r in runs}), target)


def correlate_runs(runs: list[dict], values: dict[str, dict], target: str = "gap") -> dict:
    """Each measure's agreement with ``target`` over ``runs`` (MEASURES.md sec. 4): tau over all
    runs, psi per axis, Psi and the PGDL score.

    ``runs``: dicts with run_id, spec (a dict) and summary; ``values``: {run_id: {measure: value}}.
    ``target``: gap (train_acc - test_acc) or test_error (1 - test_acc), from each run's summary.
    The axes are the spec fields that vary across the runs with measures, except the seed (runs
    that differ only in seed are replicates of one setting, not points along an axis), device,
    data_dir and loader_workers. Each measure uses the runs that have a number for it. Returns
    ``{"target", "runs", "axes", "specs", "measures"}``; ``measures`` is a list of ``{"name", "tau",
    "psi": {axis: psi_i}, "Psi", "pgdl", "runs"}`` ranked by tau, highest first (as Jiang et al.
    rank; NaN last).
    """
    if target not in TARGETS:
        raise UserError(f"unknown correlation target {target!r}; use one of {', '.join(TARGETS)}")
    finished = {r["run_id"]: r for r in runs}
    per_measure = _numeric({rid: v for rid, v in values.items() if rid in finished})
    with_measures = {rid for vals in per_measure.values() for rid in vals}
    targets = {rid: _target(finished[rid]["summary"], target) for rid in with_measures}
    run_ids = [rid for rid in finished if targets.get(rid) is not None]  # the runs' order: oldest first
    if len(run_ids) < 3:
        raise UserError(
            f"correlate needs at least 3 finished runs with measures; {len(run_ids)} have them: "
            "run 'rethink measure --all' first"
        )
    y = {rid: targets[rid] for rid in run_ids}
    if len(set(y.values())) == 1:
        raise UserError(
            f"correlate: the {target} is {next(iter(y.values())):g} in every one of the {len(run_ids)} runs; "
            "it needs runs that generalize differently"
        )
    fields = sorted({k for rid in run_ids for k in finished[rid]["spec"]} - set(NOT_AXES))
    all_axes = {f: [finished[rid]["spec"].get(f) for rid in run_ids] for f in fields}
    axis_names = list(_varying(all_axes, len(run_ids)))
    rows = []
    for name, vals in per_measure.items():
        ids = [rid for rid in run_ids if rid in vals]
        v, g = [vals[rid] for rid in ids], [y[rid] for rid in ids]
        axes = {f: [finished[rid]["spec"].get(f) for rid in ids] for f in axis_names}
        row = {"name": name, "tau": kendall_tau(v, g), "psi": {}, "Psi": float("nan"), "pgdl": float("nan")}
        if _varying(axes, len(ids)):
            gr = granulated(v, g, axes)
            row.update(psi=gr["psi"], Psi=gr["Psi"], pgdl=pgdl_score(v, g, axes))
        row["runs"] = len(ids)
        rows.append(row)
    rows.sort(key=lambda r: (math.isnan(r["tau"]), -r["tau"] if not math.isnan(r["tau"]) else 0.0, r["name"]))
    return {
        "target": target,
        "runs": len(run_ids),
        "axes": axis_names,
        "specs": [finished[rid]["spec"] for rid in run_ids],
        "measures": rows,
    }


def _cell(x: float, digits: int) -> str:
    return "" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def correlation_output(result: dict) -> Output:
    """The result of :func:`correlate` as a report: a table (measure, tau, psi per axis, Psi, PGDL)
    and a bar chart of tau per measure, both ranked best first (MEASURES.md sec. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes, rows = result["axes"], result["measures"]
    target = "generalization gap" if result["target"] == "gap" else "test error"
    table = Table(
        "correlate",
        ["measure", "runs", "tau", *[f"psi ({a})" for a in axes], "Psi", "PGDL"],
        [
            [
                r["name"],
                str(r["runs"]),
                _cell(r["tau"], 3),
                *[_cell(r["psi"].get(a, float("nan")), 3) for a in axes],
                _cell(r["Psi"], 3),
                _cell(r["pgdl"], 2),
            ]
            for r in rows
        ],
        f"Kendall's tau of each measure with the {target} over {result['runs']} finished runs, "
        f"granulated consistency psi per axis and Psi, and the PGDL score; ranked by tau.",
        [
            "runs: those with a value of the measure (a certificate is computed for some runs only). "
            "tau: over all pairs of runs, ties count 0. psi (axis): mean tau over the settings of the other "
            "axes as only that axis varies; Psi: mean of the psi. PGDL: minimum over axis pairs of the "
            "conditional mutual information between the signs of gap and measure differences, divided by "
            "the conditional entropy of the gap sign, x 100. Seeds are replicates, not an axis.",
            f"Axes: {', '.join(axes) or 'none (psi, Psi and PGDL need one)'}.",
        ],
    )
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(rows), 3) + 1.2))
    ax.barh(range(len(rows)), [0.0 if math.isnan(r["tau"]) else r["tau"] for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows])
    ax.invert_yaxis()  # best first, at the top
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlim(-1.0, 1.0)
    ax.set_xlabel(f"Kendall's tau with the {target}")
    fig.tight_layout()
    caption = f"Kendall's tau of each measure with the {target} over {result['runs']} finished runs, best first."
    return Output("correlate", "store", [table], [Figure("correlate", fig, caption)], result.get("specs", []))


def store_output(db: Store) -> Output | None:
    """The report's "Measures" section: a table of every finished run's stored measures, then the
    correlation table and figure of :func:`correlation_output` when the runs allow one (a note says
    why not otherwise); None when no finished run has measures."""
    from . import MEASURES

    runs = [r for r in db.runs() if r["status"] in FINISHED]
    values = stored_values(db, {r["run_id"] for r in runs})
    runs = [r for r in runs if r["run_id"] in values]
    if not runs:
        return None
    per_measure = _numeric(values)
    names = [n for n in ("pacbayes_bound", "pacbayes_kl", *MEASURES.names()) if n in per_measure]
    names += sorted(set(per_measure) - set(names))  # a measure registered in another session
    rows = []
    for r in runs:
        spec, summary = r["spec"], r["summary"] or {}
        test = spec.get("randomize", "") + (f" p={spec['p']:g}" if spec.get("randomize") == "partial-labels" else "")
        rows.append(
            [
                r["run_id"],
                f"{spec.get('model')} {test}",
                *(_cell(100 * summary[k], 1) if summary.get(k) is not None else "" for k in ("train_acc", "test_acc")),
                *(f"{per_measure[n][r['run_id']]:.3g}" if r["run_id"] in per_measure[n] else "" for n in names),
            ]
        )
    table = Table(
        "measures",
        ["run", "model and test", "train acc %", "test acc %", *names],
        rows,
        f"The stored measures of the {len(runs)} finished run(s) that have them (rethink measure, rethink bound).",
    )
    tables, figures = [table], []
    try:
        corr = correlation_output(correlate_runs(runs, values))
        tables, figures = [table, *corr.tables], corr.figures
    except UserError as e:
        table.notes.append(f"No correlation table: {e}")
    return Output("Measures", "store", tables, figures, [r["spec"] for r in runs])
