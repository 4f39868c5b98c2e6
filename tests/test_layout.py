"""The rooms import one way (DESIGN §2): kernels ← models ← calibration ← realtime ← benchmarks.

Every module's imports (top level and inside functions) are read from its syntax tree, so a lazy
import against the direction fails here as well as an eager one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("kernels", "models", "calibration", "realtime", "benchmarks")
#: the error type's leaf module, importable from every room
LEAF = "genreal_errors"
#: the one sanctioned upward edge: `genreal bench` is the CLI's entry into the benchmarks package
ALLOWED_UP = {("realtime/commands/bench.py", "benchmarks")}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def _violations() -> list[str]:
    bad = []
    for room in ORDER:
        allowed = set(ORDER[: ORDER.index(room) + 1]) | {LEAF}
        if room == "kernels":
            allowed = {"kernels", LEAF}  # kernels/ imports no other room
        for path in sorted((ROOT / room).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, top in _imports(path):
                if top in ORDER and top not in allowed and (rel, top) not in ALLOWED_UP:
                    bad.append(f"{rel}:{line} imports {top}")
    return bad


def test_rooms_import_one_way() -> None:
    assert _violations() == []


def test_the_error_type_is_a_leaf() -> None:
    assert [top for _, top in _imports(ROOT / f"{LEAF}.py") if top != "__future__"] == []


def test_the_walker_sees_lazy_imports(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("import os\n\ndef f():\n    from realtime.config import Size\n    import benchmarks.bench\n")
    assert [t for _, t in _imports(mod)] == ["os", "realtime", "benchmarks"]


@pytest.mark.parametrize("room", ["models", "calibration", "kernels"])
def test_lower_rooms_import_without_realtime(room: str) -> None:
    """Importing every module of a lower room (torch-free ones) loads nothing of realtime/."""
    import subprocess
    import sys

    mods = [p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".") for p in sorted((ROOT / room).glob("*.py"))]
    mods = [m for m in mods if m.split(".")[-1] not in ("__init__", "triton_kernels", "torch_chain", "torch_util")]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}:\n    importlib.import_module(m)\n"
            "print(sorted(k for k in sys.modules if k == 'realtime' or k.startswith('realtime.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_importing_realtime_preloads_nothing() -> None:
    """X11 libraries are preloaded where a window or a media source opens, not on `import realtime`."""
    import subprocess
    import sys

    code = ("import realtime, realtime.cli, realtime.pipeline\nfrom realtime import _xlibs\n"
            "print(len(_xlibs._handles), 'av' in __import__('sys').modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "False"]


def test_a_media_source_preloads_before_it_imports_av(tmp_path: Path) -> None:
    """A video source (and a file sink) import PyAV through `_xlibs.import_av`: OpenCV's xcb copies load
    first, so a window opened later in the same process does not hang."""
    import subprocess
    import sys

    code = ("from realtime import _xlibs\nfrom realtime.sinks import make_sink\n"
            "import numpy as np, time\nfrom realtime.frame import Frame\nfrom realtime.sinks.base import Overlay\n"
            f"s = make_sink({str(tmp_path / 'o.mp4')!r})\n"
            "s.write(Frame(np.zeros((64, 64, 3), np.uint8), 0, time.monotonic_ns()), Overlay('s', 'b', 30.0, 1.0))\ns.close()\n"
            "print(bool(_xlibs._handles) or not _xlibs._shared_libs()[2], _xlibs.clash())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]
