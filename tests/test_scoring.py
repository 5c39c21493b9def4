"""``refineaf score``: the paper's scorers by hand, stage 2's numbers, resuming, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from refine_af import scoring
from refine_af.cli import cli
from refine_af.rewards import PAPER_INTERCEPT, PAPER_WEIGHTS
from refine_af.scorers import UNIEVAL_QUESTIONS
from refine_af.storage import read_log
from refine_af.train_config import load_config

ROWS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue is the colour of the sky."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say nothing.", "input": "x", "output": "   "},  # empty: not scored
    {"instruction": "Give a   synonym.", "input": "happy", "output": "glad", "id": 7},
    {"instruction": "Reverse the word.", "input": "abc", "output": "cba"},
]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def paper_overrides(rm: Path, unieval: Path) -> list[str]:
    return [
        f"rl.reward_model={rm}",
        f"rl.evaluator={unieval}",
        "run.device=cpu",
        "run.dtype=float32",
        "rl.scorer_device=cpu",
        "rl.scorer_dtype=float32",
        "rl.scorer_batch_size=3",
    ]


def rm_by_hand(folder: Path, prompt: str, reply: str) -> float:
    """OpenAssistant's format, a stock GPT-NeoX trunk, last token · out_proj + bias."""
    from transformers import AutoTokenizer, GPTNeoXConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXModel

    config = json.loads((folder / "config.json").read_text())
    fields = {k: v for k, v in config.items() if k not in ("model_type", "pooling")}
    trunk = GPTNeoXModel(GPTNeoXConfig.from_dict(fields)).eval()
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    trunk.load_state_dict(
        {k.removeprefix("gpt_neox."): v for k, v in state.items() if k.startswith("gpt_neox.")},
        strict=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = f"<|prompter|>{prompt}<|endoftext|><|assistant|>{reply}<|endoftext|>"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        hidden = trunk(input_ids=ids).last_hidden_state[0, -1]
    return float(hidden @ state["out_proj.weight"][0]) + float(state["out_proj.bias"][0])


def unieval_by_hand(folder: Path, question: str, reply: str, history: str | None) -> float:
    """UniEval's input text, a stock T5 with the published weights, P(Yes)/(P(Yes)+P(No))."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    config = json.loads((folder / "config.json").read_text())
    model = T5ForConditionalGeneration(
        T5Config.from_dict({k: v for k, v in config.items() if k != "model_type"})
    ).eval()
    model.load_state_dict(torch.load(folder / "pytorch_model.bin", weights_only=True))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = f"question: {question} </s> response: {reply}"
    if history is not None:
        text += f" </s> dialogue history: {history}"
    start = torch.tensor([[model.config.decoder_start_token_id]])
    with torch.no_grad():
        logits = model(**tokenizer([text], return_tensors="pt"), decoder_input_ids=start).logits
    probs = torch.softmax(logits[0, 0], dim=-1)
    yes, no = tokenizer("Yes").input_ids[0], tokenizer("No").input_ids[0]
    return float(probs[yes] / (probs[yes] + probs[no]))


def test_paper_scorers_through_the_command_equal_hand_computation(
    tmp_path: Path, oasst_rm_standin: Path, unieval_standin: Path
) -> None:
    source = write_rows(tmp_path / "in.jsonl", ROWS)
    output = tmp_path / "out.jsonl"
    args = ["score", "-c", "paper", "--input", str(source), "--output", str(output)]
    result = CliRunner().invoke(cli, [*args, *paper_overrides(oasst_rm_standin, unieval_standin)])
    assert result.exit_code == 0, result.output
    assert "scored 4 of 5 rows" in result.output
    records = read_log(output)
    assert [r["instruction"] for r in records] == [r["instruction"] for r in ROWS]
    assert records[3]["id"] == 7  # the input row is kept as it was
    assert records[2]["rewards"] is None  # an empty output is not scored
    for row, record in zip(ROWS, records, strict=True):
        if record["rewards"] is None:
            continue
        instruction = " ".join(row["instruction"].split())
        context = f"{instruction}\nInput: {row['input']}" if row["input"] else instruction
        expected = {
            "reward_model": rm_by_hand(oasst_rm_standin, context, row["output"]),
            **{
                dimension: unieval_by_hand(
                    unieval_standin,
                    UNIEVAL_QUESTIONS[dimension],
                    row["output"],
                    context if dimension == "coherence" else None,
                )
                for dimension in ("understandability", "naturalness", "coherence")
            },
        }
        rewards = record["rewards"]
        for name, value in expected.items():
            assert rewards[name] == pytest.approx(value, abs=1e-5), name
        combined = PAPER_INTERCEPT + sum(PAPER_WEIGHTS[n] * v for n, v in expected.items())
        assert rewards["combined"] == pytest.approx(combined, abs=1e-5)


def test_an_interrupted_scoring_continues_to_the_same_bytes(
    tmp_path: Path, oasst_rm_standin: Path, unieval_standin: Path
) -> None:
    config = load_config("paper", paper_overrides(oasst_rm_standin, unieval_standin))
    source = write_rows(tmp_path / "in.jsonl", ROWS)
    straight = tmp_path / "straight.jsonl"
    scoring.run(config, source, straight, batch_rows=2)
    lines = straight.read_bytes().splitlines(keepends=True)
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"".join(lines[:2]) + lines[2][:15])  # killed while writing batch 2
    broken.with_name("broken.jsonl.key").write_text(
        straight.with_name("straight.jsonl.key").read_text()
    )
    summary = scoring.run(config, source, broken, batch_rows=2)
    assert broken.read_bytes() == straight.read_bytes()
    assert summary["rows"] == 5 and summary["scored"] == 4
    # Other settings never append to this output: it is set aside (with its key), never lost.
    changed = load_config(
        "paper", [*paper_overrides(oasst_rm_standin, unieval_standin), "rl.reward_intercept=0"]
    )
    scoring.run(changed, source, broken)
    asides = sorted(tmp_path.glob("broken.jsonl.replaced-*"))
    assert [p.name.endswith(".key") for p in asides] == [False, True]
    assert asides[0].read_bytes() == straight.read_bytes()
    assert broken.read_bytes() != straight.read_bytes()  # the intercept moved every score


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"instruction": "x"}], "row 1 has no 'output' string"),
        ([{"instruction": "x", "output": "y"}, {"output": "z"}], "row 2 has no 'instruction'"),
        ([{"instruction": "x", "output": "y", "input": 3}], "'input' must be a string"),
        ([], "holds no rows"),
    ],
)
def test_bad_rows_are_one_line(tmp_path: Path, rows: list[dict], message: str) -> None:
    source = write_rows(tmp_path / "in.jsonl", rows)
    result = CliRunner().invoke(
        cli, ["score", "--input", str(source), "--output", str(tmp_path / "out.jsonl")]
    )
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_scores_equal_what_stage_2_logged(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same instances scored by `refineaf score` get the values stage 2 logged for them."""
    from refine_af import rewards
    from refine_af.instance_format import ParsedInstance
    from refine_af.run_dir import RunDirectory
    from refine_af.stages import rl

    # A random model never writes "Output:": take any non-empty completion as the output.
    monkeypatch.setattr(
        rewards, "parse_instance", lambda text: ParsedInstance("", text) if text.strip() else None
    )
    run = tmp_path / "run"
    (run / "instructions").mkdir(parents=True)
    write_rows(
        run / "instructions" / "instructions.jsonl",
        [{"id": f"gen_{i}", "instruction": r["instruction"]} for i, r in enumerate(ROWS[:4])],
    )
    overrides = [
        f"run.output_dir={run}",
        f"run.model={tiny_model_dir}",
        "run.device=cpu",
        f"rl.reward_model=causal:{tiny_model_dir}",
        f"rl.evaluator={tiny_model_dir}",
        "rl.max_steps=1",
        "rl.per_device_train_batch_size=4",
        "rl.trainer_args.gradient_accumulation_steps=1",
        "rl.num_generations=2",
        "rl.max_completion_length=8",
        "rl.lora_r=4",
        "rl.lora_alpha=8",
        # The random model's completions all hit the 8-token cap: scored as unparsed (the
        # default's cut_off_fails_format), none would reach a scorer.
        "rl.cut_off_fails_format=false",
        # Every scorer signal, the judge's shared few-shot turns included.
        "rl.reward_weights={reward_model: 0.0078, understandability: -0.4421, naturalness: 0.3212,"
        " coherence: 0.1520, judge: 1.0, keepable: 0.05}",
    ]
    config = load_config("default", overrides)
    rl.run(config, RunDirectory(run))
    logged = [s for s in read_log(run / "rl" / "samples.jsonl") if s["output"]]
    assert logged
    source = write_rows(
        tmp_path / "logged.jsonl",
        [
            {"instruction": s["instruction"], "input": s["input"], "output": s["output"]}
            for s in logged
        ],
    )
    # A batch size unlike stage 2's: padding differs, the numbers must not.
    scored = read_log(Path(scoring.run(config, source, tmp_path / "scored.jsonl", 3)["output"]))
    for sample, record in zip(logged, scored, strict=True):
        for name in ("reward_model", "understandability", "naturalness", "coherence", "judge"):
            assert record["rewards"][name] == pytest.approx(sample[name], abs=1e-4), name
        # keepable differs only where stage 2's completion was cut off by its token limit (0
        # there); a ready instance is never cut off.
        keep_gap = record["rewards"]["keepable"] - sample["keepable"]
        assert keep_gap in (0.0, 1.0)
        expected = sample["combined"] + 0.05 * keep_gap
        assert record["rewards"]["combined"] == pytest.approx(expected, abs=1e-4)
