"""The models that score an instance in stage 2 (and ``refineaf score``), and how they load.

Scorers (each loaded once, batched, run without gradients on its own device):

* :class:`SequenceClassificationScorer`: a reward model; the first logit is the score. The paper's
  (``OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5``) is a ``gpt_neox_reward_model``, loaded
  through the project's own class (:mod:`refine_af.reward_model`); any stock
  ``*ForSequenceClassification`` model loads the same way. The text is OpenAssistant's format,
  ``<|prompter|>{prompt}<|endoftext|><|assistant|>{reply}<|endoftext|>``.
* :class:`T5YesNoScorer`: UniEval (``MingZhong/unieval-dialog``), exactly as UniEval scores:
  ``question: ... </s> response: ... [</s> dialogue history: ...]`` in, ``P(Yes) / (P(Yes) +
  P(No))`` at the first decoder step.
* :class:`CausalYesNoScorer`: any causal LM asked the same Yes/No question through its chat
  template: the softmax over the next-token probabilities of the Yes and No tokens. This lets
  stage 2 run offline with only the embedded SmolLM2. As ``reward_model`` (setting
  ``causal:<model>``) it returns the log-odds ``log P(Yes) − log P(No)`` of "is this a good
  response?", an unbounded score like a reward model's logit.

Loading (:class:`ScorerLoader`): a setting is a local directory, a ``.gguf`` file, ``default`` or
a Hub id. A Hub repository is fetched without pickles first; only when it has no safetensors are
its ``pytorch_model*.bin`` files fetched (:func:`hub_snapshot`). The directory's ``config.json``
is checked before any weight is read (a model type transformers and the project don't know, or a
UniEval evaluator that is not a T5, stops with one line), then ``.bin`` weights are converted once
to safetensors (:mod:`refine_af.weights`) and the model is loaded from safetensors only. Remote
code runs only when ``trust_remote_code`` is set.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from refine_af.errors import UserError, one_line
from refine_af.generation import MIN_SHARED_PREFIX, common_prefix_length

CAUSAL_PREFIX = "causal:"
EVALUATOR_KINDS = ("unieval", "causal")
# UniEval's evaluators are T5 models; its Boolean QA reads T5's first decoder step.
UNIEVAL_MODEL_TYPES = frozenset({"t5", "mt5", "umt5"})

# UniEval's own dialogue questions (maszhongming/UniEval, utils.add_question, task "dialogue"):
# the T5 evaluator was trained on exactly these strings, so they must not be reworded.
UNIEVAL_QUESTIONS = {
    "naturalness": "Is this a natural response in the dialogue?",
    "coherence": "Is this a coherent response given the dialogue history?",
    "understandability": "Is this an understandable response in the dialogue?",
}
# Which questions see the context (UniEval gives only coherence the dialogue history).
WITH_CONTEXT = frozenset({"coherence", "reward_model"})

# Hub files a scorer needs besides weights (as refine_af.models fetches them), and the only
# pickles ever fetched: the weight files themselves, never training_args.bin or optimizer state.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
HUB_BIN_PATTERNS = ["pytorch_model.bin", "pytorch_model-*-of-*.bin"]


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


def _shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own."""
    if not rows:
        return 0
    return max(0, min(min(common_prefix_length(rows[0], row), len(row) - 1) for row in rows))


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
    # Run the few-shot turns that all prompts share once (``score``); off: every prompt in full.
    share_prefix: bool = True
    # Entered around every forward pass: stage 2 shares one copy of the weights between the
    # policy and a scorer of the same model, and scores with the policy's adapter switched off.
    base_weights: Callable[[], contextlib.AbstractContextManager[Any]] = field(
        default=contextlib.nullcontext, repr=False
    )
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
        """P(Yes) (or its log-odds) for each prepared prompt.

        A judge's prompts repeat the same few-shot turns and differ only in their last few dozen
        tokens (456 of about 470 tokens in stage 1). That shared token prefix is run once and its
        keys and values copied into each batch, as vLLM's prefix caching does: the instruction
        judge scores the 137 labelled stage-1 candidates in 10.8 s instead of 150.2 s, with P(Yes)
        within 6e-6 (``python benchmarks/instruction_judge.py --reference``).
        """
        if not self.share_prefix:
            return self._score_whole(texts)
        scores: list[float] = [0.0] * len(texts)
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        fits = [i for i in range(len(texts)) if len(ids[i]) <= self.max_length]
        shared = _shared_prefix_length([ids[i] for i in fits])
        if shared >= MIN_SHARED_PREFIX and len(fits) > 1:
            rest = sorted(set(range(len(texts))) - set(fits))
            values = self._score_after_prefix([ids[i] for i in fits], shared)
            for index, value in zip(fits, values, strict=True):
                scores[index] = value
        else:
            rest = list(range(len(texts)))
        if rest:
            for index, value in zip(rest, self._score_whole([texts[i] for i in rest]), strict=True):
                scores[index] = value
        return scores

    def _yes_probability(self, logits: Any) -> list[float]:
        """P(Yes) or its log-odds from next-token logits, a row per prompt."""
        import torch

        yes = torch.tensor(self.yes_ids, device=logits.device)
        no = torch.tensor(self.no_ids, device=logits.device)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        log_yes = torch.logsumexp(logprobs[:, yes], dim=-1)
        log_no = torch.logsumexp(logprobs[:, no], dim=-1)
        values = log_yes - log_no if self.log_odds else torch.sigmoid(log_yes - log_no)
        return [float(v) for v in values]

    def _score_whole(self, texts: Sequence[str]) -> list[float]:
        """Each prompt run in full, left-truncated to ``max_length``."""
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
            with self.base_weights(), torch.inference_mode():
                # Left padding: the last position is every row's real next-token position, and
                # the only one whose logits are needed (the vocabulary projection of the others
                # would cost a fifth of the forward pass and a 49k-wide row per token).
                logits = self.model(**encoded, logits_to_keep=1).logits[:, -1, :]
            for index, value in zip(batch, self._yes_probability(logits), strict=True):
                scores[index] = value
        return scores

    def _score_after_prefix(self, ids: Sequence[Sequence[int]], shared: int) -> list[float]:
        """Prompts whose first ``shared`` tokens are the same: the prefix runs once.

        A batch row is ``[prefix, masked gap, own tokens]``: the gap left-pads the tails to one
        width, so the last position is every row's next-token position (one logits row each),
        and position ids count real tokens only, so each row sees what a whole forward sees.
        """
        import torch

        from refine_af.kv_cache import copy_prefix, preallocated_cache, window

        scores: list[float] = [0.0] * len(ids)
        device = self.model.device
        pad = self.tokenizer.pad_token_id or 0
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        with self.base_weights(), torch.inference_mode():
            prefix = preallocated_cache(self.model, 1, shared)
            self.model(
                input_ids=torch.tensor([list(ids[0][:shared])], device=device),
                past_key_values=window(prefix, slice(0, 1), 0),
                use_cache=True,
                logits_to_keep=1,
            )
            for batch in _batches(order, self.batch_size):
                tails = [list(ids[i][shared:]) for i in batch]
                width = max(len(tail) for tail in tails)
                cache = preallocated_cache(self.model, len(batch), shared + width)
                copy_prefix(cache, 0, slice(0, len(batch)), shared, source_cache=prefix)
                input_ids = torch.tensor(
                    [[pad] * (width - len(tail)) + tail for tail in tails], device=device
                )
                mask = torch.tensor(
                    [[1] * shared + [0] * (width - len(t)) + [1] * len(t) for t in tails],
                    device=device,
                )
                positions = (mask[:, shared:].cumsum(-1) - 1).clamp(min=0) + shared
                logits = self.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=window(cache, slice(0, len(batch)), 0, shared),
                    use_cache=True,
                    logits_to_keep=1,
                ).logits[:, -1, :]
                for index, value in zip(batch, self._yes_probability(logits), strict=True):
                    scores[index] = value
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
            # UniEval passes a one-token label, which T5 shifts right into this same single
            # decoder start token; only the first step's distribution is read.
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
    ``<|prompter|>{prompt}<eos><|assistant|>{response}<eos>``, which the paper's RM was trained on
    (its eos is ``<|endoftext|>``).
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
# Finding a scorer's files.


def hub_snapshot(repo_id: str) -> Path:
    """A local snapshot of a Hub model with its weights, pickles only when nothing else exists.

    The first download takes configs, tokenizer files and safetensors. A repository without
    safetensors (UniEval, OpenAssistant's reward model) is fetched again with its
    ``pytorch_model*.bin`` files, which :func:`refine_af.weights.ensure_safetensors` converts.
    """
    from huggingface_hub import snapshot_download

    from refine_af.weights import weight_format

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, etag_timeout=5))
    except Exception as error:  # offline, blocked, gated, missing
        raise UserError(
            f"model '{repo_id}' is neither a local path nor a reachable Hub model "
            f"({type(error).__name__}): check the name, log in for gated models, or give a local "
            "directory"
        ) from error
    if weight_format(folder) is not None:
        return folder
    try:
        folder = Path(
            snapshot_download(
                repo_id, allow_patterns=[*HUB_PATTERNS, *HUB_BIN_PATTERNS], etag_timeout=5
            )
        )
    except Exception as error:
        raise UserError(
            f"Hub model '{repo_id}' has no safetensors and its pytorch_model.bin could not be "
            f"downloaded ({type(error).__name__}: {one_line(error)[:160]}): retry, or give a local "
            "directory"
        ) from error
    if weight_format(folder) is None:
        raise UserError(
            f"Hub model '{repo_id}' has neither safetensors nor pytorch_model.bin weights: give a "
            "model directory with weights"
        )
    return folder


def resolve_scorer_path(setting: str) -> Path:
    """A scorer setting as a local model directory: local paths, ``default``, .gguf, Hub ids.

    Like :func:`refine_af.models.resolve_model_path`, except that a Hub repository publishing
    only ``.bin`` weights is fetched with them (see :func:`hub_snapshot`).
    """
    from refine_af.models import _HUB_ID, DEFAULT_MODEL_ALIAS, resolve_model_path

    path = Path(setting).expanduser()
    is_hub_id = (
        setting != DEFAULT_MODEL_ALIAS
        and not path.exists()
        and path.suffix != ".gguf"
        and _HUB_ID.match(setting) is not None
        and not setting.startswith((".", "/", "~"))
    )
    if is_hub_id:
        return hub_snapshot(setting)
    return Path(resolve_model_path(setting))


def read_model_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict (read without building anything)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise UserError(f"{folder} has no config.json: give a model directory") from error
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON: re-download the model") from error
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object: re-download the model")
    return config


def config_problem(config: dict[str, Any], kind: str, trust_remote_code: bool) -> str | None:
    """Why a model with this ``config.json`` can't be a ``kind`` scorer, or None if it can.

    Checked before any weight is read, so a wrong model costs no download conversion or load.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from refine_af.reward_model import register

    register()  # gpt_neox_reward_model is the project's own
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return "its config.json has no model_type"
    if model_type not in CONFIG_MAPPING and not trust_remote_code:
        hint = (
            "its code is in the repository (auto_map) but run.trust_remote_code is off"
            if config.get("auto_map")
            else "use a model transformers supports"
        )
        return (
            f"its config.json has model_type '{model_type}', which neither transformers nor "
            f"refine_af knows: {hint}"
        )
    if kind == "seq2seq" and model_type not in UNIEVAL_MODEL_TYPES:
        architectures = ", ".join(str(a) for a in config.get("architectures") or []) or "none"
        return (
            "evaluator_kind 'unieval' needs a T5 evaluator (UniEval, e.g. "
            f"MingZhong/unieval-dialog) but this is model_type '{model_type}' "
            f"(architectures: {architectures}); use evaluator_kind 'causal' for a causal LM"
        )
    return None


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
    # The config section errors name (``rl.reward_model``); ``refineaf score`` passes its own.
    section: str = "rl"


class ScorerLoader:
    """Loads each model once (a causal model used both as reward model and evaluator is shared)."""

    def __init__(self, settings: ScorerSettings) -> None:
        self.settings = settings
        self._models: dict[tuple[str, str], tuple[Any, Any]] = {}

    def model_directory(self, role: str, setting: str, kind: str) -> Path:
        """The checked, safetensors-only directory a scorer loads from (converting once)."""
        from refine_af.weights import ensure_safetensors

        label, where = role.replace("_", " "), f"{self.settings.section}.{role}"
        try:
            folder = resolve_scorer_path(setting)
            config = read_model_config(folder)
        except UserError as error:
            raise UserError(f"cannot load the {label} ({where}): {error}") from error
        problem = config_problem(config, kind, self.settings.trust_remote_code)
        if problem is None:
            problem = self._config_error(folder)
        if problem is not None:
            raise UserError(f"cannot load the {label} '{setting}' ({where}): {problem}")
        try:
            return ensure_safetensors(folder)
        except UserError as error:
            raise UserError(f"cannot load the {label} '{setting}' ({where}): {error}") from error

    def _config_error(self, folder: Path) -> str | None:
        """Build the config (no weights): catches a bad value such as an unknown pooling."""
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(folder, trust_remote_code=self.settings.trust_remote_code)
        except Exception as error:
            return f"its config.json is not valid: {' '.join(str(error).split())[:300]}"
        return None

    def _load(self, role: str, setting: str, kind: str) -> tuple[Any, Any]:
        from refine_af.models import choose_placement

        folder = self.model_directory(role, setting, kind)
        key = (kind, str(folder))
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
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
            model = classes[kind].from_pretrained(
                folder, dtype=placement.dtype, trust_remote_code=remote, use_safetensors=True
            )
        except Exception as error:  # any failure: one line, before training starts
            where = f"{self.settings.section}.{role}"
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
            if kind == "classification":
                # A reward model reads the reply's last token: cut an over-long text at its start
                # so the reply and its closing end-of-text token stay.
                tokenizer.truncation_side = "left"
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
        if s.evaluator_kind not in EVALUATOR_KINDS:
            raise UserError(
                f"{s.section}.evaluator_kind is '{s.evaluator_kind}': use one of "
                f"{list(EVALUATOR_KINDS)}"
            )
        if s.evaluator_kind == "unieval":
            model, tokenizer = self._load("evaluator", s.evaluator, "seq2seq")
            return T5YesNoScorer(model, tokenizer, s.batch_size, s.max_length)
        model, tokenizer = self._load("evaluator", s.evaluator, "causal")
        return CausalYesNoScorer(model, tokenizer, s.batch_size, s.max_length, s.use_chat_template)
