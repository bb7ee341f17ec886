"""Benchmarks, all in one place: one module per part (`audio`, `motion`, `renderer`: each stage's model speed;
`serving`: first-frame latency and delivered frame rate under concurrent sessions), each with `run(out_dir) -> dict`.
`python -m tools.bench` (`make bench`) runs them and writes bench/results/ with a SUMMARY.md naming the machine."""
