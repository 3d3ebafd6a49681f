"""Padding-free training of a Hugging Face model with elasticast's varlen attention (CPU, < 1 min).

A tiny Llama-style model (grouped-query attention: 4 query heads on 2 key/value heads) is built
from a config, random-initialised (nothing is downloaded) and trained for a few steps on
variable-length token sequences in two ways:

- padding-free: ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` packs each batch into
  one row of real tokens and hands ``cu_seq_lens_q/k`` to ``attn_implementation="elasticast"``;
- padded: the usual padded batch and attention mask through transformers' ``sdpa``.

Both start from the same weights and see the same batches; the script prints both losses at every
step (they agree to float32 rounding), the tokens each layout spends compute on, and the time of
each. Run: ``python examples/hf_padding_free.py [--steps N] [--sliding-window W]``
(``--sliding-window`` switches to a Mistral-style model with a local attention window).
"""
from __future__ import annotations

import argparse
import time

import torch

from elasticast_kernels._optional import import_optional
from elasticast_kernels.integrations.transformers import register

transformers = import_optional("transformers", "this example")

VOCAB = 512


def build_model(attn_implementation: str, sliding_window: int | None):
    common = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    config = (transformers.MistralConfig(sliding_window=sliding_window, **common) if sliding_window
              else transformers.LlamaConfig(**common))
    torch.manual_seed(0)  # the same weights for both layouts
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def make_batches(steps: int, batch_size: int, seed: int = 0) -> list[list[dict]]:
    """Token sequences of 16..256 tokens (a long tail, as real text and audio have)."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        lengths = (16 + torch.distributions.Exponential(1 / 60).sample((batch_size,)).clamp(max=240)).long()
        batches.append([{"input_ids": torch.randint(0, VOCAB, (int(n),), generator=gen).tolist()} for n in lengths])
    return batches


def padded(features: list[dict]) -> dict:
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, f in enumerate(features):
        ids[row, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
        mask[row, :len(f["input_ids"])] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def mean_token_loss(model, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy over the real tokens of every sequence (no token predicts across a
    sequence boundary in either layout: the flattening collator puts -100 at each sequence start)."""
    labels = batch.pop("labels")
    logits = model(**batch).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sliding-window", type=int, default=None)
    args = parser.parse_args()

    name = register()  # attn_implementation="elasticast"
    collator = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True)
    models = {"padding-free elasticast": build_model(name, args.sliding_window),
              "padded sdpa": build_model("sdpa", args.sliding_window)}
    optimizers = {key: torch.optim.SGD(model.parameters(), lr=0.05) for key, model in models.items()}
    seconds = dict.fromkeys(models, 0.0)
    tokens = dict.fromkeys(models, 0)
    for step, features in enumerate(make_batches(args.steps, args.batch_size)):
        batches = {"padding-free elasticast": collator(features), "padded sdpa": padded(features)}
        losses = {}
        for key, model in models.items():
            tokens[key] += batches[key]["input_ids"].numel()
            start = time.perf_counter()
            loss = mean_token_loss(model, dict(batches[key]))
            optimizers[key].zero_grad()
            loss.backward()
            optimizers[key].step()
            seconds[key] += time.perf_counter() - start
            losses[key] = loss.item()
        print(f"step {step}: loss padding-free {losses['padding-free elasticast']:.6f} | "
              f"padded {losses['padded sdpa']:.6f}")
    for key in models:
        print(f"{key:>24}: {tokens[key]:6d} token positions computed, {seconds[key]:.2f} s")


if __name__ == "__main__":
    main()
