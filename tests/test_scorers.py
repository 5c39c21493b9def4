"""The paper's scorers load as published: UniEval by hand, Hub ids with .bin, one-line errors."""

from __future__ import annotations

import json
import math
import os
import shutil
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch

from refine_af.errors import UserError
from refine_af.rewards import (
    PAPER_WEIGHTS,
    AutomatedFeedback,
    TRLRewards,
    WeightedRewards,
    needed_signals,
)
from refine_af.scorers import (
    HUB_BIN_PATTERNS,
    HUB_PATTERNS,
    UNIEVAL_QUESTIONS,
    CausalYesNoScorer,
    ScorerLoader,
    ScorerSettings,
    SequenceClassificationScorer,
    T5YesNoScorer,
)

OA_RM = "OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5"
UNIEVAL = "MingZhong/unieval-dialog"
SAMPLES = [
    ("Name a colour.", "Blue is the colour of the sky."),
    ("Give three tips for staying healthy.", "Eat well, sleep and move."),
]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))


class LoadSpy:
    """Records torch.load calls; each still runs for real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[object] = []
        self._load = torch.load
        monkeypatch.setattr(torch, "load", self)

    def __call__(self, *args, **kwargs):
        self.calls.append(args[0] if args else kwargs.get("f"))
        return self._load(*args, **kwargs)


class WritesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


class LocalHub:
    """``snapshot_download`` over local folders: copies the files ``allow_patterns`` select into
    a Hub-cache-shaped snapshot folder, as the real function does after downloading them."""

    def __init__(self, root: Path, repos: dict[str, Path]) -> None:
        self.root, self.repos = root, repos
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, repo_id: str, *, allow_patterns=None, **_: object) -> str:
        self.calls.append((repo_id, list(allow_patterns or [])))
        if repo_id not in self.repos:
            raise OSError(f"{repo_id} is not reachable")
        snapshot = self.root / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "a1b2c3"
        snapshot.mkdir(parents=True, exist_ok=True)
        for file in self.repos[repo_id].iterdir():
            wanted = allow_patterns is None or any(fnmatch(file.name, p) for p in allow_patterns)
            # Like the Hub cache: a file already in the snapshot is not fetched again.
            if wanted and not (snapshot / file.name).exists():
                shutil.copyfile(file, snapshot / file.name)
        return str(snapshot)


def settings(reward_model: str, evaluator: str, kind: str = "unieval", **kw) -> ScorerSettings:
    return ScorerSettings(reward_model, evaluator, kind, device="cpu", **kw)


def one_line(error: pytest.ExceptionInfo[UserError]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# UniEval.


def unieval_by_hand(folder: Path, tokenizer, texts: list[str]) -> list[float]:
    """UniEval's own procedure (metric/scorer.py) on a stock T5 holding the published weights:
    one text at a time, a one-token "No" label, softmax over the vocabulary at the first decoder
    step, P(Yes) / (P(Yes) + P(No))."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = json.loads((folder / "config.json").read_text())
    reference = T5ForConditionalGeneration(
        T5Config.from_dict({k: v for k, v in config.items() if k != "model_type"})
    ).eval()
    reference.load_state_dict(torch.load(folder / "pytorch_model.bin", weights_only=True))
    pos_id, neg_id = tokenizer("Yes")["input_ids"][0], tokenizer("No")["input_ids"][0]
    scores = []
    for text in texts:
        source = tokenizer([text], return_tensors="pt")
        label = tokenizer(["No"], return_tensors="pt")["input_ids"][:, :1]
        with torch.no_grad():
            logits = reference(**source, labels=label).logits.view(-1, config["vocab_size"])
        probs = torch.softmax(logits, dim=1)[0]
        pos, neg = float(probs[pos_id]), float(probs[neg_id])
        scores.append(pos / (pos + neg))
    return scores


def test_unieval_standin_scores_equal_hand_computation(unieval_standin, monkeypatch):
    spy = LoadSpy(monkeypatch)
    evaluator = ScorerLoader(settings("unused", str(unieval_standin), batch_size=2)).evaluator()
    assert isinstance(evaluator, T5YesNoScorer)
    assert len(spy.calls) == 1  # the .bin was read once, to convert it
    tokenizer = evaluator.tokenizer
    assert tokenizer.convert_ids_to_tokens([evaluator.pos_id, evaluator.neg_id]) == ["▁Yes", "▁No"]
    texts = [
        T5YesNoScorer.prompt(dimension, response, instruction)
        for dimension in UNIEVAL_QUESTIONS
        for instruction, response in SAMPLES
    ]
    # UniEval's "</s>" separators are T5's end-of-sequence token, not the letters.
    coherence = tokenizer(texts[2]).input_ids
    assert coherence.count(tokenizer.eos_token_id) == 3
    expected = unieval_by_hand(unieval_standin, tokenizer, texts)
    assert evaluator.score(texts) == pytest.approx(expected, abs=1e-6)
    assert len({round(x, 6) for x in expected}) > 1  # the inputs matter: a constant would show

    # Loading again reads the cached safetensors: no pickle is opened.
    spy.calls.clear()
    again = ScorerLoader(settings("unused", str(unieval_standin))).evaluator()
    assert spy.calls == []
    assert again.score(texts[:1]) == pytest.approx(expected[:1], abs=1e-6)


def test_unieval_evaluator_must_be_t5_checked_before_weights(oasst_rm_standin, monkeypatch):
    spy = LoadSpy(monkeypatch)
    loader = ScorerLoader(settings("unused", str(oasst_rm_standin)))
    with pytest.raises(UserError) as error:
        loader.evaluator()
    message = one_line(error)
    assert "rl.evaluator" in message and "needs a T5 evaluator" in message
    assert "model_type 'gpt_neox_reward_model'" in message
    assert spy.calls == []


# ---------------------------------------------------------------------------------------------
# Hub ids: safetensors first, .bin only when a repository has nothing else.


def test_hub_repositories_with_only_bin_are_fetched_and_converted(
    oasst_rm_standin, unieval_standin, tmp_path, monkeypatch
):
    marker = tmp_path / "training-args-ran"
    rm_repo = shutil.copytree(oasst_rm_standin, tmp_path / "repo-rm")
    torch.save({"args": WritesMarker(marker)}, rm_repo / "training_args.bin")
    hub = LocalHub(tmp_path / "hub", {OA_RM: rm_repo, UNIEVAL: unieval_standin})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)

    loader = ScorerLoader(settings(OA_RM, UNIEVAL, batch_size=4))
    reward_model, evaluator = loader.reward_model(), loader.evaluator()
    assert isinstance(reward_model, SequenceClassificationScorer)
    assert isinstance(evaluator, T5YesNoScorer)
    assert hub.calls == [
        (OA_RM, HUB_PATTERNS),
        (OA_RM, [*HUB_PATTERNS, *HUB_BIN_PATTERNS]),
        (UNIEVAL, HUB_PATTERNS),
        (UNIEVAL, [*HUB_PATTERNS, *HUB_BIN_PATTERNS]),
    ]
    snapshot = Path(hub(OA_RM, allow_patterns=[*HUB_PATTERNS, *HUB_BIN_PATTERNS]))
    assert not (snapshot / "training_args.bin").exists() and not marker.exists()

    # Same numbers as the local directory the repository was made from.
    local = ScorerLoader(settings(str(oasst_rm_standin), "unused")).reward_model()
    texts = [reward_model.prompt(prompt, reply) for prompt, reply in SAMPLES]
    assert reward_model.score(texts) == pytest.approx(local.score(texts), abs=1e-6)

    spy = LoadSpy(monkeypatch)
    ScorerLoader(settings(OA_RM, UNIEVAL)).reward_model()
    assert spy.calls == []  # the conversion is cached


def test_hub_repository_with_safetensors_never_fetches_bin(
    plain_llama_policy, tmp_path, monkeypatch
):
    repo = shutil.copytree(plain_llama_policy, tmp_path / "repo")
    torch.save({"x": torch.zeros(1)}, repo / "pytorch_model.bin")
    hub = LocalHub(tmp_path / "hub", {"org/causal": repo})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    scorer = ScorerLoader(settings("causal:org/causal", "unused")).reward_model()
    assert scorer.model.config.model_type == "llama"  # loaded from the snapshot's safetensors
    assert hub.calls == [("org/causal", HUB_PATTERNS)]
    snapshot = tmp_path / "hub" / "models--org--causal" / "snapshots" / "a1b2c3"
    assert not (snapshot / "pytorch_model.bin").exists()


def test_unreachable_hub_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", LocalHub(tmp_path, {}))
    with pytest.raises(UserError) as error:
        ScorerLoader(settings(OA_RM, UNIEVAL)).reward_model()
    message = one_line(error)
    assert (
        "rl.reward_model" in message and "neither a local path nor a reachable Hub model" in message
    )


def test_malicious_bin_in_a_scorer_is_one_line(unieval_standin, tmp_path):
    marker = tmp_path / "payload-ran"
    folder = shutil.copytree(unieval_standin, tmp_path / "evil")
    torch.save({"shared.weight": WritesMarker(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(UserError) as error:
        ScorerLoader(settings("unused", str(folder))).evaluator()
    message = one_line(error)
    assert "rl.evaluator" in message and "refused" in message
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# The base-model policy stand-in.


def test_plain_llama_policy_is_a_base_model(plain_llama_policy):
    from refine_af.models import load_model_and_tokenizer
    from refine_af.prompts import render_chat

    assert not (plain_llama_policy / "chat_template.jinja").exists()
    model, tokenizer = load_model_and_tokenizer(str(plain_llama_policy), device="cpu")
    assert tokenizer.chat_template is None
    assert render_chat(tokenizer, "List three colours.", "1.", True) == "List three colours.\n1."
    ids = tokenizer("Give three tips.").input_ids
    assert ids[0] == tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2
    assert tokenizer.decode(tokenizer("Ünïcode ✓").input_ids, skip_special_tokens=True) == (
        "Ünïcode ✓"
    )  # byte fallback, like LLaMA-2's tokenizer
    assert model.config.pad_token_id is None and not model.config.tie_word_embeddings
    output = model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False)
    assert output.shape == (1, len(ids) + 3)


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
