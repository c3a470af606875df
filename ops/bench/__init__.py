"""Benchmarks: each module runs with `python -m ops.bench.<name>` (see `make help`) and writes its figures under results/."""
