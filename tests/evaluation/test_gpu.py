"""The GPU paths of `refineaf eval`, run for real: vLLM (with a LoRA adapter) and accelerate
data parallelism. Skipped without CUDA (and without vLLM, or with fewer than 2 GPUs).

    python -m pytest -m gpu tests/evaluation/test_gpu.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from refine_af.evaluation.runner import EvalConfig, RowConfig, run_eval

pytestmark = pytest.mark.gpu

TASKS = [
    "task1393_superglue_copa_text_completion",
    "task1152_bard_analogical_reasoning_causation",
    "task1345_glue_qqp_question_paraprashing",
]


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random Llama whose head size (64) vLLM's attention kernels accept."""
    if _gpus() < 1:
        pytest.skip("needs a CUDA GPU")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from refine_af.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("default"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    folder = tmp_path_factory.mktemp("gpu_llama")
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpu_adapter(gpu_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(gpu_model),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("gpu_adapter")
    model.save_pretrained(folder)
    return folder


def _samples(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").open()]


def _same_share(a: list[dict], b: list[dict]) -> float:
    assert [(r["task"], r["id"]) for r in a] == [(r["task"], r["id"]) for r in b]
    return sum(x["prediction"] == y["prediction"] for x, y in zip(a, b, strict=True)) / len(a)


def test_vllm_backend_with_lora_matches_refineaf_hf(
    gpu_model: Path, gpu_adapter: Path, shared_data: Path, tmp_path: Path
) -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("needs vLLM (pip install 'refine_af[vllm]')")
    common = {
        "model": str(gpu_model),
        "rows": [RowConfig("vanilla"), RowConfig("tuned", str(gpu_adapter))],
        "tasks": TASKS,
        "limit": 4,
        "max_gen_toks": 16,
        "data": str(shared_data / "superni_test.jsonl.gz"),
        "dtype": "float32",  # the same precision on both paths, so outputs can be compared
        "bootstrap_samples": 20,
    }
    vllm_out, hf_out = tmp_path / "vllm", tmp_path / "hf"
    # Both rows in one process: the first engine must free the GPU for the second.
    run_eval(
        EvalConfig(backend="vllm", gpu_memory_utilization=0.3, output_dir=str(vllm_out), **common)
    )
    run_eval(EvalConfig(backend="refineaf-hf", device="cuda", output_dir=str(hf_out), **common))
    run = json.loads((vllm_out / "tuned" / "run.json").read_text())
    assert run["model_args"]["max_lora_rank"] == 8
    assert run["model_args"]["lora_local_path"] == str(gpu_adapter.resolve())
    vanilla, tuned = _samples(vllm_out / "vanilla"), _samples(vllm_out / "tuned")
    assert len(vanilla) == len(tuned) == 12
    # The LoRA adapter is applied by vLLM: its outputs differ from the base model's.
    assert [r["prediction"] for r in vanilla] != [r["prediction"] for r in tuned]
    # Same prompts, greedy, float32: kernels differ in the last bits, which can flip a
    # near-tie of a random model now and then, never most answers.
    for row in ("vanilla", "tuned"):
        assert _same_share(_samples(vllm_out / row), _samples(hf_out / row)) >= 0.75
    # A second run evaluates nothing (the logs stay as they are).
    logs = {p: p.read_bytes() for p in vllm_out.rglob("chunks.jsonl")}
    run_eval(
        EvalConfig(backend="vllm", gpu_memory_utilization=0.3, output_dir=str(vllm_out), **common)
    )
    assert {p: p.read_bytes() for p in vllm_out.rglob("chunks.jsonl")} == logs


def test_accelerate_data_parallel_refineaf_hf(
    gpu_model: Path, gpu_adapter: Path, shared_data: Path, tmp_path: Path
) -> None:
    if _gpus() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    config = {
        "model": str(gpu_model),
        "rows": [{"name": "vanilla"}, {"name": "tuned", "adapter": str(gpu_adapter)}],
        "tasks": TASKS,
        "limit": 6,
        "max_gen_toks": 16,
        "data": str(shared_data / "superni_test.jsonl.gz"),
        "device": "cuda",
        "dtype": "float32",
        "bootstrap_samples": 20,
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    module = [sys.executable, "-m", "refine_af.evaluation", "eval", "-c", str(path)]
    single = subprocess.run(
        [*module, f"output_dir={tmp_path / 'one'}"], env=env, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "-m", "refine_af.evaluation", "eval", "-c", str(path)]
    both = subprocess.run(
        [*launch, f"output_dir={tmp_path / 'two'}"], env=env, capture_output=True, text=True
    )
    assert both.returncode == 0, both.stderr[-3000:]
    assert both.stdout.count("report:") == 1  # rank 0 writes and prints, rank 1 stays quiet
    for row in ("vanilla", "tuned"):
        one, two = _samples(tmp_path / "one" / row), _samples(tmp_path / "two" / row)
        # Each process decodes its own share of the instances in its own batches.
        assert _same_share(one, two) >= 0.9
