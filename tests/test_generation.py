"""The transformers generation backend on a tiny real model."""

from __future__ import annotations

from pathlib import Path

import pytest

from refine_af.generation import SamplingParams, cut_at_stop, make_backend


def test_cut_at_stop() -> None:
    assert cut_at_stop("a\n\nb", ["\n\n"]) == ("a", True)
    assert cut_at_stop("abc", ["x", ""]) == ("abc", False)
    assert cut_at_stop("1 end 2 stop", ["stop", "end"]) == ("1 ", True)


def test_batched_generation_keeps_order_and_is_seeded(tiny_model_dir: Path) -> None:
    import transformers

    backend = make_backend("transformers", str(tiny_model_dir), device="cpu", batch_size=2)
    prompts = ["Hello there, how are", "A", "Tell me a much longer story about a cat named"]
    greedy = SamplingParams(max_new_tokens=5, temperature=0.0)
    one_by_one = [backend.generate([p], greedy)[0] for p in prompts]
    assert backend.generate(prompts, greedy) == one_by_one  # batching and sorting change nothing
    assert all(c.finish_reason == "length" and c.num_tokens == 5 for c in one_by_one)

    sampled = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9, presence_penalty=2.0)
    transformers.set_seed(3)
    first = backend.generate(prompts, sampled)
    transformers.set_seed(3)
    assert backend.generate(prompts, sampled) == first


def test_presence_penalty_lowers_used_tokens_only() -> None:
    import torch

    from refine_af.generation import presence_penalty_processor

    processor = presence_penalty_processor(2.0, prompt_length=2)
    ids = torch.tensor([[5, 6, 1, 1, 3]])  # prompt [5, 6]; generated [1, 1, 3]
    scores = torch.zeros(1, 8)
    out = processor(ids, scores)
    assert out[0].tolist() == pytest.approx([0, -2, 0, -2, 0, 0, 0, 0])
