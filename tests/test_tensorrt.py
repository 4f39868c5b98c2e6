"""TensorRT engine build, engine files and the tensorrt backend, without TensorRT.

TensorRT cannot be installed on our machines. Everything around it is tested here: the engine
header and file (round trip, mismatch detection, corrupt and truncated files), profiles derived
from `ExportSpec`, cache keys, and the build and run code against `FakeTRT`: a stand-in
`tensorrt` module injected through `sys.modules` that implements only the TensorRT 10 Python API
names we rely on (deprecated ones such as ``EXPLICIT_BATCH``, ``execute_async_v2`` or bindings
are absent, so using them fails) and records every call. Its "engine" runs the ONNX graph with
ONNX Runtime, reading and writing the tensor addresses the backend set, so the backend's whole
path (build → cache → deserialize → set_input_shape → set_tensor_address → execute_async_v3) is
checked for numbers too. Real engines: `test_real_tensorrt_engine` (skipped without tensorrt + CUDA).
"""
from __future__ import annotations

import ctypes
import json
import shutil
import struct
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import tensorrt_build as tb
from genreal_errors import UserError

PRESET = "640x360"


# --- a fake tensorrt module (TensorRT 10 names only) ------------------------------------------------


class _Enum:
    def __init__(self, *names: str) -> None:
        for n in names:
            setattr(self, n, n)


def make_fake_trt(calls: list, version: str = "10.3.0", fail_parse: bool = False) -> types.ModuleType:
    """A `tensorrt` stand-in that records `calls` as (name, args) tuples."""
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.DataType = _Enum("FLOAT", "HALF", "INT32", "INT8", "BOOL")
    trt.TensorIOMode = _Enum("INPUT", "OUTPUT", "NONE")
    trt.BuilderFlag = _Enum("FP16", "INT8", "BF16", "TF32", "STRICT_TYPES_DEPRECATED_NOT_USED")
    trt.MemoryPoolType = _Enum("WORKSPACE")
    trt.NetworkDefinitionCreationFlag = _Enum("STRONGLY_TYPED")  # EXPLICIT_BATCH: deprecated in TRT 10, absent here

    def rec(name: str, *args: Any) -> None:
        calls.append((name, args))

    class Logger:
        WARNING, INFO, ERROR, VERBOSE = 2, 3, 1, 4

        def __init__(self, level: int = 2) -> None:
            rec("Logger", level)

    class Network:
        def __init__(self) -> None:
            self.onnx = b""

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            rec("OnnxParser")
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            rec("parse_from_file", path)
            if fail_parse:
                self.num_errors = 1
                return False
            self.network.onnx = Path(path).read_bytes()
            return True

        def get_error(self, i: int) -> str:
            return "In node 3 (Conv): unsupported attribute"

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data) or b"TC"

        def serialize(self) -> bytes:
            return self.data + b"+"

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            rec("set_shape", name, tuple(lo), tuple(opt), tuple(hi))
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class BuilderConfig:
        def __init__(self) -> None:
            self.flags: set = set()
            self.profiles: list = []
            self.cache: Any = None

        def set_flag(self, flag: str) -> None:
            rec("set_flag", flag)
            self.flags.add(flag)

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            rec("set_memory_pool_limit", pool, size)

        def add_optimization_profile(self, profile: Profile) -> int:
            rec("add_optimization_profile")
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            rec("create_timing_cache", bytes(data))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            rec("set_timing_cache", ignore_mismatch)
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            rec("Builder")

        def create_network(self, flags: int = 0) -> Network:
            rec("create_network", flags)
            return Network()

        def create_builder_config(self) -> BuilderConfig:
            rec("create_builder_config")
            return BuilderConfig()

        def create_optimization_profile(self) -> Profile:
            rec("create_optimization_profile")
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
            rec("build_serialized_network", sorted(config.flags))
            meta = json.dumps({"flags": sorted(config.flags),
                               "profile": {k: v for k, v in config.profiles[0].shapes.items()}}).encode()
            return b"FAKEPLAN" + struct.pack("<I", len(meta)) + meta + network.onnx

    class Context:
        def __init__(self, engine: "Engine") -> None:
            self.engine = engine
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            rec("set_input_shape", name, tuple(shape))
            lo, _, hi = self.engine.profile[name]
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            if name in self.engine.inputs:
                return self.shapes[name]
            feeds = {n: np.zeros(self.shapes[n], self.engine.np_dtype(n)) for n in self.engine.inputs}
            outs = self.engine.session.run(None, feeds)
            return outs[self.engine.outputs.index(name)].shape

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            rec("set_tensor_address", name)
            self.addresses[name] = int(ptr)
            return True

        def _view(self, name: str, shape: tuple) -> np.ndarray:
            dtype = np.dtype(self.engine.np_dtype(name))
            n = int(np.prod(shape)) * dtype.itemsize
            buf = (ctypes.c_char * n).from_address(self.addresses[name])
            return np.frombuffer(buf, dtype=dtype).reshape(shape)

        def execute_async_v3(self, stream_handle: int) -> bool:
            rec("execute_async_v3", stream_handle)
            feeds = {n: self._view(n, self.shapes[n]).copy() for n in self.engine.inputs}
            outs = self.engine.session.run(None, feeds)
            for name, value in zip(self.engine.outputs, outs):
                self._view(name, value.shape)[...] = value
            return True

    class Engine:
        def __init__(self, plan: bytes) -> None:
            (n,) = struct.unpack("<I", plan[8:12])
            meta = json.loads(plan[12:12 + n])
            self.flags = meta["flags"]
            self.profile = {k: [tuple(x) for x in v] for k, v in meta["profile"].items()}
            self.session = ort.InferenceSession(plan[12 + n:], providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.session.get_inputs()]
            self.outputs = [o.name for o in self.session.get_outputs()]
            self._types = {v.name: v.type for v in (*self.session.get_inputs(), *self.session.get_outputs())}

        @property
        def num_io_tensors(self) -> int:
            return len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, i: int) -> str:
            return (self.inputs + self.outputs)[i]

        def get_tensor_mode(self, name: str) -> str:
            return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

        def np_dtype(self, name: str) -> Any:
            return np.int32 if "int32" in self._types[name] else np.float32

        def get_tensor_dtype(self, name: str) -> str:
            return trt.DataType.INT32 if self.np_dtype(name) is np.int32 else trt.DataType.FLOAT

        def create_execution_context(self) -> Context:
            rec("create_execution_context")
            return Context(self)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            rec("Runtime")

        def deserialize_cuda_engine(self, plan: bytes) -> Any:
            rec("deserialize_cuda_engine")
            return Engine(bytes(plan)) if bytes(plan).startswith(b"FAKEPLAN") else None

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt


DEV = tb.DeviceInfo("NVIDIA Fake H100", "9.0", "10.3.0")


@pytest.fixture(scope="module")
def exported(export_chain) -> Path:
    """A copy of the shipped model with its 640x360 chain graphs exported (models/export.py)."""
    return export_chain("trt")


def _specs() -> dict:
    from models.export import preset_specs
    from models.model import ModelConfig

    return preset_specs(ModelConfig(), PRESET)


# --- profiles, headers, files, cache keys ------------------------------------------------------------


def test_profile_from_static_and_dynamic_specs() -> None:
    from models.export import preset_specs
    from models.model import ModelConfig

    prof = tb.profile_from_spec(_specs()["refine_step"])
    assert [p.name for p in prof] == ["z", "emb", "cond"]
    assert prof[0].min == prof[0].opt == prof[0].max == (1, 64, 45, 80)
    assert prof[2].max == (1, 64)
    dyn = {p.name: p for p in tb.profile_from_spec(preset_specs(ModelConfig(), "dynamic")["decode"])}
    assert dyn["x"].min == (1, 3, 64, 64) and dyn["x"].opt == (1, 3, 720, 1280) and dyn["x"].max == (2, 3, 2160, 3840)
    assert dyn["skip"].max == (2, ModelConfig().skip_ch, 540, 960) and dyn["z"].min == (1, 64, 8, 8)


def test_profile_rejects_inconsistent_specs() -> None:
    from dataclasses import replace

    spec = _specs()["initial"]
    bad = replace(spec, inputs=(replace(spec.inputs[0], min=(2, 64, 45, 80), opt=(1, 64, 45, 80)),))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        tb.profile_from_spec(bad)
    wrong = replace(spec, inputs=(replace(spec.inputs[0], min=(1, 64, 8, 8)),))
    with pytest.raises(ValueError, match="static dim"):
        tb.profile_from_spec(wrong)


def _header(**kw: Any) -> tb.EngineHeader:
    h = tb.expected_header("decode", PRESET, "fp16", "m" * 64, "o" * 64, DEV, tb.profile_from_spec(_specs()["decode"]))
    from dataclasses import replace

    return replace(h, **kw)


def test_engine_file_round_trip_and_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "e.engine"
    written = tb.write_engine(path, _header(), b"PLAN" * 100)
    header, plan = tb.read_engine(path)
    assert plan == b"PLAN" * 100 and header == written and header.engine_bytes == 400
    assert tb.read_header(path).gpu_name == "NVIDIA Fake H100"
    assert header.mismatches(_header()) == []
    diff = header.mismatches(_header(gpu_name="NVIDIA A10", tensorrt_version="10.9.0"))
    assert diff == ["gpu_name: NVIDIA Fake H100 → NVIDIA A10", "tensorrt_version: 10.3.0 → 10.9.0"]
    assert header.mismatches(_header(metadata_hash="x" * 64))[0].startswith("metadata_hash")
    assert header.mismatches(_header(compute_capability="8.6")) == ["compute_capability: 9.0 → 8.6"]


@pytest.mark.parametrize("damage, words", [
    (lambda b: b"NOTANENGINE" + b[11:], "not a genreal engine"),
    (lambda b: b[:6], "not a genreal engine"),
    (lambda b: b[:20], "header is cut off"),
    (lambda b: b[:-7], "truncated"),
    (lambda b: b[:-4] + b"XXXX", "checksum"),
    (lambda b: b[:12] + b"{" * (len(b) - 12), "bad header"),
])
def test_corrupt_or_truncated_engine_is_one_line_error(tmp_path: Path, damage: Any, words: str) -> None:
    path = tmp_path / "e.engine"
    tb.write_engine(path, _header(), b"PLAN" * 100)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(tb.EngineFileError, match=words) as exc:
        tb.read_engine(path)
    assert isinstance(exc.value, UserError) and "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_cache_key_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prof = tb.profile_from_spec(_specs()["encode"])
    base = tb.cache_key("m", "o", "encode", PRESET, "fp16", prof)
    assert base == tb.cache_key("m", "o", "encode", PRESET, "fp16", prof)
    others = {tb.cache_key("m2", "o", "encode", PRESET, "fp16", prof), tb.cache_key("m", "o2", "encode", PRESET, "fp16", prof),
              tb.cache_key("m", "o", "encode", PRESET, "int8", prof), tb.cache_key("m", "o", "decode", PRESET, "fp16", prof),
              tb.cache_key("m", "o", "encode", PRESET, "fp16", prof[:0])}
    assert base not in others and len(others) == 5
    monkeypatch.setenv("GENREAL_CACHE", str(tmp_path))
    assert tb.engine_cache_dir() == tmp_path / "engines"
    monkeypatch.delenv("GENREAL_CACHE")
    assert tb.engine_cache_dir() == Path.home() / ".cache" / "genreal" / "engines"
    assert tb.timing_cache_path(tmp_path, DEV).name == "timing-nvidia-fake-h100-sm9.0-trt10.3.0.cache"


# --- build with the fake TensorRT --------------------------------------------------------------


@pytest.mark.slow
def test_build_uses_the_tensorrt10_api(tmp_path: Path, exported: Path) -> None:
    calls: list = []
    trt = make_fake_trt(calls)
    onnx = exported / "onnx" / PRESET / "refine_step.onnx"
    tc = tmp_path / "timing.cache"
    plan = tb.build_plan(trt, onnx, tb.profile_from_spec(_specs()["refine_step"]), "int8", tc, workspace_bytes=1 << 30)
    names = [c[0] for c in calls]
    assert names == ["Logger", "Builder", "create_network", "OnnxParser", "parse_from_file", "create_builder_config",
                     "set_memory_pool_limit", "set_flag", "set_flag", "create_optimization_profile", "set_shape",
                     "set_shape", "set_shape", "add_optimization_profile", "create_timing_cache", "set_timing_cache",
                     "build_serialized_network"]
    assert ("create_network", (0,)) in calls  # no EXPLICIT_BATCH flag: TensorRT 10 is always explicit batch
    assert ("set_flag", ("FP16",)) in calls and ("set_flag", ("INT8",)) in calls
    assert ("set_shape", ("cond", (1, 64), (1, 64), (1, 64))) in calls
    assert ("set_timing_cache", (False,)) in calls
    assert plan.startswith(b"FAKEPLAN") and tc.read_bytes() == b"TC+"
    calls.clear()
    tb.build_plan(trt, onnx, tb.profile_from_spec(_specs()["refine_step"]), "fp32", tc)
    assert not [c for c in calls if c[0] == "set_flag"]
    assert ("create_timing_cache", (b"TC+",)) in calls  # the saved timing cache is read back


@pytest.mark.slow
def test_parse_failure_and_old_tensorrt_are_user_errors(tmp_path: Path, exported: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    trt = make_fake_trt([], fail_parse=True)
    with pytest.raises(UserError, match="TensorRT cannot parse .*unsupported attribute"):
        tb.build_plan(trt, exported / "onnx" / PRESET / "embed.onnx", tb.profile_from_spec(_specs()["embed"]), "fp16")
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt([], version="8.6.1"))
    with pytest.raises(UserError, match="too old"):
        tb.import_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(UserError, match="^tensorrt not installed"):
        tb.import_tensorrt()


@pytest.mark.slow
def test_ensure_engine_caches_rebuilds_on_mismatch_and_refuses_corrupt(tmp_path: Path, exported: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    calls: list = []
    trt = make_fake_trt(calls)
    onnx = exported / "onnx" / PRESET / "initial.onnx"
    spec = _specs()["initial"]
    with caplog.at_level("INFO", logger="models.tensorrt_build"):
        path, header, plan = tb.ensure_engine(trt, onnx, spec, PRESET, "fp16", DEV, "hash1", tmp_path)
    assert "building the fp16 initial engine" in caplog.text
    assert path.parent == tmp_path and header.gpu_name == DEV.gpu_name and header.build_seconds >= 0
    builds = lambda: sum(c[0] == "build_serialized_network" for c in calls)  # noqa: E731
    assert builds() == 1
    assert tb.ensure_engine(trt, onnx, spec, PRESET, "fp16", DEV, "hash1", tmp_path)[2] == plan
    assert builds() == 1  # cached
    other = tb.DeviceInfo("NVIDIA L4", "8.9", "10.3.0")
    caplog.clear()
    with caplog.at_level("INFO", logger="models.tensorrt_build"):
        p2, h2, _ = tb.ensure_engine(trt, onnx, spec, PRESET, "fp16", other, "hash1", tmp_path)
    assert p2 == path and h2.gpu_name == "NVIDIA L4" and builds() == 2 and "does not match (gpu_name" in caplog.text
    p3 = tb.ensure_engine(trt, onnx, spec, PRESET, "fp16", other, "hash2", tmp_path)[0]
    assert p3 != path and builds() == 3  # a new metadata hash is a new cache entry
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(tb.EngineFileError, match="truncated"):
        tb.ensure_engine(trt, onnx, spec, PRESET, "fp16", other, "hash1", tmp_path)


# --- the backend with the fake TensorRT on the CPU ----------------------------------------------------


@pytest.mark.slow
def test_stages_run_a_frame_like_onnxruntime(tmp_path: Path, exported: Path) -> None:
    from realtime.backends.model_backend import ModelBackend
    from realtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from models.exported import CHAIN_STAGES as TRT_STAGES
    from realtime.backends.tensorrt_backend import TensorRTStages
    from realtime.config import BackendConfig

    calls: list = []
    stages = TensorRTStages(exported, precision="fp16", device="cpu", cache_dir=tmp_path, trt=make_fake_trt(calls),
                            dev=DEV)
    cfg = BackendConfig(name="tensorrt", device="cpu", style="cel", temporal=False)
    backend = ModelBackend(stages, cfg)
    ref = OnnxRuntimeBackend(BackendConfig(name="onnxruntime", device="cpu", style="cel", temporal=False,
                                           precision="fp32"), model_dir=exported)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
    out = backend([img])[0]
    assert out.shape == (360, 640, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref([img])[0].astype(int)).max() <= 1
    names = [c[0] for c in calls]
    assert names.count("build_serialized_network") == 5 and names.count("deserialize_cuda_engine") == 5
    assert ("set_flag", ("FP16",)) in calls and not [c for c in calls if c[1] == ("INT8",)]
    n_addr = names.count("set_tensor_address")
    specs = _specs()
    assert n_addr == sum(len(specs[s].inputs) + len(specs[s].outputs) for s in TRT_STAGES)  # every I/O tensor, once
    assert n_addr == 5 + 2 + 2 + 4 + 5  # encode x, norm → zq, skip, ctx; ...; decode z, skip, x, norm → rgb
    k = backend.info.default_steps
    assert names.count("execute_async_v3") == 1 + 1 + 1 + k + 1  # encode, embed, initial, K refine steps, decode
    backend.set_style("pastel")
    out2 = backend([img])[0]
    assert [c[0] for c in calls].count("set_tensor_address") == n_addr  # buffers allocated once: same addresses
    assert not np.array_equal(out, out2)
    # a second backend finds every engine in the cache: nothing is built again
    calls2: list = []
    TensorRTStages(exported, device="cpu", cache_dir=tmp_path, trt=make_fake_trt(calls2), dev=DEV).encode(
        np.zeros((1, 3, 360, 640), np.float32))
    assert not [c for c in calls2 if c[0] == "build_serialized_network"]


@pytest.mark.slow
def test_int8_uses_calibrated_graphs_and_fp16_elsewhere(tmp_path: Path, exported: Path) -> None:
    from realtime.backends.tensorrt_backend import TensorRTStages

    with pytest.raises(UserError, match="run 'genreal calibrate' first"):
        TensorRTStages(exported, precision="int8", device="cpu", cache_dir=tmp_path, trt=make_fake_trt([]), dev=DEV)
    pdir = exported / "onnx" / PRESET
    shutil.copy(pdir / "refine_step.onnx", pdir / "refine_step.int8.onnx")  # stands in for a Q/DQ graph
    try:
        calls: list = []
        st = TensorRTStages(exported, precision="int8", device="cpu", cache_dir=tmp_path, trt=make_fake_trt(calls),
                            dev=DEV)
        st.encode(np.zeros((1, 3, 360, 640), np.float32))
        assert st.stage_precision == {"encode": "fp16", "embed": "fp16", "initial": "fp16", "refine_step": "int8",
                                      "decode": "fp16"}
        assert [c[1][0] for c in calls if c[0] == "build_serialized_network"].count(["FP16", "INT8"]) == 1
        assert len(list(tmp_path.glob(f"{PRESET}-refine_step-int8-*.engine"))) == 1
    finally:
        (pdir / "refine_step.int8.onnx").unlink()


def test_backend_without_tensorrt_is_a_clean_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from realtime.backends.tensorrt_backend import TensorRTBackend
    from realtime.config import BackendConfig

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt → ImportError
    with pytest.raises(UserError, match="^tensorrt not installed: ") as exc:
        TensorRTBackend(BackendConfig(name="tensorrt", device="auto"))
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="not --device cpu"):
        TensorRTBackend(BackendConfig(name="tensorrt", device="cpu"))


@pytest.mark.slow
def test_unknown_size_names_the_presets(tmp_path: Path, exported: Path) -> None:
    from realtime.backends.tensorrt_backend import TensorRTStages

    st = TensorRTStages(exported, device="cpu", cache_dir=tmp_path, trt=make_fake_trt([]), dev=DEV)
    with pytest.raises(UserError, match=r"no ONNX graph covers 320x240 .*640x360"):
        st.encode(np.zeros((1, 3, 240, 320), np.float32))


# --- a real engine (GPU machines with TensorRT only) ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.gpu
def test_real_tensorrt_engine(tmp_path: Path, exported: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installable on our CI machines (no wheel, no GPU)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need a CUDA GPU")
    from realtime.backends.model_backend import ModelBackend
    from realtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from realtime.backends.tensorrt_backend import TensorRTStages
    from realtime.config import BackendConfig

    cfg = BackendConfig(name="tensorrt", style="cel", temporal=False)
    backend = ModelBackend(TensorRTStages(exported, precision="fp32", cache_dir=tmp_path), cfg)
    ref = OnnxRuntimeBackend(BackendConfig(name="onnxruntime", device="cpu", style="cel", temporal=False,
                                           precision="fp32"), model_dir=exported)
    img = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    assert np.abs(backend([img])[0].astype(int) - ref([img])[0].astype(int)).max() <= 2
