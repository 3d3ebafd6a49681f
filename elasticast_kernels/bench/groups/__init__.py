"""Benchmark groups; each module exposes ``tasks(cfg) -> list[Task]``."""
