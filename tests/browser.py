"""Opening the engine's HTML pages in headless Chromium (Debian's `chromium-headless-shell`, which
`make` installs with the other system packages): a screenshot, and whether every image loaded."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BINARY = "chromium-headless-shell"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
# Run once the page has loaded: counts the images, and those decoded with a non-zero size.
PROBE = ("<script>window.addEventListener('load', () => { const all = [...document.images];"
         " const ok = all.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0);"
         " document.body.setAttribute('data-probe', all.length + ':' + ok.length); });</script>")


def require_browser() -> str:
    path = shutil.which(BINARY)
    if path is None:
        pytest.skip(f"{BINARY} is not installed (`make test` installs it as root; otherwise: "
                    f"sudo apt-get install -y {BINARY})")
    return path


@dataclass
class Rendered:
    screenshot: np.ndarray  # RGB uint8 [height, width, 3]
    images: int             # <img> elements on the page
    loaded: int             # of those, decoded with a non-zero natural size


def render(page: Path, work: Path, *, width: int = 1200, height: int = 2400) -> Rendered:
    binary = require_browser()
    work.mkdir(parents=True, exist_ok=True)
    probed = work / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    common = [binary, *FLAGS, "--virtual-time-budget=10000"]
    dom = subprocess.run([*common, f"--user-data-dir={work / 'profile-dom'}", "--dump-dom",
                          probed.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-probe="(\d+):(\d+)"', dom.stdout)
    assert found, f"the probe did not run: {dom.stderr[-500:]}"
    shot = work / "screenshot.png"
    r = subprocess.run([*common, f"--user-data-dir={work / 'profile-shot'}",
                        f"--screenshot={shot}", f"--window-size={width},{height}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-500:]
    return Rendered(np.asarray(Image.open(shot).convert("RGB")), int(found[1]), int(found[2]))


def assert_not_blank(rgb: np.ndarray) -> None:
    """More than 2% of the pixels are not the background, in more than 50 distinct colours."""
    background = np.median(rgb.reshape(-1, 3), axis=0)
    ink = np.abs(rgb.astype(int) - background).sum(axis=2) > 30
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    assert ink.mean() > 0.02 and colours > 50, (ink.mean(), colours)
