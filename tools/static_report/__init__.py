"""Static kernel report: what the GPU would execute, measured without a GPU.

Development tool of the source checkout (not installed with the package): it compiles the
checkout's Triton kernels (varlen attention forward/backward with every feature variant, pooling)
for sm_80 and sm_90 for each autotune candidate; the machine code (SASS, via Triton's bundled
``cuobjdump``) gives registers, spills, shared memory, occupancy, the tensor-core instructions and
the size of the main loop. A grid-schedule simulation adds how busy a ragged launch keeps the SMs,
and the kernels' loop bounds give the blocks a sliding window visits. All figures are compile-time
estimates, labelled as such in the report.

Modules: ``sass`` (read SASS), ``compile`` + ``_worker`` (compile in subprocesses, any Triton),
``specs`` (the kernel cases, shared with the AOT tests), ``occupancy``, ``schedule`` (grid
simulation), ``report`` (metrics, JSON, markdown), ``summary`` (before/after, variants), ``run``
(``python -m tools.static_report``; ``elasticast-bench --suite static`` calls it).
"""
