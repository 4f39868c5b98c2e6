"""Fixtures shared by the test modules (synthetic sources and sinks live in tests/fakes.py).

- `shipped_model_dir`: the model that ships in models/weights/ (read it, never write into it);
- `copy_model`: copy a model folder's weights + manifest (and, on request, some ONNX presets) elsewhere;
- `model_copy`: a private copy of the shipped model with its 640x360 and dynamic graphs;
- `export_chain`: a user-owned copy of the shipped model with freshly exported 640x360 chain graphs;
- `photo`: a bundled scikit-image photo, optionally resized;
- `torch_one_thread`: one torch thread for a module (the CPU is shared; oversubscribed threads crawl);
- `cli`: run `genreal ...` in-process and get (code, stdout, stderr).

Tests that take more than a few seconds on the 2-core machine carry ``@pytest.mark.slow``;
``pytest -m "not slow"`` is the quick loop, plain ``pytest`` runs everything.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pytest

#: the preset most tests export and run
PRESET = "640x360"


@pytest.fixture(scope="session")
def shipped_model_dir() -> Path:
    from models.manifest import default_model_dir

    return default_model_dir()


def _copy_model(src: Path, dst: Path, onnx_presets: Sequence[str] = ()) -> Path:
    """`src`'s weights and manifest into `dst`; with `onnx_presets`, also its ONNX index and tables and
    those presets' graph folders (the index then lists only them)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)
    if onnx_presets:
        (dst / "onnx").mkdir(exist_ok=True)
        for name in ("tables.npz", "index.json"):
            shutil.copy(src / "onnx" / name, dst / "onnx" / name)
        for preset in onnx_presets:
            shutil.copytree(src / "onnx" / preset, dst / "onnx" / preset)
        set_index_presets(dst, list(onnx_presets))
    return dst


def set_index_presets(model_dir: Path, presets: list[str]) -> None:
    """Rewrite `model_dir`/onnx/index.json to list only `presets`."""
    path = model_dir / "onnx" / "index.json"
    index = json.loads(path.read_text())
    index["presets"] = presets
    path.write_text(json.dumps(index))


@pytest.fixture(scope="session")
def copy_model(shipped_model_dir: Path) -> Callable[..., Path]:
    """``copy_model(dst, onnx_presets=(), src=shipped)`` → `dst`, a copy of a model folder."""
    def copy(dst: Path, onnx_presets: Sequence[str] = (), src: Optional[Path] = None) -> Path:
        return _copy_model(src or shipped_model_dir, dst, onnx_presets)

    return copy


@pytest.fixture()
def model_copy(tmp_path: Path, copy_model: Callable[..., Path]) -> Path:
    """A private copy of the shipped model (weights, manifest, the 640x360 and dynamic graphs)."""
    return copy_model(tmp_path / "model", ("640x360", "dynamic"))


@pytest.fixture(scope="session")
def export_chain(tmp_path_factory: pytest.TempPathFactory, copy_model: Callable[..., Path]) -> Callable[[str], Path]:
    """``export_chain(tag)`` → a user-owned copy of the shipped model with its 640x360 chain graphs
    exported (models/export.py, no parity check). Each call makes a fresh copy: callers may write into it."""
    def make(tag: str) -> Path:
        from models.export import CHAIN_STAGES, export_model

        d = copy_model(tmp_path_factory.mktemp(tag) / "model")
        export_model(d, presets=(PRESET,), stages=CHAIN_STAGES, check_parity=False)
        return d

    return make


@pytest.fixture(scope="session")
def photo() -> Callable[..., np.ndarray]:
    """``photo(name="coffee", w=None, h=None)`` → a bundled photo as uint8 RGB, resized (INTER_AREA) when a
    size is given (a fresh writable array)."""
    def load(name: str = "coffee", w: Optional[int] = None, h: Optional[int] = None) -> np.ndarray:
        import cv2

        from realtime.sources.synthetic import load_photo

        img = load_photo(name)
        if w is not None and h is not None:
            return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        return img.copy()

    return load


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """One torch thread for the module (use with ``pytestmark = pytest.mark.usefixtures(...)``)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def assert_user_error(self, *words: str) -> None:
        """The command failed as a user error: exit 2, one line on stderr naming the problem, no traceback."""
        err = self.err.strip()
        assert self.code == 2, (self.code, err)
        assert err.startswith("genreal: error:") and "\n" not in err and "Traceback" not in err, err
        for word in words:
            assert word.lower() in err.lower(), err


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture) -> Callable[..., CliResult]:
    """``cli("styles", "--json")`` runs `genreal` in-process; → CliResult(code, out, err). ``--help``
    and argparse errors (SystemExit) give their exit code too."""
    from realtime.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()  # drop what earlier steps printed
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        captured = capsys.readouterr()
        return CliResult(int(code or 0), captured.out, captured.err)

    return run


# -- skipped tests say why and what they need ----------------------------------------------------------
#: (words in a skip reason, what to install or have) — pyproject's addopts "-rs" prints each reason
SKIP_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("chromium",), "Chromium: apt-get install chromium fonts-dejavu-core"),
    (("npm ci", "iwer"), "the WebXR emulator: (cd tests/web && npm ci)"),
    (("playwright",), "playwright: pip install -e '.[dev]'"),
    (("xvfb", "xdotool", "gui"), "a virtual display: apt-get install xvfb xdotool (and opencv-python, not -headless)"),
    (("cuda", "gpu"), "an NVIDIA GPU with CUDA (none on the CI machines)"),
    (("tensorrt",), "TensorRT (no wheel is reachable from the CI machines)"),
    (("triton", "torch", "train extra"), "pip install -e '.[dev,train,kernels]' torch==2.13.0"),
)


def skip_hints(reasons: Sequence[str]) -> list[str]:
    """What the skipped tests need, one entry per kind, in `SKIP_HINTS` order."""
    low = [r.lower() for r in reasons]
    return [hint for words, hint in SKIP_HINTS if any(w in r for r in low for w in words)]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = [str(r.longrepr[2]) if isinstance(r.longrepr, tuple) else str(r.longrepr) for r in skipped]
    hints = skip_hints(reasons)
    terminalreporter.write_line(
        f"{len(skipped)} skipped (each reason is in the short test summary)"
        + (f"; to run them: {'; '.join(hints)}" if hints else "")
        + ". `.ci/run` sets up Chromium, Xvfb and tests/web and makes a missing browser fail, not skip.")
