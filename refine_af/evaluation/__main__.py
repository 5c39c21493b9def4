"""``python -m refine_af.evaluation {eval,eval-regression} -c CONFIG [key=value ...]``.

The same commands as ``refineaf eval`` / ``refineaf eval-regression``, usable without the CLI.
"""

from __future__ import annotations

import argparse
import sys

from refine_af.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refine_af.evaluation")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("eval", help="evaluate rows on SuperNI and write the report")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("--force", action="store_true", help="re-run rows already evaluated")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. limit=5")
    reg = sub.add_parser("eval-regression", help="CI regression check against a reference")
    reg.add_argument("-c", "--config", default="eval_configs/regression.yaml")
    reg.add_argument("--update", action="store_true", help="rewrite the reference on purpose")
    reg.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    from refine_af.evaluation.commands import eval_command, regression_command

    try:
        if args.command == "eval":
            print(eval_command(args.config, args.overrides, force=args.force))
        else:
            print(regression_command(args.config, args.overrides, update=args.update))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
