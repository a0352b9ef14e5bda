"""What a recipe produces (tables and figures) and the plain-text renderings of a table.

A :class:`Table` holds already formatted cells; :func:`to_markdown` and :func:`to_latex` only lay
them out and escape them, so every rendering shows exactly the same numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.figure

DPI = 120  # resolution of every PNG (saved files and the images embedded in HTML)


@dataclass
class Table:
    """A results table: formatted string cells, a caption (what, scale, protocol) and footnotes."""

    name: str  # file stem, e.g. "table1"
    header: list[str]
    rows: list[list[str]]  # already formatted cells (strings); "" for empty
    caption: str = ""
    notes: list[str] = field(default_factory=list)

    def padded_rows(self) -> list[list[str]]:
        """The rows, each padded with "" to the header's width (a longer row is a bug)."""
        width = len(self.header)
        out = []
        for i, row in enumerate(self.rows):
            if len(row) > width:
                raise ValueError(f"table {self.name}: row {i} has {len(row)} cells, the header {width}")
            out.append(["" if c is None else str(c) for c in row] + [""] * (width - len(row)))
        return out


@dataclass
class Figure:
    """A matplotlib figure and its caption."""

    name: str  # file stem, e.g. "figure1b"
    fig: matplotlib.figure.Figure
    caption: str = ""


@dataclass
class Output:
    """Everything one recipe produced at one scale, with the run specs behind it."""

    recipe: str  # e.g. "figure1b"
    scale: str  # smoke | cpu | paper
    tables: list[Table]
    figures: list[Figure]
    specs: list[dict]  # RunSpec.to_dict() of every run behind it
    runs: list[dict] = field(default_factory=list)  # optional per-run rows: run_id, status, summary subset

    @property
    def scope(self) -> str:
        """What the output covers, in words: its scale, or the whole store ("store" scale)."""
        return "every run in the store" if self.scale == "store" else f"{self.scale} scale"


# -- column alignment ---------------------------------------------------------------------------
_NUMBER = r"[-+\u2212]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*%?"
_NUMERIC_CELL = re.compile(rf"^{_NUMBER}(?:\s*\u00b1\s*{_NUMBER})?$")
_BLANK = {"", "-", "\u2013", "\u2014", "n/a", "na", "nan"}


def numeric_columns(table: Table) -> list[bool]:
    """For each column, whether every non-blank cell is a number (such columns align right)."""
    rows = table.padded_rows()
    flags = []
    for j in range(len(table.header)):
        cells = [r[j].strip() for r in rows if r[j].strip().lower() not in _BLANK]
        flags.append(bool(cells) and all(_NUMERIC_CELL.match(c) for c in cells))
    return flags


# -- Markdown -----------------------------------------------------------------------------------
def md_text(text: str) -> str:
    """One line of Markdown text; ``<`` is escaped so that "<true>" is not taken for an HTML tag."""
    return " ".join(str(text).split()).replace("<", "&lt;")


def _md_cell(text: str) -> str:
    return md_text(text).replace("|", "\\|")


def to_markdown(table: Table) -> str:
    """A GitHub pipe table, with the caption above it in italics and the notes below it."""
    parts = []
    if table.caption.strip():
        parts.append("*" + md_text(table.caption).replace("*", "\\*") + "*")
    lines = [
        "| " + " | ".join(_md_cell(h) for h in table.header) + " |",
        "|" + "|".join("---:" if num else ":---" for num in numeric_columns(table)) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.padded_rows()]
    parts.append("\n".join(lines))
    # a note that starts like a list item or heading ("* ...", "- ...", "# ...") stays a plain paragraph
    parts += [re.sub(r"^([*+#>-])", r"\\\1", md_text(note)) for note in table.notes if note.strip()]
    return "\n\n".join(parts) + "\n"


# -- LaTeX --------------------------------------------------------------------------------------
_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    # a few non-ASCII characters that plain LaTeX (no packages) cannot typeset as they are
    "\u00b1": r"$\pm$",
    "\u00d7": r"$\times$",
    "\u2248": r"$\approx$",
    "\u2264": r"$\leq$",
    "\u2265": r"$\geq$",
    "\u2212": "-",
    "\u2013": "--",
    "\u2014": "---",
    "\u2192": r"$\rightarrow$",
    "\u00b5": r"$\mu$",
    "\u03bc": r"$\mu$",
    "\u2026": r"\ldots{}",
    "\u00a0": "~",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (and write ``±`` as ``$\\pm$``) in one pass."""
    return "".join(_LATEX.get(ch, ch) for ch in " ".join(str(text).split()))


def to_latex(table: Table) -> str:
    """A complete ``table`` environment in plain LaTeX (no packages needed) with caption and notes."""
    align = "".join("r" if num else "l" for num in numeric_columns(table))
    lines = [r"\begin{table}[ht]", r"\centering"]
    if table.caption.strip():
        lines.append(r"\caption{" + latex_escape(table.caption) + "}")
    lines += [
        r"\label{tab:" + re.sub(r"[^A-Za-z0-9:.-]", "-", table.name) + "}",
        r"\begin{tabular}{" + align + "}",
        r"\hline",
        " & ".join(latex_escape(h) for h in table.header) + r" \\",
        r"\hline",
    ]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in table.padded_rows()]
    lines += [r"\hline", r"\end{tabular}"]
    notes = [latex_escape(n) for n in table.notes if n.strip()]
    if notes:
        lines += ["", r"\medskip", "{\\footnotesize\\raggedright " + "\\par\n".join(notes) + "\\par}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
