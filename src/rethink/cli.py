"""The command line: a thin layer over the Python API.

Every user mistake ends in one line on stderr naming the problem and the fix, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import is_dataclass
from functools import partial
from typing import NamedTuple

from .errors import UserError
from .flags import add_flags, build
from .kernels.experiment import KernelConfig, KernelOutputs
from .kernels.linear_sgd import LinearSGDConfig, LinearSGDOutputs
from .options import (
    BoundOptions,
    CorrelateOptions,
    DemoOptions,
    ExportOptions,
    MeasureOptions,
    MemorizationOptions,
    ModelsOptions,
    ReportOptions,
    ReproduceOptions,
    StoreOptions,
    SweepOptions,
    ThreadOptions,
    TrainOptions,
)
from .spec import FIELD_NAMES, RunSpec, from_dict, load_toml
from .theory.commands import CONSTRUCT_DEFAULTS, CONSTRUCT_SPEC, ConstructOptions, RademacherOptions
from .train.engine import speed_settings
from .version import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        print(f"{self.prog}: error: {message}; see '{self.prog} --help'", file=sys.stderr)
        sys.exit(2)


def _use_threads(args: argparse.Namespace) -> int | None:
    """Apply --threads; returns the thread count before it (None: unchanged), for main to restore."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return None
    if threads < 1:
        raise UserError(f"--threads {threads} must be at least 1")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return before


def _interrupted(e: KeyboardInterrupt) -> str:
    """The line an interruption ends with: where each run it stopped can resume from (api.run and
    run_sweep attach those runs' results; a bare interruption stopped outside training, or in
    worker processes, which checkpoint their current step before they exit)."""
    notes = []
    for r in (a for a in e.args if hasattr(a, "summary")):
        steps, saved = r.summary.get("steps") or 0, r.summary.get("checkpoint_step")
        if not steps:
            notes.append(f"run {r.run_id} had not trained yet")
        elif saved == steps:
            notes.append(f"run {r.run_id} stopped at step {steps} and saved a checkpoint there")
        else:
            notes.append(
                f"run {r.run_id} stopped at step {steps}, "
                + (f"its last checkpoint is at step {saved}" if saved else "with no checkpoint (it restarts)")
            )
    if not notes:
        notes = ["finished runs are in the store, runs in training checkpointed their current step"]
    return f"rethink: interrupted; {'; '.join(notes)}; run the same command again to resume"


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    values = load_toml(args.spec) if getattr(args, "spec", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in FIELD_NAMES})
    return from_dict(values)


def _table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def fmt_fit(ttf) -> str:
    if not ttf:
        return "not fitted"
    return f"{ttf['steps']} steps / {ttf['epochs']:.1f} ep / {ttf['seconds']:.1f} s"


# The flags of a command that trains, passed on by name to the API that does it.
TRAINING = ("store", "force", "checkpoint_dir", "checkpoint_interval", "compile", "tensorboard")


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The parsed flags ``names``, by name: the keyword arguments of the API call they go to."""
    return {name: getattr(args, name) for name in names}


def cmd_run(args) -> int:
    from tqdm import tqdm

    from .api import run
    from .distributed import rank

    spec = spec_from_args(args)
    if rank() != 0:  # under torchrun, rank 0 alone reports
        args.quiet, args.json = True, False
    bar = None

    def progress(step, total, row):
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(total=total, file=sys.stderr, unit="step", desc=spec.run_id, mininterval=0.5)
        bar.update(step - bar.n)
        bar.set_postfix(train=_pct(row["train_acc"]), test=_pct(row["test_acc"]), refresh=False)

    try:
        result = run(spec, on_progress=progress, **_given(args, *TRAINING))
    finally:
        if bar is not None:
            bar.close()
    s = result.summary
    if not args.quiet:
        note = " (already in the store; --force runs it again)" if result.cached else ""
        print(
            _table(
                [
                    [
                        result.run_id,
                        result.status,
                        s.get("num_params"),
                        _pct(s.get("train_acc")),
                        _pct(s.get("test_acc")),
                        fmt_fit(s.get("time_to_fit")),
                        s.get("steps"),
                    ]
                ],
                ["run", "status", "params", "train acc", "test acc", "time to fit", "steps"],
            )
            + note,
            file=sys.stderr,
        )
        if spec.randomize == "partial-labels":
            print(_corruption_line(s), file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json()))
    return 0


def _corruption_line(s: dict) -> str:
    """What a partial-labels run did with its corrupted and clean training examples."""
    return (
        f"partial labels: {_pct(s.get('replaced_fraction'))} drawn anew, {_pct(s.get('changed_fraction'))} "
        f"changed; train acc on the changed: {_pct(s.get('corrupted_acc_noisy')) or 'n/a'} (noisy label), "
        f"{_pct(s.get('corrupted_acc_true')) or 'n/a'} (true label); on the unchanged: "
        f"{_pct(s.get('clean_acc')) or 'n/a'}"
    )


def cmd_sweep(args) -> int:
    from .sweep import load_grid, run_sweep

    specs = load_grid(args.grid)
    print(f"sweep: {len(specs)} runs from {args.grid}", file=sys.stderr)
    if args.executor != "ray" and args.address:
        raise UserError("--address names a Ray cluster; add --executor ray")
    ray_flags = _given(args, "address", "cpus_per_run", "gpus_per_run", "max_retries")
    results = run_sweep(
        specs,
        executor_options=ray_flags if args.executor == "ray" else None,
        progress=not args.quiet,
        **_given(args, *TRAINING, "executor", "workers", "batch"),
    )
    rows = [
        [
            r.run_id,
            r.status,
            r.spec.model,
            r.spec.randomize + (f" p={r.spec.p:g}" if r.spec.randomize == "partial-labels" else ""),
            r.spec.seed,
            _pct(r.train_acc),
            _pct(r.test_acc),
            fmt_fit(r.time_to_fit),
            "stored" if r.cached else "ran",
        ]
        for r in results
    ]
    if not args.quiet:
        print(
            _table(rows, ["run", "status", "model", "test", "seed", "train acc", "test acc", "time to fit", ""]),
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps([r.to_json() for r in results]))
    return 0


def cmd_reproduce(args) -> int:
    from .distributed import rank
    from .recipes import reproduce
    from .report import to_markdown

    given = _given(
        args, "dataset", "data_dir", "seeds", "out", "store", "executor", "workers", "compile", "tensorboard"
    )
    output, _ = reproduce(args.name, args.scale, progress=not args.quiet and rank() == 0, **given)
    for table in output.tables if rank() == 0 else ():  # under torchrun, rank 0 alone reports
        print(to_markdown(table) + "\n")
    return 0


def cmd_report(args) -> int:
    from .measures.correlate import store_output
    from .recipes import stored_outputs, user_runs
    from .report import environment, write_html
    from .store import Store

    db = Store(args.store, readonly=True)
    outputs, runs = stored_outputs(db), user_runs(db)
    measures = store_output(db)
    outputs += [measures] if measures is not None else []
    path = write_html(outputs, args.out, env=environment(), runs=runs)
    print(f"wrote {path} ({len(outputs)} recipe outputs, {len(runs)} other runs)", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    import torch

    from .models import build, describe, num_params

    parts = [v.strip() for v in args.input_shape.split(",")]
    if len(parts) != 3 or not all(v.isdigit() and int(v) > 0 for v in parts):
        raise UserError(f"--input-shape {args.input_shape!r} must be C,H,W, e.g. 3,28,28")
    shape = tuple(int(v) for v in parts)
    if args.num_classes < 1:
        raise UserError(f"--num-classes {args.num_classes} must be positive")
    rows = []
    for name, desc in describe():
        torch.manual_seed(0)
        try:
            rows.append([name, f"{num_params(build(name, shape, args.num_classes)):,}", desc])
        except UserError as e:  # e.g. a model that needs larger inputs or an optional extra
            rows.append([name, "-", f"{desc} ({e})"])
    print(_table(rows, ["model", f"params @ {args.input_shape}, {args.num_classes} classes", "description"]))
    return 0


def cmd_runs(args) -> int:
    from .store import Store

    db = Store(args.store, readonly=True)
    rows, tracked = [], db.examples_bytes()
    for r in db.runs():
        sp, s = r["spec"], r["summary"] or {}
        test = sp["randomize"] + (f" p={sp['p']}" if sp["randomize"] == "partial-labels" else "")
        rows.append(
            [
                r["run_id"],
                r["state"],
                sp["dataset"],
                sp["model"],
                test,
                _pct(s.get("train_acc")),
                _pct(s.get("test_acc")),
                fmt_fit(s.get("time_to_fit")) if s else "",
                *([f"{tracked[r['run_id']] / 1024:.1f} KiB" if r["run_id"] in tracked else ""] if tracked else []),
            ]
        )
    header = ["run", "status", "dataset", "model", "test", "train acc", "test acc", "time to fit"]
    print(_table(rows, header + (["tracked"] if tracked else [])))
    return 0


def cmd_export(args) -> int:
    from .store import Store

    db = Store(args.store, readonly=True)
    if args.format == "parquet":
        from .analysis import export_parquet

        n = export_parquet(db, args.out, args.what, args.run_id or None)
    else:
        n = db.export_csv(args.out, args.what, args.run_id or None)
    if args.out != "-":
        print(f"wrote {n} rows to {args.out}", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from .demo import demo

    demo(out=args.out, store=args.store)
    return 0


def cmd_datasets(args) -> int:
    from .data import dataset_names

    print("\n".join(dataset_names()))
    return 0


def cmd_construct(args) -> int:
    from .theory.commands import construct_report, format_report

    report = construct_report(spec_from_args(args), args.outputs, args.depth)
    print(format_report(report), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report))
    return 0


def cmd_rademacher(args) -> int:
    from .theory.rademacher import rademacher

    def show(i, value, status):
        if not args.quiet:
            print(f"draw {i + 1}/{args.draws}: 1 - 2 * training error = {value:.4f} ({status})", file=sys.stderr)

    r = rademacher(spec_from_args(args), args.draws, on_draw=show)
    print(
        f"empirical Rademacher complexity >= {r.mean:.4f} ± {r.std:.4f} (mean ± std of 1 - 2 * training error "
        f"over {len(r.values)} draws of random ±1 labels; n = {r.n:,}, {r.num_params:,} parameters)",
        file=sys.stderr if args.json else sys.stdout,
    )
    if args.json:
        print(json.dumps(r.to_json()))
    return 0


def _stage_bars(quiet: bool):
    """A progress callback (stage, done, total) showing one tqdm bar for the current stage, and a closer."""
    from tqdm import tqdm

    bar = None

    def progress(stage, done, total):
        nonlocal bar
        if quiet:
            return
        if bar is None or bar.desc != stage:
            close()
            bar = tqdm(total=total, desc=stage, file=sys.stderr, mininterval=1.0)
        bar.update(done - bar.n)
        if done >= total:
            close()

    def close():
        if bar is not None:
            bar.close()

    return progress, close


def _log(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))


def cmd_kernel(args) -> int:
    from .kernels import norm_vs_noise, run_kernel
    from .report import close, save, to_markdown

    cfg = build(KernelConfig, args)
    out = sys.stderr if args.json else sys.stdout
    progress, close_bars = _stage_bars(args.quiet)
    try:
        if args.p_sweep is not None:
            output, summary = norm_vs_noise(cfg, args.p_sweep, _log(args.quiet), progress)
        else:
            r = run_kernel(cfg, _log(args.quiet), progress)
    finally:
        close_bars()
    if args.p_sweep is not None:
        paths = save(output, args.out)
        close(output)
        print(to_markdown(output.tables[0]), file=out)
        print(f"wrote {len(paths)} files to {args.out}", file=sys.stderr)
        if args.json:
            print(json.dumps(summary))
        return 0
    print(
        _table(
            [
                [
                    cfg.dataset,
                    f"{r.n:,}",
                    cfg.features,
                    r.kernel,
                    _pct(r.train_error),
                    _pct(r.test_error),
                    f"{r.rkhs_norm:.1f}",
                    f"{r.residual:.1e}",
                    f"{r.seconds:.0f} s",
                    f"{r.peak_memory_gb:.1f} GB",
                ]
            ],
            [
                "dataset",
                "n",
                "features",
                "kernel",
                "train error",
                "test error",
                "RKHS norm",
                "residual",
                "time",
                "peak memory",
            ],
        ),
        file=out,
    )
    if args.json:
        print(json.dumps(r.to_json()))
    return 0


def cmd_linear_sgd(args) -> int:
    from .kernels.linear_sgd import linear_sgd, report
    from .report import close, save, to_markdown

    cfg = build(LinearSGDConfig, args)
    result = linear_sgd(cfg)
    output = report(cfg, result)
    paths = save(output, args.out)
    close(output)
    print(to_markdown(output.tables[0]), file=sys.stderr if args.json else sys.stdout)
    print(f"wrote {len(paths)} files to {args.out}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "n": result.n,
                    "d": result.d,
                    "lr": result.lr,
                    "min_norm": result.min_norm,
                    "outside": result.outside,
                    "final": {name: {k: float(v[-1]) for k, v in run.items()} for name, run in result.runs.items()},
                }
            )
        )
    return 0


def cmd_measure(args) -> int:
    from .measures import MEASURES
    from .measures.stored import FINISHED, measure_run

    if args.list_measures:
        print(_table([[name, what] for name, what in MEASURES.describe()], ["measure", "what it is"]))
        return 0
    names = [MEASURES.canonical(n.strip()) for n in args.measures.split(",") if n.strip()] if args.measures else None
    db = _existing_store(args.store)
    run_ids = [r["run_id"] for r in db.runs() if r["status"] in FINISHED] if args.all else args.run_id
    if not run_ids:
        raise UserError("give --run-id ID (repeatable) or --all; 'rethink runs' lists the store's runs")
    given = _given(args, "subset", "percentile", "checkpoint_dir")
    results = {run_id: measure_run(db, run_id, measures=names, **given) for run_id in run_ids}
    if args.json:
        print(json.dumps(results))
        return 0
    shown = [n for n in dict.fromkeys(k for values in results.values() for k in values) if not n.startswith("_")]
    rows = [[n, *(_measure_text(values.get(n)) for values in results.values())] for n in shown]
    print(_table(rows, ["measure", *run_ids]))
    return 0


def cmd_bound(args) -> int:
    from .measures.stored import bound_run
    from .store import Store

    if args.steps < 1 or args.samples < 1:
        raise UserError(f"--steps {args.steps} and --samples {args.samples} must be at least 1")
    out = bound_run(Store(args.store), args.run_id, **_given(args, "steps", "samples", "checkpoint_dir"), log=_stderr)
    if args.json:
        print(json.dumps(out))
    else:
        keys = ("bound", "e_mc", "e_up", "snn_test_error", "kl", "B_RE", "lambda", "j", "m", "n_samples", "seconds")
        print(_table([[k, _measure_text(out[k])] for k in keys], ["certificate", args.run_id]))
    _stderr(
        f"holds with probability {out['confidence']:.3f}; vacuous when at least {out['chance_error']:.2g} "
        "(the error of guessing)"
    )
    return 0


def cmd_correlate(args) -> int:
    from .measures.correlate import correlate, correlation_output
    from .report import close, save, to_markdown
    from .store import Store

    result = correlate(Store(args.store, readonly=True), target=args.target)
    output = correlation_output(result)
    try:
        save(output, args.out)
    finally:
        close(output)
    if args.json:
        print(json.dumps(_json_safe(result)))
    else:
        for table in output.tables:
            print(to_markdown(table) + "\n")
    print(f"wrote the table and figure to {args.out}", file=sys.stderr)
    return 0


def cmd_memorization(args) -> int:

    from .memorization.stored import memorization, memorization_output
    from .report import close, save, to_markdown
    from .store import Store

    result, prepared = memorization(Store(args.store, readonly=True), args.run_id)
    output = memorization_output(result, prepared.data.x_train.cpu())
    try:
        save(output, args.out)
    finally:
        close(output)
    if args.json:
        print(json.dumps(result))
    else:
        print(to_markdown(output.tables[0]) + "\n")
    print(f"wrote the table and figure to {args.out}", file=sys.stderr)
    return 0


def _json_safe(value):
    """``value`` with NaN (an undefined tau or psi) as null, which every JSON reader takes."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _existing_store(path: str):
    """The store at ``path``, opened to record measures in; one that is missing is not created."""
    from .store import Store

    if not os.path.exists(path):
        raise UserError(f"store {path} does not exist; pass --store with the file that 'rethink run' wrote")
    return Store(path)


def _measure_text(value) -> str:
    if isinstance(value, list):
        return f"({len(value)} values)"
    return "-" if value is None else f"{value:.4g}"


def _spec_file(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spec", metavar="FILE.toml", help="a spec file (keys: the flags' names with underscores); flags override it"
    )
    add_flags(p, RunSpec, overlay=True)


class Command(NamedTuple):
    func: Callable[[argparse.Namespace], int]
    help: str
    flags: tuple = ()  # dataclasses whose fields are the flags, or functions adding flags to a parser
    description: str | None = None


COMMANDS = {
    "run": Command(cmd_run, "train one model under one randomization test", (_spec_file, TrainOptions, ThreadOptions)),
    "sweep": Command(
        cmd_sweep,
        "run a grid of specs (skips finished runs, resumes interrupted ones)",
        (SweepOptions, TrainOptions, ThreadOptions),
    ),
    "reproduce": Command(
        cmd_reproduce, "reproduce one of the paper's figures or tables", (ReproduceOptions, StoreOptions, ThreadOptions)
    ),
    "report": Command(
        cmd_report, "one self-contained HTML file with every figure and table the store can make", (ReportOptions,)
    ),
    "demo": Command(
        cmd_demo,
        "the six tests and a p sweep on the embedded digits set (about a minute)",
        (DemoOptions, partial(add_flags, cls=StoreOptions, defaults={"store": None})),
    ),
    "models": Command(cmd_models, "list registered models with their parameter counts", (ModelsOptions,)),
    "datasets": Command(cmd_datasets, "list the dataset sources"),
    "runs": Command(cmd_runs, "list the runs in a store", (StoreOptions,)),
    "export": Command(cmd_export, "write a store's metrics as CSV or parquet", (ExportOptions,)),
    "bound": Command(
        cmd_bound, "a non-vacuous PAC-Bayes certificate of a stored run (Dziugaite & Roy 2017)", (BoundOptions,)
    ),
    "memorization": Command(
        cmd_memorization,
        "which training examples a --track-examples run learned when: clean against corrupted",
        (MemorizationOptions,),
    ),
    "correlate": Command(
        cmd_correlate,
        "Kendall tau of each stored measure with the generalization gap, overall and per varied axis",
        (CorrelateOptions,),
    ),
    "measure": Command(
        cmd_measure,
        "generalization measures (norms, margins, ...) of finished runs, stored beside them",
        (MeasureOptions,),
    ),
    "construct": Command(
        cmd_construct,
        "build Theorem 1's network (2n + d weights) that fits a whole training set",
        (
            partial(add_flags, cls=RunSpec, names=CONSTRUCT_SPEC, defaults=CONSTRUCT_DEFAULTS, overlay=True),
            ConstructOptions,
        ),
    ),
    "rademacher": Command(
        cmd_rademacher,
        "lower-bound the empirical Rademacher complexity by fitting random ±1 labels",
        (_spec_file, RademacherOptions),
        "Trains --model with a two-class head on random ±1 labels for each draw; --model theorem1 "
        "builds Theorem 1's network instead (exactly 1).",
    ),
    "kernel": Command(
        cmd_kernel,
        "fit the training labels exactly with a kernel machine (minimum-norm interpolant)",
        (KernelConfig, KernelOutputs),
    ),
    "linear-sgd": Command(
        cmd_linear_sgd,
        "SGD on least squares from w = 0 converges to the minimum-norm solution",
        (LinearSGDConfig, LinearSGDOutputs),
    ),
}


DEBUG_HELP = "on an error, print its traceback as well as the one-line message (or set RETHINK_DEBUG=1)"


def make_parser() -> argparse.ArgumentParser:
    top = _Parser(prog="rethink", description="Randomization tests of generalization (Zhang et al., ICLR 2017).")
    top.add_argument("--version", action="version", version=f"rethink {__version__}")
    top.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.description)
        for flags in command.flags:
            if is_dataclass(flags):
                add_flags(p, flags)
            else:
                flags(p)
        # also after the command's name; SUPPRESS keeps the top's value
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.set_defaults(func=command.func)
    return top


def _debug(args: argparse.Namespace) -> bool:
    return getattr(args, "debug", False) or os.environ.get("RETHINK_DEBUG", "") not in ("", "0")


def _terminated(signum, frame):
    raise KeyboardInterrupt  # schedulers stop jobs with SIGTERM: end as Ctrl-C does, keeping what finished


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()  # (where handlers can be set)
    on_term = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    threads_before = None
    try:
        threads_before = _use_threads(args)
        speed_settings()  # this process is the command's own: train at the engine's full speed
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
    except UserError as e:
        if _debug(args):
            traceback.print_exc()
        print(f"rethink: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of stdout stopped early (`rethink export | head`): stop quietly, as Unix tools
        # do, and send what is still buffered nowhere so that the exit does not complain either.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is no file (tests capture it)
            pass
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as e:
        print(_interrupted(e), file=sys.stderr)
        return 130
    finally:
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)
        if threads_before is not None:  # a caller in this process (Python, tests) keeps its own count
            import torch

            torch.set_num_threads(threads_before)
    if "rethink.distributed" in sys.modules:  # under torchrun: every rank leaves together
        sys.modules["rethink.distributed"].leave()
    return code


if __name__ == "__main__":
    sys.exit(main())
