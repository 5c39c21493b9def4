"""Stage 2 on a tiny random Llama: config checks, trainer steps that move the adapter, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refine_af.config import ConfigError
from refine_af.errors import UserError
from refine_af.instance_format import ParsedInstance
from refine_af.run_dir import RunDirectory
from refine_af.stages import rl
from refine_af.storage import read_log
from refine_af.train_config import load_config

INSTRUCTIONS = [
    "Write a short greeting.",
    "Name a fruit.",
    "Give an antonym of the word.",
    "Classify the sentiment of the sentence.",
]


# The paper's weights plus keepable: every scorer signal is computed and logged.
PAPER_STYLE_WEIGHTS = (
    "rl.reward_weights={reward_model: 0.0078, understandability: -0.4421, naturalness: 0.3212, "
    "coherence: 0.1520, keepable: 0.05}"
)


def make_config(run_path: Path, model_dir: Path, *overrides: str):
    return load_config(
        "default",
        [
            f"run.output_dir={run_path}",
            f"run.model={model_dir}",
            "run.device=cpu",
            f"rl.reward_model=causal:{model_dir}",
            f"rl.evaluator={model_dir}",
            "rl.max_steps=1",
            "rl.per_device_train_batch_size=4",
            "rl.trainer_args.gradient_accumulation_steps=1",
            "rl.num_generations=2",
            "rl.max_completion_length=8",
            "rl.save_steps=1",
            "rl.learning_rate=0.01",
            "rl.lora_r=4",
            "rl.lora_alpha=8",
            # A random model never ends a completion within 8 tokens: with the default's
            # cut_off_fails_format every completion would score -1 unasked (no scorer exercised,
            # no advantage), and with a mask on them no step would move the adapter. The KL term
            # is on so the reference path (adapter switched off) is exercised.
            "rl.cut_off_fails_format=false",
            "rl.mask_truncated_completions=false",
            "rl.beta=0.04",
            PAPER_STYLE_WEIGHTS,  # every scorer is exercised (the default asks only the judge)
            *overrides,
        ],
    )


def write_instructions(run_path: Path) -> None:
    folder = run_path / "instructions"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "id": f"gen_{i:06d}",
                "instruction": text,
                "is_classification": False,
                "provenance": {},
            }
        )
        for i, text in enumerate(INSTRUCTIONS)
    ]
    (folder / "instructions.jsonl").write_text("\n".join(lines) + "\n")


class LengthScorer:
    """A stand-in scorer with spread: longer texts score higher (so advantages are non-zero)."""

    def score(self, texts):
        return [min(len(t), 400) / 400 for t in texts]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rl.num_generations=1", "num_generations must be >= 2"),
        ("rl.per_device_train_batch_size=6", "multiple of rl.num_generations"),
        ("rl.reward_weights={fluency: 1.0}", "unknown rewards"),
        ("rl.trainer=ppo", "rl.trainer must be one of"),
        ("rl.reward_model='causal:'", "needs a model"),
    ],
)
def test_config_errors_say_how_to_fix(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("default", [f"run.output_dir={tmp_path}", override])


def test_missing_instructions_is_a_user_error(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir)
    with pytest.raises(UserError, match="run generate-instructions first"):
        rl.run(config, RunDirectory(tmp_path))


def test_unloadable_scorer_fails_before_training(tmp_path, tiny_model_dir):
    from click.testing import CliRunner

    from refine_af.cli import cli

    write_instructions(tmp_path)
    result = CliRunner().invoke(
        cli,
        [
            "rl",
            f"run.output_dir={tmp_path}",
            f"run.model={tiny_model_dir}",
            "run.device=cpu",
            f"rl.reward_model={tmp_path / 'no-such-reward-model'}",
            f"rl.evaluator={tiny_model_dir}",
            PAPER_STYLE_WEIGHTS,  # a weighted reward model is loaded
        ],
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot load the reward model" in lines[0], result.output
    assert not (tmp_path / "rl" / "checkpoints").exists()


@pytest.fixture
def built_trainers(monkeypatch) -> list:
    """The trainers ``rl.run`` builds, in order. A random 2-layer model never writes "Output:",
    so any non-empty text counts as the output: the stand-in scorers see varied instances and
    the group advantages are non-zero."""
    from refine_af import rewards

    monkeypatch.setattr(
        rewards, "parse_instance", lambda text: ParsedInstance("", text) if text.strip() else None
    )
    built: list = []
    original = rl.build_trainer

    def capture(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(rl, "build_trainer", capture)
    return built


def test_train_steps_move_the_adapter_and_resume(tmp_path, tiny_model_dir, built_trainers):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    write_instructions(tmp_path)
    run_dir = RunDirectory(tmp_path)
    scorers = (LengthScorer(), LengthScorer())

    summary = rl.run(make_config(tmp_path, tiny_model_dir), run_dir, scorers=scorers)
    trainer = built_trainers[0]
    # Reference = the same weights with the adapter switched off: no second model is loaded.
    assert trainer.beta > 0 and trainer.ref_model is None
    assert trainer.rollout_func is not None  # completions came from refine_af's decode loop
    assert summary["steps"] == 1

    folder = tmp_path / "rl"
    adapter = folder / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)  # LoRA B starts at zero
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = base(ids).logits.clone()
        after = PeftModel.from_pretrained(base, adapter)(ids).logits
    assert not torch.allclose(before, after)

    metrics = read_log(folder / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1]
    for key in (
        "reward_model",
        "understandability",
        "naturalness",
        "coherence",
        "reward_combined",
        "format_penalty_rate",
        "kl",
        "loss",
    ):
        assert key in metrics[0], key
    assert (folder / "rewards.png").stat().st_size > 0
    assert {r["step"] for r in read_log(folder / "samples.jsonl")} == {1}
    assert run_dir.stage_status("rl")["state"] == "done"

    # Same settings again: already done, nothing retrained.
    assert rl.run(make_config(tmp_path, tiny_model_dir), run_dir, scorers=scorers)["skipped"]
    # More steps: continues from checkpoint-1 and logs step 2 only once.
    longer = make_config(tmp_path, tiny_model_dir, "rl.max_steps=2")
    resumed = rl.run(longer, run_dir, scorers=scorers)
    assert resumed["resumed_from"] == "checkpoint-1" and resumed["steps"] == 2
    assert [m["step"] for m in read_log(folder / "metrics.jsonl")] == [1, 2]
    assert {r["step"] for r in read_log(folder / "samples.jsonl")} == {1, 2}
    # Changing what the checkpoints mean sets them aside (never deleted) and starts at step 0.
    other = make_config(tmp_path, tiny_model_dir, "rl.max_steps=1", "rl.beta=0.5")
    fresh = rl.run(other, run_dir, scorers=scorers)
    assert fresh["resumed_from"] is None and fresh["steps"] == 1
    assert list(tmp_path.glob("rl.replaced-*/checkpoints/checkpoint-2"))


def test_shared_prompts_train_the_same_first_step(tmp_path, tiny_model_dir, built_trainers):
    """rl.share_prompts computes each prompt once; the first step's loss and rewards are TRL's."""
    import torch
    from safetensors.torch import load_file

    metrics = {}
    for share in ("true", "false"):
        run_path = tmp_path / share
        write_instructions(run_path)
        config = make_config(
            run_path,
            tiny_model_dir,
            f"rl.share_prompts={share}",
            "rl.trainer_args.gradient_accumulation_steps=2",  # 4 prompts x 2, 2 micro-batches
        )
        rl.run(config, RunDirectory(run_path), scorers=(LengthScorer(), LengthScorer()))
        metrics[share] = read_log(run_path / "rl" / "metrics.jsonl")[0]
    assert type(built_trainers[0]).__name__ == "SharedPromptGRPOTrainer"
    assert type(built_trainers[1]).__name__ == "GRPOTrainer"
    shared, whole = metrics["true"], metrics["false"]
    assert shared["reward_combined"] == whole["reward_combined"]
    assert shared["loss"] == pytest.approx(whole["loss"], rel=1e-4, abs=1e-6)
    # The same update: gradients summed over the step's micro-batches agree, so do the adapters.
    adapters = [
        load_file(tmp_path / share / "rl" / "adapter" / "adapter_model.safetensors")
        for share in ("true", "false")
    ]
    assert adapters[0].keys() == adapters[1].keys()
    moved = 0
    for name, value in adapters[0].items():
        assert torch.allclose(value, adapters[1][name], atol=1e-5), name
        moved += int("lora_B" in name and float(value.abs().max()) > 0)
    assert moved  # the step changed the adapter (LoRA B starts at zero)


def test_policy_and_scorers_share_one_copy_of_the_weights(
    tmp_path, tiny_model_dir, monkeypatch, built_trainers
):
    """Scorers of the policy's own model score with the untuned weights: the adapter is off."""
    import contextlib

    from refine_af.scorers import ScorerLoader, ScorerSettings

    loaded = []
    original_load = rl.load_scorers
    monkeypatch.setattr(
        rl, "load_scorers", lambda *a, **k: loaded.append(original_load(*a, **k)) or loaded[-1]
    )
    write_instructions(tmp_path)
    config = make_config(tmp_path, tiny_model_dir, "rl.learning_rate=0.5")
    rl.run(config, RunDirectory(tmp_path))
    reward_model, evaluator = loaded[0]
    policy = built_trainers[0].model
    assert reward_model.model is evaluator.model is policy.get_base_model()

    settings = ScorerSettings(f"causal:{tiny_model_dir}", str(tiny_model_dir), "causal")
    fresh = ScorerLoader(settings).evaluator()
    texts = [evaluator.prompt("Is this fluent?", "Hello there.", "Say hello.")] * 2
    assert evaluator.score(texts) == pytest.approx(fresh.score(texts), abs=1e-6)
    evaluator.base_weights = contextlib.nullcontext  # the trained adapter scores differently
    assert evaluator.score(texts) != pytest.approx(fresh.score(texts), abs=1e-6)


def test_rollout_gives_one_completion_per_prompt_as_trl_tokenizes(tiny_model_dir):
    from types import SimpleNamespace

    from refine_af.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    config = make_config(Path("unused"), tiny_model_dir)
    trainer = SimpleNamespace(
        model=model,
        top_k=0,
        args=SimpleNamespace(top_p=1.0),
        accelerator=SimpleNamespace(unwrap_model=lambda m: m),
    )
    prompts = [p for p in ("Name a fruit.", "Write a much longer greeting, please.") for _ in "ab"]
    out = rl.make_rollout(config.rl, tokenizer)(prompts, trainer)
    assert out["prompt_ids"] == tokenizer(text=prompts)["input_ids"]
    assert out["logprobs"] is None
    assert len(out["completion_ids"]) == len(prompts)
    eos = tokenizer.eos_token_id
    for ids in out["completion_ids"]:
        assert 1 <= len(ids) <= config.rl.max_completion_length
        assert eos not in ids[:-1]  # a completion stops at its EOS, which it keeps


def test_rollout_samples_the_adapted_policy_and_leaves_its_weights_as_they_were(tiny_model_dir):
    """The LoRA is merged for sampling (same tokens as the unmerged policy) and unmerged after."""
    from types import SimpleNamespace

    import torch
    from peft import get_peft_model

    from refine_af.generation import SamplingParams, TransformersBackend
    from refine_af.models import load_model_and_tokenizer, lora_config

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    policy = get_peft_model(model, lora_config(4, 8, 0.0, ["all-linear"]))
    with torch.no_grad():  # a non-trivial adapter: LoRA B starts at zero
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    prompts = ["Name a fruit.", "Write a much longer greeting, please."]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    unmerged = TransformersBackend(policy, tokenizer, 2).generate_ids(
        tokenizer(text=prompts)["input_ids"], greedy
    )
    config = make_config(Path("unused"), tiny_model_dir, "rl.max_completion_length=6")
    trainer = SimpleNamespace(
        model=policy,
        top_k=1,
        args=SimpleNamespace(top_p=1.0),
        accelerator=SimpleNamespace(unwrap_model=lambda m: m),
    )
    out = rl.make_rollout(config.rl, tokenizer)(prompts, trainer)  # top_k=1: greedy
    assert out["completion_ids"] == unmerged
    assert not any(getattr(m, "merged", False) for m in policy.modules())
    after = policy.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)


def test_metrics_record_and_summary():
    logs = {
        "loss": 0.1,
        "reward": 0.2,
        "kl": 0.01,
        "rewards/coherence/mean": 0.7,
        "rewards/format/mean": -0.5,
        "reward_combined": 0.15,
        "format_penalty_rate": 0.5,
    }
    record = rl.metrics_record(3, logs)
    assert record == {
        "step": 3,
        "coherence": 0.7,
        "format": -0.5,
        "reward_combined": 0.15,
        "reward_weighted": 0.2,
        "format_penalty_rate": 0.5,
        "kl": 0.01,
        "loss": 0.1,
    }
    assert rl.metrics_record(3, {"train_runtime": 1.0}) is None
    records = [{"step": i, "reward_combined": float(i)} for i in range(1, 11)]
    assert rl.summarize(records)["reward_combined"] == {"first": 3.0, "last": 8.0}


def test_two_cpu_processes_with_accelerate_launch(tmp_path, tiny_model_dir):
    """`accelerate launch --cpu --num_processes 2 refineaf rl`: DDP over gloo, one set of logs."""
    import subprocess
    import sys

    write_instructions(tmp_path)
    overrides = [
        f"run.output_dir={tmp_path}",
        f"run.model={tiny_model_dir}",
        "run.device=cpu",
        f"rl.reward_model=causal:{tiny_model_dir}",
        f"rl.evaluator={tiny_model_dir}",
        "rl.max_steps=2",
        "rl.per_device_train_batch_size=4",
        "rl.trainer_args.gradient_accumulation_steps=1",
        "rl.num_generations=2",
        "rl.max_completion_length=8",
        "rl.save_steps=1",
        "rl.lora_r=4",
        "rl.lora_alpha=8",
    ]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes=2"]
    launcher += ["--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"]
    script = tmp_path / "refineaf_cli.py"
    script.write_text("from refine_af.cli import cli\n\ncli()\n")
    result = subprocess.run(
        [*launcher, str(script), "rl", "-c", "default", *overrides],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "rl"
    assert (folder / "adapter" / "adapter_config.json").is_file()
    # Only the main process logs: one metrics line per step, not two.
    assert [m["step"] for m in read_log(folder / "metrics.jsonl")] == [1, 2]
    assert RunDirectory(tmp_path).stage_status("rl")["state"] == "done"


def test_cut_off_completions_can_score_as_unparsed(tmp_path, tiny_model_dir, built_trainers):
    """rl.cut_off_fails_format (the default's): every completion of a random model is cut off at
    8 tokens, so each scores the format penalty, no scorer is asked, and samples.jsonl says why."""
    write_instructions(tmp_path)
    config = make_config(tmp_path, tiny_model_dir, "rl.cut_off_fails_format=true")
    asked: list[str] = []

    class CountingScorer(LengthScorer):
        def score(self, texts):
            asked.extend(texts)
            return super().score(texts)

    rl.run(config, RunDirectory(tmp_path), scorers=(CountingScorer(), CountingScorer()))
    assert asked == []
    samples = read_log(tmp_path / "rl" / "samples.jsonl")
    assert samples and all(s["cut_off"] and s["output"] is None for s in samples)
    assert {s["format"] for s in samples} == {-1.0}
    assert all(s[name] is None for s in samples for name in ("reward_model", "coherence"))
    assert read_log(tmp_path / "rl" / "metrics.jsonl")[0]["format_penalty_rate"] == 1.0


def test_truncated_completions_are_left_out_of_the_loss(tmp_path, tiny_model_dir, built_trainers):
    """rl.mask_truncated_completions: a random model never ends a completion within 8 tokens, so
    every completion is cut off; with the mask no token carries loss and the adapter stays at its
    start (LoRA B = 0), while the same step without the mask moves it."""
    from safetensors.torch import load_file

    moved = {}
    for mask in ("true", "false"):
        run_path = tmp_path / mask
        write_instructions(run_path)
        config = make_config(
            run_path, tiny_model_dir, f"rl.mask_truncated_completions={mask}", "rl.beta=0.0"
        )
        rl.run(config, RunDirectory(run_path), scorers=(LengthScorer(), LengthScorer()))
        assert built_trainers[-1].mask_truncated_completions is (mask == "true")
        metrics = read_log(run_path / "rl" / "metrics.jsonl")[0]
        assert metrics["clipped_ratio"] == 1.0
        weights = load_file(run_path / "rl" / "adapter" / "adapter_model.safetensors")
        moved[mask] = any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)
    assert moved == {"true": False, "false": True}


def test_a_resumed_run_draws_the_prompts_of_an_uninterrupted_run() -> None:
    """TRL's sampler, epoch by epoch as the Trainer drives it, and after a resume at epoch 3."""
    from trl.trainer.utils import RepeatSampler

    class Trainer:
        def _get_train_sampler(self, dataset=None):  # type: ignore[no-untyped-def]
            return RepeatSampler(list(range(7)), mini_repeat_count=2, batch_size=3, seed=5)

    plain = Trainer()._get_train_sampler()
    orders_before = [list(plain) for _ in range(4)]  # TRL's own order, one epoch after another
    trainer = Trainer()
    rl.replay_sampler_epochs(trainer)
    straight = trainer._get_train_sampler()
    orders = []
    for epoch in range(4):
        straight.set_epoch(epoch)  # the Trainer's call at each epoch's start
        orders.append(list(straight))
    assert orders == orders_before  # an uninterrupted run is unchanged
    assert len({tuple(order) for order in orders}) == 4  # every epoch is shuffled anew
    resumed = trainer._get_train_sampler()  # a new process, resumed in epoch 3
    resumed.set_epoch(3)
    assert list(resumed) == orders[3]
    assert list(Trainer()._get_train_sampler()) != orders[3]  # what a resume drew before
