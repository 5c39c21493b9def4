"""REFINE-AF's automated feedback: scorers, and reward functions in TRL's shape.

The paper's reward for an instance (instruction, input, output) is (SPEC section 1)::

    r = 0.0078·Rew − 0.4421·Und + 0.3212·Nat + 0.1520·Coh − 0.0274

``Rew`` is a sequence-classification reward model's score of (instruction + input, output);
``Und``, ``Nat`` and ``Coh`` are UniEval dialogue scores: the probability that the evaluator
answers "Yes" to the dimension's question, the instruction + input being the dialogue history and
the output the response. Weights and intercept are configuration.

The scorers themselves and how they load are :mod:`refine_af.scorers`.

Rewards are plain functions registered by name (:func:`register_reward`); ``rl.reward_weights``
names the ones that count. :class:`AutomatedFeedback` computes, once per batch, the scorer
signals the active rewards read; :class:`WeightedRewards` combines the rewards' values with the
weights and the intercept (stage 2 and ``refineaf score`` share it); :class:`TRLRewards` hands them
to TRL, one function per reward (each logged as ``rewards/<name>/mean``) plus ``format``: 0 for a
completion that parses as an instance, -1 otherwise, weighted by ``rl.format_penalty``. Values of
an unparseable completion are None (TRL's NaN: left out of the means), so its total is the
penalty alone. The combined reward, intercept included, is logged as ``reward_combined`` and
written to the sample log.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from refine_af.config import ConfigError
from refine_af.errors import UserError
from refine_af.filters import instance_reasons
from refine_af.instance_format import DEMONSTRATION_TEXTS, ParsedInstance, parse_instance
from refine_af.judges import NEAR_COPY_THRESHOLD, Judge, NearCopy
from refine_af.scorers import (
    WITH_CONTEXT,
    CausalYesNoScorer,
    Scorer,
    SequenceClassificationScorer,
    T5YesNoScorer,
)

DIMENSIONS = ("understandability", "naturalness", "coherence")
FORMAT_REWARD = "format"
PAPER_WEIGHTS: dict[str, float] = {
    "reward_model": 0.0078,
    "understandability": -0.4421,
    "naturalness": 0.3212,
    "coherence": 0.1520,
}
PAPER_INTERCEPT = -0.0274

# The same dimensions asked of a general chat model, about an instruction's instance.
CAUSAL_QUESTIONS = {
    "understandability": "Is the response understandable?",
    "naturalness": "Is the response natural, like something a person would write?",
    "coherence": "Is the response coherent with the instruction and input above?",
    "reward_model": "Is the response a good and correct answer to the instruction?",
}


def instance_context(instruction: str, input_text: str) -> str:
    """The instruction plus its input: the "dialogue history" / the reward model's prompt."""
    instruction = " ".join(instruction.split())
    return f"{instruction}\nInput: {input_text.strip()}" if input_text.strip() else instruction


# ---------------------------------------------------------------------------------------------
# Automated feedback: the scorers' signals for a batch of instances.

# What the scorers can say about an instance; each is computed only when an active reward
# reads it.
SIGNALS = ("reward_model", "understandability", "naturalness", "coherence", "judge")


@dataclass
class Feedback:
    """One batch of instances and the scorer signals the active rewards asked for.

    ``instances[i]`` is None for a completion that did not parse as an instance; its signals are
    None too. Reward functions receive this as their ``feedback`` keyword argument.
    """

    instructions: list[str]
    instances: list[ParsedInstance | None]
    signals: dict[str, list[float | None]]
    # Per instance: the completion hit the token limit (stage 2 knows; ready instances never do).
    cut_off: list[bool] = field(default_factory=list)

    def is_cut_off(self, index: int) -> bool:
        return bool(self.cut_off) and self.cut_off[index]


class AutomatedFeedback:
    """The reward model and the evaluator, asked in one batched pass per scorer."""

    def __init__(
        self, reward_model: Scorer | None, evaluator: Scorer | None, signals: Collection[str]
    ) -> None:
        self.signals = [name for name in SIGNALS if name in signals]
        if "reward_model" in self.signals and reward_model is None:
            raise UserError("a reward reads the reward model's score but no reward model is set")
        if any(name in (*DIMENSIONS, "judge") for name in self.signals) and evaluator is None:
            raise UserError("a reward reads an evaluator dimension but no evaluator is set")
        self.reward_model_scorer = reward_model
        self.evaluator_scorer = evaluator

    def _reward_model_text(self, instruction: str, instance: ParsedInstance) -> str:
        scorer = self.reward_model_scorer
        context = instance_context(instruction, instance.input)
        if isinstance(scorer, CausalYesNoScorer):
            return scorer.prompt(CAUSAL_QUESTIONS["reward_model"], instance.output, context)
        if isinstance(scorer, SequenceClassificationScorer):
            return scorer.prompt(context, instance.output)
        return f"{context}\n\n{instance.output}"  # a custom scorer gets what an RM would

    def _evaluator_text(self, dimension: str, instruction: str, instance: ParsedInstance) -> str:
        scorer = self.evaluator_scorer
        context = instance_context(instruction, instance.input)
        if isinstance(scorer, T5YesNoScorer):
            return scorer.prompt(dimension, instance.output, context)
        if isinstance(scorer, CausalYesNoScorer):
            return scorer.prompt(
                CAUSAL_QUESTIONS[dimension],
                instance.output,
                context if dimension in WITH_CONTEXT else None,
            )
        return f"{dimension}\n\n{context}\n\n{instance.output}"

    def score(
        self, instructions: Sequence[str], instances: Sequence[ParsedInstance | None]
    ) -> Feedback:
        """Every requested signal for every parsed instance (None for the unparsed ones)."""
        parsed = [(i, inst) for i, inst in enumerate(instances) if inst is not None]
        signals: dict[str, list[float | None]] = {
            name: [None] * len(instances) for name in self.signals
        }
        if parsed and "reward_model" in self.signals:
            assert self.reward_model_scorer is not None
            texts = [self._reward_model_text(instructions[i], inst) for i, inst in parsed]
            for (index, _), value in zip(
                parsed, self.reward_model_scorer.score(texts), strict=True
            ):
                signals["reward_model"][index] = value
        dimensions = [d for d in DIMENSIONS if d in self.signals]
        if parsed and dimensions:
            assert self.evaluator_scorer is not None
            # The three questions go in one batched pass, so they share padding-efficient batches.
            jobs = [(d, index, inst) for d in dimensions for index, inst in parsed]
            texts = [self._evaluator_text(d, instructions[i], inst) for d, i, inst in jobs]
            for (dimension, index, _), value in zip(
                jobs, self.evaluator_scorer.score(texts), strict=True
            ):
                signals[dimension][index] = value
        if parsed and "judge" in self.signals:
            assert self.evaluator_scorer is not None
            items = [(instructions[i], inst.input, inst.output) for i, inst in parsed]
            judged = Judge(self.evaluator_scorer).instance_scores(items)
            for (index, _), value in zip(parsed, judged, strict=True):
                signals["judge"][index] = value
        return Feedback(list(instructions), list(instances), signals)


# ---------------------------------------------------------------------------------------------
# Reward functions, by name.
#
# A reward is a plain function with TRL's signature, ``f(prompts, completions, **kwargs) ->
# list[float | None]``; it also receives ``feedback`` (a :class:`Feedback`) among the keyword
# arguments, plus TRL's own (dataset columns such as ``instruction``, ``trainer_state``). None
# means "no value" (TRL's NaN: left out of that reward's mean). Registering a name makes it a
# valid key of ``rl.reward_weights``; TRL logs each one as ``rewards/<name>/mean``.

RewardFunction = Callable[..., list[float | None]]


@dataclass(frozen=True)
class RegisteredReward:
    name: str
    function: RewardFunction
    signals: tuple[str, ...]  # the scorer signals the function reads from ``feedback``


REWARDS: dict[str, RegisteredReward] = {}


def register_reward(
    name: str, signals: Sequence[str] = ()
) -> Callable[[RewardFunction], RewardFunction]:
    """Decorator: make ``function`` the reward called ``name`` (see CONTRIBUTING.md)."""

    def decorate(function: RewardFunction) -> RewardFunction:
        if name in REWARDS:
            raise ValueError(f"a reward named {name!r} is already registered")
        unknown = set(signals) - set(SIGNALS)
        if unknown:
            raise ValueError(f"reward {name!r} reads unknown signals {sorted(unknown)}")
        REWARDS[name] = RegisteredReward(name, function, tuple(signals))
        return function

    return decorate


@register_reward("reward_model", signals=["reward_model"])
def reward_model_score(prompts: Any, completions: Any, *, feedback: Feedback, **_: Any) -> list:
    """The reward model's score of (instruction + input, output). Paper: OASST's RM."""
    return feedback.signals["reward_model"]


@register_reward("understandability", signals=["understandability"])
def understandability(prompts: Any, completions: Any, *, feedback: Feedback, **_: Any) -> list:
    """UniEval: P(Yes) to "Is this an understandable response in the dialogue?"."""
    return feedback.signals["understandability"]


@register_reward("naturalness", signals=["naturalness"])
def naturalness(prompts: Any, completions: Any, *, feedback: Feedback, **_: Any) -> list:
    """UniEval: P(Yes) to "Is this a natural response in the dialogue?"."""
    return feedback.signals["naturalness"]


@register_reward("coherence", signals=["coherence"])
def coherence(prompts: Any, completions: Any, *, feedback: Feedback, **_: Any) -> list:
    """UniEval: P(Yes) to "Is this a coherent response given the dialogue history?"."""
    return feedback.signals["coherence"]


@register_reward("judge", signals=["judge"])
def judge(prompts: Any, completions: Any, *, feedback: Feedback, **_: Any) -> list:
    """P(Yes) to "does the output carry out the instruction on the input?" (beyond the paper).

    The question stage 3's output judge asks (:mod:`refine_af.judges`), few-shot, of the
    evaluator. How well it ranks instances: ``python benchmarks/reward_validity.py``.
    """
    return feedback.signals["judge"]


@register_reward("keepable")
def keepable(prompts: Any, completions: Any, *, feedback: Feedback, **_: Any) -> list:
    """1 for an instance stage 3 would keep on its own, else 0 (beyond the paper).

    Stage 3 drops an instance cut off by the token limit, with an empty output, an input equal to
    its output, a field ending with ":", talk about the task or its format, a copy of its
    instruction, no input for a task that speaks of a given one, or a copy or near-copy of its
    prompt's demonstrations; the RL-tuned model writes stage 3's instances, so this teaches it
    what stage 3 will keep. Each of the last three closes a way 12 steps of RL on the default
    found to score without writing an instance: "Input: Task / Output: Output is ...", then no
    input and a made-up sentence for "Translate this sentence" (docs/data_read.md).
    A cut-off completion scoring 0 matters beside ``rl.mask_truncated_completions``: masked, it
    carries no loss, but its reward still sets its group's mean, and a high one there would
    push the finished completions down (on the default, lengths rose to the cap without it).
    A completion that runs on after its output (another ``Output:`` line, a next ``Input:``)
    scores 0 too, although stage 3 would read its first instance: it has not learnt to stop.
    Scored 1, such completions earned the same reward as those that end (0.55 against 0.58 at
    seed 1 of the default's study); RL drifted into them at two seeds of three, and at stage 3's
    longer limit and lower temperature they looped until cut off (docs/study.md).
    """
    near_copy = _near_copy_of_demonstrations()
    values: list[float | None] = []
    for index, (instruction, instance) in enumerate(
        zip(feedback.instructions, feedback.instances, strict=True)
    ):
        if instance is None:
            values.append(None)  # the format penalty speaks for it
            continue
        if feedback.is_cut_off(index) or instance.runs_on:
            values.append(0.0)
            continue
        kept = instance_reasons(
            [(instance.input, instance.output, False)],
            demonstrations=DEMONSTRATION_TEXTS,
            near_copy=near_copy,
            instruction=instruction,
        ) == [None]
        values.append(1.0 if kept else 0.0)
    return values


@functools.cache
def _near_copy_of_demonstrations() -> NearCopy:
    return NearCopy(DEMONSTRATION_TEXTS, NEAR_COPY_THRESHOLD)


def format_reward(prompts: Any, completions: Any, *, feedback: Feedback, **_: Any) -> list:
    """0 for a completion that parses as an instance, -1 otherwise (weight: rl.format_penalty).

    With ``rl.cut_off_fails_format`` a completion cut off by the token limit counts as one that
    does not parse: stage 2 sets its instance to None before any scorer is asked.

    Not in the registry: it is always on, weighted by ``rl.format_penalty`` rather than by a
    ``reward_weights`` entry.
    """
    return [0.0 if instance is not None else -1.0 for instance in feedback.instances]


def check_reward_weights(weights: Mapping[str, float]) -> None:
    """Config check: every weighted name is a registered reward; at least one weight is set."""
    unknown = sorted(set(weights) - set(REWARDS))
    if FORMAT_REWARD in unknown:
        raise ConfigError(
            "rl.reward_weights.format: the format penalty's weight is rl.format_penalty"
        )
    if unknown:
        raise ConfigError(
            f"rl.reward_weights has unknown rewards {unknown}: registered rewards are "
            f"{', '.join(REWARDS)}"
        )
    if not any(weights.values()):
        raise ConfigError("rl.reward_weights are all 0: give at least one reward a weight")


def active_rewards(weights: Mapping[str, float]) -> list[RegisteredReward]:
    """Rewards with a non-zero weight, in registry order (a 0 weight cannot move the policy)."""
    return [REWARDS[name] for name in REWARDS if weights.get(name, 0.0)]


def needed_signals(weights: Mapping[str, float]) -> set[str]:
    return {signal for reward in active_rewards(weights) for signal in reward.signals}


# ---------------------------------------------------------------------------------------------
# Scoring instances (stage 2 and ``refineaf score`` share this) and TRL's interface.


@dataclass
class ScoredSample:
    """Everything computed for one instance or completion."""

    instruction: str
    completion: str | None
    instance: ParsedInstance | None
    values: dict[str, float | None]  # each active reward's value (and "format" in stage 2)
    combined: float  # the paper's weighted sum, intercept included
    cut_off: bool = False  # the completion hit the token limit (stage 2 only)


@dataclass
class WeightedRewards:
    """The weighted automated feedback: which rewards, their weights, the intercept."""

    feedback: AutomatedFeedback
    weights: dict[str, float]
    intercept: float = PAPER_INTERCEPT
    format_penalty: float = 1.0

    def __post_init__(self) -> None:
        check_reward_weights(self.weights)
        self.active = active_rewards(self.weights)

    def evaluate(
        self,
        feedback: Feedback,
        completions: Sequence[str | None],
        with_format: bool,
        kwargs: Mapping[str, Any] | None = None,
    ) -> list[ScoredSample]:
        """Each active reward's value per instance, and the combined reward."""
        kwargs = dict(kwargs or {})
        prompts = kwargs.pop("prompts", [None] * len(completions))
        values = {
            reward.name: reward.function(prompts, list(completions), feedback=feedback, **kwargs)
            for reward in self.active
        }
        if with_format:
            values[FORMAT_REWARD] = format_reward(prompts, completions, feedback=feedback)
        samples = []
        for index, instance in enumerate(feedback.instances):
            row = {name: column[index] for name, column in values.items()}
            total = self.intercept
            for name, value in row.items():
                weight = self.format_penalty if name == FORMAT_REWARD else self.weights[name]
                if value is not None:
                    total += weight * value
            samples.append(
                ScoredSample(
                    feedback.instructions[index],
                    completions[index],
                    instance,
                    row,
                    total,
                    feedback.is_cut_off(index),
                )
            )
        return samples

    def score_instances(
        self, instructions: Sequence[str], instances: Sequence[ParsedInstance]
    ) -> list[ScoredSample]:
        """Score ready instances (``refineaf score``): the same numbers stage 2 computes."""
        feedback = self.feedback.score(instructions, instances)
        return self.evaluate(feedback, [None] * len(instances), with_format=False)


class TRLRewards:
    """The rewards as TRL reward functions; each batch is parsed and scored once.

    TRL calls the functions one after another with the same ``prompts``/``completions``; the
    first call parses and scores the batch (and logs the combined reward and the sample log),
    the others read the cached result. The instruction comes from the dataset's ``instruction``
    column, which TRL passes as a keyword argument.
    """

    def __init__(
        self,
        model: WeightedRewards,
        sample_sink: Callable[[int, list[ScoredSample]], None] | None = None,
        stop_token_ids: Collection[int] = (),
        cut_off_fails_format: bool = False,
    ) -> None:
        self.model = model
        self.sample_sink = sample_sink
        # A completion whose last token is none of these was cut off by the token limit (TRL's
        # own test for mask_truncated_completions); empty: no completion counts as cut off.
        self.stop_token_ids = set(stop_token_ids)
        # rl.cut_off_fails_format: a cut-off completion is scored as one that does not parse.
        self.cut_off_fails_format = cut_off_fails_format
        self._cache_key: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._cache: list[ScoredSample] = []

    def samples(
        self, prompts: Sequence[Any], completions: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> list[ScoredSample]:
        if "instruction" not in kwargs:
            raise UserError("the RL training rows need an 'instruction' column")
        instructions = [str(x) for x in kwargs["instruction"]]
        texts = [_completion_text(c) for c in completions]
        key = (tuple(instructions), tuple(texts))
        if key == self._cache_key:
            return self._cache
        ids = kwargs.get("completion_ids")
        cut_off: list[bool] = []
        if self.stop_token_ids and ids is not None:
            cut_off = [bool(row) and row[-1] not in self.stop_token_ids for row in ids]
        fails = cut_off if self.cut_off_fails_format and cut_off else [False] * len(texts)
        instances = [
            None if fail else parse_instance(t) for t, fail in zip(texts, fails, strict=True)
        ]
        feedback = self.model.feedback.score(instructions, instances)
        feedback.cut_off = cut_off
        extra = {k: v for k, v in kwargs.items() if k not in ("log_metric", "log_extra")}
        samples = self.model.evaluate(feedback, texts, True, {"prompts": list(prompts), **extra})
        self._log(samples, kwargs)
        self._cache_key, self._cache = key, samples
        return samples

    def _log(self, samples: list[ScoredSample], kwargs: Mapping[str, Any]) -> None:
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and samples:
            log_metric("reward_combined", sum(s.combined for s in samples) / len(samples))
            failed = sum(1 for s in samples if s.instance is None)
            log_metric("format_penalty_rate", failed / len(samples))
        log_extra = kwargs.get("log_extra")
        if log_extra is not None:
            log_extra("reward_combined", [s.combined for s in samples])
        if self.sample_sink is not None:
            state = kwargs.get("trainer_state")
            # Rewards are computed before the optimizer step they feed, hence the +1.
            step = (state.global_step + 1) if state is not None else 0
            self.sample_sink(step, samples)

    def _function(self, name: str) -> Callable[..., list[float | None]]:
        def reward(
            prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
        ) -> list[float | None]:
            return [s.values[name] for s in self.samples(prompts, completions, kwargs)]

        reward.__name__ = reward.__qualname__ = name  # TRL logs rewards/<__name__>/mean
        return reward

    def functions(self) -> list[Callable[..., Any]]:
        """``reward_funcs`` for TRL, in the order of :meth:`weights`."""
        names = [reward.name for reward in self.model.active] + [FORMAT_REWARD]
        return [self._function(name) for name in names]

    def weights(self) -> list[float]:
        """TRL's ``reward_weights``: the configured weights, then the format penalty."""
        return [self.model.weights[r.name] for r in self.model.active] + [self.model.format_penalty]


def _completion_text(completion: Any) -> str:
    """A completion as text (TRL passes message lists for conversational datasets)."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)
