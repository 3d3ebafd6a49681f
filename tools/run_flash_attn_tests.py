"""Run flash-attn's own attention tests against elasticast's flash-attn interface, on the CPU.

    python tools/run_flash_attn_tests.py /path/to/flash-attention [--path torch|triton]
        [--max-seqlen N] [--sample N] [--tests NAME,...] [-- extra pytest arguments]

It takes a checkout of https://github.com/Dao-AILab/flash-attention (nothing of it is copied into
this repository) and runs its ``tests/test_flash_attn.py`` with ``flash_attn`` aliased to
`elasticast_kernels.ops.flash_attn_interface`:

- the test module is rewritten on the fly into a temporary directory, for a CPU machine only:
  ``device = "cuda"`` becomes ``"cpu"``, the GPU capability probes answer sm_80 (so no
  parametrization is dropped for the GPU's sake) and the memory probe answers 64 GiB;
- ``flash_attn`` is a stand-in package: ``flash_attn_func`` / ``flash_attn_varlen_func`` are ours,
  the ``*kvpacked*`` / ``*qkvpacked*`` variants unpack and call them, ``return_attn_probs=True``
  without dropout returns ``(out, None, None)`` (the tests only read ``out`` then), and
  ``flash_attn.bert_padding`` is loaded from the checkout (pure torch);
- parametrizations of what we do not implement are deselected and counted: dropout, ALiBi,
  paged KV and the KV-cache / split-KV tests. Everything else runs: MHA/GQA/MQA,
  ``seqlen_q != seqlen_k``, causal, ``window_size``, ``softcap``, head dims 32..256, fp16/bf16;
- ``--max-seqlen`` keeps parametrizations whose sequence lengths fit, and ``--sample N`` a stable
  1-in-N subset (by test id), so the run fits a small CPU machine.

``--path torch`` (default) runs the CPU torch path; ``--path triton`` the Triton kernels in the
interpreter (``TRITON_INTERPRET=1``; bf16 still takes the torch path there; keep it tiny).
Needs pytest and einops. Prints pytest's summary; the exit status is pytest's.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile

# flash-attn's test functions for the forward/backward of flash_attn_func / flash_attn_varlen_func
# (and their packed variants); the KV-cache, split-KV and paged tests exercise features we refuse
DEFAULT_TESTS = (
    "test_flash_attn_qkvpacked", "test_flash_attn_varlen_qkvpacked", "test_flash_attn_output",
    "test_flash_attn_varlen_output", "test_flash_attn_causal", "test_flash_attn_varlen_causal",
    "test_flash_attn_bwd_overflow", "test_flash_attn_bwd_transpose", "test_flash_attn_bwd_varlen_overflow",
    "test_flash_attn_deterministic", "test_flash_attn_varlen_deterministic",
)
# not run: test_flash_attn_race_condition compares the log-sum-exp that return_attn_probs returns,
# which our interface does not expose

# (pattern, replacement) applied to the test module's source: CPU instead of a GPU
REWRITES = (
    (r'torch\.cuda\.get_device_capability\("cuda"\)', "(8, 0)"),
    (r'torch\.cuda\.get_device_properties\("cuda"\)\.total_memory', "(64 * 2**30)"),
    (r'device = "cuda"', 'device = "cpu"'),
    (r'device="cuda"', 'device="cpu"'),
)

CONFTEST = '''
"""Written by tools/run_flash_attn_tests.py: flash_attn -> elasticast_kernels.ops.flash_attn_interface."""
import importlib.util
import sys
import types
import zlib

import pytest

from elasticast_kernels.ops import flash_attn_interface as ours

CHECKOUT = {checkout!r}
MAX_SEQLEN = {max_seqlen!r}
SAMPLE = {sample!r}
TESTS = {tests!r}


def _with_probs(fn):
    def call(*args, return_attn_probs=False, **kwargs):
        dropout_p = kwargs.get("dropout_p", args[_DROPOUT_POSITION[fn]] if len(args) > _DROPOUT_POSITION[fn] else 0.0)
        if return_attn_probs and dropout_p == 0.0:
            return fn(*args, **kwargs), None, None  # the tests read only the output without dropout
        return fn(*args, return_attn_probs=return_attn_probs, **kwargs)
    return call


_DROPOUT_POSITION = {{ours.flash_attn_func: 3, ours.flash_attn_varlen_func: 7}}
flash_attn_func = _with_probs(ours.flash_attn_func)
flash_attn_varlen_func = _with_probs(ours.flash_attn_varlen_func)


def flash_attn_qkvpacked_func(qkv, *args, **kwargs):
    return flash_attn_func(*qkv.unbind(2), *args, **kwargs)


def flash_attn_kvpacked_func(q, kv, *args, **kwargs):
    return flash_attn_func(q, *kv.unbind(2), *args, **kwargs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, *args, **kwargs):
    return flash_attn_varlen_func(*qkv.unbind(1), cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, *args, **kwargs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *args, **kwargs):
    return flash_attn_varlen_func(q, *kv.unbind(1), cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *args,
                                  **kwargs)


def _unsupported(*args, **kwargs):
    raise NotImplementedError("not part of elasticast's flash-attn interface")


package = types.ModuleType("flash_attn")
package.__path__ = []
for _name in ("flash_attn_func", "flash_attn_varlen_func", "flash_attn_qkvpacked_func", "flash_attn_kvpacked_func",
              "flash_attn_varlen_qkvpacked_func", "flash_attn_varlen_kvpacked_func"):
    setattr(package, _name, globals()[_name])
package.flash_attn_with_kvcache = _unsupported
_spec = importlib.util.spec_from_file_location("flash_attn.bert_padding", CHECKOUT + "/flash_attn/bert_padding.py")
bert_padding = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bert_padding)
interface = types.ModuleType("flash_attn.flash_attn_interface")
interface._get_block_size_n = _unsupported  # dropout tests only
interface.USE_TRITON_ROCM = False
layers = types.ModuleType("flash_attn.layers")
layers.__path__ = []
rotary = types.ModuleType("flash_attn.layers.rotary")
rotary.apply_rotary_emb = _unsupported  # KV-cache tests only
sys.modules.update({{"flash_attn": package, "flash_attn.bert_padding": bert_padding,
                    "flash_attn.flash_attn_interface": interface, "flash_attn.layers": layers,
                    "flash_attn.layers.rotary": rotary}})

UNSUPPORTED = {{"dropout_p": lambda v: v > 0, "alibi": lambda v: bool(v), "paged_kv_block_size": lambda v: v is not None}}


def pytest_collection_modifyitems(config, items):
    keep, unsupported, too_long, not_sampled, other = [], [], [], [], []
    for item in items:
        name = item.originalname or item.name
        params = getattr(item, "callspec", None)
        params = params.params if params else {{}}
        if name not in TESTS:
            other.append(item)
        elif any(key in params and rule(params[key]) for key, rule in UNSUPPORTED.items()):
            unsupported.append(item)
        elif MAX_SEQLEN and max([v for k, v in params.items() if k.startswith("seqlen")] or [0]) > MAX_SEQLEN:
            too_long.append(item)
        elif SAMPLE > 1 and zlib.crc32(item.nodeid.encode()) % SAMPLE:
            not_sampled.append(item)
        else:
            keep.append(item)
    print(f"\\nflash-attn tests: {{len(items)}} collected; {{len(unsupported)}} need features we refuse (dropout, "
          f"ALiBi, paged KV); {{len(too_long)}} longer than --max-seqlen; {{len(not_sampled)}} outside the 1-in-"
          f"{{SAMPLE}} sample; {{len(other)}} other tests; {{len(keep)}} run")
    config.hook.pytest_deselected(items=unsupported + too_long + not_sampled + other)
    items[:] = keep
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=pathlib.Path, help="a clone of Dao-AILab/flash-attention")
    parser.add_argument("--path", choices=("torch", "triton"), default="torch")
    parser.add_argument("--max-seqlen", type=int, default=256, help="0: no limit")
    parser.add_argument("--sample", type=int, default=1, help="run a stable 1-in-N subset")
    parser.add_argument("--tests", default=",".join(DEFAULT_TESTS), help="comma-separated test functions")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    extra = argv[split + 1:]  # after --: passed to pytest
    source_file = args.checkout / "tests" / "test_flash_attn.py"
    if not source_file.is_file() or not (args.checkout / "flash_attn" / "bert_padding.py").is_file():
        parser.error(f"{args.checkout} is not a flash-attention checkout (no tests/test_flash_attn.py or "
                     "flash_attn/bert_padding.py)")
    source = source_file.read_text()
    for pattern, replacement in REWRITES:
        source = re.sub(pattern, replacement, source)
    with tempfile.TemporaryDirectory(prefix="flash_attn_tests_") as workdir:
        (pathlib.Path(workdir) / "test_flash_attn.py").write_text(source)
        (pathlib.Path(workdir) / "conftest.py").write_text(CONFTEST.format(
            checkout=str(args.checkout.resolve()), max_seqlen=args.max_seqlen, sample=args.sample,
            tests=tuple(args.tests.split(","))))
        env = dict(os.environ)
        env.pop("TRITON_INTERPRET", None)
        if args.path == "triton":
            env["TRITON_INTERPRET"] = "1"
        # name the test functions: collecting the whole module builds ~500k parametrizations
        targets = [f"{workdir}/test_flash_attn.py::{name}" for name in args.tests.split(",")]
        command = [sys.executable, "-m", "pytest", *targets, "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
                   "--rootdir", workdir, *extra]
        return subprocess.run(command, cwd=workdir, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
