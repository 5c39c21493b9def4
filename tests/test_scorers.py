"""The paper's scorers load as published: UniEval by hand, Hub ids with .bin, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
from fnmatch import fnmatch
from pathlib import Path

import huggingface_hub
import pytest
import torch

from refine_af.errors import UserError
from refine_af.scorers import (
    HUB_BIN_PATTERNS,
    HUB_PATTERNS,
    UNIEVAL_QUESTIONS,
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
