"""``python -m elasticast_kernels.bench`` = ``elasticast-bench``."""
from elasticast_kernels.bench.cli import main

raise SystemExit(main())
