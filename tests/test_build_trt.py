"""TensorRT builder flow per flavour.

The TensorRT 8.5 and 10.x branches run against fake modules (those versions have no CPU-only wheel);
`test_fakes_match_the_real_api` checks every name a fake defines against the real TensorRT-RTX classes,
so a fake cannot drift: a name must exist in the real module, or be one of the LEGACY names that the
compatibility layer detects as *absent* in TensorRT-RTX (and the test checks they are absent there).
The TensorRT-RTX branch runs against the real builder (tests/test_trt_real.py)."""
import sys
import types

import pytest

from toolchain.artifacts.sidecar import check_engine_compatible
from toolchain.artifacts.trt_compat import capabilities, network_flags, parse_version, version_from_number
from toolchain.errors import ToolchainError

trt_rtx = pytest.importorskip("tensorrt_rtx", reason="pip install -e '.[trt]' (part of `make test`)")

# Names of TensorRT 8.5-10.x that TensorRT-RTX / TensorRT 11 no longer have: exactly what trt_compat detects.
LEGACY = {"NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "BuilderFlag.FP16", "BuilderFlag.INT8",
          "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "IBuilderConfig.int8_calibrator",
          "IBuilderConfig.set_calibration_profile"}


class _Ns(types.SimpleNamespace):
    pass


def _enum(**members):
    return _Ns(**members)


def fake_trt(version: str, *, explicit_batch: bool, strongly_typed: bool, precision_flags: bool, calibrators: bool,
             opt_level: bool, record: list, parse_ok: bool = True, dla_cores: int = 2):
    """A fake `tensorrt` module of one flavour; every attribute mirrors a real TensorRT name."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    ndcf = {}
    # real TensorRT 8.x/10.x: EXPLICIT_BATCH = 0, STRONGLY_TYPED = 1 (10.x); real RTX: STRONGLY_TYPED = 0
    if explicit_batch:
        ndcf["EXPLICIT_BATCH"] = 0
    if strongly_typed:
        ndcf["STRONGLY_TYPED"] = 1 if explicit_batch else 0
    trt.NetworkDefinitionCreationFlag = _enum(**ndcf)
    flags = {"GPU_FALLBACK": "GPU_FALLBACK"}
    if precision_flags:
        flags.update(FP16="FP16", INT8="INT8")
    trt.BuilderFlag = _enum(**flags)
    trt.MemoryPoolType = _enum(WORKSPACE="workspace")
    trt.DeviceType = _enum(DLA="DLA", GPU="GPU")

    class Logger:
        WARNING, ERROR = 2, 1

        def __init__(self, level):
            pass

    class ParserError:
        def node(self): return 3
        def node_name(self): return "/decoder/MaxUnpool"
        def node_operator(self): return "MaxUnpool"
        def desc(self): return "Invalid Node - /decoder/MaxUnpool\nNo importer registered for op: MaxUnpool\n"

    class OnnxParser:
        def __init__(self, net, logger): self.num_errors = 0 if parse_ok else 1
        def parse_from_file(self, path): return parse_ok
        def get_error(self, i): return ParserError()

    class ITimingCache:
        def serialize(self): return b"timing"

    class IBuilderConfig:
        def set_memory_pool_limit(self, pool, size): record.append(("workspace", size))
        def create_timing_cache(self, data): return ITimingCache()
        def set_timing_cache(self, cache, ignore_mismatch): record.append(("timing_cache",))
        def get_timing_cache(self): return ITimingCache()
        def add_optimization_profile(self, p): record.append(("profile", p.shapes))
        def set_flag(self, flag): record.append(("flag", flag))
        def __setattr__(self, k, v):
            if k not in type(self).__dict__ and k not in ("default_device_type", "DLA_core"):
                raise AttributeError(f"IBuilderConfig has no attribute {k}")  # as pybind11 classes do
            record.append(("set", k, v))

    if opt_level:
        IBuilderConfig.builder_optimization_level = 0
    if calibrators:
        IBuilderConfig.int8_calibrator = None
        IBuilderConfig.set_calibration_profile = lambda self, p: record.append(("calibration_profile",))
        trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {"__init__": lambda s: None})
        trt.IInt8MinMaxCalibrator = type("IInt8MinMaxCalibrator", (), {"__init__": lambda s: None})

    class IOptimizationProfile:
        def set_shape(self, name, mn, opt, mx): self.shapes = (name, mn, opt, mx)

    class INetworkDefinition:
        num_layers = 7

    class Builder:
        num_DLA_cores = dla_cores
        def __init__(self, logger): pass
        def create_network(self, flags): record.append(("network_flags", flags)); return INetworkDefinition()
        def create_builder_config(self): return IBuilderConfig()
        def create_optimization_profile(self): return IOptimizationProfile()
        def build_serialized_network(self, net, cfg): return b"ENGINE"

    trt.Logger, trt.ParserError, trt.OnnxParser, trt.ITimingCache = Logger, ParserError, OnnxParser, ITimingCache
    trt.IBuilderConfig, trt.IOptimizationProfile, trt.INetworkDefinition = IBuilderConfig, IOptimizationProfile, \
        INetworkDefinition
    trt.Builder = Builder
    return trt


FLAVOURS = {
    "8.5": dict(version="8.5.2.2", explicit_batch=True, strongly_typed=False, precision_flags=True, calibrators=True,
                opt_level=False),
    "10.3": dict(version="10.3.0.26", explicit_batch=True, strongly_typed=True, precision_flags=True,
                 calibrators=True, opt_level=True),
}


def _names(obj, prefix=""):
    out = set()
    for name in vars(obj) if not isinstance(obj, type) else obj.__dict__:
        if name.startswith("_"):
            continue
        out.add(prefix + name)
    return out


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_fakes_match_the_real_api(flavour):
    """Every name a fake defines exists in the real TensorRT-RTX module, or is a LEGACY name it lacks."""
    fake = fake_trt(**FLAVOURS[flavour], record=[])
    checked = 0
    for top in _names(fake):
        if top in ("__version__",):
            continue
        path = top
        if path in LEGACY:
            assert not hasattr(trt_rtx, path), f"{path} is not legacy: TensorRT-RTX has it"
            continue
        assert hasattr(trt_rtx, top), f"fake defines tensorrt.{top}, which the real module lacks"
        member = getattr(fake, top)
        if isinstance(member, (types.SimpleNamespace, type)):
            for sub in _names(member):
                full = f"{top}.{sub}"
                checked += 1
                if full in LEGACY:
                    assert not hasattr(getattr(trt_rtx, top), sub), f"{full} is not legacy: TensorRT-RTX has it"
                    continue
                assert hasattr(getattr(trt_rtx, top), sub), f"fake defines tensorrt.{full}, which the real one lacks"
    assert checked > 20
    assert int(trt_rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0  # the real bit position the fakes mirror


def test_capabilities_per_flavour():
    rtx = capabilities(trt_rtx)
    assert rtx.flavour == "tensorrt-rtx" and rtx.strongly_typed and rtx.compute_capabilities
    assert not (rtx.precision_flags or rtx.implicit_int8 or rtx.explicit_batch_flag)
    assert rtx.precision_plan("fp16") == {"onnx": "fp16", "strongly_typed": True, "flags": []}
    assert rtx.precision_plan("int8")["onnx"] == "qdq"
    old = capabilities(fake_trt(**FLAVOURS["8.5"], record=[]))
    assert old.precision_flags and old.implicit_int8 and not old.strongly_typed and not old.optimization_level
    assert old.precision_plan("fp16") == {"onnx": "fp32", "strongly_typed": False, "flags": ["FP16"]}
    assert old.precision_plan("int8") == {"onnx": "qdq", "strongly_typed": False, "flags": ["INT8", "FP16"]}
    ten = capabilities(fake_trt(**FLAVOURS["10.3"], record=[]))
    assert ten.strongly_typed and ten.precision_flags and ten.optimization_level


def test_network_flags_from_the_module():
    assert network_flags(trt_rtx) == 0  # RTX: no EXPLICIT_BATCH (an AttributeError before this layer)
    assert network_flags(trt_rtx, strongly_typed=True) == 1 << int(trt_rtx.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    old = fake_trt(**FLAVOURS["8.5"], record=[])
    assert network_flags(old) == 1
    with pytest.raises(RuntimeError, match="no strongly typed"):
        network_flags(old, strongly_typed=True)
    assert network_flags(fake_trt(**FLAVOURS["10.3"], record=[]), strongly_typed=True) == 0b11


def test_version_numbers():
    assert parse_version("8.6.1.6") == (8, 6, 1) and parse_version("10.3") == (10, 3, 0)
    assert version_from_number(8601) == "8.6.1" and version_from_number(8502) == "8.5.2"
    assert version_from_number(100300) == "10.3.0" and version_from_number(110000) == "11.0.0"


def test_sidecar_compatibility_messages():
    side = {"tensorrt_version": "8.6.2", "compute_capability": "8.7", "gpu_name": "Orin"}
    check_engine_compatible(side, "8.6.2.3", {"name": "Orin", "compute_capability": "8.7"})
    with pytest.raises(ToolchainError, match="TensorRT 8.6.2 .*10.3.0.*rebuild it on this device"):
        check_engine_compatible(side, "10.3.0", {"name": "Orin", "compute_capability": "8.7"})
    with pytest.raises(ToolchainError, match="compute capability 8.7.*8.9"):
        check_engine_compatible(side, "8.6.2", {"name": "RTX 4090", "compute_capability": "8.9"})
    warn = check_engine_compatible(side, "8.6.2", {"name": "Orin NX", "compute_capability": "8.7"})
    assert warn and "Orin NX" in warn[0]
    aot = {"tensorrt_version": "1.7.1.116", "compute_capability": "8.6,8.9", "gpu_name": "none",
           "tensorrt_flavour": "tensorrt-rtx"}
    check_engine_compatible(aot, "1.7.1.116", {"name": "RTX 4090", "compute_capability": "8.9"}, "tensorrt-rtx")
    with pytest.raises(ToolchainError, match="compute capability 8.6,8.9"):
        check_engine_compatible(aot, "1.7.1.116", {"name": "RTX 5090", "compute_capability": "12.0"}, "tensorrt-rtx")
    with pytest.raises(ToolchainError, match="tensorrt-rtx 1.7.1.116 .this machine has tensorrt"):
        check_engine_compatible(aot, "10.3.0", {"name": "RTX 4090", "compute_capability": "8.9"}, "tensorrt")


def _request(tmp_path, precision, dla_core=None, **kw):
    from toolchain.build.trt_engine import EngineRequest

    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    prof = {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [4, 3, 8, 8]}
    return EngineRequest(onnx_path, tmp_path / "m.engine", precision, 256, prof, "jetson-orin-nx-16gb",
                         dla_core=dla_core, timing_cache=tmp_path / "timing.cache", **kw)


@pytest.mark.parametrize("flavour,precision,flags,network", [
    ("8.5", "fp16", ["FP16"], 1), ("8.5", "int8", ["INT8", "FP16"], 1),
    ("10.3", "fp16", ["FP16"], 1), ("10.3", "fp32", [], 1)])
def test_builder_flow_with_fake_tensorrt(tmp_path, monkeypatch, flavour, precision, flags, network):
    from toolchain.artifacts.sidecar import read_sidecar
    from toolchain.build.trt_engine import build_engine

    calls = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt(**FLAVOURS[flavour], record=calls))
    side = build_engine(_request(tmp_path, precision, dla_core=1, explicit_int8=precision == "int8"),
                        log=lambda s: None)
    assert ("network_flags", network) in calls and ("workspace", 256 << 20) in calls
    assert [c[1] for c in calls if c[0] == "flag"] == [*flags, "GPU_FALLBACK"]
    assert ("set", "DLA_core", 1) in calls and ("profile", ("input", [1, 3, 8, 8], [1, 3, 8, 8], [4, 3, 8, 8])) \
        in calls
    assert (("set", "builder_optimization_level", 3) in calls) == (flavour == "10.3")
    assert (tmp_path / "m.engine").read_bytes() == b"ENGINE" and (tmp_path / "timing.cache").read_bytes() == b"timing"
    on_disk = read_sidecar(tmp_path / "m.engine")
    assert on_disk["tensorrt_version"] == FLAVOURS[flavour]["version"] == side["tensorrt_version"]
    assert on_disk["tensorrt_flavour"] == "tensorrt" and on_disk["builder_flags"] == flags


def test_implicit_calibrator_only_where_the_api_has_it(tmp_path, monkeypatch):
    from toolchain.build.trt_engine import build_engine

    calls = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt(**FLAVOURS["10.3"], record=calls))
    build_engine(_request(tmp_path, "int8", calibrator="CAL"), log=lambda s: None)
    assert ("set", "int8_calibrator", "CAL") in calls and ("calibration_profile",) in calls


def test_dla_requested_where_none_exists_is_one_line(tmp_path, monkeypatch):
    from toolchain.build.trt_engine import build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt(**FLAVOURS["10.3"], record=[], dla_cores=0))
    with pytest.raises(ToolchainError, match=r"^DLA core 0 requested but this GPU has 0 DLA core\(s\)") as err:
        build_engine(_request(tmp_path, "fp16", dla_core=0), log=lambda s: None)
    assert "\n" not in str(err.value)


def test_parser_error_is_one_line_naming_node_op_cause(tmp_path, monkeypatch):
    from toolchain.build.trt_engine import build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt(**FLAVOURS["10.3"], record=[], parse_ok=False))
    with pytest.raises(ToolchainError, match=r"node '/decoder/MaxUnpool' \(MaxUnpool\): No importer registered") as e:
        build_engine(_request(tmp_path, "fp32"), log=lambda s: None)
    assert "\n" not in str(e.value) and "Invalid Node" not in str(e.value)
