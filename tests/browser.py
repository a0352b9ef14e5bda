"""Render an HTML page in headless Chromium (Debian's package `chromium`) for the report tests."""

import re
import subprocess

CHROMIUM = "/usr/bin/chromium"

# Injected by the tests only: after load, counts the images that decoded.
IMG_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var d = document.createElement("div"); d.id = "imgcheck"; d.textContent = ok + "/" + imgs.length;
  document.body.appendChild(d);
});
</script>
</body>"""


def chromium(tmp_path, *args):
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def render_in_chromium(page: str, tmp_path, expect_images: int) -> str:
    """Load ``page``; assert that all ``expect_images`` images decoded and the screenshot is not
    blank; return the rendered DOM."""
    assert page.count("</body>") == 1
    path = tmp_path / "page.html"
    path.write_text(page.replace("</body>", IMG_CHECK), encoding="utf-8")
    dom = chromium(tmp_path, "--dump-dom", path.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<div id="imgcheck">(\d+)/(\d+)</div>', dom.stdout)
    assert m, "the image check script did not run"
    assert int(m.group(1)) == int(m.group(2)) == expect_images, m.group(0)

    shot = tmp_path / "shot.png"
    r = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", path.as_uri())
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        gray = im.convert("L")
        non_white = sum(gray.histogram()[:250]) / (gray.width * gray.height)
    assert non_white > 0.01, f"screenshot is nearly blank ({non_white:.2%} non-white)"
    return dom.stdout
