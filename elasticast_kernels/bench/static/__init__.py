"""Static kernel report: what the GPU would execute, measured without a GPU.

Every Triton kernel (varlen attention forward/backward, pooling) is compiled for sm_80 and sm_90
for each autotune candidate; the machine code (SASS, via Triton's bundled ``cuobjdump``) gives
registers, spills, shared memory, occupancy, the tensor-core instructions and the size of the
main loop. A grid-schedule simulation adds how busy a ragged launch keeps the SMs. All figures
are compile-time estimates, labelled as such in the report.

Modules: ``sass`` (read SASS), ``compile`` + ``_worker`` (compile in subprocesses, any Triton),
``specs`` (what to compile), ``occupancy``, ``schedule`` (grid simulation), ``report`` (metrics,
JSON, markdown), ``summary`` (before/after), ``run`` (``elasticast-bench --suite static``).
"""
