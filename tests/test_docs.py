"""The documentation site (mkdocs.yml, docs/, the API reference from the docstrings) builds with
``mkdocs build --strict``, and the strict build fails on a broken link."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = Path(sys.executable).parent / "mkdocs"

pytestmark = pytest.mark.skipif(
    not MKDOCS.exists(), reason=f"mkdocs is not installed beside {sys.executable} (pip install -e '.[docs]')"
)


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of ``config`` into ``site``, run from the config's folder."""
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_strict_build_succeeds_with_api_reference(tmp_path):
    site = tmp_path / "site"
    result = build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "index.html").is_file()
    assert (site / "measures" / "index.html").is_file()
    measures_api = (site / "api" / "measures" / "index.html").read_text()
    # mkdocstrings gives every documented object an anchor named by its full path
    assert 'id="rethink.measures.compute"' in measures_api
    assert 'id="rethink.measures.correlate"' in measures_api
    top = (site / "api" / "index.html").read_text()
    assert 'id="rethink.run"' in top and 'id="rethink.RunSpec"' in top


def test_strict_build_fails_on_a_broken_link(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    # mkdocstrings imports the package from src/ (paths: [src], relative to the config file)
    (tmp_path / "src").symlink_to(ROOT / "src", target_is_directory=True)
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text() + "\nSee [a page that does not exist](no-such-page.md).\n")
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stdout + result.stderr
