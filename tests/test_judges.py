"""The judges and the near-copy test, and the filters they feed, on scripted scores."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from refine_af.generation import Completion, SamplingParams
from refine_af.judges import INSTANCE_QUESTION, INSTRUCTION_QUESTION, Judge, NearCopy
from refine_af.prompts import INPUT_FIRST_DEMONSTRATION_TEXTS
from refine_af.scorers import CausalYesNoScorer
from refine_af.similarity import SimilarityIndex


class ScriptedYesNo(CausalYesNoScorer):
    """A Yes/No scorer whose P(Yes) is looked up by a word in the asked item (the last part of
    the prompt); records what it was asked."""

    def __init__(self, tokenizer, table: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
        self.tokenizer, self.use_chat_template = tokenizer, True
        self.table, self.asked = table, []

    def score(self, texts: Sequence[str]) -> list[float]:
        out = []
        for text in texts:
            item = text.rsplit("Answer Yes or No.", 1)[-1].rsplit("\n\n", 1)[-1]
            self.asked.append(item)
            out.append(next((v for k, v in self.table.items() if k in item), 0.5))
        return out


@pytest.fixture
def tok(tokenizer_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_causal_judge_prompts_are_few_shot_and_end_at_the_answer(tok) -> None:  # type: ignore[no-untyped-def]
    scorer = ScriptedYesNo(tok, {})
    judge = Judge(scorer)
    judge.instruction_scores(["Sort   the list."])
    judge.instance_scores([("Add the numbers.", "2 and 3", "5")])
    scorer_prompts = scorer.asked
    # The shots are earlier turns of the chat; the item is the last question.
    assert scorer_prompts == [
        "Sort the list.<|im_end|>\n<|im_start|>assistant\n",
        "Instruction: Add the numbers.\nInput: 2 and 3\nOutput: 5<|im_end|>\n"
        "<|im_start|>assistant\n",
    ]


def test_unieval_judge_uses_unieval_questions(unieval_standin: Path, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from refine_af.scorers import ScorerLoader, ScorerSettings

    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))
    evaluator = ScorerLoader(ScorerSettings("x", str(unieval_standin), "unieval")).evaluator()
    asked: list[str] = []
    original = evaluator.score
    evaluator.score = lambda texts: (asked.extend(texts), original(texts))[1]  # type: ignore[method-assign]
    judge = Judge(evaluator)
    scores = judge.instruction_scores(["Sort the list."]) + judge.instance_scores(
        [("Add the numbers.", "2 and 3", "5")]
    )
    assert all(0.0 < s < 1.0 for s in scores)
    assert asked == [
        f"question: {INSTRUCTION_QUESTION} </s> response: Sort the list.",
        f"question: {INSTANCE_QUESTION} </s> response: 5 </s> dialogue history: Add the "
        "numbers. Input: 2 and 3",
    ]


def test_near_copy_agrees_with_rouge_score() -> None:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    demonstrations = [*INPUT_FIRST_DEMONSTRATION_TEXTS, "Positive"]
    long_ones = [d for d in demonstrations if len(d.split()) >= 2]
    words = "the daily grind coffee shop bean there degrees celsius fahrenheit new cafe 25 77"
    words = words.split()
    rng = random.Random(0)
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(400)]
    texts += ["The Daily Grind is a coffee shop", "Beverly's Daily Grind", "Bella's Bistro"]
    for threshold in (0.3, 0.5, 0.7):
        test = NearCopy(demonstrations, threshold)
        for text in texts:
            # rouge_score's recall with the demonstration as the target.
            recalls = [scorer.score(d, text)["rougeL"].recall for d in long_ones]
            assert test.recall(text) == pytest.approx(max(recalls), abs=1e-12)
            assert test(text) == (max(recalls) > threshold), (threshold, text)
    test = NearCopy(demonstrations, 0.5)
    assert test("The Daily Grind is a coffee shop that makes the best coffee in town.")
    assert test("Beverly's Daily Grind")
    assert not test("Bella's Bistro") and not test("Positive")  # a one-word label is no copy


def test_instruction_judge_drops_exactly_what_scores_below_the_threshold(tok) -> None:  # type: ignore[no-untyped-def]
    from refine_af.stages.instructions import screen

    scorer = ScriptedYesNo(tok, {"poem": 0.9, "Paris": 0.1, "sea": 0.49, "riddle": 0.5})
    drafts = [
        ("Write a poem about the mountains.", False, {}),
        ("The capital of France is Paris.", False, {}),
        ("Describe the sea in one sentence.", False, {}),
        ("Write a riddle whose answer is an egg.", False, {}),
        ("Go to the map.", False, {}),  # dropped by the heuristics: never asked
        ("Write a poem about the mountains!", False, {}),  # similar to the first: never asked
    ]
    pool = SimilarityIndex(0.7)
    pool.add("Write a poem about the mountains, please.")
    candidates = screen(drafts, pool, 0, Judge(scorer), 0.5)
    assert [c["reason"] for c in candidates] == [
        "too_similar",
        "not_a_task",
        "not_a_task",
        None,
        "unsuitable_keyword",
        "too_similar",
    ]
    assert [c.get("judge") for c in candidates] == [None, 0.1, 0.49, 0.5, None, None]
    assert len(scorer.asked) == 3
    # Without a threshold nothing is asked.
    assert all("judge" not in c for c in screen(drafts[1:4], SimilarityIndex(0.7), 0))


class OneInstance:
    """Writes "Input: <task> / Output: <answer>" with an answer that the scorer table knows."""

    def __init__(self, outputs: dict[str, str]) -> None:
        self.outputs = outputs

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        out = []
        for prompt in prompts:
            task = next(t for t in self.outputs if t in prompt)
            out.append(Completion(f"Input: about {task}\nOutput: {self.outputs[task]}", "stop", 9))
        return out


def test_output_judge_and_near_copies_in_stage_3(tok) -> None:  # type: ignore[no-untyped-def]
    from refine_af.decontamination import Decontaminator
    from refine_af.stages.instances import InstanceGenerationConfig, run_batch

    outputs = {
        "alpha": "a good answer",
        "beta": "a weak answer",
        "gamma": "The Daily Grind is a coffee shop",
        "delta": "a borderline answer",
    }
    scorer = ScriptedYesNo(tok, {"good": 0.8, "weak": 0.2, "borderline": 0.5})
    tasks = [{"id": t, "instruction": f"Do {t}.", "is_classification": False} for t in outputs]
    config = InstanceGenerationConfig(near_copy_threshold=0.5, output_judge=0.5)
    batch = run_batch(
        0, tasks, 1, OneInstance(outputs), tok, config, Decontaminator(None, None), Judge(scorer)
    )
    reasons = {t["id"]: t["candidates"][0]["reason"] for t in batch["tasks"]}
    assert reasons == {
        "alpha": None,
        "beta": "not_carried_out",
        "gamma": "near_copy_of_demonstration",  # never reaches the judge
        "delta": None,
    }
    judged = {t["id"]: t["candidates"][0].get("judge") for t in batch["tasks"]}
    assert judged == {"alpha": 0.8, "beta": 0.2, "gamma": None, "delta": 0.5}


class SampledInstances:
    """Writes, for each prompt in turn, the next of a fixed list of outputs about one input."""

    def __init__(self, outputs: list[str]) -> None:
        self.outputs = outputs

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        return [
            Completion(f"Input: case {n}\nOutput: {self.outputs[n]}", "stop", 9)
            for n in range(len(prompts))
        ]


@pytest.mark.parametrize(
    ("keep_best", "kept"), [(False, ["fair", "good"]), (True, ["good", "best"])]
)
def test_best_of_n_keeps_what_the_judge_scores_highest(tok, keep_best, kept) -> None:  # type: ignore[no-untyped-def]
    from refine_af.decontamination import Decontaminator
    from refine_af.stages.instances import InstanceGenerationConfig, run_batch

    outputs = ["a fair answer", "a good answer", "a weak answer", "the best answer"]
    scorer = ScriptedYesNo(tok, {"fair": 0.6, "good": 0.8, "weak": 0.2, "best": 0.95})
    config = InstanceGenerationConfig(
        output_judge=0.5,
        keep_best=keep_best,
        completions_per_instruction=4,
        max_instances_per_instruction=2,
        temperature=0.7,
    )
    tasks = [{"id": "t", "instruction": "Answer the case.", "is_classification": False}]
    batch = run_batch(
        0,
        tasks,
        1,
        SampledInstances(outputs),
        tok,
        config,
        Decontaminator(None, None),
        Judge(scorer),
    )
    candidates = batch["tasks"][0]["candidates"]
    # Kept in generation order either way; the weak answer fails the judge's threshold.
    assert [c["output"].split()[1] for c in candidates if c["reason"] is None] == kept
    assert [c["reason"] for c in candidates].count("not_carried_out") == 1


def test_the_judge_shares_the_untuned_models_weights(
    tiny_model_dir: Path, tokenizer_dir: Path
) -> None:
    from refine_af.generation import TransformersBackend
    from refine_af.judges import load_judge
    from refine_af.models import load_model_and_tokenizer
    from refine_af.train_config import load_config

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    backend = TransformersBackend(model, tokenizer)
    same = load_config("default", [f"run.model={tiny_model_dir}", f"rl.evaluator={tiny_model_dir}"])
    judge = load_judge(same, reuse=backend)
    assert judge.scorer.model is model  # one copy of the weights, not two
    assert judge.scorer.tokenizer.truncation_side == "left" and tokenizer.truncation_side == "right"
    scores = judge.instruction_scores(["Sort the list.", "The sky is blue."])
    assert all(0.0 < s < 1.0 for s in scores)
    # Without a backend to share (the RL-tuned writer's), the evaluator loads on its own.
    assert load_judge(same).scorer.model is not model


def test_shared_few_shot_turns_give_the_whole_prompts_scores(tiny_model_dir: Path) -> None:
    """The judge's few-shot turns run once per call; each prompt's P(Yes) stays the same."""
    from dataclasses import replace

    from refine_af.judges import Judge
    from refine_af.models import load_model_and_tokenizer
    from refine_af.scorers import CausalYesNoScorer

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    tokenizer.truncation_side = "left"
    items = [
        "Sort the list.",
        "The sky is blue.",
        "Write a poem about the sea in four lines, each starting with the letter S.",
        "Sort the list.",  # a repeated prompt
        "Translate this sentence into French: " + "the cat sat on the mat " * 120,  # too long
    ]
    shared = CausalYesNoScorer(model, tokenizer, batch_size=2, max_length=1000)
    whole = replace(shared, share_prefix=False)
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, kwargs, out: calls.append(1), with_kwargs=True)
    fast = Judge(shared).instruction_scores(items)
    fast_calls = len(calls)
    reference = Judge(whole).instruction_scores(items)
    assert fast == pytest.approx(reference, abs=1e-5)
    assert fast[0] == pytest.approx(fast[3], abs=1e-6)
    # One prefix pass, two batches of the four prompts that fit, one for the long one.
    assert fast_calls == 1 + 2 + 1
    assert len(calls) - fast_calls == 3
