"""kktd's benchmarks (issue 7): every figure a ratio against a baseline measured in the same run.

`scripts/bench` (or `python -m benchmarks`) runs B1 journal throughput, B2 backlog drain, B3
footprint, B4 latency and B5 the KKT link (TCP beside the pty, busy answers), prints the table
and, with `--write-docs`, rewrites
docs/BENCHMARKS.md and docs/bench-drain.png. Not shipped in the package.
"""
