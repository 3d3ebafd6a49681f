"""Device ops the launch schedule costs per training step, counted (not timed).

    TRITON_INTERPRET=1 python benchmarks/launches_per_step.py [--depth 12]

The Triton kernels launch longest samples first; that order (`ops._common.longest_first`) takes a
few small device ops. The ``triton`` backend builds it once per batch and caches it on the
`SeqLayout`, so every layer and the backward share it. This script counts, with a
``TorchDispatchMode``, the aten ops of one schedule and how many schedules one training step of
an ElasticAST builds, next to the count when each forward and each backward launcher builds its
own (two per layer, as the kernels did before the schedule was cached). Runs on the CPU under the
Triton interpreter; the interpreter-only check that recomputes a given schedule to validate it
(never done on CUDA) is left out, as it is on a GPU.
"""
from __future__ import annotations

import argparse
import importlib
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from elasticast_kernels.models import ElasticAST  # noqa: E402
from elasticast_kernels.ops import _common  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=12, help="transformer blocks (default 12, as ElasticAST-Base)")
    args = parser.parse_args()
    if args.depth < 1:
        parser.error(f"--depth must be >= 1, got {args.depth}")
    op = importlib.import_module("elasticast_kernels.ops.varlen_attention")
    cu_seqlens = torch.tensor([0, 40, 64, 130, 131], dtype=torch.int32)
    with OpCounter() as counter:
        _common.longest_first(cu_seqlens)
    per_schedule = counter.ops

    built = []
    real = op.longest_first
    op.longest_first = lambda cu: built.append(1) or real(cu)
    check = op._check_schedule
    op._check_schedule = lambda schedule, q, k, used: check(schedule, q, k, False)  # as on CUDA
    model = ElasticAST(sample_size=(64, 64), patch_size=16, num_classes=5, channels=1, dim=32, depth=args.depth,
                       heads=2, attention_backend="triton")
    specs = [torch.randn(1, 64, frames) for frames in (64, 32, 48, 16)]
    with OpCounter() as counter:
        model(specs).sum().backward()
    per_launcher = 2 * args.depth
    print(f"one launch schedule: {per_schedule} aten ops")
    print(f"training step, depth {args.depth}: {len(built)} schedule(s) built, {len(built) * per_schedule} ops "
          f"(one per launcher: {per_launcher} schedules, {per_launcher * per_schedule} ops); "
          f"{counter.ops} aten ops in the whole step")


if __name__ == "__main__":
    main()
