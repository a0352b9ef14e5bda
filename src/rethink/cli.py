"""The command line: a thin layer over the Python API.

Every user mistake ends in one line on stderr naming the problem and the fix, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import traceback
from dataclasses import fields

from . import __version__
from .errors import UserError
from .spec import FIELD_NAMES, RunSpec, from_dict, load_toml

HELP = {
    "dataset": "digits (embedded), fashion-mnist, mnist, cifar10, imagefolder, imagefolder:PATH or npz:PATH",
    "data_dir": "where the dataset's files are (else $RETHINK_DATA/<name>, else /usr/share/datasets/<name>)",
    "train_size": "a seeded, class-stratified subset of the training set",
    "test_size": "a seeded, class-stratified subset of the test set",
    "preprocess": "standard (centre crop + per-image standardization) or none (pixels in [0, 1])",
    "crop": "centre crop: auto (32 -> 28, else none), none, or a side length",
    "randomize": "none, partial-labels, random-labels, shuffled-pixels, random-pixels or gaussian",
    "p": "label corruption probability for partial-labels",
    "test_labels": "clean (the paper) or corrupted (test labels corrupted with the same p)",
    "test_inputs": "pixel/gaussian tests: randomized (test images treated like training images) or clean",
    "model": "a registered model (see 'rethink models') or package.module:factory",
    "hidden": "hidden layer widths for --model mlp, e.g. 512,512",
    "width": "width multiplier for narrower or wider models",
    "dropout": "dropout probability",
    "lr": "initial learning rate (default 0.1 for Inception, 0.01 otherwise)",
    "lr_decay": "learning rate factor after every epoch (paper: 0.95; 1 keeps it constant)",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay on weights (not biases)",
    "batch_size": "mini-batch size",
    "epochs": "epoch budget",
    "max_steps": "step budget (whichever of epochs and steps ends first)",
    "augment": "comma list of crop, flip, color (batched on the device); crop takes random windows of the cropped "
               "size (32x32 -> 28x28); images without a crop (8x8 digits, 28x28 MNIST) are zero-padded by an "
               "eighth of their side (at least 1 pixel) first, so crop shifts them by up to that many pixels",
    "eval_every": "evaluate every N steps (default: once per epoch)",
    "fit_threshold": "training accuracy that counts as fitted",
    "stop_loss": "end the run when the full training loss falls to this value (status converged)",
    "seed": "one seed for data randomization, subset, initialization, batch order and augmentation",
    "device": "auto, cpu or cuda",
    "image_size": "with --stream: side of the network's input; images are cropped and resized to it (Inception V3: 299)",
    "loader_workers": "with --stream: DataLoader processes decoding images (0: in the training process)",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        print(f"{self.prog}: error: {message}; see '{self.prog} --help'", file=sys.stderr)
        sys.exit(2)


def _add_spec_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", metavar="FILE.toml", help="a spec file (keys: the flags' names with underscores); flags override it")
    for f in fields(RunSpec):
        if f.name == "stream":
            p.add_argument("--stream", action="store_const", const=True, default=argparse.SUPPRESS,
                           help="image folders too large for memory (ImageNet): decode images as they are read, "
                                "with the Inception V3 input pipeline at --image-size")
            continue
        if f.name == "stop_on_fit":
            p.add_argument("--no-stop-on-fit", dest="stop_on_fit", action="store_const", const=False,
                           default=argparse.SUPPRESS, help="train to the budget even after fitting (time to fit is still recorded)")
            continue
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS,
                       help=f"{HELP.get(f.name, '')} (default: {f.default})")


COMPILE_HELP = ("train through torch.compile: same numbers to float rounding; compiling takes up to a minute per "
                "run; measured 2.3x faster for the cpu scale's narrow Inception, slower for the MLPs and AlexNet "
                "(runs trained batched are not compiled)")


def _add_compile_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)


def _add_store_flags(p: argparse.ArgumentParser) -> None:
    from .api import DEFAULT_STORE

    p.add_argument("--store", default=DEFAULT_STORE, help=f"SQLite results file (default {DEFAULT_STORE})")
    p.add_argument("--checkpoint-dir",
                   help="checkpoint folder (default: NAME.checkpoints/ beside the store NAME.sqlite)")
    p.add_argument("--checkpoint-interval", type=_seconds, default=60.0, metavar="SECONDS",
                   help="checkpoint at the first epoch end after this many seconds (0: every epoch; default 60); "
                        "Ctrl-C or SIGTERM checkpoints at once, after the current step")
    p.add_argument("--force", action="store_true", help="run again even if the store has it finished")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")


def _add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads to train with (default: the cores); --executor process shares them among its "
                        "workers. Jobs running at once on one machine should share the cores: give each its part")


def _use_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads {threads} must be at least 1")
    import torch

    torch.set_num_threads(threads)


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
            notes.append(f"run {r.run_id} stopped at step {steps}, "
                         + (f"its last checkpoint is at step {saved}" if saved else "with no checkpoint (it restarts)"))
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
        result = run(spec, args.store, force=args.force, checkpoint_dir=args.checkpoint_dir,
                     checkpoint_interval=args.checkpoint_interval, on_progress=progress, compile=args.compile)
    finally:
        if bar is not None:
            bar.close()
    s = result.summary
    if not args.quiet:
        note = " (already in the store; --force runs it again)" if result.cached else ""
        print(_table([[result.run_id, result.status, s.get("num_params"), _pct(s.get("train_acc")),
                       _pct(s.get("test_acc")), fmt_fit(s.get("time_to_fit")), s.get("steps")]],
                     ["run", "status", "params", "train acc", "test acc", "time to fit", "steps"]) + note,
              file=sys.stderr)
        if spec.randomize == "partial-labels":
            print(_corruption_line(s), file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json()))
    return 0


def _corruption_line(s: dict) -> str:
    """What a partial-labels run did with its corrupted and clean training examples."""
    return (f"partial labels: {_pct(s.get('replaced_fraction'))} drawn anew, {_pct(s.get('changed_fraction'))} "
            f"changed; train acc on the changed: {_pct(s.get('corrupted_acc_noisy')) or 'n/a'} (noisy label), "
            f"{_pct(s.get('corrupted_acc_true')) or 'n/a'} (true label); on the unchanged: "
            f"{_pct(s.get('clean_acc')) or 'n/a'}")


def cmd_sweep(args) -> int:
    from .sweep import load_grid, run_sweep

    specs = load_grid(args.grid)
    print(f"sweep: {len(specs)} runs from {args.grid}", file=sys.stderr)
    ray_flags = {"address": args.address, "cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run,
                 "max_retries": args.max_retries}
    if args.executor != "ray" and args.address:
        raise UserError("--address names a Ray cluster; add --executor ray")
    results = run_sweep(specs, args.store, executor=args.executor, workers=args.workers, force=args.force,
                        executor_options=ray_flags if args.executor == "ray" else None,
                        checkpoint_dir=args.checkpoint_dir, checkpoint_interval=args.checkpoint_interval,
                        progress=not args.quiet, batch=args.batch, compile=args.compile)
    rows = [[r.run_id, r.status, r.spec.model, r.spec.randomize + (f" p={r.spec.p:g}" if r.spec.randomize == "partial-labels" else ""),
             r.spec.seed, _pct(r.train_acc), _pct(r.test_acc), fmt_fit(r.time_to_fit), "stored" if r.cached else "ran"]
            for r in results]
    if not args.quiet:
        print(_table(rows, ["run", "status", "model", "test", "seed", "train acc", "test acc", "time to fit", ""]),
              file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_json() for r in results]))
    return 0


def cmd_reproduce(args) -> int:
    from .distributed import rank
    from .recipes import reproduce
    from .report import to_markdown

    output, _ = reproduce(args.name, args.scale, dataset=args.dataset, data_dir=args.data_dir, seeds=args.seeds,
                              out=args.out, store=args.store, executor=args.executor, workers=args.workers,
                              progress=not args.quiet and rank() == 0, compile=args.compile)
    for table in output.tables if rank() == 0 else ():  # under torchrun, rank 0 alone reports
        print(to_markdown(table) + "\n")
    return 0


def cmd_report(args) -> int:
    from .recipes import stored_outputs, user_runs
    from .report import environment, write_html
    from .store import Store

    db = Store(args.store, readonly=True)
    outputs, runs = stored_outputs(db), user_runs(db)
    path = write_html(outputs, args.out, env=environment(), runs=runs)
    print(f"wrote {path} ({len(outputs)} recipe outputs, {len(runs)} other runs)", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    import torch

    from .models import build, describe, num_params

    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
        assert len(shape) == 3 and min(shape) > 0
    except (ValueError, AssertionError):
        raise UserError(f"--input-shape {args.input_shape!r} must be C,H,W, e.g. 3,28,28") from None
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

    rows = []
    for r in Store(args.store, readonly=True).runs():
        sp, s = r["spec"], r["summary"] or {}
        test = sp["randomize"] + (f" p={sp['p']}" if sp["randomize"] == "partial-labels" else "")
        rows.append([r["run_id"], r["state"], sp["dataset"], sp["model"], test, _pct(s.get("train_acc")),
                     _pct(s.get("test_acc")), fmt_fit(s.get("time_to_fit")) if s else ""])
    print(_table(rows, ["run", "status", "dataset", "model", "test", "train acc", "test acc", "time to fit"]))
    return 0


def cmd_export(args) -> int:
    from .store import Store

    n = Store(args.store, readonly=True).export_csv(args.out, args.what, args.run_id or None)
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
    print(f"empirical Rademacher complexity >= {r.mean:.4f} ± {r.std:.4f} (mean ± std of 1 - 2 * training error "
          f"over {len(r.values)} draws of random ±1 labels; n = {r.n:,}, {r.num_params:,} parameters)",
          file=sys.stderr if args.json else sys.stdout)
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
    from dataclasses import fields as dc_fields

    from .kernels import KernelConfig, norm_vs_noise, run_kernel
    from .report import close, save, to_markdown

    cfg = KernelConfig(**{f.name: getattr(args, f.name) for f in dc_fields(KernelConfig)})
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
    print(_table([[cfg.dataset, f"{r.n:,}", cfg.features, r.kernel, _pct(r.train_error), _pct(r.test_error),
                   f"{r.rkhs_norm:.1f}", f"{r.residual:.1e}", f"{r.seconds:.0f} s", f"{r.peak_memory_gb:.1f} GB"]],
                 ["dataset", "n", "features", "kernel", "train error", "test error", "RKHS norm", "residual", "time",
                  "peak memory"]), file=out)
    if args.json:
        print(json.dumps(r.to_json()))
    return 0


def cmd_linear_sgd(args) -> int:
    from dataclasses import fields as dc_fields

    from .kernels.linear_sgd import LinearSGDConfig, linear_sgd, report
    from .report import close, save, to_markdown

    cfg = LinearSGDConfig(**{f.name: getattr(args, f.name) for f in dc_fields(LinearSGDConfig)})
    result = linear_sgd(cfg)
    output = report(cfg, result)
    paths = save(output, args.out)
    close(output)
    print(to_markdown(output.tables[0]), file=sys.stderr if args.json else sys.stdout)
    print(f"wrote {len(paths)} files to {args.out}", file=sys.stderr)
    if args.json:
        print(json.dumps({"n": result.n, "d": result.d, "lr": result.lr, "min_norm": result.min_norm,
                          "outside": result.outside, "final": {name: {k: float(v[-1]) for k, v in run.items()}
                                                               for name, run in result.runs.items()}}))
    return 0


def _seconds(text: str) -> float:
    """A finite number of seconds, 0 or more: with NaN no checkpoint would ever be written."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0 (0: every epoch), e.g. 60")
    return value


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of numbers, e.g. 0,0.2,0.4") from None


def _crop(text: str):
    return int(text) if text.isdigit() else text


def make_parser() -> argparse.ArgumentParser:
    from .api import DEFAULT_STORE

    top = _Parser(prog="rethink", description="Randomization tests of generalization (Zhang et al., ICLR 2017).")
    top.add_argument("--version", action="version", version=f"rethink {__version__}")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="train one model under one randomization test")
    _add_spec_flags(p)
    _add_store_flags(p)
    _add_compile_flag(p)
    _add_threads_flag(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="run a grid of specs (skips finished runs, resumes interrupted ones)")
    p.add_argument("grid", metavar="GRID.toml", help="grid file (see examples/grid.toml)")
    p.add_argument("--executor", default="local",
                   help="local (one process), process (worker processes) or ray (tasks on a Ray cluster)")
    p.add_argument("--workers", type=int, default=2, help="worker processes for --executor process (default 2)")
    p.add_argument("--address", help="--executor ray: the cluster, auto (the one this machine belongs to) or "
                                     "ray://HOST:10001; default: start a local Ray instance with this machine's cores")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="--executor ray: CPUs each run asks for (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=0.0,
                   help="--executor ray: GPUs each run asks for; a fraction packs small models onto one GPU "
                        "(0.25: four runs per GPU; default 0: train on CPUs)")
    p.add_argument("--max-retries", type=int, default=2,
                   help="--executor ray: retries of a failed or lost run before it is recorded as failed (default 2)")
    p.add_argument("--no-batch", dest="batch", action="store_false",
                   help="train every run on its own (default: runs of small models train several at once, as a "
                        "fixed rule over the specs decides; see rethink.batching)")
    _add_compile_flag(p)
    _add_store_flags(p)
    _add_threads_flag(p)
    p.set_defaults(func=cmd_sweep)

    from .recipes import RECIPES, SCALES

    p = sub.add_parser("reproduce", help="reproduce one of the paper's figures or tables")
    p.add_argument("name", help=", ".join(RECIPES))
    p.add_argument("--scale", default="cpu", choices=SCALES,
                   help="smoke (seconds, for tests), cpu (about an hour on 2 cores), paper (CIFAR-10, full size)")
    p.add_argument("--dataset", help="replace the scale's dataset (e.g. imagefolder, cifar10)")
    p.add_argument("--data-dir", help="where the dataset's files are")
    p.add_argument("--seeds", type=int, default=1, help="seeds per setting (means with spread when > 1)")
    p.add_argument("--out", help="output folder (default results/NAME)")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--executor", default="local", help="local or process")
    p.add_argument("--workers", type=int, default=2, help="worker processes for --executor process")
    _add_threads_flag(p)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help=COMPILE_HELP + "; default: the scale's choice (cpu: Inception compiled, the rest not), "
                        "--no-compile: none")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("report", help="one self-contained HTML file with every figure and table the store can make")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--out", default="report.html")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the six tests and a p sweep on the embedded digits set (about a minute)")
    p.add_argument("--out", default="demo-out", help="folder for the table and learning-curve PNG")
    p.add_argument("--store", default=None, help="SQLite file (default: OUT/demo.sqlite)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list registered models with their parameter counts")
    p.add_argument("--input-shape", default="3,28,28", help="C,H,W (default 3,28,28)")
    p.add_argument("--num-classes", type=int, default=10)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("datasets", help="list the dataset sources")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("runs", help="list the runs in a store")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("export", help="write a store's metrics as CSV")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--out", default="-", help="CSV file (default: stdout)")
    p.add_argument("--what", choices=("evals", "steps", "runs"), default="evals")
    p.add_argument("--run-id", action="append", help="only this run (repeatable)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("construct", help="build Theorem 1's network (2n + d weights) that fits a whole training set")
    for name in ("dataset", "data_dir", "train_size", "test_size", "randomize", "p", "preprocess", "crop", "seed"):
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                       help=HELP[name] + ("; default here: none" if name == "preprocess" else ""))
    p.set_defaults(preprocess="none")  # raw pixels: integer multiples of a power of two, projected exactly
    p.add_argument("--outputs", choices=("scalar", "onehot"), default="scalar",
                   help="scalar: one output fitting the labels as numbers (2n + d weights); onehot: one output "
                        "per class (d + n + nK weights)")
    p.add_argument("--depth", type=int, default=2, help="2: Theorem 1's network; K > 2: the same function, width O(n/K)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.set_defaults(func=cmd_construct)

    p = sub.add_parser("rademacher", help="lower-bound the empirical Rademacher complexity by fitting random ±1 labels",
                       description="Trains --model with a two-class head on random ±1 labels for each draw; "
                                   "--model theorem1 builds Theorem 1's network instead (exactly 1).")
    _add_spec_flags(p)
    p.add_argument("--draws", type=int, default=5, help="draws of random labels (default 5)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no per-draw lines")
    p.set_defaults(func=cmd_rademacher)

    from .kernels.features import FEATURES
    from .kernels.functions import KERNELS

    p = sub.add_parser("kernel", help="fit the training labels exactly with a kernel machine (minimum-norm interpolant)")
    p.add_argument("--dataset", required=True, help=HELP["dataset"])
    p.add_argument("--data-dir", help=HELP["data_dir"])
    p.add_argument("--train-size", type=int, help=HELP["train_size"] + " (default: all)")
    p.add_argument("--test-size", type=int, help=HELP["test_size"] + " (default: all)")
    p.add_argument("--preprocess", default="none", help="none (pixels in [0, 1], the default) or standard")
    p.add_argument("--crop", type=_crop, default="auto", help=HELP["crop"])
    p.add_argument("--randomize", default="none", help=HELP["randomize"])
    p.add_argument("--p", type=float, default=0.0, help=HELP["p"])
    p.add_argument("--kernel", default="gaussian", help=f"{', '.join(KERNELS)} (default gaussian)")
    p.add_argument("--bandwidth", type=float, help="the kernel's length scale s (default: a rule on the median "
                   "pairwise distance, see docs/theory.md); gaussian exp(-|x-y|^2/(2s^2)), laplacian exp(-|x-y|/s), "
                   "polynomial (1 + <x,y>/s^2)^degree")
    p.add_argument("--degree", type=int, default=2, help="polynomial degree (default 2)")
    p.add_argument("--features", default="none", help=f"{', '.join(FEATURES)}: a feature map before the kernel")
    p.add_argument("--filters", type=int, default=1024, help="random-conv: number of random filters (default 1024)")
    p.add_argument("--filter-size", type=int, default=5, help="random-conv: filter side (default 5)")
    p.add_argument("--pool", type=int, help="feature maps: average-pool to a POOL x POOL grid (default 2 for "
                   "random-conv, 7 for gabor)")
    p.add_argument("--orientations", type=int, default=8, help="gabor: orientations (default 8)")
    p.add_argument("--scales", type=int, default=3, help="gabor: scales, wavelengths 3, 6, 12, ... pixels (default 3)")
    p.add_argument("--ridge", type=float, default=0.0, help="add R times the identity to K (default 0: interpolate)")
    p.add_argument("--tol", type=float, default=1e-10, help="relative residual at which CG stops (default 1e-10)")
    p.add_argument("--max-iter", type=int, default=30, help="CG steps at most (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed for the subset, the randomization and random features")
    p.add_argument("--max-memory", dest="max_memory_gb", type=float,
                   help="GB this process may use (default: whatever is available)")
    p.add_argument("--p-sweep", type=_floats, metavar="P,P,...",
                   help="solve for every label corruption p in the list at once (one factorization) and write "
                        "the norm-vs-noise table and figure to --out")
    p.add_argument("--out", default="results/norm_vs_noise", help="output folder for --p-sweep")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars or estimate")
    p.set_defaults(func=cmd_kernel)

    p = sub.add_parser("linear-sgd", help="SGD on least squares from w = 0 converges to the minimum-norm solution")
    p.add_argument("--dataset", default="fashion-mnist", help=HELP["dataset"] + " (default fashion-mnist)")
    p.add_argument("--data-dir", help=HELP["data_dir"])
    p.add_argument("--train-size", type=int, default=100, help="n, fewer than the input dimensions (default 100)")
    p.add_argument("--preprocess", default="standard", help="standard (the default: better conditioned) or none")
    p.add_argument("--features", default="none", help="none or random-conv/gabor (more dimensions)")
    p.add_argument("--steps", type=int, default=100_000, help="SGD steps (default 100,000)")
    p.add_argument("--batch-size", type=int, default=1, help="examples per step (default 1)")
    p.add_argument("--lr", type=float, help="constant learning rate (default 1 / max |x_i|^2)")
    p.add_argument("--record-every", type=int, default=500, help="record the distances every N steps")
    p.add_argument("--seed", type=int, default=0, help="seed for the subset, the outside start and the order")
    p.add_argument("--out", default="results/linear_sgd", help="output folder for the figure and table")
    p.add_argument("--json", action="store_true", help="print the final distances as one JSON object on stdout")
    p.set_defaults(func=cmd_linear_sgd)

    top.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    for p in sub.choices.values():  # also after the command's name; SUPPRESS keeps the top's value
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return top


DEBUG_HELP = "on an error, print its traceback as well as the one-line message (or set RETHINK_DEBUG=1)"


def _debug(args: argparse.Namespace) -> bool:
    return getattr(args, "debug", False) or os.environ.get("RETHINK_DEBUG", "") not in ("", "0")


def _terminated(signum, frame):
    raise KeyboardInterrupt  # schedulers stop jobs with SIGTERM: end as Ctrl-C does, keeping what finished


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()  # (where handlers can be set)
    on_term = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        _use_threads(args)
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
    if "rethink.distributed" in sys.modules:  # under torchrun: every rank leaves together
        sys.modules["rethink.distributed"].leave()
    return code


if __name__ == "__main__":
    sys.exit(main())
