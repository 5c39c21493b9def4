"""refineaf-hf's prefix cache: the same greedy tokens with and without it, on real SuperNI prompts.

A task's instances share its definition; with the cache on, that token prefix is computed once
per batch. The model here has large random weights, so its attention is peaked and a prefix at
the wrong place or position would change the answers (the usual tiny model attends almost
uniformly and would not notice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from refine_af.evaluation.lm import RefineAFLM

TASKS = ("task1345_glue_qqp_question_paraprashing", "task645_summarization")
# The tasks' own stop strings (lm_eval_tasks/refineaf_superni/_default_template_yaml).
GEN_KWARGS = {
    "until": ["\n\n", "\nInput:", "\nOutput:", "\nDefinition:"],
    "do_sample": False,
    "temperature": 0.0,
    "max_gen_toks": 16,
}


@pytest.fixture(scope="module")
def sharp_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama's architecture and tokenizer, re-drawn with large weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model)
    config.initializer_range = 0.5
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sharp_llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sharp_adapter(sharp_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on every attention projection, with weights that change the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(sharp_model)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("sharp_adapter")
    model.save_pretrained(folder)
    return folder


def _prompts(shared_data: Path, per_task: int = 5) -> list[str]:
    from refine_af.evaluation.data import DataSettings, load_task
    from refine_af.evaluation.prompts import format_prompt

    settings = DataSettings(data=str(shared_data / "superni_test.jsonl.gz"))
    return [format_prompt(doc) for task in TASKS for doc in load_task(task, settings)[:per_task]]


def _requests(contexts: list[str]) -> list[Any]:
    from lm_eval.api.instance import Instance

    return [
        Instance("generate_until", {}, (context, dict(GEN_KWARGS)), index)
        for index, context in enumerate(contexts)
    ]


def _model(model: Path, prefix_cache: bool, **kwargs: Any) -> RefineAFLM:
    return RefineAFLM(
        pretrained=str(model),
        device="cpu",
        dtype="float32",
        batch_size=4,  # several batches per task; each shares its own prefix
        prefix_cache=prefix_cache,
        **kwargs,
    )


def _token_ids(lm: RefineAFLM, contexts: list[str]) -> list[list[int]]:
    """The greedy path's raw token ids, one batch of all prompts (mixed tasks)."""
    eos = {lm.eot_token_id}
    encoded = [lm.encode_prompt(text, lm.max_length - 16) for text in contexts]
    return lm._greedy_batch(encoded, 16, list(GEN_KWARGS["until"]), eos)


@pytest.mark.parametrize("setting", ["plain", "adapter", "chat", "adapter+chat"])
def test_prefix_cache_changes_no_token(
    sharp_model: Path, sharp_adapter: Path, shared_data: Path, setting: str
) -> None:
    kwargs = {"peft": str(sharp_adapter)} if "adapter" in setting else {}
    with_cache, without = _model(sharp_model, True, **kwargs), _model(sharp_model, False, **kwargs)
    contexts = _prompts(shared_data)
    if "chat" in setting:  # the shared prefix is then the chat header + the definition
        contexts = [
            with_cache.apply_chat_template([{"role": "user", "content": c}]) for c in contexts
        ]
        assert contexts[0].startswith("<|im_start|>")
    expected = without.generate_until(_requests(contexts), disable_tqdm=True)
    assert with_cache.generate_until(_requests(contexts), disable_tqdm=True) == expected
    assert any(text.strip() for text in expected)
    assert without.timing.reused_prefix_tokens == 0
    assert with_cache.timing.reused_prefix_tokens > 0  # each task's definition was shared
    assert _token_ids(with_cache, contexts) == _token_ids(without, contexts)


def test_adapter_changes_the_answers(sharp_model: Path, sharp_adapter: Path, shared_data: Path):
    """The adapter case above compares something: the adapter does change the tokens."""
    contexts = _prompts(shared_data, per_task=2)
    base = _model(sharp_model, True)
    tuned = _model(sharp_model, True, peft=str(sharp_adapter))
    assert _token_ids(base, contexts) != _token_ids(tuned, contexts)


def test_prefix_cache_setting_reaches_the_model() -> None:
    from refine_af.evaluation.config import EvalConfig
    from refine_af.evaluation.runner import model_args, run_key

    on, off = EvalConfig(device="cpu"), EvalConfig(device="cpu", prefix_cache=False)
    assert "prefix_cache" not in model_args(on, None, "m")  # the default: keys as before
    assert model_args(off, None, "m")["prefix_cache"] is False
    key = run_key(on, None, model_args(on, None, "m"))
    assert key != run_key(off, None, model_args(off, None, "m"))
