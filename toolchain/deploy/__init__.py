"""The cached, resumable `acsl deploy` pipeline and deploy bundles.

- `cache.py`: `StageCache` (each stage keyed by a hash of its inputs; a done-marker written last);
- `bundle.py`: `write_bundle(dest, files, manifest)` (temp dir + rename, manifest last),
  `verify_bundle(dir) -> manifest`;
- `pipeline.py`: `run_deploy(cfg, target, checkpoint=None, out_dir=None) -> DeployResult`.
"""
