"""``python -m refine_af.evaluation {eval,eval-regression} -c CONFIG [key=value ...]``.

The same commands as ``refineaf eval`` / ``refineaf eval-regression``, usable without the CLI.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from refine_af.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refine_af.evaluation")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("eval", help="evaluate rows on SuperNI and write the report")
    run.add_argument(
        "-c", "--config", default="default", help="eval YAML path or packaged name (default)"
    )
    run.add_argument(
        "--restart",
        "--force",
        dest="force",
        action="store_true",
        help="set earlier outputs aside (never deleted) and evaluate every row again",
    )
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. limit=5")
    reg = sub.add_parser("eval-regression", help="CI regression check against a reference")
    reg.add_argument("-c", "--config", default="regression")
    reg.add_argument("--update", action="store_true", help="rewrite the reference on purpose")
    reg.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    # As in `refineaf` (cli.py): transformers 5.x warns on every forward pass that passes a
    # cache as `past_key_values`; the warning says nothing to a user and buries the progress.
    warnings.filterwarnings(
        "ignore", message=".*past_key_values.*deprecated", category=FutureWarning
    )
    from refine_af.evaluation.commands import eval_command, regression_command

    try:
        if args.command == "eval":
            line = eval_command(args.config, args.overrides, force=args.force)
        else:
            line = regression_command(args.config, args.overrides, update=args.update)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 130
    if line:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
