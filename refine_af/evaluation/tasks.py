"""Where the lm-eval task folder is, and which refineaf_superni tasks exist or have data.

``python -m refine_af.evaluation.tasks`` prints the folder (for ``lm_eval --include_path``);
``--available`` prints the comma-separated lm-eval names of the tasks that the configured local
data has (``REFINEAF_SUPERNI_DATA``), for ``lm_eval --tasks``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from refine_af.errors import UserError
from refine_af.evaluation.data import TASK_NAMES, DataSettings, available_tasks

GROUP = "refineaf_superni"
GROUP_POS2 = "refineaf_superni_pos2"
PROMPTS = {"definition": GROUP, "pos2": GROUP_POS2}
_MARKER = Path("refineaf_superni") / "_refineaf_superni.yaml"


def tasks_dir() -> Path:
    """The ``lm_eval_tasks`` folder: installed package data, else the source checkout's."""
    candidates = []
    try:
        spec = importlib.util.find_spec("refine_af.lm_eval_tasks")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) for p in spec.submodule_search_locations]
    # A source checkout run without installing: lm_eval_tasks/ sits next to refine_af/.
    candidates.append(Path(__file__).resolve().parents[2] / "lm_eval_tasks")
    for folder in candidates:
        if (folder / _MARKER).is_file():
            return folder
    raise UserError(
        "the refineaf_superni lm-eval tasks are missing from this installation: reinstall "
        "refine_af (pip install .) or run from a source checkout"
    )


def lm_eval_task_name(task: str, prompt: str = "definition") -> str:
    """lm-eval name of one SuperNI test task for a prompt variant."""
    if prompt not in PROMPTS:
        raise UserError(f"prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
    return f"{PROMPTS[prompt]}_{task}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Locate the refineaf_superni lm-eval tasks.")
    parser.add_argument("--available", action="store_true", help="list tasks with local data")
    parser.add_argument("--prompt", default="definition", choices=sorted(PROMPTS))
    args = parser.parse_args(argv)
    try:
        if not args.available:
            print(tasks_dir())
            return 0
        have = available_tasks(DataSettings.from_metadata())
        names = TASK_NAMES if have is None else have
        print(",".join(lm_eval_task_name(t, args.prompt) for t in names))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
