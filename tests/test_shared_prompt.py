"""Each prompt computed once: the same log-probs, entropies and gradients as TRL's full rows."""

from __future__ import annotations

import pytest
import torch

from refine_af.shared_prompt import completion_logps, distinct_prompts, shuffle_groups


def _policy(tiny_model_dir, checkpointing: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    policy = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    for name, parameter in policy.named_parameters():
        if "lora_B" in name:  # a trained adapter: B = 0 would hide what the prompt pass feeds
            torch.nn.init.normal_(parameter, std=0.5)
    policy.train()
    return policy


def _batch(vocab: int):
    """Two prompts (left padded, different lengths) × 3 completions (right padded)."""
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab, (n,), generator=generator) for n in (7, 4)]
    width, completion = 7, 5
    ids, mask = [], []
    for prompt in prompts:
        for length in (5, 3, 1):
            row = torch.zeros(width + completion, dtype=torch.long)
            row_mask = torch.zeros_like(row)
            row[width - len(prompt) : width] = prompt
            row[width : width + length] = torch.randint(3, vocab, (length,), generator=generator)
            row_mask[width - len(prompt) : width + length] = 1
            ids.append(row)
            mask.append(row_mask)
    return torch.stack(ids), torch.stack(mask), completion


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prompts_give_trl_log_probs_and_gradients(tiny_model_dir, checkpointing):
    policy = _policy(tiny_model_dir, checkpointing)
    input_ids, attention_mask, completion = _batch(policy.config.vocab_size)
    lora = [p for n, p in policy.named_parameters() if "lora_" in n]

    # TRL's computation: every row whole, the fused head over the completion positions.
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :-completion] = -100
    full = policy(
        input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True
    )
    expected = full.log_probs[:, -completion:]
    expected_entropy = full.entropy[:, -completion:]
    (expected * torch.arange(1, completion + 1)).sum().backward()
    expected_grads = [p.grad.clone() for p in lora]
    policy.zero_grad()

    shared = completion_logps(
        policy.get_base_model(), policy, input_ids, attention_mask, completion
    )
    logps = shared.log_probs[:, -completion:]
    (logps * torch.arange(1, completion + 1)).sum().backward()

    mask = attention_mask[:, -completion:].bool()
    assert logps.shape == expected.shape
    assert torch.allclose(logps[mask], expected[mask], atol=1e-5)
    assert torch.all(logps[~mask] == 0)
    assert torch.allclose(shared.entropy[:, -completion:][mask], expected_entropy[mask], atol=1e-5)
    for got, want in zip((p.grad for p in lora), expected_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    # The prompt pass reached the adapter: the first layer's gradients are not all from the tail.
    assert any(g.abs().sum() > 0 for g in expected_grads)


def test_shared_prompts_follow_the_active_adapter(tiny_model_dir):
    """The reference pass (adapter off) computes the base model's log-probs."""
    policy = _policy(tiny_model_dir, checkpointing=False)
    input_ids, attention_mask, completion = _batch(policy.config.vocab_size)
    with torch.no_grad(), policy.disable_adapter():
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        base = policy(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True
        )
        shared = completion_logps(
            policy.get_base_model(), policy, input_ids, attention_mask, completion
        )
    with torch.no_grad():
        tuned = completion_logps(
            policy.get_base_model(), policy, input_ids, attention_mask, completion
        )
    mask = attention_mask[:, -completion:].bool()
    assert torch.allclose(shared.log_probs[mask], base.log_probs[:, -completion:][mask], atol=1e-5)
    assert not torch.allclose(tuned.log_probs[mask], shared.log_probs[mask], atol=1e-3)


def test_distinct_prompts_in_order_of_first_appearance():
    ids = torch.tensor([[0, 5, 6], [1, 2, 3], [0, 5, 6], [1, 2, 3], [1, 2, 4]])
    mask = (ids > 0).long()
    first, index = distinct_prompts(ids, mask)
    assert first.tolist() == [0, 1, 4]
    assert index.tolist() == [0, 1, 0, 1, 2]


def test_shuffle_groups_keeps_each_group_together():
    torch.manual_seed(0)
    batch = {
        "ids": torch.arange(12).reshape(6, 2),
        "text": list("abcdef"),
        "none": None,
        "count": torch.tensor(6),
    }
    shuffled = shuffle_groups(batch, group_size=2)
    rows = shuffled["ids"][:, 0].tolist()
    assert sorted(rows) == [0, 2, 4, 6, 8, 10]
    assert all(rows[i + 1] == rows[i] + 2 for i in range(0, 6, 2))  # groups stay whole, in order
    assert shuffled["text"] == ["abcdef"[r // 2] for r in rows]
    assert shuffled["none"] is None and shuffled["count"] == 6
    with pytest.raises(ValueError, match="groups of 4"):
        shuffle_groups(batch, group_size=4)
