"""Benchmark suite and report for elasticast-kernels (``elasticast-bench``).

Modules: ``workloads`` (named, seeded clip-length sets), ``timing`` (CUDA-event / perf_counter
medians, peak memory), ``flops`` (real-work counts and GPU limits), ``baselines`` (what users
would otherwise write), ``groups/*`` (the cases), ``runner``, ``report`` (JSON, table, compare),
``plots``, ``cli``.
"""
