"""``elasticast-bench --suite static``: compile the sweep, write ``<stem>.json`` and ``<stem>.md``.

The stem defaults to ``triton-<version>`` so runs under several Triton versions share one folder.
With ``baseline`` (an earlier report's JSON) the markdown opens with a before/after summary of
the default configurations.
"""
from __future__ import annotations

import json
from pathlib import Path

from elasticast_kernels.bench.static import report, specs, summary
from elasticast_kernels.bench.static.compile import triton_tools_present


def cases(tiny: bool = False) -> list[specs.Case]:
    """The full sweep, or (``tiny``) the default configs at head_dim 64, sm_90, bf16, non-causal."""
    if tiny:
        return [*specs.varlen_cases(archs=(90,), dtypes=("bf16",), head_dims=(64,), causals=(False,),
                                    defaults_only=True),
                *specs.pool_cases(archs=(90,), dtypes=("bf16",), head_dims=(64,))]
    return [*specs.varlen_cases(), *specs.pool_cases()]


def run(out: Path, tiny: bool = False, baseline: Path | None = None, stem: str | None = None,
        label: str = "", workers: int = 2) -> tuple[Path, Path]:
    """Build and write the report; returns the JSON and markdown paths.

    Raises:
        RuntimeError: this Triton lacks its NVIDIA tools (cuobjdump), so nothing can be read.
        ValueError: ``baseline`` is not a static report.
    """
    if not triton_tools_present():
        raise RuntimeError("the static report needs triton with its NVIDIA backend tools (cuobjdump)")
    before = None
    if baseline is not None:
        before = json.loads(Path(baseline).read_text())
        if before.get("kind") != "static-kernel-report":
            raise ValueError(f"{baseline} is not a static kernel report")
    built = report.build(cases(tiny), workers=workers, label=label)
    stem = stem or f"triton-{built['triton']}"
    json_path, md_path = report.write(built, Path(out), stem)
    if before is not None:
        md_path.write_text(summary.before_after(before, built) + "\n" + md_path.read_text())
    return json_path, md_path
