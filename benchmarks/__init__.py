"""Benchmarks: they print ratios, the machine and the commit; they are not tests (nothing fails on a number)."""
