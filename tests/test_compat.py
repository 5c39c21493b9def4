"""The tested version range, and what happens when a private API the project calls is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from refine_af import compat
from refine_af.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_tested_ranges_are_pyproject_bounds_and_hold_what_is_installed() -> None:
    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        declared[requirement.name] = requirement.specifier
    for package, tested in compat.TESTED.items():
        specifier = declared[package]
        assert str(specifier) == ",".join(sorted(tested.split(","))), package
        assert any(s.operator == "<" for s in specifier), f"{package} needs an upper bound"
        assert Version(compat.installed(package)) in specifier, package


def test_the_installed_releases_offer_every_private_api() -> None:
    assert compat.decode_cache_missing() == []
    assert compat.shared_prompt_missing() == []
    assert compat.rollout_func_supported()


def test_a_missing_cache_layer_stops_with_one_line_naming_the_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import transformers.cache_utils

    monkeypatch.delattr(transformers.cache_utils, "DynamicLayer")
    with pytest.raises(UserError) as error:
        compat.require_decode_cache()
    message = str(error.value)
    assert "\n" not in message and "transformers.cache_utils.DynamicLayer" in message
    assert f"(tested: {compat.TESTED['transformers']})" in message


def test_stage_2_falls_back_to_trl_when_its_private_methods_changed(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    """A TRL whose log-prob method lost a parameter, and whose GRPOTrainer takes no
    rollout_func: the trainer is TRL's own GRPOTrainer, sampling with TRL's generation."""
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from refine_af.rewards import TRLRewards
    from refine_af.stages import rl
    from refine_af.train_config import load_config

    monkeypatch.setattr(
        trl.GRPOTrainer,
        "_get_per_token_logps_and_entropies",
        lambda self, model, input_ids, attention_mask, logits_to_keep: None,
    )
    monkeypatch.setattr(compat, "rollout_func_supported", lambda: False)
    config = load_config(
        "default",
        [
            f"run.output_dir={tmp_path}",
            "rl.per_device_train_batch_size=2",
            "rl.num_generations=2",
            "rl.trainer_args.gradient_accumulation_steps=1",
        ],
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "Name a fruit.", "instruction": "Name a fruit.", "id": "0"}] * 2

    class Scorer:
        def score(self, texts):  # type: ignore[no-untyped-def]
            return [0.5 for _ in texts]

    rewards = TRLRewards(rl.weighted_rewards(config, (Scorer(), Scorer())))
    arguments = rl.trainer_arguments(config.rl, tmp_path / "rl", config.run.seed)
    arguments.reward_weights = rewards.weights()
    trainer = rl.build_trainer(config.rl, model, tokenizer, rows, rewards, arguments, [])
    assert type(trainer) is trl.GRPOTrainer
    assert getattr(trainer, "rollout_func", None) is None
    printed = capsys.readouterr().out
    assert "rl.share_prompts is off for this run" in printed
    assert "GRPOTrainer._get_per_token_logps_and_entropies" in printed
    assert "rl.fast_generation is off for this run" in printed
