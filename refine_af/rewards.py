"""REFINE-AF's automated feedback: scorers, and reward functions in TRL's shape.

The paper's reward for an instance (instruction, input, output) is (SPEC section 1)::

    r = 0.0078·Rew − 0.4421·Und + 0.3212·Nat + 0.1520·Coh − 0.0274

``Rew`` is a sequence-classification reward model's score of (instruction + input, output);
``Und``, ``Nat`` and ``Coh`` are UniEval dialogue scores: the probability that the evaluator
answers "Yes" to the dimension's question, the instruction + input being the dialogue history and
the output the response. Weights and intercept are configuration.

Scorers (all loaded once, batched, run without gradients on their own device):

* :class:`SequenceClassificationScorer` — a real reward model (paper: OpenAssistant's
  ``oasst-rm-2.1-pythia-1.4b-epoch-2.5``), the first logit is the score.
* :class:`T5YesNoScorer` — UniEval (``MingZhong/unieval-dialog``): ``question: ... </s> response:
  ... [</s> dialogue history: ...]`` in, ``P(Yes) / (P(Yes) + P(No))`` at the first decoder step.
* :class:`CausalYesNoScorer` — any causal LM asked the same Yes/No question through its chat
  template: the softmax over the next-token probabilities of the Yes and No tokens. This is what
  lets the stage run offline with only the embedded SmolLM2. Used as ``reward_model`` (setting
  ``causal:<model>``) it returns the log-odds ``log P(Yes) − log P(No)`` of "is this a good
  response?", an unbounded score like a reward model's logit rather than a probability.

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

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from refine_af.config import ConfigError
from refine_af.errors import UserError
from refine_af.instance_format import ParsedInstance, parse_instance

DIMENSIONS = ("understandability", "naturalness", "coherence")
FORMAT_REWARD = "format"
PAPER_WEIGHTS: dict[str, float] = {
    "reward_model": 0.0078,
    "understandability": -0.4421,
    "naturalness": 0.3212,
    "coherence": 0.1520,
}
PAPER_INTERCEPT = -0.0274
CAUSAL_PREFIX = "causal:"

# UniEval's own dialogue questions (maszhongming/UniEval, utils.add_question, task "dialogue"):
# the T5 evaluator was trained on exactly these strings, so they must not be reworded.
UNIEVAL_QUESTIONS = {
    "naturalness": "Is this a natural response in the dialogue?",
    "coherence": "Is this a coherent response given the dialogue history?",
    "understandability": "Is this an understandable response in the dialogue?",
}
# The same dimensions asked of a general chat model, about an instruction's instance.
CAUSAL_QUESTIONS = {
    "understandability": "Is the response understandable?",
    "naturalness": "Is the response natural, like something a person would write?",
    "coherence": "Is the response coherent with the instruction and input above?",
    "reward_model": "Is the response a good and correct answer to the instruction?",
}
# Which questions see the context (UniEval gives only coherence the dialogue history).
WITH_CONTEXT = frozenset({"coherence", "reward_model"})


def one_line(error: BaseException) -> str:
    """The first line of an exception's message, for single-line user errors."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def instance_context(instruction: str, input_text: str) -> str:
    """The instruction plus its input: the "dialogue history" / the reward model's prompt."""
    instruction = " ".join(instruction.split())
    return f"{instruction}\nInput: {input_text.strip()}" if input_text.strip() else instruction


def combine(
    values: Mapping[str, float | None], weights: Mapping[str, float], intercept: float
) -> float:
    """The weighted reward of one sample: ``intercept + Σ weight·value``.

    A missing or None value (an unparseable completion has none) counts as 0; a value without a
    weight is ignored.
    """
    total = intercept
    for name, weight in weights.items():
        value = values.get(name)
        if value is not None and weight:
            total += weight * value
    return total


# ---------------------------------------------------------------------------------------------
# Scorers.


class Scorer(Protocol):
    """Something that scores a batch of prepared texts."""

    def score(self, texts: Sequence[str]) -> list[float]: ...


def _batches(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _length_order(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Indices of ``texts`` longest first, so each batch pads little."""
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return sorted(range(len(texts)), key=lambda i: -lengths[i])


def _first_token_ids(tokenizer: Any, words: Sequence[str], answer: str) -> list[int]:
    """Ids of the first token of each spelling whose token decodes to ``answer`` itself."""
    ids: list[int] = []
    for word in words:
        encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not encoded:
            continue
        token = encoded[0]
        if tokenizer.decode([token]).strip().lower() == answer and token not in ids:
            ids.append(token)
    return ids


@dataclass
class CausalYesNoScorer:
    """Yes/No probability of a causal LM's next token after a question (see module docstring).

    ``P(yes) = Σ p(yes spellings) / (Σ p(yes spellings) + Σ p(no spellings))`` over the first
    tokens of "Yes", " Yes", "yes", " yes" (and the same for No) that exist in the vocabulary, so
    the answer's spelling (with or without a leading space) does not matter.
    """

    model: Any
    tokenizer: Any
    batch_size: int = 16
    max_length: int = 512
    use_chat_template: bool = True
    log_odds: bool = False
    yes_ids: list[int] = field(init=False)
    no_ids: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.yes_ids = _first_token_ids(self.tokenizer, ["Yes", " Yes", "yes", " yes"], "yes")
        self.no_ids = _first_token_ids(self.tokenizer, ["No", " No", "no", " no"], "no")
        if not self.yes_ids or not self.no_ids:
            raise UserError("the causal evaluator's tokenizer has no single token for Yes or No")

    def prompt(self, question: str, response: str, context: str | None) -> str:
        """The question about one response; the answer is the next token."""
        from refine_af.prompts import render_chat

        parts = []
        if context is not None:
            parts.append(f"Instruction:\n{context}")
        parts.append(f"Response:\n{response.strip()}")
        # The question goes last, so truncating a long prompt on the left keeps it.
        parts.append(f"{question} Answer Yes or No.")
        return render_chat(self.tokenizer, "\n\n".join(parts), "", self.use_chat_template)

    def score(self, texts: Sequence[str]) -> list[float]:
        """P(Yes) (or its log-odds) for each prepared prompt."""
        import torch

        scores: list[float] = [0.0] * len(texts)
        device = self.model.device
        yes = torch.tensor(self.yes_ids, device=device)
        no = torch.tensor(self.no_ids, device=device)
        for batch in _batches(_length_order(self.tokenizer, texts), self.batch_size):
            encoded = self.tokenizer(
                [texts[i] for i in batch],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            ).to(device)
            with torch.inference_mode():
                # Left padding: the last position is every row's real next-token position, and
                # the only one whose logits are needed (the vocabulary projection of the others
                # would cost a fifth of the forward pass and a 49k-wide row per token).
                logits = self.model(**encoded, logits_to_keep=1).logits[:, -1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            log_yes = torch.logsumexp(logprobs[:, yes], dim=-1)
            log_no = torch.logsumexp(logprobs[:, no], dim=-1)
            values = log_yes - log_no if self.log_odds else torch.sigmoid(log_yes - log_no)
            for row, index in enumerate(batch):
                scores[index] = float(values[row])
        return scores


@dataclass
class T5YesNoScorer:
    """UniEval's Boolean QA: ``P(Yes) / (P(Yes) + P(No))`` at the first decoder position."""

    model: Any
    tokenizer: Any
    batch_size: int = 16
    max_length: int = 1024
    pos_id: int = field(init=False)
    neg_id: int = field(init=False)

    def __post_init__(self) -> None:
        # As UniEval does: the first id of the encoded word (T5 gives "▁Yes", then </s>).
        self.pos_id = self.tokenizer("Yes").input_ids[0]
        self.neg_id = self.tokenizer("No").input_ids[0]

    @staticmethod
    def prompt(dimension: str, response: str, context: str) -> str:
        """UniEval's input text for a dialogue dimension."""
        text = f"question: {UNIEVAL_QUESTIONS[dimension]} </s> response: {response.strip()}"
        if dimension in WITH_CONTEXT:
            text += f" </s> dialogue history: {context}"
        return text

    def score(self, texts: Sequence[str]) -> list[float]:
        import torch

        scores: list[float] = [0.0] * len(texts)
        device = self.model.device
        start = self.model.config.decoder_start_token_id
        if start is None:
            start = self.tokenizer.pad_token_id
        for batch in _batches(_length_order(self.tokenizer, texts), self.batch_size):
            encoded = self.tokenizer(
                [texts[i] for i in batch],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(device)
            decoder_input_ids = torch.full((len(batch), 1), start, device=device)
            with torch.no_grad():
                logits = self.model(**encoded, decoder_input_ids=decoder_input_ids).logits
            probs = torch.softmax(logits[:, 0, :].float(), dim=-1)
            pos, neg = probs[:, self.pos_id], probs[:, self.neg_id]
            values = pos / (pos + neg)
            for row, index in enumerate(batch):
                scores[index] = float(values[row])
        return scores


@dataclass
class SequenceClassificationScorer:
    """A reward model with a sequence-classification head; the first logit is the reward.

    The text follows OpenAssistant's reward-model format,
    ``<|prompter|>{prompt}<eos><|assistant|>{response}<eos>``, which the paper's RM was trained on.
    """

    model: Any
    tokenizer: Any
    batch_size: int = 8
    max_length: int = 1024

    def prompt(self, prompt: str, response: str) -> str:
        eos = self.tokenizer.eos_token or ""
        return f"<|prompter|>{prompt}{eos}<|assistant|>{response.strip()}{eos}"

    def score(self, texts: Sequence[str]) -> list[float]:
        import torch

        scores: list[float] = [0.0] * len(texts)
        device = self.model.device
        for batch in _batches(_length_order(self.tokenizer, texts), self.batch_size):
            encoded = self.tokenizer(
                [texts[i] for i in batch],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            ).to(device)
            with torch.no_grad():
                logits = self.model(**encoded).logits
            for row, index in enumerate(batch):
                scores[index] = float(logits[row, 0])
        return scores


# ---------------------------------------------------------------------------------------------
# Loading.


@dataclass(frozen=True)
class ScorerSettings:
    """Where scorers come from and how they run (a view of the stage-2 config)."""

    reward_model: str
    evaluator: str
    evaluator_kind: str  # "causal" or "unieval"
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = 16
    max_length: int = 512
    use_chat_template: bool = True
    trust_remote_code: bool = False


class ScorerLoader:
    """Loads each model once (a causal model used both as reward model and evaluator is shared)."""

    def __init__(self, settings: ScorerSettings) -> None:
        self.settings = settings
        self._models: dict[tuple[str, str], tuple[Any, Any]] = {}

    def _load(self, role: str, setting: str, kind: str) -> tuple[Any, Any]:
        from refine_af.models import choose_placement, resolve_model_path

        where = f"rl.{role}"
        try:
            path = resolve_model_path(setting)
        except UserError as error:
            raise UserError(
                f"cannot load the {role.replace('_', ' ')} ({where}): {error}"
            ) from error
        key = (kind, path)
        if key in self._models:
            return self._models[key]
        import transformers

        classes = {
            "causal": transformers.AutoModelForCausalLM,
            "seq2seq": transformers.AutoModelForSeq2SeqLM,
            "classification": transformers.AutoModelForSequenceClassification,
        }
        placement = choose_placement(self.settings.device, self.settings.dtype)
        remote = self.settings.trust_remote_code
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
            model = classes[kind].from_pretrained(
                path, dtype=placement.dtype, trust_remote_code=remote, use_safetensors=True
            )
        except Exception as error:  # any failure: one line, before training starts
            raise UserError(
                f"cannot load the {role.replace('_', ' ')} '{setting}' ({where}, as a {kind} "
                f"model): {one_line(error)}"
            ) from error
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if kind == "causal":
            tokenizer.padding_side = "left"  # the next-token logits are read at the last position
            tokenizer.truncation_side = "left"  # the question sits at the end
        else:
            tokenizer.padding_side = "right"
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        model = model.to(placement.device).eval()
        model.requires_grad_(False)
        self._models[key] = (model, tokenizer)
        return model, tokenizer

    def reward_model(self) -> Scorer:
        """The ``reward_model`` scorer: ``causal:<model>`` is a causal LM's Yes/No log-odds."""
        s = self.settings
        if s.reward_model.startswith(CAUSAL_PREFIX):
            model, tokenizer = self._load(
                "reward_model", s.reward_model[len(CAUSAL_PREFIX) :], "causal"
            )
            return CausalYesNoScorer(
                model, tokenizer, s.batch_size, s.max_length, s.use_chat_template, log_odds=True
            )
        model, tokenizer = self._load("reward_model", s.reward_model, "classification")
        return SequenceClassificationScorer(model, tokenizer, s.batch_size, s.max_length)

    def evaluator(self) -> Scorer:
        """The UniEval-style evaluator: T5 (``unieval``) or a causal LM (``causal``)."""
        s = self.settings
        if s.evaluator_kind == "unieval":
            model, tokenizer = self._load("evaluator", s.evaluator, "seq2seq")
            return T5YesNoScorer(model, tokenizer, s.batch_size, s.max_length)
        model, tokenizer = self._load("evaluator", s.evaluator, "causal")
        return CausalYesNoScorer(model, tokenizer, s.batch_size, s.max_length, s.use_chat_template)


# ---------------------------------------------------------------------------------------------
# Automated feedback: the scorers' signals for a batch of instances.

# What the scorers can say about an instance; each is computed only when an active reward
# reads it.
SIGNALS = ("reward_model", "understandability", "naturalness", "coherence")


@dataclass
class Feedback:
    """One batch of instances and the scorer signals the active rewards asked for.

    ``instances[i]`` is None for a completion that did not parse as an instance; its signals are
    None too. Reward functions receive this as their ``feedback`` keyword argument.
    """

    instructions: list[str]
    instances: list[ParsedInstance | None]
    signals: dict[str, list[float | None]]


class AutomatedFeedback:
    """The reward model and the evaluator, asked in one batched pass per scorer."""

    def __init__(
        self, reward_model: Scorer | None, evaluator: Scorer | None, signals: Collection[str]
    ) -> None:
        self.signals = [name for name in SIGNALS if name in signals]
        if "reward_model" in self.signals and reward_model is None:
            raise UserError("a reward reads the reward model's score but no reward model is set")
        if any(name in DIMENSIONS for name in self.signals) and evaluator is None:
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


def format_reward(prompts: Any, completions: Any, *, feedback: Feedback, **_: Any) -> list:
    """0 for a completion that parses as an instance, -1 otherwise (weight: rl.format_penalty).

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
                ScoredSample(feedback.instructions[index], completions[index], instance, row, total)
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
    ) -> None:
        self.model = model
        self.sample_sink = sample_sink
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
        instances = [parse_instance(text) for text in texts]
        feedback = self.model.feedback.score(instructions, instances)
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
