"""OpenAssistant's gpt_neox_reward_model, loaded by the project's own class, against hand values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from refine_af.errors import UserError
from refine_af.reward_model import (
    GPTNeoXRewardModel,
    GPTNeoXRewardModelConfig,
    pool_hidden_states,
    register,
)
from refine_af.scorers import ScorerLoader, ScorerSettings, SequenceClassificationScorer

PAIRS = [
    ("Give three tips for staying healthy.", "Eat well, sleep enough and move every day."),
    ("Name a colour.", "Blue."),
    ("Come up with a list of instructions for the task.", "First, read it. Then write."),
]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))


def load_rm(folder: Path, batch_size: int = 8) -> SequenceClassificationScorer:
    settings = ScorerSettings(str(folder), "unused", "unieval", batch_size=batch_size)
    scorer = ScorerLoader(settings).reward_model()
    assert isinstance(scorer, SequenceClassificationScorer)
    return scorer


def stock_trunk_and_head(folder: Path):
    """The published weights in a stock GPT-NeoX trunk, and out_proj's weight and bias."""
    from transformers import GPTNeoXConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXModel

    config = json.loads((folder / "config.json").read_text())
    fields = {k: v for k, v in config.items() if k not in ("model_type", "pooling")}
    trunk = GPTNeoXModel(GPTNeoXConfig.from_dict(fields)).eval()
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    trunk_state = {
        k.removeprefix("gpt_neox."): v for k, v in state.items() if k.startswith("gpt_neox.")
    }
    result = trunk.load_state_dict(trunk_state, strict=False)
    assert result.missing_keys == []  # only 4.28's saved buffers are left over
    return trunk, state["out_proj.weight"][0], float(state["out_proj.bias"][0])


def hand_scores(folder: Path, tokenizer, texts: list[str], pooling: str) -> list[float]:
    """Each text alone, unpadded: pooled hidden state · out_proj.weight + bias."""
    trunk, weight, bias = stock_trunk_and_head(folder)
    scores = []
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
        with torch.no_grad():
            hidden = trunk(input_ids=ids).last_hidden_state[0]
        pooled = hidden[-1] if pooling == "last" else hidden.mean(dim=0)
        scores.append(float(pooled @ weight) + bias)
    return scores


def test_last_pooling_equals_hand_computation_with_right_and_left_padding(oasst_rm_standin):
    scorer = load_rm(oasst_rm_standin)
    assert isinstance(scorer.model, GPTNeoXRewardModel)
    assert scorer.model.config.pooling == "last"
    # The published config's rotary_pct/rotary_emb_base are honoured, not defaulted.
    assert scorer.model.config.rope_parameters["partial_rotary_factor"] == 0.25
    texts = [scorer.prompt(prompt, reply) for prompt, reply in PAIRS]
    lengths = {len(scorer.tokenizer(t, add_special_tokens=False).input_ids) for t in texts}
    assert len(lengths) == len(texts)  # one batch, every row padded differently
    expected = hand_scores(oasst_rm_standin, scorer.tokenizer, texts, "last")
    assert scorer.tokenizer.padding_side == "right"
    assert scorer.score(texts) == pytest.approx(expected, abs=1e-5)
    scorer.tokenizer.padding_side = "left"
    assert scorer.score(texts) == pytest.approx(expected, abs=1e-5)
    assert len(set(expected)) == len(expected)  # distinct rows: a row mix-up would show


def test_mean_pooling_equals_hand_computation(make_oasst_rm_standin):
    folder = make_oasst_rm_standin("mean")
    scorer = load_rm(folder, batch_size=3)
    assert scorer.model.config.pooling == "mean"
    texts = [scorer.prompt(prompt, reply) for prompt, reply in PAIRS]
    expected = hand_scores(folder, scorer.tokenizer, texts, "mean")
    assert scorer.score(texts) == pytest.approx(expected, abs=1e-5)
    scorer.tokenizer.padding_side = "left"
    assert scorer.score(texts) == pytest.approx(expected, abs=1e-5)
    # "last" would have given other numbers: the setting is honoured.
    assert expected != pytest.approx(hand_scores(folder, scorer.tokenizer, texts, "last"))


def test_openassistant_text_format(oasst_rm_standin):
    scorer = load_rm(oasst_rm_standin)
    text = scorer.prompt("Name a colour.", " Blue. ")
    assert text == "<|prompter|>Name a colour.<|endoftext|><|assistant|>Blue.<|endoftext|>"
    tokens = scorer.tokenizer.convert_ids_to_tokens(
        scorer.tokenizer(text, add_special_tokens=False).input_ids
    )
    # The role markers and <|endoftext|> are single special tokens, as OpenAssistant trained.
    assert tokens[0] == "<|prompter|>" and tokens[-1] == "<|endoftext|>"
    assert "<|assistant|>" in tokens and tokens.count("<|endoftext|>") == 2


def test_pooling_helper_by_hand():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert pool_hidden_states(hidden, right, "last").tolist() == [[2.0, 3.0], [10.0, 11.0]]
    assert pool_hidden_states(hidden, left, "last").tolist() == [[4.0, 5.0], [10.0, 11.0]]
    assert pool_hidden_states(hidden, right, "mean").tolist() == [[1.0, 2.0], [8.0, 9.0]]
    assert pool_hidden_states(hidden, None, "last").tolist() == [[4.0, 5.0], [10.0, 11.0]]


def test_registration_is_idempotent():
    from transformers import AutoConfig, AutoModelForSequenceClassification

    register()
    register()
    config = AutoConfig.for_model(
        "gpt_neox_reward_model",
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=32,
        pooling="mean",
    )
    assert isinstance(config, GPTNeoXRewardModelConfig)
    model = AutoModelForSequenceClassification.from_config(config)
    assert isinstance(model, GPTNeoXRewardModel)
    output = model(
        input_ids=torch.tensor([[1, 2, 3], [4, 5, 0]]),
        attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
    )
    assert output.logits.shape == (2, 1)


def test_plain_sequence_classification_reward_model_still_loads(oasst_rm_standin, tmp_path):
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(oasst_rm_standin)
    torch.manual_seed(1)
    model = GPTNeoXForSequenceClassification(
        GPTNeoXConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    folder = tmp_path / "plain-rm"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    scorer = load_rm(folder)
    assert type(scorer.model).__name__ == "GPTNeoXForSequenceClassification"
    texts = [scorer.prompt(prompt, reply) for prompt, reply in PAIRS]
    expected = []
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
        with torch.no_grad():
            expected.append(float(model(input_ids=ids).logits[0, 0]))
    assert scorer.score(texts) == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# One-line errors, raised before any weight is read.


def edited_copy(source: Path, target: Path, **changes: object) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


def no_weights_read(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    calls: list[object] = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_unknown_model_type_is_one_line(oasst_rm_standin, tmp_path, monkeypatch):
    folder = edited_copy(oasst_rm_standin, tmp_path / "rm", model_type="my_reward_model")
    calls = no_weights_read(monkeypatch)
    with pytest.raises(UserError) as error:
        load_rm(folder)
    message = str(error.value)
    assert "\n" not in message and "rl.reward_model" in message
    assert "model_type 'my_reward_model'" in message and "neither transformers nor" in message
    assert calls == []

    remote = edited_copy(
        oasst_rm_standin, tmp_path / "remote", model_type="x_rm", auto_map={"AutoConfig": "c.C"}
    )
    with pytest.raises(UserError) as error:
        load_rm(remote)
    assert "trust_remote_code is off" in str(error.value) and "\n" not in str(error.value)


def test_bad_pooling_is_one_line(oasst_rm_standin, tmp_path, monkeypatch):
    folder = edited_copy(oasst_rm_standin, tmp_path / "rm", pooling="max")
    calls = no_weights_read(monkeypatch)
    with pytest.raises(UserError) as error:
        load_rm(folder)
    message = str(error.value)
    assert "\n" not in message and "pooling" in message and "'max'" in message
    assert calls == []
