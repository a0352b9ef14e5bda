"""One self-contained HTML page for a set of recipe outputs.

Images are embedded as ``data:image/png;base64`` URIs and the styling is inline, so the file needs
nothing else (no network, no JavaScript) and can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import io
import json
import os
import re

from ..errors import UserError
from .tables import DPI, Output, Table, numeric_columns

EMPTY_MESSAGE = "no recipe results in this store yet; run `rethink reproduce NAME`"  # the empty page says this

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --band: #f6f8fa; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 2rem 1.5rem 4rem; }
h1 { font-size: 1.9rem; margin: 0 0 .25rem; }
h2 { font-size: 1.4rem; margin: 2.5rem 0 .75rem; padding-bottom: .3rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code, pre { font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: var(--band); border: 1px solid var(--line); border-radius: 6px; padding: .75rem; overflow: auto;
      max-height: 30rem; }
.meta, .scale { color: var(--muted); }
.scale { font-size: .95rem; font-weight: normal; }
.empty { padding: 1rem; background: var(--band); border: 1px dashed var(--line); border-radius: 6px; }
nav ol { padding-left: 1.4rem; } nav ul { padding-left: 1.2rem; margin: .1rem 0 .4rem; color: var(--muted); }
figure { margin: 1.25rem 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: .92rem; margin-top: .4rem; max-width: 60rem; }
figure.table figcaption { margin: 0 0 .4rem; }
.table-wrap { overflow-x: auto; margin: .5rem 0; }
table { border-collapse: collapse; font-size: .92rem; }
th, td { border: 1px solid var(--line); padding: .3rem .65rem; vertical-align: top; }
th { background: var(--band); text-align: left; }
tbody tr:nth-child(even) { background: #fbfcfd; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.env th { width: 11rem; }
#runs table { font-size: .82rem; }
.notes { color: var(--muted); font-size: .85rem; margin: .3rem 0 0; }
.notes p { margin: .15rem 0; }
details { margin: 1.25rem 0; border: 1px solid var(--line); border-radius: 6px; padding: .5rem .9rem; }
details summary { cursor: pointer; font-weight: 600; }
"""


def _e(text) -> str:
    """Escape text for HTML content and attribute values."""
    return html.escape("" if text is None else str(text), quote=True)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def _png_data_uri(fig) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (dpi 120, like the saved PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(value) -> str:
    """A per-run value as text: short floats, JSON for containers, "" for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def table_html(table: Table, anchor: str = "") -> str:
    """A :class:`Table` as an HTML table in a <figure>, with its caption above and its notes below."""
    num = numeric_columns(table)

    def cls(j):
        return ' class="num"' if num[j] else ""

    cap = f"<b>{_e(table.name)}.</b> {_e(table.caption)}" if table.caption.strip() else f"<b>{_e(table.name)}</b>"
    out = [
        f'<figure class="table" id="{_e(anchor)}">' if anchor else '<figure class="table">',
        f"<figcaption>{cap}</figcaption>",
        '<div class="table-wrap">',
        "<table>",
    ]
    out.append(
        "<thead><tr>" + "".join(f"<th{cls(j)}>{_e(h)}</th>" for j, h in enumerate(table.header)) + "</tr></thead>"
    )
    out.append("<tbody>")
    for row in table.padded_rows():
        out.append("<tr>" + "".join(f"<td{cls(j)}>{_e(c)}</td>" for j, c in enumerate(row)) + "</tr>")
    out += ["</tbody>", "</table>", "</div>"]
    notes = [n for n in table.notes if n.strip()]
    if notes:
        out.append('<div class="notes">' + "".join(f"<p>{_e(n)}</p>" for n in notes) + "</div>")
    out.append("</figure>")
    return "\n".join(out)


def _runs_html(runs: list[dict]) -> str:
    """Per-run rows as a table whose columns are the union of the rows' keys."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r if k not in keys]
    t = Table(
        name="runs", header=keys, rows=[[_cell(r.get(k)) for k in keys] for r in runs], caption=f"{len(runs)} run(s)"
    )
    return table_html(t)


def _output_html(out: Output, sid: str) -> str:
    parts = [f'<section id="{sid}">', f'<h2>{_e(out.recipe)} <span class="scale">({_e(out.scope)})</span></h2>']
    shown = set()  # captions already on the page in this section: a table that shares its figure's says so once
    for fig in out.figures:
        alt = fig.caption.strip() or fig.name
        cap = f"<b>{_e(fig.name)}.</b> {_e(fig.caption)}" if fig.caption.strip() else f"<b>{_e(fig.name)}</b>"
        shown.add(fig.caption.strip())
        parts += [
            f'<figure id="{_anchor(sid, "figure", fig.name)}">',
            f'<img src="{_png_data_uri(fig.fig)}" alt="{_e(alt)}">',
            f"<figcaption>{cap}</figcaption>",
            "</figure>",
        ]
    for table in out.tables:
        if table.caption.strip() in shown:
            table = dataclasses.replace(table, caption="")
        parts.append(table_html(table, anchor=_anchor(sid, "table", table.name)))
    if not out.figures and not out.tables:
        parts.append(f'<p class="empty">{_e(out.recipe)} produced no figures or tables.</p>')
    parts.append(f"<details><summary>Run specs ({len(out.specs)})</summary>")
    parts.append(f"<pre>{_e(json.dumps(out.specs, indent=2, default=str))}</pre>")
    if out.runs:
        parts.append("<h3>Runs</h3>")
        parts.append(_runs_html(out.runs))
    parts += ["</details>", "</section>"]
    return "\n".join(parts)


def _anchor(sid: str, kind: str, name: str) -> str:
    """A figure's or table's id (a figure and a table may share a name)."""
    return f"{sid}-{kind}-{_slug(name)}"


def _contents_entry(sid: str, out: Output) -> str:
    """One line of the contents: the recipe, then links to its figures and tables, each named once
    (by its kind alone when it has the recipe's name)."""

    def label(kind, item):
        return kind if item.name == out.recipe else f"{kind} {item.name}"

    links = [
        f'<a href="#{_anchor(sid, kind, item.name)}">{_e(label(kind, item))}</a>'
        for kind, items in (("figure", out.figures), ("table", out.tables))
        for item in items
    ]
    sub = f" &mdash; {' &middot; '.join(links)}" if links else ""
    return f'<li><a href="#{sid}">{_e(out.recipe)}</a> <span class="scale">({_e(out.scope)})</span>{sub}</li>'


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def user_runs_table(runs: list[dict]) -> Table:
    """The store's runs that belong to no recipe (rows of :meth:`rethink.store.Store.runs`) with
    their key numbers; the corrupted/clean accuracies appear when some run corrupts labels."""
    partial = any(r["summary"] and r["summary"].get("corrupted_acc_noisy") is not None for r in runs)
    header = ["run", "status", "model on data", "test, seed", "train acc", "test acc", "time to fit", "train s"]
    if partial:
        header += ["labels changed", "corrupted: fit noisy", "corrupted: true", "clean acc"]
    rows = []
    for r in runs:
        sp, s = r["spec"], r["summary"] or {}
        ttf = s.get("time_to_fit")
        row = [
            r["run_id"],
            r.get("state", r["status"]),
            f"{sp.get('model')} on {sp.get('dataset')}",
            sp.get("randomize", "")
            + (f" p={sp['p']:g}" if sp.get("randomize") == "partial-labels" else "")
            + f", seed {sp.get('seed')}",
            _pct(s.get("train_acc")),
            _pct(s.get("test_acc")),
            f"{ttf['steps']} steps, {ttf['seconds']:.1f} s" if ttf else "",
            "" if s.get("train_seconds") is None else f"{s['train_seconds']:.1f}",
        ]
        if partial:
            row += [
                _pct(s.get("changed_fraction")),
                _pct(s.get("corrupted_acc_noisy")),
                _pct(s.get("corrupted_acc_true")),
                _pct(s.get("clean_acc")),
            ]
        rows.append(row)
    return Table(
        "runs",
        header,
        rows,
        f"{len(runs)} run(s) in this store that belong to no recipe (from rethink run "
        "or rethink sweep); rethink export gives every metric of each.",
    )


def to_html(
    outputs: list[Output], title: str = "rethink report", env: dict | None = None, runs: list[dict] | None = None
) -> str:
    """One self-contained HTML page: title, environment, contents, a section per output, then the
    ``runs`` (store rows, see :func:`user_runs_table`) that belong to no recipe."""
    ids = [f"r{i + 1}-{_slug(o.recipe)}-{_slug(o.scale)}" for i, o in enumerate(outputs)]
    when = (env or {}).get("date") or datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    counts = f"{len(outputs)} recipe result(s)" + (f", {len(runs)} other run(s)" if runs else "")
    body = [f"<h1>{_e(title)}</h1>", f'<p class="meta">Generated {_e(when)}; {counts}.</p>']

    if env:
        body += [
            '<section id="environment">',
            "<h2>Environment</h2>",
            '<div class="table-wrap"><table class="env"><tbody>',
        ]
        body += [
            f"<tr><th>{_e(k)}</th><td>{_e(_cell(v) if v is not None else 'unknown')}</td></tr>" for k, v in env.items()
        ]
        body += ["</tbody></table></div>", "</section>"]

    if not outputs and not runs:
        body.append('<p class="empty">no recipe results in this store yet; run <code>rethink reproduce NAME</code></p>')
    else:
        body += ['<nav id="contents">', "<h2>Contents</h2>", "<ol>"]
        body += [_contents_entry(sid, o) for sid, o in zip(ids, outputs)]
        if runs:
            body.append('<li><a href="#runs">Runs</a> <span class="scale">(not part of a recipe)</span></li>')
        body += ["</ol>", "</nav>"]
        body += [_output_html(o, sid) for sid, o in zip(ids, outputs)]
        if runs:
            body += ['<section id="runs">', "<h2>Runs</h2>", table_html(user_runs_table(runs)), "</section>"]

    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            "<main>",
            *body,
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )


def write_html(
    outputs: list[Output],
    path: str,
    env: dict | None = None,
    title: str = "rethink report",
    runs: list[dict] | None = None,
) -> str:
    """Write :func:`to_html` to ``path`` (creating its folder) and return the path."""
    path = str(path)
    page = to_html(outputs, title=title, env=env, runs=runs)
    try:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as e:
        raise UserError(
            f"cannot write the report to {path} ({e.strerror or e}); pass --out with a writable path"
        ) from None
    return path
