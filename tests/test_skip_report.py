"""Issue 29: the test command prints why each skipped test skipped and what it needs (no silent skips)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import skip_hints

ROOT = Path(__file__).resolve().parents[1]


def test_skip_hints_name_what_each_kind_of_skip_needs():
    hints = skip_hints(["no Chromium binary: apt-get install chromium", "no CUDA GPU",
                        "Xvfb not installed (apt-get install xvfb xdotool)", "root ignores permission bits"])
    assert len(hints) == 3
    assert "chromium" in hints[0] and "xvfb" in hints[1] and "GPU" in hints[2]
    assert skip_hints(["the IWER emulator is not installed: (cd tests/web && npm ci)"]) == \
        ["the WebXR emulator: (cd tests/web && npm ci)"]


def test_a_plain_pytest_run_prints_each_skip_reason_and_what_it_needs(tmp_path):
    (tmp_path / "test_s.py").write_text(
        "import pytest\n\n"
        "def test_gpu():\n    pytest.skip('no CUDA GPU')\n\n"
        "def test_browser():\n    pytest.skip('no Chromium binary: apt-get install chromium')\n\n"
        "def test_ok():\n    pass\n")
    # the project's pytest settings (pyproject addopts) and its conftest hook, on a file of our own
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(ROOT / "pyproject.toml"), "-p", "tests.conftest", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_s.py")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "SKIPPED" in out and "no CUDA GPU" in out and "no Chromium binary" in out, out
    last = [line for line in out.splitlines() if line.startswith("2 skipped (each reason is in the short test summary)")]
    assert last and "apt-get install chromium" in last[0] and "GPU" in last[0], out
