"""Does stage 2's automated feedback rank instances the way a reader does?

    python benchmarks/reward_validity.py                      # the default config's scorers
    python benchmarks/reward_validity.py -c paper             # the paper's (OASST RM + UniEval)
    python benchmarks/reward_validity.py --labels FILE.jsonl  # your own labels or pairs

Prints, for every registered reward and for the config's combined reward, the AUC against the
labelled instances in ``benchmarks/data/reward_labels.jsonl`` (read by hand as good: on task and
correct, or bad), with a 95% bootstrap interval. The same table as ``refineaf score --labels``.
Where a config's scorers cannot be loaded (the paper's need the Hugging Face Hub or a local
copy), the script says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from refine_af import validity
from refine_af.errors import UserError
from refine_af.train_config import load_config

LABELS = Path(__file__).parent / "data" / "reward_labels.jsonl"


def parse_weights(text: str) -> tuple[str, dict[str, float]]:
    """``NAME=REWARD:W,REWARD:W`` -> (NAME, {REWARD: W})."""
    name, _, spec = text.partition("=")
    try:
        weights = {k.strip(): float(w) for k, w in (p.split(":") for p in spec.split(","))}
    except ValueError as error:
        raise UserError(f"--weights {text!r}: write NAME=REWARD:W,REWARD:W") from error
    if not name or not weights:
        raise UserError(f"--weights {text!r}: write NAME=REWARD:W,REWARD:W")
    return name, weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="default", help="Train config (its rl section).")
    parser.add_argument("--labels", type=Path, default=LABELS, help="Labelled JSONL.")
    parser.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples.")
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NAME=REWARD:W,REWARD:W",
        help="Also rank by another weighting of the same scores, e.g. "
        "'judge+keepable=judge:1,keepable:0.5' (repeatable; costs no scoring).",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides.")
    args = parser.parse_args()
    started = time.time()
    try:
        config = load_config(args.config, args.overrides)
        alternatives = dict(parse_weights(text) for text in args.weights)
        table = validity.run(config, args.labels, args.bootstrap, alternatives)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"config: {args.config} {' '.join(args.overrides)}".rstrip())
    print(
        f"reward model: {config.rl.reward_model}; evaluator: {config.rl.evaluator} "
        f"({config.rl.evaluator_kind})"
    )
    print(table, end="")
    print(f"({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
