"""ONNX simplification: onnxsim (the project's default) with onnxslim as the fallback.

onnxslim runs when onnxsim is not installed (no wheel, e.g. JetPack 5's Python 3.8) or raises on
a graph. The caller always re-checks numerics (parity) after simplifying.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from toolchain.errors import ToolchainError

METHODS = ("onnxsim", "onnxslim", "none")


@dataclass
class SimplifyResult:
    model: object
    ran: str                      # "onnxsim", "onnxslim" or "none"
    requested: str
    notes: list[str] = field(default_factory=list)


def _with_onnxsim(model):
    import onnxsim  # noqa: PLC0415 - optional compiled dependency

    simplified, ok = onnxsim.simplify(model, check_n=0)
    if not ok:
        raise RuntimeError("onnxsim reported that the simplified model is not valid")
    # onnxsim >= 0.8 records its own bookkeeping in metadata_props; keep ours readable
    kept = [p for p in simplified.metadata_props if not p.key.startswith("onnxsim.")]
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(kept)
    return simplified


def _with_onnxslim(model):
    import onnxslim  # noqa: PLC0415

    return onnxslim.slim(model)


def simplify_model(model, method: str = "onnxsim") -> SimplifyResult:
    if method not in METHODS:
        raise ToolchainError(f"--simplify must be one of {', '.join(METHODS)} (got {method})")
    if method == "none":
        return SimplifyResult(model, "none", method)
    notes = []
    order = ["onnxsim", "onnxslim"] if method == "onnxsim" else ["onnxslim"]
    for name in order:
        try:
            simplified = (_with_onnxsim if name == "onnxsim" else _with_onnxslim)(model)
            return SimplifyResult(simplified, name, method, notes)
        except ImportError:
            notes.append(f"{name} is not installed")
        except Exception as err:  # noqa: BLE001 - simplifiers fail in many ways; fall back and record why
            notes.append(f"{name} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    notes.append("kept the unsimplified graph")
    return SimplifyResult(model, "none", method, notes)
