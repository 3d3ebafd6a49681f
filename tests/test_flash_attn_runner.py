"""tools/run_flash_attn_tests.py on a stand-in checkout (the real flash-attention repository is
not part of this one): the GPU probes are rewritten, ``flash_attn`` is our interface, refused
features are deselected, and a failing comparison fails the run."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

RUNNER = pathlib.Path(__file__).resolve().parents[1] / "tools" / "run_flash_attn_tests.py"

FAKE_TESTS = '''
import pytest
import torch
from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_kvpacked_func
from flash_attn.bert_padding import unpad_input

is_sm80 = torch.cuda.get_device_capability("cuda") == (8, 0)


@pytest.mark.parametrize("dropout_p", [0.0, 0.17])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(5, 9), (300, 300)])
def test_flash_attn_output(seqlen_q, seqlen_k, dropout_p):
    assert is_sm80
    device = "cuda"
    q = torch.randn(2, seqlen_q, 4, 32, device=device)
    kv = torch.randn(2, seqlen_k, 2, 2, 32, device=device)
    out, lse, s = flash_attn_kvpacked_func(q, kv, dropout_p, causal=True, window_size=torch.tensor([3, 1]),
                                           return_attn_probs=True)
    ref = flash_attn_func(q, *kv.unbind(2), causal=True, window_size=(3, 1))
    assert torch.equal(out, ref) and unpad_input(q, torch.ones(2, seqlen_q, dtype=torch.bool))[0].shape[0] == 2 * seqlen_q
    assert torch.equal(out, flash_attn_func(q, *kv.unbind(2))) == WANT_EQUAL
'''


def _checkout(tmp_path: pathlib.Path, want_equal: bool) -> pathlib.Path:
    (tmp_path / "tests").mkdir()
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "tests" / "test_flash_attn.py").write_text(f"WANT_EQUAL = {want_equal}\n" + FAKE_TESTS)
    (tmp_path / "flash_attn" / "bert_padding.py").write_text(textwrap.dedent('''
        def unpad_input(x, mask):
            return (x[mask],)
    '''))
    return tmp_path


def _run(checkout: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), str(checkout), "--tests", "test_flash_attn_output"],
                          capture_output=True, text=True, timeout=300)


def test_runner_aliases_flash_attn_and_deselects_refused_features(tmp_path):
    result = _run(_checkout(tmp_path, want_equal=False))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # 4 parametrizations: 2 with dropout (refused), 1 longer than the default --max-seqlen 256
    assert "4 collected; 2 need features we refuse" in result.stdout
    assert "1 longer than --max-seqlen" in result.stdout and "1 passed" in result.stdout


def test_runner_reports_failures(tmp_path):
    result = _run(_checkout(tmp_path, want_equal=True))  # the windowed output is not the full one: fails
    assert result.returncode != 0 and "1 failed" in result.stdout
