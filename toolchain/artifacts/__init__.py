"""The bottom layer: the contracts of what ships, shared by build, deploy and the runtime.

- `bundle.py`: the deploy bundle format (`write_bundle`, atomic) and its verification
  (`verify_bundle`, `read_verified`, `bundle_path`, `manifest_sha256`, `channel_plan_hash`);
- `sidecar.py`: the JSON sidecar next to every TensorRT engine and the load-time compatibility check;
- `trt_compat.py`: what the installed TensorRT can do, detected from its classes (`capabilities`,
  `import_tensorrt`, `detect_gpu`).
- `preprocess.py`: THE deployment preprocessing (`preprocess`), what a manifest's `preprocessing` means;
- `kinds.py`: THE table of artifact kinds (suffixes, backend, precisions, who loads it): `kind_of(path)`.

This package imports only `toolchain.errors`, `toolchain.utils` and third-party packages, never
build, deploy, runtime, export, calibration, training or pruning (tests/test_layering.py checks it),
so the runtime that ships to devices can use it without pulling in the training side.
"""
