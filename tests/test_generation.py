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


PROMPTS = [
    "Hello there, how are",
    "A",
    "Tell me a much longer story about a cat named",
    "Write a poem about the sea and the sky and the",
    "Why?",
]


def _backends(model_dir: Path, batch_size: int = 4, **fast_args: object) -> tuple[object, object]:
    from refine_af.generation import TransformersBackend
    from refine_af.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(model_dir), device="cpu")
    fast = TransformersBackend(model, tokenizer, batch_size, **fast_args)  # type: ignore[arg-type]
    reference = TransformersBackend(model, tokenizer, batch_size, fast=False)
    return fast, reference


@pytest.mark.parametrize("padding", [0.0, 0.5])  # 0.0: every prompt length pre-filled alone
def test_fast_greedy_equals_generate(tiny_model_dir: Path, padding: float) -> None:
    fast, reference = _backends(tiny_model_dir, max_prefill_padding=padding)
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    expected = reference.generate(PROMPTS, greedy)
    assert fast.generate(PROMPTS, greedy) == expected
    assert [fast.generate([p], greedy)[0] for p in PROMPTS] == expected


def test_cache_growth_changes_no_answer(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode cache starts with room for one new position and grows as rows write more."""
    import refine_af.kv_cache as kv_cache

    monkeypatch.setattr(kv_cache, "GROWTH", 1)
    fast, reference = _backends(tiny_model_dir, batch_size=3)
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    assert fast.generate(PROMPTS, greedy) == reference.generate(PROMPTS, greedy)


def test_repeated_prompts_are_prefilled_once(tiny_model_dir: Path) -> None:
    """Stage 2 samples each prompt several times: one prefill, the same answers."""
    fast, reference = _backends(tiny_model_dir, batch_size=8)
    prompts = [PROMPTS[2], PROMPTS[0], PROMPTS[2], PROMPTS[2], PROMPTS[0], PROMPTS[3]]
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    assert fast.generate(prompts, greedy) == reference.generate(prompts, greedy)
    distinct = {tuple(ids) for ids in fast.tokenizer(prompts)["input_ids"]}
    assert fast.timing.prefill_rows == len(distinct) == 3


# Batch 4: every finished row leaves the batch at once; batch 10: finished rows ride along until
# a quarter of the batch has finished, then leave together.
@pytest.mark.parametrize("batch_size", [4, 10])
def test_fast_path_drops_finished_rows_like_generate(tiny_model_dir: Path, batch_size: int) -> None:
    """Rows ending early (EOS, a stop string) leave the batch; the others go on unchanged."""
    fast, reference = _backends(tiny_model_dir, batch_size, max_prefill_padding=0.0)
    # Batch 10: the one row that stops early rides along (1 finished < 10 // 4).
    prompts = PROMPTS if batch_size == 4 else PROMPTS + [f"Number {i} is" for i in range(6)]
    model, tokenizer = fast.model, fast.tokenizer  # type: ignore[attr-defined]
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    raw = reference._reference_generate(prompts, greedy)  # type: ignore[attr-defined]
    # A stop string that the first prompt's 3rd token completes, an EOS the second emits.
    stop = tokenizer.decode(raw[0][2:3])
    assert stop.strip()
    with_stop = SamplingParams(max_new_tokens=8, temperature=0.0, stop=(stop,))
    expected = reference.generate(prompts, with_stop)
    assert fast.generate(prompts, with_stop) == expected
    assert expected[0].finish_reason == "stop" and expected[0].num_tokens <= 3

    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [original, raw[1][4]]
    try:
        expected = reference.generate(prompts, greedy)
        assert fast.generate(prompts, greedy) == expected
        assert expected[1].num_tokens <= 5
    finally:
        model.generation_config.eos_token_id = original


def test_fast_sampling_draws_from_generates_distribution(tiny_model_dir: Path) -> None:
    """Top-k first, then temperature and top-p on the k best: generate's distribution exactly."""
    import torch
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    fast, _ = _backends(tiny_model_dir)
    params = SamplingParams(max_new_tokens=6, temperature=0.7, top_p=0.5)
    warpers, top_k = fast._warpers(params)  # type: ignore[attr-defined]
    assert top_k == 50  # transformers' default: the tiny model's config sets none
    generate_pipeline = LogitsProcessorList(
        [TemperatureLogitsWarper(0.7), TopKLogitsWarper(top_k=50), TopPLogitsWarper(top_p=0.5)]
    )
    scores = torch.randn(3, 500, generator=torch.Generator().manual_seed(0)) * 3
    expected = torch.softmax(generate_pipeline(None, scores.clone()), dim=-1)

    torch.manual_seed(0)
    draws = torch.stack([fast._sample(scores, warpers, top_k) for _ in range(4000)])  # type: ignore[attr-defined]
    for row in range(3):
        support = set(expected[row].nonzero().flatten().tolist())
        assert set(draws[:, row].tolist()) <= support  # never a token generate could not draw
        frequency = torch.bincount(draws[:, row], minlength=500).float() / len(draws)
        assert torch.allclose(frequency, expected[row], atol=0.03)


def test_zero_new_tokens(tiny_model_dir: Path) -> None:
    fast, _ = _backends(tiny_model_dir)
    out = fast.generate(PROMPTS[:2], SamplingParams(max_new_tokens=0, temperature=0.0))
    assert [c.num_tokens for c in out] == [0, 0]


@pytest.mark.slow
def test_fast_greedy_equals_generate_on_default_model(seed_tasks_file: Path) -> None:
    import random

    from refine_af.generation import TransformersBackend
    from refine_af.models import load_model_and_tokenizer
    from refine_af.prompts import instruction_prompt
    from refine_af.seeds import load_seed_tasks

    model, tokenizer = load_model_and_tokenizer("default", device="cpu")
    seeds = load_seed_tasks(seed_tasks_file)
    rng = random.Random(0)
    prompts = [
        instruction_prompt(tokenizer, [s.instruction for s in rng.sample(seeds, 8)], True)
        for _ in range(4)
    ]
    fast = TransformersBackend(model, tokenizer, batch_size=4)
    reference = TransformersBackend(model, tokenizer, batch_size=4, fast=False)
    for stop in [(), ("\n\n",)]:
        greedy = SamplingParams(max_new_tokens=48, temperature=0.0, stop=stop)
        assert fast.generate(prompts, greedy) == reference.generate(prompts, greedy)


# Prompts sharing long token prefixes: two "tasks" (a definition each, several inputs), one
# prompt that is a prefix of another, a repeated prompt, and one that shares nothing.
_DEFINITION_A = (
    "Definition: In this task you are given a short sentence about an animal. Write a title "
    "for it in at most five words, using only words from the sentence.\n\nInput: "
)
_DEFINITION_B = (
    "Definition: Given a question about everyday objects, answer it with one word taken from "
    "the list of options that follows the question.\n\nInput: "
)
SHARED_PROMPTS = [
    _DEFINITION_A + "The cat sat on the warm mat all afternoon.\nOutput:",
    _DEFINITION_B + "What do you cut bread with? Options: knife, spoon.\nOutput:",
    _DEFINITION_A + "A dog ran.\nOutput:",
    _DEFINITION_A + "The cat sat on the warm mat all afternoon.",
    _DEFINITION_B + "Where do you keep milk cold? Options: fridge, oven, drawer.\nOutput:",
    "Tell me a much longer story about a cat named",
    _DEFINITION_A + "A dog ran.\nOutput:",
    _DEFINITION_A + "Birds of many colours sing in the old oak tree every spring morning.\nOutput:",
]


def test_prefix_groups_share_the_longest_common_token_prefix() -> None:
    from refine_af.generation import prefix_groups

    head = list(range(100, 120))
    rows = [
        [*head, 1, 2, 3],
        [7] * 30,
        [*head, 1, 2],
        [*head, 9],
        [*([7] * 30), 8],  # shares 30 tokens, but a row keeps one token of its own: 29
        [5, 6],
    ]
    groups = prefix_groups(rows, min_shared=16)
    assert (20, [0, 2, 3]) in groups  # longest first within a group
    assert (29, [4, 1]) in groups
    assert groups[-1] == (0, [5])  # nothing shared: its own group, last
    assert prefix_groups(rows, min_shared=40) == [(0, [4, 1, 0, 2, 3, 5])]
    # A row joins only if the group then saves at least as many tokens: 3 x 16 < 2 x 25.
    long_head = [*head, 200, 201, 202, 203, 204]
    rows = [[*long_head, 1], [*long_head, 2], [*long_head, 3], [*head[:16], 500]]
    assert prefix_groups(rows, min_shared=16) == [(25, [0, 1, 2]), (0, [3])]
    rows = [[*long_head, 1], [*long_head, 2], [*head[:20], 500]]  # 2 x 20 >= 1 x 25
    assert prefix_groups(rows, min_shared=16) == [(20, [0, 1, 2])]


@pytest.fixture(scope="module")
def sharp_model_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with large weights: peaked attention, so a key at the wrong place or
    position changes its answers (the usual tiny model attends almost uniformly)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sharp-llama")
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("batch_size", [3, 8])
def test_shared_prefixes_change_no_greedy_answer(sharp_model_dir: Path, batch_size: int) -> None:
    """A prefix computed once and copied gives the same tokens as each row computed alone."""
    from refine_af.generation import TransformersBackend

    fast, reference = _backends(sharp_model_dir, batch_size)
    model, tokenizer = fast.model, fast.tokenizer  # type: ignore[attr-defined]
    plain = TransformersBackend(model, tokenizer, batch_size, share_prefixes=False)
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0, stop=("\n\n",))
    expected = reference.generate(SHARED_PROMPTS, greedy)
    assert plain.generate(SHARED_PROMPTS, greedy) == expected
    assert fast.generate(SHARED_PROMPTS, greedy) == expected
    assert plain.timing.reused_prefix_tokens == 0
    assert fast.timing.reused_prefix_tokens > 0  # it did share
    ids = tokenizer(SHARED_PROMPTS)["input_ids"]
    assert fast.generate_ids(ids, greedy) == plain.generate_ids(ids, greedy)
    # Penalties and the cache growing from one position see the same rows.
    penalised = SamplingParams(max_new_tokens=12, temperature=0.0, presence_penalty=1.5)
    assert fast.generate(SHARED_PROMPTS, penalised) == reference.generate(SHARED_PROMPTS, penalised)
