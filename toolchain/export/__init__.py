"""ONNX export: torch -> ONNX, checker + shape inference, simplification, parity, graph lint, metadata."""
from toolchain.export.exporter import ExportResult, export_checkpoint, export_model  # noqa: F401
from toolchain.export.lint import LintReport, lint_onnx  # noqa: F401
from toolchain.export.metadata import read_onnx_metadata  # noqa: F401
from toolchain.export.onnx_io import check_onnx_matches_config, io_signature, load_onnx  # noqa: F401
from toolchain.export.parity import check_parity, relative_error  # noqa: F401
