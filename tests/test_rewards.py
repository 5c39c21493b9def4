"""Reward functions against hand-computed values; scorers loaded from tiny random models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from refine_af.config import ConfigError
from refine_af.errors import UserError
from refine_af.instance_format import ParsedInstance
from refine_af.rewards import (
    PAPER_INTERCEPT,
    PAPER_WEIGHTS,
    REWARDS,
    AutomatedFeedback,
    TRLRewards,
    WeightedRewards,
    needed_signals,
    register_reward,
)

# ---------------------------------------------------------------------------------------------
# TRL-shaped reward functions, caching, penalty, logging, added rewards.


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


def test_keepable_reward_by_hand():
    from refine_af.rewards import Feedback, keepable

    instances = [
        ParsedInstance("2 and 3", "5"),
        ParsedInstance("same", "same"),  # input equals output
        ParsedInstance("", ""),  # an empty output is never parsed, but stays unkeepable
        ParsedInstance("", "It is likely to rain tomorrow"),  # near-copy of a demonstration
        ParsedInstance("surprisingly", "very"),  # exact copy of a demonstration's input
        ParsedInstance("Here are the steps:", "Mix and bake."),  # a field ending with ":"
        None,  # unparsed: the format penalty speaks for it
        ParsedInstance("", "A cozy cafe called Maple Corner"),
        ParsedInstance("Task", "Output is the task."),  # talk about the format
        ParsedInstance("Add the two numbers given.", "5"),  # the instruction copied
        ParsedInstance("", "5"),  # no input, but the task speaks of its numbers
    ]
    instructions = ["Add the two numbers given."] * (len(instances) - 1)
    instructions.append("Add the given numbers.")
    feedback = Feedback(instructions, instances, {})
    values = keepable([None] * len(instances), [""] * len(instances), feedback=feedback)
    assert values == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, 1.0, 0.0, 0.0, 0.0]


def test_a_completion_cut_off_by_the_token_limit_is_not_keepable():
    """Stage 3 drops cut-off instances, so keepable scores them 0, read from TRL's
    completion_ids as TRL's mask_truncated_completions reads them (last token not EOS/pad)."""
    weights = {"keepable": 1.0}
    feedback = AutomatedFeedback(None, None, needed_signals(weights))
    rewards = TRLRewards(WeightedRewards(feedback, weights, 0.0, 1.0), stop_token_ids={0, 2})
    completions = [" 2 and 3\nOutput: 5", " 4 and 4\nOutput: 8 and then 9 and"]
    (function, _format) = rewards.functions()
    values = function(
        ["p", "p"], completions, instruction=["Add.", "Add."], completion_ids=[[7, 8, 2], [7, 8, 9]]
    )
    assert values == [1.0, 0.0]
    # Without the ids (refineaf score's ready instances) nothing counts as cut off.
    unknown = TRLRewards(WeightedRewards(feedback, weights, 0.0, 1.0), stop_token_ids={0, 2})
    assert unknown.functions()[0](["p", "p"], completions, instruction=["Add."] * 2) == [1.0, 1.0]


def test_a_completion_that_runs_on_after_its_output_is_not_keepable():
    """A second Output: line or a next Input: means the policy did not stop after one instance;
    scored by TRL's reward functions from the completion text, as stage 2 scores it."""
    weights = {"keepable": 1.0}
    feedback = AutomatedFeedback(None, None, needed_signals(weights))
    rewards = TRLRewards(WeightedRewards(feedback, weights, 0.0, 1.0))
    completions = [
        " 2 and 3\nOutput: 5",
        " 2 and 3\nOutput: 5\nOutput: 5\nOutput: 5",
        " 2 and 3\nOutput: 5\nInput: 4 and 4\nOutput: 8",
        " 2 and 3\nOutput: 5<|im_end|>",
    ]
    values = rewards.functions()[0](["p"] * 4, completions, instruction=["Add."] * 4)
    assert values == [1.0, 0.0, 0.0, 1.0]


def test_a_cut_off_completion_can_fail_the_format_instead():
    """rl.cut_off_fails_format: the cut-off completion gets the format penalty and no scorer's
    reward (so with mask_truncated_completions off its loss pushes it down); the log says so."""
    weights = {"keepable": 1.0}
    feedback = AutomatedFeedback(None, None, needed_signals(weights))
    logged: list = []
    rewards = TRLRewards(
        WeightedRewards(feedback, weights, 0.0, 1.0),
        lambda step, samples: logged.extend(samples),
        stop_token_ids={0, 2},
        cut_off_fails_format=True,
    )
    completions = [" 2 and 3\nOutput: 5", " 4 and 4\nOutput: 8 and then 9 and"]
    keep, form = (
        function(["p", "p"], completions, instruction=["Add."] * 2, completion_ids=[[7, 2], [7, 9]])
        for function in rewards.functions()
    )
    assert keep == [1.0, None] and form == [0.0, -1.0]
    assert [s.cut_off for s in logged] == [False, True]
    assert [s.combined for s in logged] == [1.0, -1.0]
    assert logged[1].instance is None  # parseable, but scored as not parsed
