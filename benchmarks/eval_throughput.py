"""Instances per second: plain ``lm_eval --model hf --batch_size 16`` vs ``refineaf eval``.

Both run, one after the other in this one invocation, on the same SuperNI instances (the tasks
of an eval config, first ``--limit`` instances each) with the same model, as subprocesses so
each pays its own start-up (imports, task indexing, model load) like a user would. Prints the
wall time, instances/second, their ratio, overall ROUGE-L of both, and how many predictions are
identical (they differ only where refineaf's documented 1,024-token input truncation applies,
or rarely by float effects of batching).

    python benchmarks/eval_throughput.py                      # default.yaml: 30 tasks x 20
    python benchmarks/eval_throughput.py --limit 2            # a quicker subset

Timings on a machine shared with other jobs vary; the two runs are back to back to keep the
comparison fair, and the ratio is the number to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(command: list[str], env: dict[str, str]) -> float:
    started = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.time() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}")
    return seconds


def _plain_predictions(folder: Path) -> dict[tuple[str, str], tuple[str, float]]:
    """Per-instance prediction and ROUGE-L from lm_eval's --log_samples files."""
    found = {}
    for path in folder.rglob("samples_*.jsonl"):
        for line in path.open():
            sample = json.loads(line)
            doc = sample["doc"]
            found[(doc["task_name"], doc["id"])] = (sample["filtered_resps"][0], sample["rougeL"])
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="default", help="eval config name or path")
    parser.add_argument("--limit", type=int, default=None, help="instances per task")
    parser.add_argument("--tasks", type=int, default=None, help="use only the first N tasks")
    parser.add_argument("--batch-size", type=int, default=16, help="plain lm_eval batch size")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from refine_af.evaluation.runner import load_eval_config
    from refine_af.evaluation.tasks import lm_eval_task_name, tasks_dir
    from refine_af.models import resolve_model_path

    config = load_eval_config(args.config)
    tasks = config.task_names()[: args.tasks] if args.tasks else config.task_names()
    limit = args.limit or config.limit
    settings = config.data_settings()
    model = resolve_model_path(config.model)
    env = dict(os.environ)
    metadata = {
        k: v
        for k, v in (("superni_data", settings.data), ("superni_references", settings.references))
        if v
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        plain = [
            "lm_eval", "--model", "hf",
            # lm-eval 0.4.13 passes its own --device; a device in model_args clashes with it.
            "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu",
            "--include_path", str(tasks_dir()),
            "--tasks", ",".join(lm_eval_task_name(t, config.prompt) for t in tasks),
            "--limit", str(limit), "--batch_size", str(args.batch_size),
            "--metadata", json.dumps(metadata),
            "--output_path", str(out / "plain"), "--log_samples",
        ]  # fmt: skip
        ours = [
            sys.executable, "-m", "refine_af.evaluation", "eval", "-c", args.config, "--restart",
            f"limit={limit}", f"output_dir={out / 'ours'}", f"tasks={json.dumps(tasks)}",
            "rows=[{name: vanilla}]", "bootstrap_samples=0",
        ]  # fmt: skip
        n = len(tasks) * limit
        print(f"{len(tasks)} tasks x {limit} instances = {n}; model {config.model}", flush=True)
        t_ours = _run(ours, env)
        print(f"refineaf eval:        {t_ours:8.1f} s  {n / t_ours:6.3f} instances/s", flush=True)
        t_plain = _run(plain, env)
        print(
            f"lm_eval hf (bs {args.batch_size}):   {t_plain:8.1f} s  {n / t_plain:6.3f} "
            "instances/s",
            flush=True,
        )
        print(f"speed-up: {t_plain / t_ours:.2f}x")
        plain_preds = _plain_predictions(out / "plain")
        ours_preds = {
            (r["task"], r["id"]): (r["prediction"], r["rougeL"])
            for r in map(json.loads, (out / "ours" / "vanilla" / "samples.jsonl").open())
        }
        same = sum(1 for k, v in ours_preds.items() if plain_preds.get(k, (None,))[0] == v[0])
        mean = lambda d: sum(v[1] for v in d.values()) / max(len(d), 1)  # noqa: E731
        print(
            f"ROUGE-L: refineaf {mean(ours_preds):.2f}  lm_eval hf {mean(plain_preds):.2f}; "
            f"identical predictions {same}/{len(ours_preds)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
