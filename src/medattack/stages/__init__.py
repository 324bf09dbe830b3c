"""The stages, one module each: `build`, `attack`, `query`, `score`, `report` (plus `prompts` and
`analyze`). Each has a frozen `Config` and `run(run_dir, config, *, executor, progress, force)` over
one run directory (rundir.RunDir); `stages.base` holds what they share.
"""
