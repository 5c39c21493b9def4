"""`refineaf eval` end to end on a tiny model: rows, runs, resume, inputs checked first, configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from refine_af.config import ConfigError
from refine_af.errors import UserError
from refine_af.evaluation import runner
from refine_af.evaluation.config import eval_config_names, find_eval_config
from refine_af.evaluation.regression import compare, load_regression_config, task_summary
from refine_af.evaluation.runner import EvalConfig, RowConfig, load_eval_config, run_eval

REPO = Path(__file__).resolve().parents[2]
TASKS = ["task1345_glue_qqp_question_paraprashing", "task1152_bard_analogical_reasoning_causation"]
EXTRA_TASK = "task648_answer_generation"


def _config(model: Path, shared: Path, out: Path, **changes) -> EvalConfig:
    settings = {
        "model": str(model),
        "rows": [RowConfig("vanilla")],
        "tasks": TASKS,
        "limit": 2,
        "max_gen_toks": 16,
        "data": str(shared / "superni_test.jsonl.gz"),
        "device": "cpu",
        "output_dir": str(out),
        "bootstrap_samples": 50,
        **changes,
    }
    return EvalConfig(**settings)


def _without_timing_bytes(blob: bytes) -> list[dict]:
    """Chunk log entries minus their wall time (the only field a repeat run changes)."""
    entries = [json.loads(line) for line in blob.splitlines() if line]
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in entries]


def _without_timing(path: Path) -> list[dict]:
    return _without_timing_bytes(path.read_bytes())


# ---------------------------------------------------------------------------------------------
# Configs.


@pytest.mark.parametrize("path", sorted((REPO / "eval_configs").glob("*.yaml")), ids=str)
def test_shipped_configs_load(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    command = "eval-regression" if path.stem == "regression" else "eval"
    assert first == f"# refineaf {command} -c {path.stem}"
    if path.name == "regression.yaml":
        assert load_regression_config(path.stem).eval.limit
    else:
        assert load_eval_config(path.stem).rows


def test_eval_configs_by_name_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert set(eval_config_names()) >= {"default", "regression", "paper_mistral_7b"}
    assert find_eval_config("default").read_text().startswith("# refineaf eval -c default")
    # The repository-relative spelling of docs and CI still resolves outside the checkout.
    assert find_eval_config("eval_configs/default.yaml") == find_eval_config("default")
    assert load_regression_config("eval_configs/regression.yaml").eval.rows
    # Training config names are not offered; a training config file is named as such.
    with pytest.raises(ConfigError, match=r"eval config 'paper' not found: .*one of: default, "):
        load_eval_config("paper")
    training = tmp_path / "train.yaml"
    training.write_text("run:\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"is a training config .*'run' section"):
        load_eval_config(str(training))


def test_packaged_default_depends_on_no_repository_path() -> None:
    raw = yaml.safe_load(find_eval_config("default").read_text())
    assert raw["data"] is None and "references" not in raw
    assert [row["name"] for row in raw["rows"]] == [
        "vanilla",
        "vanilla_chat",
        "seeds_only",
        "baseline",
        "refine_af",
    ]
    assert raw["rows"][2]["adapter"] == "runs/default/sft/seeds_only/adapter"
    # The chat model's fair untouched row, and the adapters trained on chat turns
    # (sft.text_format: chat), read the prompt through its chat template; vanilla does not.
    config = load_eval_config("default")
    assert [r.name for r in config.rows if not r.apply_chat_template] == ["vanilla"]
    from refine_af.train_config import load_config

    assert load_config("default", []).sft.text_format == "chat"  # what those rows assume


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'limt'"):
        load_eval_config("default", ["limt=3"])
    with pytest.raises(ConfigError, match="unique"):
        EvalConfig(rows=[RowConfig("a"), RowConfig("a")])
    with pytest.raises(ConfigError, match="compare entry"):
        EvalConfig(rows=[RowConfig("a")], compare=[["a", "b"]])
    with pytest.raises(ConfigError, match="backend vllm runs on the GPU only"):
        EvalConfig(backend="vllm", device="cpu")
    with pytest.raises(ConfigError, match="accelerate launch --multi_gpu --num_processes N"):
        EvalConfig(backend="refineaf-hf", data_parallel_size=2)
    with pytest.raises(ConfigError, match="same adapter is listed twice"):
        RowConfig("r", ["a", "a"])
    with pytest.raises(ConfigError, match="empty list"):
        RowConfig("r", [])
    with pytest.raises(ConfigError, match="not SuperNI test tasks: task9_x"):
        EvalConfig(tasks=["task9_x"])
    # A list of adapters through the YAML/override path, one run each.
    config = load_eval_config("default", ["rows=[{name: r, adapter: [a, b, c]}]"])
    assert config.rows[0].adapters() == ["a", "b", "c"]
    assert config.rows[0].run_labels() == ["run1", "run2", "run3"]
    assert RowConfig("v").run_labels() == [""]


def test_default_comparisons_pair_every_row_with_each_row_above_it() -> None:
    rows = [RowConfig("vanilla"), RowConfig("baseline"), RowConfig("refine_af")]
    assert EvalConfig(rows=rows).pairs() == [
        ("baseline", "vanilla"),
        ("refine_af", "vanilla"),
        ("refine_af", "baseline"),  # the paper's headline comparison
    ]
    assert EvalConfig(rows=rows, compare=[["refine_af", "baseline"]]).pairs() == [
        ("refine_af", "baseline")
    ]


# ---------------------------------------------------------------------------------------------
# Inputs are checked before anything is written.


@pytest.mark.parametrize(
    ("adapter", "command"),
    [
        ("runs/default/sft/seeds_only/adapter", "`refineaf train -c default`"),
        ("runs/default/sft/baseline/adapter", "`refineaf train -c default`"),
        (
            "runs/paper-x/sft/refine_af/adapter",
            "`refineaf train -c paper run.output_dir=runs/paper-x run.model=org/base`",
        ),
        ("elsewhere/adapter", "train it first"),
    ],
)
def test_missing_adapter_names_the_command_that_makes_it(
    adapter: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = "org/base" if "paper" in adapter else "default"
    config = EvalConfig(
        model=model, rows=[RowConfig("vanilla"), RowConfig("x", adapter)], output_dir="out"
    )
    with pytest.raises(UserError, match=r"row 'x': adapter .* does not exist: ") as caught:
        run_eval(config)
    assert command in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()  # eval_config.json only once the inputs are checked


def test_bad_data_stops_before_anything_is_written(shared_data: Path, tmp_path: Path) -> None:
    blob = (shared_data / "superni_test.jsonl.gz").read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(blob[: len(blob) // 3])
    config = EvalConfig(tasks=TASKS, data=str(cut), output_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match="damaged or cut short"):
        run_eval(config)
    assert not (tmp_path / "out").exists()


def test_truncated_gzip_through_the_cli_is_one_line(shared_data: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from refine_af.cli import cli

    blob = (shared_data / "superni_test.jsonl.gz").read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(blob[: len(blob) // 3])
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "-c",
            "default",
            f"data={cut}",
            "rows=[{name: vanilla}]",
            f"output_dir={tmp_path}/o",
        ],
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cut short" in lines[0]
    assert "Aborted" not in result.output


def test_vllm_fails_at_start_without_vllm_or_gpu(tmp_path: Path) -> None:
    config = EvalConfig(backend="vllm", tasks=TASKS, output_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match=r"backend vllm needs (vLLM|a CUDA GPU)"):
        run_eval(config)
    assert not (tmp_path / "out").exists()


def test_several_processes_without_gpus_are_refused(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `accelerate launch --num_processes 2` sets; without a GPU per process lm-eval would
    # not split the work and both processes would write the same files.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    config = EvalConfig(
        tasks=TASKS, data=str(shared_data / "superni_test.jsonl.gz"), output_dir=str(tmp_path)
    )
    with pytest.raises(UserError, match="2 processes were started, but lm-eval splits"):
        run_eval(config)


# ---------------------------------------------------------------------------------------------
# lm-eval arguments of the vLLM path (vLLM cannot run here: the arguments are checked instead).


def test_vllm_model_args(tiny_adapter: Path) -> None:
    config = EvalConfig(
        backend="vllm",
        dtype="bfloat16",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.8,
        seed=7,
    )
    assert runner.model_args(config, None, "/models/base") == {
        "pretrained": "/models/base",
        "dtype": "bfloat16",
        "seed": 7,
        "tensor_parallel_size": 2,
        "data_parallel_size": 1,
        "gpu_memory_utilization": 0.8,
        "max_gen_toks": 128,
        "trust_remote_code": False,
        "max_model_len": 1024 + 128,
        "truncation_side": "middle",
    }
    with_adapter = runner.model_args(config, str(tiny_adapter), "/models/base")
    assert with_adapter["lora_local_path"] == str(tiny_adapter.resolve())
    assert with_adapter["max_lora_rank"] == 8  # r=4 rounded up to a rank vLLM accepts
    untruncated = EvalConfig(backend="vllm", dtype="float16", max_input_tokens=0, max_gen_toks=32)
    args = runner.model_args(untruncated, None, "m")
    assert "max_model_len" not in args and "truncation_side" not in args
    assert args["max_gen_toks"] == 32


def test_vllm_lora_rank_refuses_what_vllm_cannot_load(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "rank_pattern": {"q": 40}}))
    assert runner.vllm_lora_rank(str(tmp_path)) == 64
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "modules_to_save": ["lm"]}))
    with pytest.raises(UserError, match="vLLM's LoRA cannot load: use backend: refineaf-hf"):
        runner.vllm_lora_rank(str(tmp_path))


def test_what_the_vllm_path_hands_to_lm_eval(
    tiny_adapter: Path, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lm_eval
    import lm_eval.api.registry as registry

    handed: dict = {}

    class Recorder:
        """Stands in for lm-eval's vLLM class (vLLM needs a GPU); records how it is built."""

        rank, world_size = 0, 1

        @classmethod
        def create_from_arg_obj(cls, args: dict, additional: dict) -> Recorder:
            handed["model"] = (args, additional)
            return cls()

    class Stop(Exception):
        pass

    def capture(**kwargs):
        handed["evaluate"] = kwargs
        raise Stop

    real_get_model = registry.get_model
    monkeypatch.setattr(
        registry, "get_model", lambda name: Recorder if name == "vllm" else real_get_model(name)
    )
    monkeypatch.setattr(lm_eval, "simple_evaluate", capture)
    config = EvalConfig(
        backend="vllm",
        dtype="bfloat16",
        tasks=TASKS,
        limit=3,
        max_gen_toks=16,
        data=str(shared_data / "superni_test.jsonl.gz"),
        tasks_per_chunk=2,
    )
    with pytest.raises(Stop):
        runner.evaluate_run(config, str(tiny_adapter), "/models/base", tmp_path / "run")
    args, additional = handed["model"]
    assert args == runner.model_args(config, str(tiny_adapter), "/models/base")
    assert additional == {"batch_size": "auto", "max_batch_size": None, "device": None}
    call = handed["evaluate"]
    assert isinstance(call["model"], Recorder)
    assert call["tasks"] == [
        "refineaf_superni_task1152_bard_analogical_reasoning_causation",  # official order
        "refineaf_superni_task1345_glue_qqp_question_paraprashing",
    ]
    assert (call["limit"], call["gen_kwargs"], call["bootstrap_iters"]) == (
        3,
        {"max_gen_toks": 16},
        0,
    )
    assert call["log_samples"] is True and call["apply_chat_template"] is False


# ---------------------------------------------------------------------------------------------
# Real runs on the tiny model.


def test_eval_rows_runs_resume_and_report(
    tiny_model: Path, tiny_adapter: Path, shared_data: Path, tmp_path: Path
) -> None:
    second = tmp_path / "adapter_seed2"
    shutil.copytree(tiny_adapter, second)
    out = tmp_path / "out"
    config = _config(
        tiny_model,
        shared_data,
        out,
        rows=[RowConfig("vanilla"), RowConfig("tuned", [str(tiny_adapter), str(second)])],
        limit=1,  # 2 tasks x 1 instance per run: this test is about files, not scores
    )
    import lm_eval.evaluator

    original = lm_eval.evaluator.get_git_commit_hash
    report = run_eval(config)
    assert lm_eval.evaluator.get_git_commit_hash is original  # replaced only during our calls
    text = report.read_text()
    assert (
        "tuned beats vanilla on" in text and "| vanilla | 1 |" in text and "| tuned | 2 |" in text
    )
    assert "| tasks and runs |" in text
    vanilla = out / "vanilla"
    runs = [out / "tuned" / "run1", out / "tuned" / "run2"]
    samples = {p: [json.loads(x) for x in (p / "samples.jsonl").open()] for p in [vanilla, *runs]}
    assert [len(v) for v in samples.values()] == [2, 2, 2]
    assert samples[vanilla][0]["prompt"].endswith("\nOutput:")
    assert [s["task"] for s in samples[vanilla]] == [TASKS[1], TASKS[0]]  # official order
    # The adapter is really applied: its outputs differ from the base model's; two copies of
    # one adapter give the same outputs.
    predictions = {p: [s["prediction"] for s in v] for p, v in samples.items()}
    assert predictions[vanilla] != predictions[runs[0]] == predictions[runs[1]]
    assert json.loads((out / "eval_config.json").read_text())["rows"][1]["adapter"] == [
        str(tiny_adapter),
        str(second),
    ]
    # One log line per chunk (task), each with the run's key.
    log = [json.loads(x) for x in (vanilla / "chunks.jsonl").open()]
    assert [entry["tasks"] for entry in log] == [[TASKS[1]], [TASKS[0]]]
    assert len({entry["key"] for entry in log}) == 1

    # Again: nothing is evaluated (logs unchanged), outputs are byte-identical.
    before = {p: p.read_bytes() for p in sorted(out.rglob("*.jsonl"))}
    report_before = (out / "report.md").read_bytes()
    run_eval(config)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.jsonl"))} == before
    assert (out / "report.md").read_bytes() == report_before

    # A kill in the middle of a chunk's append leaves a torn line after the finished chunks;
    # the next run cuts it and evaluates only what is missing, ending byte-identical.
    full = (vanilla / "chunks.jsonl").read_bytes()
    first_line = full.split(b"\n")[0] + b"\n"
    (vanilla / "chunks.jsonl").write_bytes(first_line + full[len(first_line) : -500])
    (vanilla / "samples.jsonl").unlink()
    run_eval(config)
    assert _without_timing(vanilla / "chunks.jsonl") == _without_timing_bytes(full)
    assert (vanilla / "samples.jsonl").read_bytes() == before[vanilla / "samples.jsonl"]

    # A task added to the config: only that task is evaluated, appended to the same log.
    bigger = _config(
        tiny_model,
        shared_data,
        out,
        tasks=[*TASKS, EXTRA_TASK],
        rows=[RowConfig("vanilla")],
        limit=1,
    )
    run_eval(bigger)
    log = [json.loads(x) for x in (vanilla / "chunks.jsonl").open()]
    assert [entry["tasks"] for entry in log] == [[TASKS[1]], [TASKS[0]], [EXTRA_TASK]]

    # Other settings: the old folder is set aside (never deleted), the run starts afresh.
    other = _config(
        tiny_model, shared_data, out, rows=[RowConfig("vanilla")], tasks=[EXTRA_TASK], limit=2
    )
    run_eval(other)
    aside = sorted(out.glob("vanilla.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "chunks.jsonl").read_bytes().startswith(first_line)
    assert len((vanilla / "samples.jsonl").read_text().splitlines()) == 2


def test_eval_outside_the_repository_prints_no_git_noise(
    tiny_model: Path, shared_data: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFINEAF_SUPERNI")}
    env["REFINEAF_SUPERNI_DATA"] = str(shared_data / "superni_test.jsonl.gz")
    command = [sys.executable, "-m", "refine_af.evaluation", "eval", "-c", "default"]
    command += [f"model={tiny_model}", "rows=[{name: vanilla}]", f"tasks=[{TASKS[0]}]"]
    command += ["limit=1", "max_gen_toks=4", "device=cpu", "output_dir=out", "bootstrap_samples=10"]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not a git repository" not in done.stderr
    assert done.stdout.strip() == f"report: out{os.sep}report.md"
    assert (tmp_path / "out" / "vanilla" / "samples.jsonl").is_file()


def test_regression_compare_names_moved_tasks() -> None:
    records = [
        {"task": "t1", "prompt": "p1", "rougeL": 50.0, "exact_match": 0.0},
        {"task": "t1", "prompt": "p2", "rougeL": 30.0, "exact_match": 0.0},
        {"task": "t2", "prompt": "q", "rougeL": 10.0, "exact_match": 100.0},
    ]
    reference = task_summary(records)
    assert compare(task_summary(records), reference, 1.0) == []
    moved = [dict(r) for r in records]
    moved[0]["rougeL"] = 54.0  # t1 mean +2
    moved[2]["prompt"] = "q changed"
    problems = compare(task_summary(moved), reference, 1.0)
    assert problems == ["t1: rougeL 40.00 -> 42.00 (+2.00)", "t2: prompts changed (1 -> 1)"]
    assert compare(task_summary(records[:2]), reference, 1.0) == [
        "t2: in the reference but not evaluated"
    ]
    assert compare(task_summary(moved), reference, 5.0) == ["t2: prompts changed (1 -> 1)"]


def test_a_row_can_use_the_chat_template_on_its_own(
    tiny_model: Path, shared_data: Path, tmp_path: Path
) -> None:
    """rows[].apply_chat_template: vanilla and vanilla_chat in one eval, each its own format."""
    out = tmp_path / "out"
    config = _config(
        tiny_model,
        shared_data,
        out,
        rows=[RowConfig("vanilla"), RowConfig("vanilla_chat", apply_chat_template=True)],
        limit=1,
        max_gen_toks=4,
    )
    run_eval(config)
    plain = [json.loads(x) for x in (out / "vanilla" / "samples.jsonl").open()]
    chat = [json.loads(x) for x in (out / "vanilla_chat" / "samples.jsonl").open()]
    assert [s["id"] for s in plain] == [s["id"] for s in chat]
    for p, c in zip(plain, chat, strict=True):
        assert not p["prompt"].startswith("<|im_start|>")
        assert c["prompt"].startswith("<|im_start|>") and "<|im_start|>assistant" in c["prompt"]
        assert p["prompt"].split("Definition:")[1][:40] in c["prompt"]
    keys = {
        json.loads((out / row / "run.json").read_text())["key"]
        for row in ("vanilla", "vanilla_chat")
    }
    assert len(keys) == 2  # each row resumes only its own format
