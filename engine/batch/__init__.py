"""Orchestration: options, the per-file pipeline shared by `srtrt run`, `--ray` and `srtrt.upscale`,
signals and the out-of-memory ladder."""
