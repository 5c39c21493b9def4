"""What ``refineaf eval`` and ``refineaf eval-regression`` do, minus argument parsing.

The click commands in ``refine_af/cli.py`` only parse ``-c CONFIG`` and ``key=value`` overrides
and call these; ``python -m refine_af.evaluation`` offers the same two commands without click
(and is what ``accelerate launch -m refine_af.evaluation eval ...`` runs). ``CONFIG`` is a YAML
path or a packaged eval config name (``default``, ``regression``, ``paper_*``).
"""

from __future__ import annotations

import logging


def _quiet_lm_eval() -> None:
    # lm-eval logs every task's config at INFO/WARNING; keep the console for our own messages.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


def eval_command(config_path: str, overrides: list[str], force: bool = False) -> str:
    """Run ``refineaf eval``; return the line to print ("" in the non-main processes of
    ``accelerate launch``, which leave the report to rank 0)."""
    from refine_af.evaluation.runner import load_eval_config, run_eval

    _quiet_lm_eval()
    config = load_eval_config(config_path, overrides)
    report = run_eval(config, config_source=config_path, force=force)
    return f"report: {report}" if report is not None else ""


def regression_command(config_path: str, overrides: list[str], update: bool = False) -> str:
    """Run ``refineaf eval-regression``; raises RegressionFailure (a UserError) on failure."""
    from refine_af.evaluation.regression import load_regression_config, run_regression

    _quiet_lm_eval()
    return run_regression(load_regression_config(config_path, overrides), update=update)
