"""The Hugging Face integration (``attn_implementation="elasticast"``) on tiny random-initialised
models built from configs: a GQA Llama, a sliding-window Mistral and a Qwen2 mixing sliding and
full layers. Packed batches through our attention against padded batches through transformers'
``sdpa``: logits on every real token and every parameter gradient.

Runs on the torch path (CPU) and, for one model, on the Triton kernels under the interpreter.
"""
from __future__ import annotations

import pytest
import torch
import transformers  # the hf extra, part of .[dev]: these tests never skip there

from elasticast_kernels.integrations import transformers as integration
from elasticast_kernels.integrations.transformers import ATTENTION_NAME, elasticast_attention_forward, register

LENGTHS = [7, 12, 3, 9]  # sequences of one batch; 12 > the sliding windows below
VOCAB = 97


def llama_gqa():
    return transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def mistral_sliding():
    return transformers.MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=1, sliding_window=4,
                                      max_position_embeddings=64)


def qwen2_mixed():
    return transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                    sliding_window=5, max_window_layers=1, max_position_embeddings=64)


CONFIGS = {"llama_gqa": llama_gqa, "mistral_sliding": mistral_sliding, "qwen2_mixed": qwen2_mixed}


@pytest.fixture(autouse=True)
def _registered(torch_cpu_path):
    register()


def make_model(config_fn, attn_implementation):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_fn(), attn_implementation=attn_implementation)
    return model.float().train()  # training mode: dropout is 0 in these configs; gradients flow


def sequences(lengths=LENGTHS, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=gen) for n in lengths]


def padded_batch(seqs, left=False):
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[row, cols], mask[row, cols] = s, 1
    return ids, mask


def flattened_batch(seqs, flash_kwargs=True):
    collator = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)
    return collator([{"input_ids": s.tolist()} for s in seqs])


def real_token_logits_padded(model, seqs, left=False):
    ids, mask = padded_batch(seqs, left)
    logits = model(input_ids=ids, attention_mask=mask).logits
    return torch.cat([logits[row][mask[row].bool()] for row in range(len(seqs))])


def real_token_logits_packed(model, seqs, flash_kwargs=True):
    batch = flattened_batch(seqs, flash_kwargs)
    batch.pop("labels")
    return model(**batch).logits[0]


def loss_and_grads(model, logits, weights):
    model.zero_grad()
    (logits * weights).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def check_against_sdpa(config_fn, ours_logits_fn, reference_logits_fn=real_token_logits_padded, seqs=None):
    check_against_sdpa_with(config_fn, ATTENTION_NAME, ours_logits_fn, reference_logits_fn, seqs)


def check_against_sdpa_with(config_fn, attn_implementation, ours_logits_fn, reference_logits_fn=real_token_logits_padded,
                            seqs=None):
    seqs = seqs or sequences()
    reference_model = make_model(config_fn, "sdpa")
    ours_model = make_model(config_fn, attn_implementation)
    reference = reference_logits_fn(reference_model, seqs)
    ours = ours_logits_fn(ours_model, seqs)
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=2e-5)
    weights = torch.randn(reference.shape, generator=torch.Generator().manual_seed(2))
    reference_grads = loss_and_grads(reference_model, reference, weights)
    ours_grads = loss_and_grads(ours_model, ours, weights)
    assert ours_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        torch.testing.assert_close(ours_grads[name], grad, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_padding_free_flash_kwargs_match_padded_sdpa(config):
    """DataCollatorWithFlattening(return_flash_attn_kwargs=True): cu_seq_lens_* reach the op."""
    check_against_sdpa(CONFIGS[config], real_token_logits_packed)


@pytest.mark.parametrize("config", ["llama_gqa", "mistral_sliding"])
def test_packed_by_position_ids_only_match_padded_sdpa(config):
    """Flattened without the flash kwargs: the sequences come from position_ids (on the device)."""
    check_against_sdpa(CONFIGS[config], lambda model, seqs: real_token_logits_packed(model, seqs, flash_kwargs=False))


@pytest.mark.parametrize("left", [False, True], ids=["right_padding", "left_padding"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_padded_batches_match_padded_sdpa(config, left):
    check_against_sdpa(CONFIGS[config], lambda model, seqs: real_token_logits_padded(model, seqs, left),
                       lambda model, seqs: real_token_logits_padded(model, seqs, left))


def test_plain_batch_without_padding():
    """Equal lengths, no mask: every row one sample."""
    seqs = sequences([8, 8, 8])
    check_against_sdpa(llama_gqa, lambda m, s: m(input_ids=torch.stack(s)).logits.reshape(-1, VOCAB),
                       lambda m, s: m(input_ids=torch.stack(s)).logits.reshape(-1, VOCAB), seqs)


def test_padding_free_reaches_varlen_attention_once_per_layer(monkeypatch):
    calls = []
    real = integration.varlen_attention

    def spy(q, k, v, cu_seqlens, *args, **kwargs):
        calls.append((tuple(q.shape), cu_seqlens.tolist(), kwargs["cu_seqlens_k"].tolist(), kwargs["window_size"]))
        return real(q, k, v, cu_seqlens, *args, **kwargs)

    monkeypatch.setattr(integration, "varlen_attention", spy)
    model = make_model(mistral_sliding, ATTENTION_NAME)
    real_token_logits_packed(model, sequences())
    offsets = [0, 7, 19, 22, 31]
    assert calls == [((31, 4, 16), offsets, offsets, (3, 3))] * 2  # causal then forces the right side to 0


def test_layouts_are_built_once_per_forward(monkeypatch):
    builds = []
    real = integration._row_segments
    monkeypatch.setattr(integration, "_row_segments", lambda mask: builds.append(1) or real(mask))
    model = make_model(llama_gqa, ATTENTION_NAME)
    real_token_logits_padded(model, sequences())
    assert len(builds) == 1  # two layers, one layout
    real_token_logits_padded(model, sequences())
    assert len(builds) == 2  # a new mask tensor: a new layout


def test_buffer_refilled_in_place_is_not_served_a_stale_layout():
    query = torch.randn(1, 2, 6, 16)
    cu = torch.tensor([0, 3, 6], dtype=torch.int32)
    module = torch.nn.Module()
    first, _ = elasticast_attention_forward(module, query, query, query, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    cu[1] = 1  # same tensor object, new values
    second, _ = elasticast_attention_forward(module, query, query, query, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    expected, _ = elasticast_attention_forward(module, query, query, query, None,
                                               cu_seq_lens_q=cu.clone(), cu_seq_lens_k=cu.clone())
    assert torch.equal(second, expected) and not torch.equal(first, second)


def test_max_seqlen_spelling_and_tensor_hints_are_accepted():
    query = torch.randn(1, 2, 6, 16)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    module = torch.nn.Module()
    base, _ = elasticast_attention_forward(module, query, query, query, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                           max_length_q=4, max_length_k=4)
    other, _ = elasticast_attention_forward(module, query, query, query, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                            max_seqlen_q=torch.tensor(4), max_seqlen_k=4)
    assert torch.equal(base, other)


def test_refused_features():
    query = torch.randn(1, 2, 4, 16)
    module = torch.nn.Module()
    with pytest.raises(NotImplementedError, match="dropout"):
        elasticast_attention_forward(module, query, query, query, None, dropout=0.1)
    with pytest.raises(NotImplementedError, match="s_aux"):
        elasticast_attention_forward(module, query, query, query, None, s_aux=torch.zeros(2))
    with pytest.raises(ValueError, match="2-D padding mask"):
        elasticast_attention_forward(module, query, query, query, torch.ones(1, 1, 4, 4, dtype=torch.bool))
    holes = torch.tensor([[1, 0, 1, 1]])
    with pytest.raises(ValueError, match="padding between real tokens"):
        elasticast_attention_forward(module, query, query, query, holes)


def test_register_is_idempotent_and_named():
    assert register() == ATTENTION_NAME
    assert register() == ATTENTION_NAME
    assert transformers.AttentionInterface._global_mapping[ATTENTION_NAME] is elasticast_attention_forward
    assert register("elasticast_other") == "elasticast_other"


def test_under_the_triton_interpreter(monkeypatch):
    """The same integration with the Triton kernels (interpreted: tiny)."""
    from elasticast_kernels.ops._common import triton_available

    if not triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_against_sdpa(llama_gqa, real_token_logits_packed, seqs=sequences([5, 9, 2]))


@pytest.mark.gpu
def test_padding_free_attention_has_no_host_sync():
    """The attention function itself never waits for the GPU on the padding-free path."""
    device = "cuda"
    query = torch.randn(1, 8, 40, 64, device=device, dtype=torch.bfloat16)
    key = torch.randn(1, 2, 40, 64, device=device, dtype=torch.bfloat16)
    cu = torch.tensor([0, 9, 30, 40], dtype=torch.int32).to(device)
    module = torch.nn.Module()
    elasticast_attention_forward(module, query, key, key, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                 max_length_q=21, max_length_k=21)  # warm-up (autotuning may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, _ = elasticast_attention_forward(module, query, key, key, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                              max_length_q=21, max_length_k=21, sliding_window=8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (1, 40, 8, 64)


@pytest.mark.parametrize("layout", ["padded", "padding_free"])
def test_hub_kernel_path_with_our_flash_attn_interface(monkeypatch, layout):
    """transformers' hub-kernel path (``attn_implementation="org/repo"``) with the downloaded kernel
    replaced by `elasticast_kernels.ops.flash_attn_interface`: transformers' own flash wrapper reads
    our signatures, passes windows/causal/max lengths, unpads and pads, and the logits and
    gradients equal padded sdpa."""
    import transformers.integrations.hub_kernels as hub_kernels

    from elasticast_kernels.ops import flash_attn_interface

    monkeypatch.setattr(hub_kernels, "get_kernel", lambda repo_id, **kwargs: flash_attn_interface)
    if layout == "padded":
        ours_fn = real_token_logits_padded
    else:
        ours_fn = real_token_logits_packed
    check_against_sdpa_with(mistral_sliding, "elasticast-test/flash-attn-interface", ours_fn)


@pytest.mark.parametrize("extra", [[], ["--sliding-window", "6"]], ids=["llama", "mistral_window"])
def test_the_padding_free_example_runs_on_cpu_with_the_padded_losses(extra):
    """examples/hf_padding_free.py (the README's example) trains both layouts to the same losses."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "hf_padding_free.py"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}  # the torch CPU path
    done = subprocess.run([sys.executable, str(script), "--steps", "2", "--batch-size", "4", *extra],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    pairs = re.findall(r"loss padding-free ([0-9.]+) \| padded ([0-9.]+)", done.stdout)
    assert len(pairs) == 2
    for ours, padded in pairs:
        assert float(ours) == pytest.approx(float(padded), abs=1e-4)
