"""Benchmarks that print figures (speed, memory, throughput); each prints one JSON object with --json."""
