"""A CPU rehearsal of ``refineaf train -c paper``: every stage, with tiny stand-ins of the paper's
models in their published layouts.

Only the model paths, the GPU switches (``run.device``, bf16, vLLM), the counts and the RL prompt
limit (see ``STAND_IN_TOKENIZER``) differ from the packaged ``paper`` config; every other setting
is the paper config's own (no chat template, UniEval and the OpenAssistant reward model as
scorers, gradient checkpointing, gradient accumulation, cosine schedule with warm-up, presence
penalty, decontamination, TensorBoard logs, merged adapters, ...).
``test_paper_settings_are_all_exercised`` keeps that list honest.

The policy is a real ``LlamaForCausalLM`` whose weights are set by hand (see
``instance_writing_llama``): a random tiny policy writes nothing any filter keeps, so stage 3
would end with no instances and fine-tuning with nothing to train on. The stage-1 pool starts
from a small fixed instruction file (``generate_instructions.initial_instructions``); stage 1
still generates a batch, which the hand-set policy makes yield one more instruction.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from refine_af.cli import cli
from refine_af.storage import read_log
from refine_af.train_config import load_config

INSTRUCTIONS = [
    "Name a colour that is often used for a sky.",
    "Add the two numbers and give the sum.",
    "Give a synonym of the word in the input.",
    "Reverse the order of the letters of the word.",
    "Write the opposite of each adjective in the list.",
]

# Next token after each token (the policy is a bigram model, see below); every other token is
# followed by the end of text. Stage 1's prompt ends with "9." and gets a new instruction; the
# stage-2 prompt ends with "Input:" and gets one of two instances, so a group's rewards differ;
# stage 3's prompt ends with "Example 1\n" and gets a task without input.
CHAINS = {
    ".": ["▁Name"],
    "▁Name": ["▁three"],
    "▁three": ["▁tips"],
    "▁tips": ["▁for"],
    "▁for": ["▁the"],
    "▁the": ["▁lazy"],
    "▁lazy": ["▁dog"],
    "put:": ["▁fox", "▁sky."],
    "▁fox": ["▁Output:"],
    "▁sky.": ["▁Output:"],
    "<0x0A>": ["▁Output:"],
    "▁Output:": ["▁Blue"],
}
# The GPU-only switches the rehearsal turns off, and what checks them instead.
GPU_ONLY = {
    "run.device": "cpu",
    "run.dtype": "float32",
    "rl.use_vllm": "false",
    "rl.bf16": "false",
    "sft.bf16": "false",
}
# Counts scaled down so the whole paper pipeline runs in about a minute on 2 cores.
SMALL = {
    "generate_instructions.num_instructions": "6",
    "generate_instructions.prompts_per_batch": "2",
    "generate_instructions.generation_batch_size": "2",
    "generate_instructions.max_new_tokens": "16",
    "generate_instructions.max_batches": "3",
    "rl.max_steps": "2",
    "rl.per_device_train_batch_size": "4",
    "rl.num_generations": "2",
    "rl.max_completion_length": "8",
    "rl.save_steps": "1",
    "rl.scorer_batch_size": "4",
    "generate_instances.instructions_per_batch": "4",
    "generate_instances.generation_batch_size": "4",
    "generate_instances.max_new_tokens": "16",
    "sft.per_device_train_batch_size": "2",
    "sft.max_length": "128",
    "sft.save_steps": "1",
}
# The stand-in tokenizer has a 300-piece vocabulary, so text takes about twice the tokens it takes
# with a real one: stage 2's prompt (three demonstrations and the request) is 649 tokens here and
# 299 with SmolLM2's tokenizer, and the paper's 512-token limit would skip every instruction.
STAND_IN_TOKENIZER = {"rl.max_prompt_length": "1024"}


@pytest.fixture(scope="session")
def instance_writing_llama(plain_llama_policy: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny base Llama with its weights set so that greedy (and sampled) decoding follows
    ``CHAINS``: attention and MLP outputs are zero, so the residual stream is the current token's
    embedding and the logits depend on that token alone (a bigram model); each token that starts
    a chain gets its own embedding direction, and the output rows of its successors point along
    it."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("instance-writing-llama")
    for item in plain_llama_policy.iterdir():
        shutil.copy(item, folder / item.name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder)
    vocab = tokenizer.get_vocab()
    hidden = model.config.hidden_size
    assert len(CHAINS) + 1 <= hidden
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        embeddings = model.model.embed_tokens.weight
        head = model.lm_head.weight
        embeddings.zero_()
        embeddings[:, 0] = 1.0  # direction 0: "anything else", followed by the end of text
        head.zero_()
        head[tokenizer.eos_token_id, 0] = 5.0
        for direction, (token, successors) in enumerate(CHAINS.items(), start=1):
            embeddings[vocab[token]] = 0.0
            embeddings[vocab[token], direction] = 1.0
            for successor in successors:
                head[vocab[successor], direction] = 5.0
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def overrides(run: Path, policy: Path, rm: Path, unieval: Path, seeds: Path, pool: Path) -> list:
    paths = {
        "run.output_dir": str(run),
        "run.model": str(policy),
        "rl.reward_model": str(rm),
        "rl.evaluator": str(unieval),
        "generate_instructions.seed_tasks": str(seeds),
        "generate_instructions.initial_instructions": str(pool),
    }
    settings = {**paths, **GPU_ONLY, **SMALL, **STAND_IN_TOKENIZER}
    return [f"{key}={value}" for key, value in settings.items()]


def test_paper_settings_are_all_exercised() -> None:
    """The rehearsal changes only paths, GPU switches, counts and a token limit: any other paper
    setting runs as configured. A new paper setting must be added here (and run) or listed as
    GPU-only."""
    changed = {"run.output_dir", "run.model", "rl.reward_model", "rl.evaluator"}
    changed |= {"generate_instructions.seed_tasks", "generate_instructions.initial_instructions"}
    changed |= set(GPU_ONLY) | set(SMALL) | set(STAND_IN_TOKENIZER)
    paper = load_config("paper")
    assert paper.run.device == "cuda" and paper.rl.use_vllm and paper.rl.bf16 and paper.sft.bf16
    # What the paper config sets that the rehearsal keeps as it is.
    kept = {
        "rl.evaluator_kind": "unieval",
        "rl.use_chat_template": False,
        "rl.gradient_checkpointing": True,
        "rl.report_to": "tensorboard",
        "rl.trainer_args": {"gradient_accumulation_steps": 2, "save_total_limit": 3},
        "generate_instances.presence_penalty": 1.5,
        "generate_instances.use_chat_template": False,
        "generate_instances.decontaminate": True,
        "generate_instructions.use_chat_template": False,
        "sft.lr_scheduler_type": "cosine",
        "sft.gradient_checkpointing": True,
        "sft.merge": True,
        "sft.report_to": "tensorboard",
        "sft.lora_target_modules": ["all-linear"],
    }
    for key, value in kept.items():
        assert key not in changed
        section, name = key.split(".")
        assert getattr(getattr(paper, section), name) == value, key


def test_paper_config_rehearsal_runs_every_stage(
    tmp_path: Path,
    instance_writing_llama: Path,
    oasst_rm_standin: Path,
    unieval_standin: Path,
    seed_tasks_file: Path,
    shared_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))
    # Decontamination reads the test data the paper config leaves to the environment.
    monkeypatch.setenv("REFINEAF_SUPERNI_DATA", str(shared_data / "superni_test.jsonl.gz"))
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"instruction": text}) + "\n" for text in INSTRUCTIONS))
    run = tmp_path / "run"
    args = overrides(
        run, instance_writing_llama, oasst_rm_standin, unieval_standin, seed_tasks_file, pool
    )
    result = CliRunner().invoke(cli, ["train", "-c", "paper", *args])
    assert result.exit_code == 0, result.output

    # Stage 1: the fixed pool, then one generated batch that adds the sixth instruction.
    kept = read_log(run / "instructions" / "instructions.jsonl")
    assert [k["instruction"] for k in kept[:5]] == INSTRUCTIONS
    assert kept[5]["instruction"] == "Name three tips for the lazy dog"
    assert kept[5]["provenance"]["batch"] == 1
    # Stage 2: the paper's scorers scored every step; TensorBoard got the curves.
    metrics = read_log(run / "rl" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for name in ("reward_model", "understandability", "naturalness", "coherence"):
        assert all(isinstance(m.get(name), float) for m in metrics), name
    assert all(m["format_penalty_rate"] == 0.0 for m in metrics)
    samples = read_log(run / "rl" / "samples.jsonl")
    assert {s["input"] for s in samples} == {"fox", "sky."} and {s["output"] for s in samples} == {
        "Blue"
    }
    assert list((run / "rl" / "checkpoints").rglob("events.out.tfevents.*"))
    # Stage 3 for both variants: instances, LoRA on every linear layer, merged models.
    for variant in ("refine_af", "baseline"):
        instances = read_log(run / "instances" / variant / "instances.jsonl")
        assert len(instances) == 6 and {i["output"] for i in instances} == {"Blue"}
        summary = json.loads((run / "instances" / variant / "summary.json").read_text())
        assert summary["decontamination"]["applied"]
        adapter = json.loads(
            (run / "sft" / variant / "adapter" / "adapter_config.json").read_text()
        )
        adapted = {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]}
        assert adapted >= {"q_proj", "o_proj", "gate_proj", "down_proj"}
        assert (run / "sft" / variant / "merged" / "model.safetensors").is_file()
        assert list((run / "sft" / variant / "checkpoints").rglob("events.out.tfevents.*"))
    card = (run / "data_card.md").read_text()
    assert "Stage 2: RL from automated feedback" in card
    assert not list((tmp_path / "cache").rglob("*.bin"))  # the scorers load converted copies
    assert (run / "config.yaml").read_text().startswith("# refineaf train -c paper")


@pytest.mark.gpu
def test_paper_config_rehearsal_on_a_gpu(
    tmp_path: Path,
    instance_writing_llama: Path,
    oasst_rm_standin: Path,
    unieval_standin: Path,
    seed_tasks_file: Path,
) -> None:
    """The GPU-only settings the CPU rehearsal turns off: cuda, bfloat16 weights and mixed
    precision, and vLLM generation (stages 1 and 3, and GRPO's colocated rollouts) when vLLM is
    installed."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"instruction": text}) + "\n" for text in INSTRUCTIONS))
    run = tmp_path / "run"
    args = [
        a
        for a in overrides(
            run, instance_writing_llama, oasst_rm_standin, unieval_standin, seed_tasks_file, pool
        )
        if a.split("=")[0] not in GPU_ONLY
    ]
    try:
        import vllm  # noqa: F401
    except ImportError:
        args.append("rl.use_vllm=false")
    env = {"REFINEAF_CACHE": str(tmp_path / "cache")}
    os.environ.update(env)
    result = CliRunner().invoke(
        cli, ["train", "-c", "paper", *args, "generate_instructions.max_batches=3"]
    )
    assert result.exit_code == 0, result.output
    assert (run / "sft" / "refine_af" / "merged" / "model.safetensors").is_file()
