"""The report layer: saved files (PNG, SVG, Markdown, LaTeX, JSON), the self-contained HTML page,
and that page rendered by a real headless browser."""

import base64
import json
import os
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from browser import CHROMIUM, render_in_chromium  # noqa: E402
from rethink.errors import UserError  # noqa: E402
from rethink.report import (  # noqa: E402
    Figure,
    Output,
    Table,
    close,
    environment,
    save,
    to_html,
    to_latex,
    to_markdown,
    write_html,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_output(recipe="figure1b", scale="smoke") -> Output:
    """Two small figures and two tables, one of them full of characters that need escaping."""
    f1, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0.1, 0.5, 1.0], label="random labels")
    ax.set_xlabel("thousand steps")
    ax.legend()
    f2, ax = plt.subplots(figsize=(3, 2))
    ax.bar(["true", "random"], [0.9, 0.1])
    tricky = Table(
        name="table1",
        header=["model", "train_acc (%)", "test acc", "notes & more"],
        rows=[
            ["mlp_1x512", "100.0", "52.3 ± 0.4", "lr_decay 0.95 | 50% p"],
            ["inception_small", "99.9", "", "cost $5 #1 {a} ~x^2 back\\slash"],
            ["alexnet", "100.0", "10.0 ± 0.1", ""],
        ],
        caption="Table 1 at smoke scale: lr decay 0.95 per epoch, budget 3 epochs, fit threshold 100%, "
        "eval every epoch.",
        notes=["* inception_small did not converge within the budget.", "± is one standard deviation over 2 seeds."],
    )
    plain = Table(
        name="summary",
        header=["setting", "runs"],
        rows=[["true labels", "2"], ["random labels", "2"]],
        caption="How many runs per setting.",
    )
    specs = [
        {"dataset": "digits", "model": "mlp_1x512", "randomize": "none", "seed": 0},
        {"dataset": "digits", "model": "mlp_1x512", "randomize": "random-labels", "seed": 0},
    ]
    runs = [
        {"run_id": "abc123", "status": "fitted", "train_acc": 1.0, "test_acc": 0.5234},
        {"run_id": "def456", "status": "budget", "train_acc": 0.87, "test_acc": None},
    ]
    return Output(
        recipe=recipe,
        scale=scale,
        tables=[tricky, plain],
        figures=[
            Figure("figure1b", f1, "Loss against steps, random labels."),
            Figure("bars", f2, 'Test accuracy <true> vs "random".'),
        ],
        specs=specs,
        runs=runs,
    )


@pytest.fixture
def output():
    out = make_output()
    yield out
    close(out)


class PageParser(HTMLParser):
    """Collects img srcs, every src/href, and the row count of each <table>."""

    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.table_rows, self._depth = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])
        if tag == "table":
            self.table_rows.append(0)
            self._depth.append(len(self.table_rows) - 1)
        if tag == "tr" and self._depth:
            self.table_rows[self._depth[-1]] += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._depth.pop()


def unescaped_braces(tex: str) -> tuple[int, int]:
    bare = tex.replace(r"\{", "").replace(r"\}", "")
    return bare.count("{"), bare.count("}")


# -- files --------------------------------------------------------------------------------------
def test_save_writes_every_file(output, tmp_path):
    out_dir = tmp_path / "out" / "figure1b"
    paths = save(output, str(out_dir), env={"rethink": "test"})
    names = sorted(os.path.basename(p) for p in paths)
    expected = [
        "README.md",
        "bars.png",
        "bars.svg",
        "environment.json",
        "figure1b.png",
        "figure1b.svg",
        "runs.json",
        "specs.json",
        "summary.md",
        "summary.tex",
        "table1.md",
        "table1.tex",
    ]
    assert names == expected
    assert sorted(os.listdir(out_dir)) == expected
    for stem in ("figure1b", "bars"):
        assert (out_dir / f"{stem}.png").read_bytes().startswith(PNG_MAGIC)
        root = ET.parse(out_dir / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg")
    assert json.loads((out_dir / "specs.json").read_text()) == output.specs
    readme = (out_dir / "README.md").read_text()
    for name in expected[1:]:
        if name != "README.md":
            assert name in readme
    assert "Loss against steps, random labels." in readme and "How many runs per setting." in readme


def test_markdown_table(output):
    table = output.tables[0]
    md = to_markdown(table)
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(table.rows)  # header, separator, one line per row
    assert lines[0] == r"| model | train_acc (%) | test acc | notes & more |"
    assert r"lr_decay 0.95 \| 50% p" in md  # pipes in cells are escaped
    assert all(line.count("|") - line.count(r"\|") == 5 for line in lines)
    assert md.startswith("*Table 1 at smoke scale") and table.notes[1] in md
    assert "\n\\* inception_small" in md  # a note starting with "*" does not become a list item
    assert md.index("*Table 1") < md.index("| model") < md.index(table.notes[1])


def test_latex_table(output):
    table = output.tables[0]
    tex = to_latex(table)
    assert tex.startswith(r"\begin{table}") and tex.rstrip().endswith(r"\end{table}")
    opened, closed = unescaped_braces(tex)
    assert opened == closed
    cols = re.search(r"\\begin\{tabular\}\{([a-z|]*)\}", tex).group(1).replace("|", "")
    assert len(cols) == len(table.header) == 4
    assert cols == "lrrl"  # numeric columns align right
    for escaped in (
        r"train\_acc (\%)",
        r"52.3 $\pm$ 0.4",
        r"notes \& more",
        r"\$5 \#1 \{a\}",
        r"\textasciitilde{}x\textasciicircum{}2",
        r"back\textbackslash{}slash",
        r"\caption{Table 1",
        r"0.95 \textbar{} 50\% p",
    ):
        assert escaped in tex
    assert "±" not in tex
    assert r"\footnotesize" in tex and tex.index(r"\end{tabular}") < tex.index(r"\footnotesize")
    # every row ends with \\ and has header-width cells
    body = tex.split(r"\hline")[2]
    rows = [r for r in body.strip().splitlines() if r.strip()]
    assert len(rows) == len(table.rows) and all(r.count(" & ") == 3 for r in rows)


def test_unwritable_out_dir_is_a_user_error(output, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(UserError) as e:
        save(output, str(tmp_path / "afile" / "sub"))
    assert "\n" not in str(e.value) and "cannot write to" in str(e.value) and "--out" in str(e.value)
    with pytest.raises(UserError):
        write_html([], str(tmp_path / "afile" / "sub" / "report.html"))


def test_environment_lists_versions():
    env = environment()
    for key in (
        "rethink",
        "torch",
        "numpy",
        "python",
        "matplotlib",
        "platform",
        "cpu_count",
        "device",
        "torch_threads",
        "date",
        "git_commit",
    ):
        assert key in env
    assert env["device"] and env["cpu_count"] >= 1 and env["date"][:4].isdigit()


# -- HTML ---------------------------------------------------------------------------------------
def test_html_is_self_contained(output):
    second = make_output("table1", "cpu")
    try:
        page = to_html([output, second], env=environment())
    finally:
        close(second)
    p = PageParser()
    p.feed(page)
    assert len(p.imgs) == 4
    for img in p.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1]).startswith(PNG_MAGIC)
        assert img["alt"]
    assert p.imgs[1]["alt"] == 'Test accuracy <true> vs "random".'  # attribute escaped and round-tripped
    assert not [link for link in p.links if re.match(r"\s*(https?:)?//", link)]
    assert not re.search(r"https?://", page)
    assert all(link.startswith(("#", "data:")) for link in p.links)
    # environment table, then per output: table1 (1 + 3 rows), summary (1 + 2), runs (1 + 2)
    env_rows = len(environment())
    assert p.table_rows == [env_rows] + [4, 3, 3] * 2
    assert "&quot;randomize&quot;: &quot;random-labels&quot;" in page  # the specs, as escaped JSON
    assert "<details>" in page and "abc123" in page
    assert "&lt;true&gt;" in page and "<true>" not in page


def test_empty_report_says_so():
    page = to_html([])
    assert "no recipe results in this store yet" in page and "rethink reproduce NAME" in page
    p = PageParser()
    p.feed(page)
    assert p.imgs == []


# -- a real browser -----------------------------------------------------------------------------
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"headless browser check needs {CHROMIUM} (Debian package chromium)"
)
def test_html_renders_in_chromium(output, tmp_path):
    page = to_html([output], title="browser check")
    dom = render_in_chromium(page, tmp_path, expect_images=2)
    assert "browser check" in dom and "figure1b" in dom and "(smoke scale)" in dom


# -- what a reader of `rethink report` sees ----------------------------------------------------------
def test_contents_and_captions_say_each_thing_once():
    """A recipe's figure and table often share name and caption (figure1a): the contents name each
    once, every anchor is unique, and the shared caption is printed once."""
    f, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    caption = "Training loss under the randomization tests."
    out = Output(
        "figure1a",
        "smoke",
        [Table("figure1a", ["test", "loss"], [["true labels", "1.3"]], caption)],
        [Figure("figure1a", f, caption)],
        specs=[],
    )
    try:
        page = to_html([out])
    finally:
        close(out)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), ids
    nav = re.search(r"<nav.*?</nav>", page, re.S).group(0)
    assert re.findall(r">([^<>]+)</a>", nav) == ["figure1a", "figure", "table"]
    assert all(href[1:] in ids for href in re.findall(r'href="(#[^"]+)"', nav))
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page, re.S)
    assert sum(caption in c for c in captions) == 1, captions


def test_environment_names_the_cuda_state():
    cuda = environment()["cuda"]
    assert isinstance(cuda, str) and cuda.strip()


def test_report_lists_the_users_own_runs(tmp_path, capsys):
    """`rethink run` results (in no recipe) get a Runs section with their key numbers, the
    corrupted/clean accuracies of a partial-labels run included."""
    from rethink.cli import main

    store, page = str(tmp_path / "s.sqlite"), tmp_path / "report.html"
    assert (
        main(
            [
                "run",
                "--dataset",
                "digits",
                "--train-size",
                "200",
                "--test-size",
                "100",
                "--randomize",
                "partial-labels",
                "--p",
                "0.5",
                "--epochs",
                "2",
                "--store",
                store,
                "--quiet",
                "--json",
            ]
        )
        == 0
    )
    run = json.loads(capsys.readouterr().out)
    assert main(["report", "--store", store, "--out", str(page)]) == 0
    text = page.read_text()
    section = re.search(r'<section id="runs">.*?</section>', text, re.S)
    assert section and '<a href="#runs">' in text
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", section.group(0))
    assert run["run_id"] in cells and "partial-labels p=0.5, seed 0" in cells
    assert f"{100 * run['train_acc']:.1f}%" in cells and f"{100 * run['test_acc']:.1f}%" in cells
    assert "corrupted: true" in section.group(0) and "clean acc" in section.group(0)


def test_figure1a_table_agrees_with_its_curve_and_caption():
    """The table's final training loss is the end of the plotted curve (the full-set evaluation
    loss, which batch norm's running statistics can put far from it, has its own column), and
    the caption names only the models in the figure."""
    from types import SimpleNamespace

    from rethink.recipes import common, figure1

    proto = common.PROTOCOLS["smoke"]
    results = []
    for test in figure1.CURVE_TESTS:
        spec = common.make_spec(proto, {}, "inception", 0, randomize=test)
        results.append(
            SimpleNamespace(
                spec=spec,
                step_losses=[2.3, 2.0, 1.5, 1.3],
                time_to_fit=None,
                summary={"train_loss": 4.02, "n_train": 150},
            )
        )
    figures, tables = figure1.render_1a(results, proto, {}, 1)
    try:
        header, row = tables[0].header, tables[0].rows[0]
        curve = [c for h, c in zip(header, row) if "final training loss" in h]
        assert curve == ["1.4000"]  # the mean of the last epoch's two steps, as plotted
        assert "4.0200" in row
        for caption in (figures[0].caption, tables[0].caption):
            assert "Inception at width" in caption
            assert "MLP 3x512" not in caption and "Inception w/o BatchNorm" not in caption and "AlexNet" not in caption
    finally:
        for f in figures:
            plt.close(f.fig)


def test_run_summary_and_json_give_the_corrupted_and_clean_accuracies(tmp_path, capsys):
    """`rethink run` of partial labels prints and returns (--json) what `rethink export` has: the
    fractions of labels drawn anew and changed, and the accuracies on the corrupted and clean parts."""
    from rethink.cli import main
    from rethink.store import Store

    store = str(tmp_path / "s.sqlite")
    assert (
        main(
            [
                "run",
                "--dataset",
                "digits",
                "--train-size",
                "200",
                "--test-size",
                "100",
                "--randomize",
                "partial-labels",
                "--p",
                "0.5",
                "--epochs",
                "2",
                "--store",
                store,
                "--json",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    got = json.loads(out)
    stored = Store(store).get_run(got["run_id"])["summary"]
    for key in ("replaced_fraction", "changed_fraction", "corrupted_acc_noisy", "corrupted_acc_true", "clean_acc"):
        assert got[key] == stored[key] and got[key] is not None, key
    assert 0 < got["changed_fraction"] <= got["replaced_fraction"] < 1
    line = next(line for line in err.splitlines() if line.startswith("partial labels:"))
    for key in ("changed_fraction", "corrupted_acc_noisy", "corrupted_acc_true", "clean_acc"):
        assert f"{100 * got[key]:.2f}%" in line, key
