"""Reward functions against hand-computed values; scorers loaded from tiny random models."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from refine_af.config import ConfigError
from refine_af.errors import UserError
from refine_af.instance_format import ParsedInstance
from refine_af.rewards import (
    PAPER_INTERCEPT,
    PAPER_WEIGHTS,
    REWARDS,
    AutomatedFeedback,
    CausalYesNoScorer,
    ScorerLoader,
    ScorerSettings,
    SequenceClassificationScorer,
    T5YesNoScorer,
    TRLRewards,
    WeightedRewards,
    combine,
    needed_signals,
    register_reward,
)

# ---------------------------------------------------------------------------------------------
# The weighted formula.


def test_paper_formula_by_hand():
    components = {
        "reward_model": 2.0,
        "understandability": 0.5,
        "naturalness": 0.25,
        "coherence": 0.75,
    }
    # 0.0078·2 − 0.4421·0.5 + 0.3212·0.25 + 0.1520·0.75 − 0.0274
    expected = 0.0156 - 0.22105 + 0.0803 + 0.114 - 0.0274
    assert combine(components, PAPER_WEIGHTS, PAPER_INTERCEPT) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(-0.03855, abs=1e-12)


def test_missing_components_and_format_penalty():
    weights = {**PAPER_WEIGHTS, "format": 1.0}
    values = {"reward_model": None, "format": -1.0}
    assert combine(values, weights, -0.0274) == pytest.approx(-1.0274)
    assert combine({"coherence": 1.0}, {"coherence": 2.0}, 0.0) == 2.0


# ---------------------------------------------------------------------------------------------
# Scorers with stub models whose logits are set by hand.


class StubCausal:
    """Next-token logits: ``yes_logit`` on token 1, ``no_logit`` on token 2, −30 elsewhere."""

    device = torch.device("cpu")

    def __init__(self, yes_logit: float, no_logit: float, vocab: int = 8) -> None:
        self.yes_logit, self.no_logit, self.vocab = yes_logit, no_logit, vocab

    def __call__(self, input_ids, attention_mask=None, **_):
        logits = torch.full((*input_ids.shape, self.vocab), -30.0)
        logits[:, -1, 1] = self.yes_logit
        logits[:, -1, 2] = self.no_logit
        return SimpleNamespace(logits=logits)


class StubTokenizer:
    """Words map to ids: Yes→1, No→2, anything else→3; pads with 0 on the left."""

    chat_template = None
    eos_token = "</s>"
    pad_token_id = 0

    def _ids(self, text: str) -> list[int]:
        word = text.strip()
        return (
            [1]
            if word in ("Yes", "yes")
            else [2]
            if word in ("No", "no")
            else [3] * (1 + len(text) // 10)
        )

    def decode(self, ids):
        return {1: "Yes", 2: "No"}.get(ids[0], "x")

    def __call__(
        self,
        texts,
        return_tensors=None,
        padding=False,
        truncation=False,
        max_length=None,
        add_special_tokens=True,
    ):
        if isinstance(texts, str):
            return _Encoded({"input_ids": self._ids(texts)})
        ids = [self._ids(t) for t in texts]
        if return_tensors is None:
            return {"input_ids": ids}
        width = max(len(i) for i in ids)
        padded = torch.tensor([[0] * (width - len(i)) + i for i in ids])
        return _Encoded({"input_ids": padded, "attention_mask": (padded != 0).long()})


class _Encoded(dict):
    def __getattr__(self, name):
        return self[name]

    def to(self, device):
        return self


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_causal_yes_probability_by_hand():
    scorer = CausalYesNoScorer(StubCausal(2.0, 0.5), StubTokenizer(), batch_size=2)
    scores = scorer.score(["a", "bb", "a much longer text to force padding"])
    # P(yes) = e^2 / (e^2 + e^0.5) = sigmoid(1.5); the −30 logits add < 1e-12.
    assert scores == pytest.approx([sigmoid(1.5)] * 3, abs=1e-6)  # float32
    odds = CausalYesNoScorer(StubCausal(2.0, 0.5), StubTokenizer(), log_odds=True)
    assert odds.score(["a"]) == pytest.approx([1.5], abs=1e-6)


class StubT5:
    device = torch.device("cpu")
    config = SimpleNamespace(decoder_start_token_id=0)

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None):
        assert decoder_input_ids.shape == (input_ids.shape[0], 1)
        assert bool((decoder_input_ids == 0).all())
        logits = torch.full((input_ids.shape[0], 1, 8), -30.0)
        logits[:, 0, 1] = math.log(3.0)  # P(Yes) ∝ 3
        logits[:, 0, 2] = 0.0  # P(No) ∝ 1
        logits[:, 0, 4] = 5.0  # a third token: UniEval renormalises over Yes/No only
        return SimpleNamespace(logits=logits)


def test_t5_unieval_score_by_hand():
    scorer = T5YesNoScorer(StubT5(), StubTokenizer())
    assert (scorer.pos_id, scorer.neg_id) == (1, 2)
    assert scorer.score(["x", "y"]) == pytest.approx([0.75, 0.75], abs=1e-6)


def test_unieval_inputs_follow_unieval():
    assert T5YesNoScorer.prompt("naturalness", " Hi. ", "ctx") == (
        "question: Is this a natural response in the dialogue? </s> response: Hi."
    )
    assert T5YesNoScorer.prompt("coherence", "Hi.", "ctx") == (
        "question: Is this a coherent response given the dialogue history? </s> response: Hi. "
        "</s> dialogue history: ctx"
    )


# ---------------------------------------------------------------------------------------------
# InstanceRewards: TRL-shaped functions, caching, penalty, logging.


class TableScorer:
    """Scores by looking for a keyword; counts calls to show batching/caching."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table, self.calls = table, 0

    def score(self, texts):
        self.calls += 1
        out = []
        for text in texts:
            out.append(next((v for k, v in self.table.items() if k in text), 0.0))
        return out


def make_rewards(weights=PAPER_WEIGHTS, **kwargs):
    rm = TableScorer({"good": 4.0, "bad": -2.0})
    evaluator = TableScorer({"understandability": 0.5, "naturalness": 0.25, "coherence": 0.75})
    feedback = AutomatedFeedback(rm, evaluator, needed_signals(weights))
    model = WeightedRewards(feedback, dict(weights), PAPER_INTERCEPT, 1.0)
    return TRLRewards(model, **kwargs), rm, evaluator


def test_reward_functions_by_hand():
    samples = []
    rewards, rm, evaluator = make_rewards(sample_sink=lambda step, s: samples.append((step, s)))
    functions = rewards.functions()
    assert [f.__name__ for f in functions] == [
        "reward_model",
        "understandability",
        "naturalness",
        "coherence",
        "format",
    ]
    assert rewards.weights() == [0.0078, -0.4421, 0.3212, 0.1520, 1.0]
    prompts = ["p1", "p2", "p3"]
    completions = [" x\nOutput: good", " no marker here", " None\nOutput: bad"]
    metrics: dict[str, float] = {}
    kwargs = {
        "instruction": ["task one", "task two", "task three"],
        "log_metric": metrics.__setitem__,
        "trainer_state": SimpleNamespace(global_step=6),
    }
    results = {f.__name__: f(prompts=prompts, completions=completions, **kwargs) for f in functions}
    assert results["reward_model"] == [4.0, None, -2.0]
    assert results["understandability"] == [0.5, None, 0.5]
    assert results["naturalness"] == [0.25, None, 0.25]
    assert results["coherence"] == [0.75, None, 0.75]
    assert results["format"] == [0.0, -1.0, 0.0]
    # One scoring pass per batch although five functions asked.
    assert (rm.calls, evaluator.calls) == (1, 1)
    first = 0.0078 * 4 - 0.4421 * 0.5 + 0.3212 * 0.25 + 0.1520 * 0.75 - 0.0274
    third = 0.0078 * -2 - 0.4421 * 0.5 + 0.3212 * 0.25 + 0.1520 * 0.75 - 0.0274
    second = -1.0 - 0.0274
    combined = [s.combined for s in samples[0][1]]
    assert combined == pytest.approx([first, second, third], abs=1e-12)
    assert metrics["reward_combined"] == pytest.approx((first + second + third) / 3, abs=1e-12)
    assert metrics["format_penalty_rate"] == pytest.approx(1 / 3)
    assert samples[0][0] == 7
    # TRL's weighted sum differs from the paper formula only by the intercept.
    for row, value in enumerate(combined):
        trl = sum(
            w * (results[f.__name__][row] or 0.0)
            for f, w in zip(functions, rewards.weights(), strict=True)
        )
        assert trl + PAPER_INTERCEPT == pytest.approx(value, abs=1e-12)


def test_the_instruction_comes_from_the_dataset_column():
    rewards, _, _ = make_rewards()
    function = rewards.functions()[0]
    with pytest.raises(UserError, match="'instruction' column"):
        function(prompts=["p"], completions=[" x\nOutput: good"])


def test_zero_weight_rewards_are_skipped():
    rewards, rm, evaluator = make_rewards({"reward_model": 1.0, "coherence": 0.0})
    assert [f.__name__ for f in rewards.functions()] == ["reward_model", "format"]
    rewards.functions()[0](prompts=["p"], completions=[" a\nOutput: b"], instruction=["t"])
    assert (rm.calls, evaluator.calls) == (1, 0)  # no evaluator question was asked
    with pytest.raises(UserError, match="evaluator"):
        AutomatedFeedback(rm, None, {"coherence"})


def test_unknown_reward_weights_name_the_registered_rewards():
    with pytest.raises(ConfigError, match="registered rewards are reward_model"):
        WeightedRewards(AutomatedFeedback(None, None, set()), {"fluency": 1.0})
    with pytest.raises(ConfigError, match=r"rl\.format_penalty"):
        WeightedRewards(AutomatedFeedback(None, None, set()), {"format": 1.0})


def test_score_instances_equals_what_training_computes():
    rewards, _, _ = make_rewards()
    instances = [ParsedInstance("x", "good"), ParsedInstance("", "bad")]
    direct = rewards.model.score_instances(["task one", "task three"], instances)
    completions = [" x\nOutput: good", " None\nOutput: bad"]
    columns = {"instruction": ["task one", "task three"]}
    trained = rewards.samples(["p1", "p3"], completions, columns)
    for a, b in zip(direct, trained, strict=True):
        assert a.combined == pytest.approx(b.combined, abs=1e-12)
        assert {k: v for k, v in b.values.items() if k != "format"} == a.values


@pytest.fixture
def brevity_reward():
    """A reward added the way CONTRIBUTING.md says, removed again after the test."""

    @register_reward("brevity")
    def brevity(prompts, completions, *, feedback, **kwargs):
        return [
            None if inst is None else 1.0 / len(inst.output.split()) for inst in feedback.instances
        ]

    yield brevity
    del REWARDS["brevity"]


def test_an_added_reward_is_weighted_logged_and_combined(brevity_reward):
    weights = {"reward_model": 1.0, "brevity": 2.0}
    rewards, _, _ = make_rewards(weights)
    names = [f.__name__ for f in rewards.functions()]
    assert names == ["reward_model", "brevity", "format"]
    samples = rewards.samples(
        ["p", "q"], [" a\nOutput: good answer", "nothing"], {"instruction": ["t", "u"]}
    )
    assert samples[0].values["brevity"] == 0.5 and samples[1].values["brevity"] is None
    assert samples[0].combined == pytest.approx(4.0 + 2 * 0.5 + PAPER_INTERCEPT)
    assert samples[1].combined == pytest.approx(-1.0 + PAPER_INTERCEPT)


# ---------------------------------------------------------------------------------------------
# Real loading from tiny random models built from configs.


@pytest.fixture(scope="module")
def tiny_scorer_dirs(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from transformers import (
        AutoTokenizer,
        GPTNeoXConfig,
        GPTNeoXForSequenceClassification,
        T5Config,
        T5ForConditionalGeneration,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    rm = GPTNeoXForSequenceClassification(
        GPTNeoXConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    t5 = T5ForConditionalGeneration(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=tokenizer.pad_token_id,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    folders = {}
    for name, model in (("rm", rm), ("t5", t5)):
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    return folders


def test_loads_real_scorers(tiny_scorer_dirs, tiny_model_dir):
    loader = ScorerLoader(
        ScorerSettings(
            reward_model=str(tiny_scorer_dirs["rm"]),
            evaluator=str(tiny_scorer_dirs["t5"]),
            evaluator_kind="unieval",
            device="cpu",
            batch_size=2,
        )
    )
    rm, evaluator = loader.reward_model(), loader.evaluator()
    assert isinstance(rm, SequenceClassificationScorer)
    assert isinstance(evaluator, T5YesNoScorer)
    feedback = AutomatedFeedback(rm, evaluator, needed_signals(PAPER_WEIGHTS))
    rewards = TRLRewards(WeightedRewards(feedback, dict(PAPER_WEIGHTS)))
    completions = [" a\nOutput: b", " c\nOutput: a longer output here", "nothing"]
    samples = rewards.samples(["p"] * 3, completions, {"instruction": ["t1", "t2", "t3"]})
    for sample in samples[:2]:
        assert all(math.isfinite(v) for v in sample.values.values())
        dimensions = ("understandability", "naturalness", "coherence")
        assert all(0.0 <= sample.values[d] <= 1.0 for d in dimensions)
    assert samples[2].values["reward_model"] is None
    # Batched scores equal one-at-a-time scores (padding does not leak into the result).
    texts = [rm.prompt("t1", "b"), rm.prompt("t2", "a longer output here")]
    assert rm.score(texts) == pytest.approx([rm.score([t])[0] for t in texts], abs=1e-5)

    causal = ScorerLoader(
        ScorerSettings(f"causal:{tiny_model_dir}", str(tiny_model_dir), "causal", device="cpu")
    )
    rm2, ev2 = causal.reward_model(), causal.evaluator()
    assert isinstance(rm2, CausalYesNoScorer) and rm2.log_odds
    assert rm2.model is ev2.model  # one copy shared by both roles
    prompts = [ev2.prompt("Is it fine?", "short", None), ev2.prompt("Is it?", "x " * 30, "ctx")]
    batched = ev2.score(prompts)
    assert batched == pytest.approx([ev2.score([p])[0] for p in prompts], abs=1e-5)
    assert all(0.0 < p < 1.0 for p in batched)


def test_unloadable_scorer_fails_with_one_line(tmp_path, tiny_scorer_dirs):
    loader = ScorerLoader(ScorerSettings(str(tmp_path / "missing"), "default", "causal"))
    with pytest.raises(UserError) as error:
        loader.reward_model()
    assert "reward model" in str(error.value) and "\n" not in str(error.value)
    # A directory that exists but holds the wrong kind of model (GPT-NeoX as UniEval's T5).
    loader = ScorerLoader(ScorerSettings("x", str(tiny_scorer_dirs["rm"]), "unieval"))
    with pytest.raises(UserError) as error:
        loader.evaluator()
    assert "evaluator" in str(error.value) and "\n" not in str(error.value)
