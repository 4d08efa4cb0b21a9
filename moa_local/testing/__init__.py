"""The controllable fake engine, for fault tests and benchmarks."""
