"""Fixtures of the SuperNI evaluation tests: the shared data files and a tiny random model.

The data files are never copied into the repository: tests read them from
``REFINEAF_SHARED_DATA`` (default ``../shared/data`` next to the repository) and skip with a
clear reason when they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JSONL = "superni_test.jsonl.gz"
REFERENCES = "superni_test_references.jsonl"


def shared_data_dir() -> Path:
    return Path(os.environ.get("REFINEAF_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    folder = shared_data_dir()
    if not (folder / JSONL).is_file() or not (folder / REFERENCES).is_file():
        pytest.skip(f"SuperNI shared data not found in {folder} (set REFINEAF_SHARED_DATA)")
    return folder


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the caller's SuperNI data settings."""
    for name in (
        "REFINEAF_SUPERNI_DATA",
        "REFINEAF_SUPERNI_REFERENCES",
        "REFINEAF_SUPERNI_BASE_URL",
        "REFINEAF_SUPERNI_REFERENCES_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with the SmolLM2 tokenizer of the embedded default model."""
    from refine_af.errors import UserError
    from refine_af.models import resolve_model_path

    try:
        default_dir = resolve_model_path("default")
    except UserError as error:
        pytest.skip(f"default model unavailable: {error}")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model with non-zero weights (so it changes the outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("tiny_adapter")
    model.save_pretrained(folder)
    return folder
