"""The report layer: what a recipe produced, written as files (PNG, SVG, Markdown, LaTeX, JSON)
or as one self-contained HTML page.

``save(output, out_dir)`` writes one recipe's figures and tables; ``to_html(outputs)`` /
``write_html(outputs, path)`` build a single HTML file with every image embedded.
Figures stay open after either; ``close(output)`` releases them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import sys

from ..errors import UserError
from .html import to_html, write_html
from .tables import DPI, Figure, Output, Table, latex_escape, md_text, numeric_columns, to_latex, to_markdown

__all__ = [
    "Table",
    "Figure",
    "Output",
    "to_markdown",
    "to_latex",
    "latex_escape",
    "numeric_columns",
    "save",
    "close",
    "environment",
    "to_html",
    "write_html",
    "DPI",
]

_RESERVED = {"readme", "specs", "runs", "environment"}
_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_names(output: Output) -> None:
    """File stems must be plain, distinct and not clash with README/specs/runs/environment."""
    for kind, items in (("figure", output.figures), ("table", output.tables)):
        seen = set()
        for item in items:
            if not _STEM.match(item.name) or item.name.lower() in _RESERVED:
                raise ValueError(f"{output.recipe}: {kind} name {item.name!r} is not a usable file stem")
            if item.name in seen:
                raise ValueError(f"{output.recipe}: two {kind}s are named {item.name!r}")
            seen.add(item.name)


def save(output: Output, out_dir: str, env: dict | None = None) -> list[str]:
    """Write ``output`` into ``out_dir`` and return the paths written.

    Each figure becomes NAME.png (dpi 120) and NAME.svg, each table NAME.md and NAME.tex; then
    specs.json, runs.json (when ``output.runs`` is given), environment.json (when ``env`` is
    given) and a README.md that lists the files with their captions. Figures are left open.
    """
    _check_names(output)
    out_dir = str(out_dir)
    written: list[str] = []

    def path(name: str) -> str:
        p = os.path.join(out_dir, name)
        written.append(p)
        return p

    def write_text(name: str, text: str) -> None:
        with open(path(name), "w", encoding="utf-8") as f:
            f.write(text)

    try:
        os.makedirs(out_dir, exist_ok=True)
        for fig in output.figures:
            fig.fig.savefig(path(fig.name + ".png"), format="png", dpi=DPI, bbox_inches="tight")
            fig.fig.savefig(path(fig.name + ".svg"), format="svg", bbox_inches="tight", metadata={"Date": None})
        for table in output.tables:
            write_text(table.name + ".md", to_markdown(table))
            write_text(table.name + ".tex", to_latex(table))
        write_text("specs.json", json.dumps(output.specs, indent=2, default=str) + "\n")
        if output.runs:
            write_text("runs.json", json.dumps(output.runs, indent=2, default=str) + "\n")
        if env is not None:
            write_text("environment.json", json.dumps(env, indent=2, default=str) + "\n")
        write_text("README.md", _readme(output, env is not None))
    except OSError as e:
        raise UserError(f"cannot write to {out_dir} ({e.strerror or e}); pass --out with a writable folder") from None
    return written


def _readme(output: Output, has_env: bool) -> str:
    """The README.md of a saved output: every file, with the captions and the tables inline."""
    lines = [f"# {output.recipe} ({output.scope})", ""]
    for fig in output.figures:
        lines += [f"## Figure `{fig.name}`", "", f"![{fig.name}]({fig.name}.png)", ""]
        if fig.caption.strip():
            lines += [md_text(fig.caption), ""]
        lines += [f"Files: [{fig.name}.png]({fig.name}.png), [{fig.name}.svg]({fig.name}.svg)", ""]
    captions = {fig.caption.strip() for fig in output.figures}
    for table in output.tables:  # a caption that its figure has shown already is not repeated
        shown = dataclasses.replace(table, caption="") if table.caption.strip() in captions else table
        lines += [
            f"## Table `{table.name}`",
            "",
            to_markdown(shown),
            f"Files: [{table.name}.md]({table.name}.md), [{table.name}.tex]({table.name}.tex)",
            "",
        ]
    lines += ["## Runs", "", f"- [specs.json](specs.json): the {len(output.specs)} run specs behind these results"]
    if output.runs:
        lines.append(f"- [runs.json](runs.json): status and summary of each of the {len(output.runs)} runs")
    if has_env:
        lines.append("- [environment.json](environment.json): package versions, machine and commit")
    return "\n".join(lines) + "\n"


def close(output: Output) -> None:
    """Close the output's matplotlib figures (release their memory)."""
    import matplotlib.pyplot as plt

    for fig in output.figures:
        plt.close(fig.fig)


def environment() -> dict:
    """Versions, machine and commit: what a reader needs to judge and rerun a report."""
    import matplotlib
    import numpy
    import torch

    from ..api import git_commit
    from ..version import __version__

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = "cpu"
    return {
        "rethink": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "matplotlib": matplotlib.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "cuda": torch.version.cuda
        if torch.cuda.is_available()
        else f"no CUDA GPU (torch built {'for CUDA ' + torch.version.cuda if torch.version.cuda else 'without CUDA'})",
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }
