"""Model judges and a near-copy test that filter generated data beyond Self-Instruct's rules.

Self-Instruct's heuristics (:mod:`refine_af.filters`) keep whatever looks like a sentence of the
right length. A small model writes many such sentences that are not tasks ("The answer to this
question is 2019."), and instances whose output does not do what the instruction asks, or that
repeat the prompt's own demonstration with a word changed. The judges ask the configured
evaluator (``rl.evaluator``: the embedded model offline, any larger model on a GPU) one Yes/No
question per item through the scorers' Yes/No scoring (:mod:`refine_af.scorers`), and an item
whose P(Yes) is below the configured threshold is dropped and counted under its own reason:

* stage 1 (``generate_instructions.instruction_judge``): "is this an instruction for a task
  someone could do?";
* stage 3 (``generate_instances.output_judge``): "does the output carry out the instruction on
  the input?".

A causal evaluator gets a few-shot chat (a 135M model answers a bare question close to chance);
UniEval (a T5 trained on Boolean questions) gets its own ``question: ... </s> response: ...``
form. :class:`NearCopy` is the test for a near-copy of a demonstration: ROUGE-L (recall of the
demonstration) above a threshold against any demonstration text shown in that prompt. All are
off in the ``paper`` config, which keeps the paper's filters only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from refine_af.errors import UserError
from refine_af.prompts import render_chat
from refine_af.scorers import CausalYesNoScorer, Scorer, T5YesNoScorer
from refine_af.similarity import SimilarityIndex, lcs_length

# The default near-copy threshold (configs and the ``keepable`` reward): more than half of a
# demonstration's words, in order ("Beverly's Daily Grind" repeats 2 of "The Daily Grind"'s 3).
NEAR_COPY_THRESHOLD = 0.5
INSTRUCTION_QUESTION = "Is this an instruction that asks someone to do a task?"
INSTANCE_QUESTION = "Does the output carry out the instruction on the input?"

# Few-shot examples for a causal evaluator, alternating Yes and No so the answer is not a
# position habit. Written for this purpose; none is a seed task or a SuperNI text.
INSTRUCTION_SHOTS = (
    ("Write a short poem about the ocean at night.", True),
    ("The capital of France is Paris.", False),
    ("Sort the numbers in the list from smallest to largest.", True),
    ("I am a friendly assistant and I like to help people.", False),
    ("Explain to a child why leaves change colour in autumn.", True),
    ("In 1969, two astronauts walked on the Moon.", False),
    ("Classify the review as positive or negative.", True),
    ("My favourite season is summer because it is warm.", False),
    ("What are three ways to save water at home?", True),
    ("This paragraph describes the history of the city.", False),
)
INSTANCE_SHOTS = (
    ("Convert the length from metres to centimetres.", "3 metres", "300 centimetres", True),
    ("Give the plural of the noun.", "mouse", "The Quiet Cafe", False),
    ("Name a fruit that is yellow.", "", "Banana", True),
    ("Summarize the sentence in three words.", "The dog ran across the park.", "Hello!", False),
    ("Translate the word into Spanish.", "cat", "gato", True),
    ("List three colours.", "", "I like to read books on Sundays.", False),
    ("Reverse the letters of the word.", "stone", "enots", True),
    ("Answer the arithmetic question.", "What is 7 times 6?", "My name is Sam.", False),
)


def _answer(label: bool) -> str:
    return "Yes" if label else "No"


def _instance_text(instruction: str, input_text: str, output: str) -> str:
    lines = [f"Instruction: {' '.join(instruction.split())}"]
    if input_text.strip():
        lines.append(f"Input: {input_text.strip()}")
    lines.append(f"Output: {output.strip()}")
    return "\n".join(lines)


@dataclass
class Judge:
    """Asks the evaluator the judges' questions; returns P(Yes) per item."""

    scorer: Scorer

    def __post_init__(self) -> None:
        if not isinstance(self.scorer, (CausalYesNoScorer, T5YesNoScorer)):
            raise UserError("the judges need a Yes/No evaluator (a causal LM or UniEval's T5)")

    def _causal_prompt(self, question: str, shots: list[tuple[str, bool]], item: str) -> str:
        """The shots as earlier turns of a chat (each question answered Yes or No), then the
        item's question; the next token is the answer. A 135M chat model answers this form far
        better than one turn listing the shots (AUC 0.92 against 0.42 on 44 stage-1 candidates
        labelled by hand)."""
        assert isinstance(self.scorer, CausalYesNoScorer)
        tokenizer = self.scorer.tokenizer
        ask = f"{question} Answer Yes or No."
        if self.scorer.use_chat_template and getattr(tokenizer, "chat_template", None):
            messages = []
            for text, label in shots:
                messages.append({"role": "user", "content": f"{ask}\n\n{text}"})
                messages.append({"role": "assistant", "content": _answer(label)})
            messages.append({"role": "user", "content": f"{ask}\n\n{item}"})
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        examples = "\n\n".join(f"{text}\nAnswer: {_answer(label)}" for text, label in shots)
        return render_chat(tokenizer, f"{ask}\n\n{examples}\n\n{item}", "Answer:", False)

    def instruction_scores(self, instructions: Sequence[str]) -> list[float]:
        """P(Yes): the text is an instruction for a task someone could do."""
        if not instructions:
            return []
        if isinstance(self.scorer, T5YesNoScorer):
            texts = [
                f"question: {INSTRUCTION_QUESTION} </s> response: {' '.join(t.split())}"
                for t in instructions
            ]
        else:
            shots = list(INSTRUCTION_SHOTS)
            texts = [
                self._causal_prompt(INSTRUCTION_QUESTION, shots, " ".join(t.split()))
                for t in instructions
            ]
        return self.scorer.score(texts)

    def instance_scores(self, instances: Sequence[tuple[str, str, str]]) -> list[float]:
        """P(Yes): the output carries out the instruction on the input, per (instruction,
        input, output)."""
        if not instances:
            return []
        if isinstance(self.scorer, T5YesNoScorer):
            texts = []
            for instruction, input_text, output in instances:
                context = " ".join(instruction.split())
                if input_text.strip():
                    context += f" Input: {input_text.strip()}"
                texts.append(
                    f"question: {INSTANCE_QUESTION} </s> response: {output.strip()} </s> "
                    f"dialogue history: {context}"
                )
        else:
            shots = [(_instance_text(i, x, y), label) for i, x, y, label in INSTANCE_SHOTS]
            texts = [
                self._causal_prompt(INSTANCE_QUESTION, shots, _instance_text(*item))
                for item in instances
            ]
        return self.scorer.score(texts)


def load_judge(config: Any, reuse: Any = None, device: str | None = None) -> Judge:
    """The judge on the configured evaluator (``rl.evaluator``, ``rl.evaluator_kind``).

    ``reuse`` is a generation backend already holding the untuned base model: when the evaluator
    is that same model (the embedded default asks itself), its weights are shared instead of
    loading a second copy.
    """
    import copy

    from refine_af.models import choose_placement, resolve_model_path
    from refine_af.scorers import ScorerLoader, ScorerSettings

    settings = config.rl
    shared = getattr(reuse, "model", None)
    if (
        shared is not None
        and settings.evaluator_kind == "causal"
        and resolve_model_path(settings.evaluator) == resolve_model_path(config.run.model)
    ):
        tokenizer = copy.deepcopy(reuse.tokenizer)
        tokenizer.truncation_side = "left"  # the question sits at the end of the prompt
        return Judge(
            CausalYesNoScorer(
                shared,
                tokenizer,
                settings.scorer_batch_size,
                settings.scorer_max_length,
                settings.use_chat_template,
            )
        )
    if device is None:
        device = choose_placement(config.run.device, config.run.dtype).device
    loader = ScorerLoader(
        ScorerSettings(
            reward_model=settings.reward_model,
            evaluator=settings.evaluator,
            evaluator_kind=settings.evaluator_kind,
            device=device,
            dtype=settings.scorer_dtype,
            batch_size=settings.scorer_batch_size,
            max_length=settings.scorer_max_length,
            use_chat_template=settings.use_chat_template,
            trust_remote_code=config.run.trust_remote_code,
        )
    )
    return Judge(loader.evaluator())


def judge_identity(config: Any) -> dict[str, Any]:
    """What the judges' answers depend on (for stage keys)."""
    settings = config.rl
    return {
        "evaluator": settings.evaluator,
        "evaluator_kind": settings.evaluator_kind,
        "dtype": settings.scorer_dtype,
        "max_length": settings.scorer_max_length,
        "use_chat_template": settings.use_chat_template,
    }


class NearCopy:
    """Is a text a near-copy of one of the given demonstrations?

    The measure is ROUGE-L recall of the demonstration: the longest common subsequence of
    words over the demonstration's length (``rouge_score``'s ``recall`` with the demonstration
    as target; Self-Instruct's tokenization, no stemming). Recall, not F: a small model copies a
    demonstration into a longer answer ("The Daily Grind is a coffee shop that ...") as often as
    on its own, and F falls with the answer's length. One-word demonstrations are left out
    (they are labels such as "Positive", which a new instance may rightly repeat).
    """

    def __init__(self, demonstrations: Sequence[str], threshold: float) -> None:
        self.threshold = threshold
        tokenizer = SimilarityIndex().tokenize
        self.tokenize = tokenizer
        self.demonstrations = [
            tokens for tokens in (tokenizer(text) for text in demonstrations) if len(tokens) >= 2
        ]

    def recall(self, text: str) -> float:
        """The highest ROUGE-L recall of any demonstration in ``text``."""
        words = self.tokenize(text)
        if not words:
            return 0.0
        return max(
            (lcs_length(demo, words) / len(demo) for demo in self.demonstrations), default=0.0
        )

    def __call__(self, text: str) -> bool:
        return self.recall(text) > self.threshold
