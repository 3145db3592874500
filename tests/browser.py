"""A page as headless Chromium draws it: what the HTML report tests look at."""

from __future__ import annotations

import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def screenshot(html: str, folder: Path, height: int) -> np.ndarray:
    """The RGB pixels of ``html`` drawn 1200 px wide and ``height`` px tall."""
    page = folder / "report.html"
    page.write_text(html, encoding="utf-8")
    shot = folder / "report.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={folder / 'profile'}",
         f"--window-size=1200,{height}", f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=180)
    return plt.imread(shot)[:, :, :3]
