"""Headless Chromium for the tests that check an HTML page really renders (report, compare)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def chromium_command(page: Path, profile: Path, *options: str) -> list[str]:
    """Chromium rendering `page` headless, offline (no background networking), in a fresh profile."""
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "--virtual-time-budget=10000", *options, page.resolve().as_uri()]


def rendered_dom(page: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran."""
    return subprocess.run(chromium_command(page, profile, "--dump-dom"), capture_output=True, text=True,
                          timeout=120).stdout
