"""kktd's benchmarks (issue 7): every figure a ratio against a baseline measured in the same run.

`scripts/bench` (or `python -m benchmarks`) runs B1 journal throughput, B2 backlog drain, B3
footprint and B4 latency, prints the table and, with `--write-docs`, rewrites
docs/BENCHMARKS.md and docs/bench-drain.png. Not shipped in the package.
"""
