"""The ``refineaf`` command line. Commands only parse arguments and call a stage's ``run``."""

from __future__ import annotations

import contextlib
import errno
import functools
import shlex
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from refine_af.errors import UserError


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a user error into one line and exit status 2; an interrupt into status 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # `kill` and job schedulers send SIGTERM: treat it like Ctrl-C so stages record
        # "interrupted" and close their logs cleanly.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            return command(*args, **kwargs)
        except UserError as error:
            _end_progress_bars()
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except OSError as error:
            # An I/O error outside refine_af.storage (which words its own): the path, the
            # reason, and that the same command resumes (--verbose shows where it happened).
            if _verbose():
                raise
            _end_progress_bars()
            click.echo(f"error: {os_error_line(error)}", err=True)
            sys.exit(2)
        except Exception as error:
            # A full disk met inside a library (torch's or safetensors' writers raise their own
            # types): one line too. Anything else is a bug and keeps its traceback.
            line = disk_full_line(error)
            if line is None or _verbose():
                raise
            _end_progress_bars()
            click.echo(f"error: {line}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            _end_progress_bars()
            click.echo("interrupted: run the same command again to continue", err=True)
            sys.exit(130)

    return wrapper


def _end_progress_bars() -> None:
    """Close the bars a failed stage left open: each keeps its last state on its own line, and
    the error line starts a line of its own instead of trailing the bar."""
    if "tqdm" not in sys.modules:
        return
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):  # a bar on a closed stream: nothing to tidy
            bar.close()


def os_error_line(error: OSError) -> str:
    from refine_af.storage import DISK_FULL, RESUMES, describe_os_error

    if error.errno in DISK_FULL:
        return disk_full_line(error) or describe_os_error(error)
    where = f": {error.filename}" if getattr(error, "filename", None) else ""
    return f"{error.strerror or error}{where}; once that is fixed, {RESUMES}"


def disk_full_line(error: BaseException) -> str | None:
    """One line for an error caused by a full disk (found in its chain or its text), else None."""
    from refine_af.lock import held_folders
    from refine_af.storage import DISK_FULL, describe_os_error

    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    full = [e for e in chain if isinstance(e, OSError) and e.errno in DISK_FULL]
    for item in full:
        if item.filename:
            return describe_os_error(item)
    if not full and not any(
        "No space left on device" in str(e) or "os error 28" in str(e) for e in chain
    ):
        return None
    folders = held_folders()  # the folders this command writes: the full disk is under one
    where = f"a file under {folders[-1]}" if folders else None
    return describe_os_error(OSError(errno.ENOSPC, "No space left on device"), where)


def _verbose() -> bool:
    context = click.get_current_context(silent=True)
    root = context.find_root() if context is not None else None
    return bool(root and root.params.get("verbose"))


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``-c CONFIG`` plus any number of ``section.key=value`` overrides."""
    command = click.argument("overrides", nargs=-1)(command)
    return click.option(
        "-c",
        "--config",
        "config_name",
        default="default",
        show_default=True,
        help="A YAML config path, or a packaged config name (default, paper).",
    )(command)


RESTART_HELP = (
    "Set this command's earlier outputs aside (renamed *.replaced-<key>, never deleted) and "
    "start again. Without it, outputs of the same settings and inputs are continued and those "
    "of other settings are set aside."
)


def restart_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--restart``: one meaning in every command (refine_af.batches)."""
    return click.option("--restart", is_flag=True, help=RESTART_HELP)(command)


def prepare_run(config_name: str, overrides: tuple[str, ...], extra: list[str]) -> Any:
    """Load the config with overrides, open its run directory and lock it for this command.

    The resolved config is recorded there when a stage starts work, after its inputs were
    checked: a command that fails on bad input leaves the run directory as it was. The lock
    (refine_af.lock) is taken here, before any model loads, and released when the command ends,
    so a second command on the same run directory stops at once with one line.
    """
    from refine_af.config import to_dict
    from refine_af.lock import hold
    from refine_af.run_dir import RunDirectory
    from refine_af.train_config import load_config

    config = load_config(config_name, [*extra, *overrides])
    # The command that reproduces this config: flags such as --baseline are in ``extra`` as the
    # overrides they stand for.
    name = click.get_current_context().info_name
    words = ["refineaf", name, "-c", config_name, *extra, *overrides]
    command = " ".join(shlex.quote(word) for word in words)
    run_dir = RunDirectory(config.run.output_dir, to_dict(config), command)
    click.get_current_context().with_resource(hold(run_dir.path, "run directory"))
    return config, run_dir


@click.group()
@click.version_option(package_name="refine_af")
@click.option("--verbose", is_flag=True, help="Show library output and full tracebacks.")
def cli(verbose: bool) -> None:
    """REFINE-AF: instruction-tune a small LLM on self-generated data with RL from automated
    feedback, and score it on SuperNI."""
    from refine_af import console

    console.configure(verbose)


@cli.command("show-config")
@config_options
@handle_errors
def show_config(config_name: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved config (after overrides) as YAML."""
    from refine_af.config import dump_yaml, to_dict
    from refine_af.train_config import load_config

    click.echo(dump_yaml(to_dict(load_config(config_name, overrides))), nl=False)


@cli.command("generate-instructions")
@config_options
@click.option("--seed-tasks", type=str, default=None, help="Seed task JSONL (else download).")
@click.option("--num-instructions", type=int, default=None, help="How many to keep.")
@restart_option
@handle_errors
def generate_instructions(
    config_name: str,
    overrides: tuple[str, ...],
    seed_tasks: str | None,
    num_instructions: int | None,
    restart: bool,
) -> None:
    """Stage 1: generate instructions from the seed tasks with the model itself."""
    from refine_af.stages import instructions

    extra = []
    if seed_tasks is not None:
        extra.append(f"generate_instructions.seed_tasks={seed_tasks}")
    if num_instructions is not None:
        extra.append(f"generate_instructions.num_instructions={num_instructions}")
    config, run_dir = prepare_run(config_name, overrides, extra)
    summary = instructions.run(config, run_dir, restart=restart)
    click.echo(
        f"kept {summary['kept']} instructions from {summary['candidates']} candidates: "
        f"{run_dir.path / instructions.STAGE / 'instructions.jsonl'}"
    )


@cli.command("rl")
@config_options
@click.option(
    "--resume",
    is_flag=True,
    hidden=True,
    help="Accepted for older scripts: continuing from the last checkpoint is the default.",
)
@restart_option
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (rl.max_steps).")
@handle_errors
def rl_command(
    config_name: str,
    overrides: tuple[str, ...],
    resume: bool,
    restart: bool,
    max_steps: int | None,
) -> None:
    """Stage 2: RL from automated feedback on the stage-1 instructions (LoRA, GRPO/RLOO)."""
    from refine_af.stages import rl

    extra = [f"rl.max_steps={max_steps}"] if max_steps is not None else []
    config, run_dir = prepare_run(config_name, overrides, extra)
    summary = rl.run(config, run_dir, restart=restart)
    if not summary:
        return  # a non-main process of `accelerate launch`
    combined = summary.get("reward_combined", {})
    state = "already done" if summary.get("skipped") else f"{summary.get('steps')} steps"
    click.echo(
        f"rl {state}: combined reward {combined.get('first')} -> {combined.get('last')}; "
        f"adapter {run_dir.path / rl.STAGE / 'adapter'}"
    )


@cli.command("score")
@config_options
@click.option("--input", "input_path", default=None, help="JSONL: instruction, input, output.")
@click.option("--output", "output_path", default=None, help="JSONL written with the rewards.")
@click.option("--batch-rows", type=int, default=64, show_default=True, help="Rows per batch.")
@restart_option
@click.option(
    "--labels",
    "labels_path",
    default=None,
    help="Instead: a JSONL of instances labelled good/bad (instruction, input, output, label) "
    "or preference pairs (prompt, chosen, rejected); prints each reward's AUC or pairwise "
    "accuracy against them.",
)
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="--labels: resamples.")
@handle_errors
def score_command(
    config_name: str,
    overrides: tuple[str, ...],
    input_path: str | None,
    output_path: str | None,
    batch_rows: int,
    restart: bool,
    labels_path: str | None,
    bootstrap: int,
) -> None:
    """Score a JSONL of instances with stage 2's automated feedback (the config's rl section),
    or check that feedback against labels (--labels)."""
    from pathlib import Path

    from refine_af import scoring
    from refine_af.train_config import load_config

    if labels_path is not None:
        if input_path or output_path:
            raise UserError("give either --labels FILE or --input and --output, not both")
        from refine_af import validity

        config = load_config(config_name, overrides)
        click.echo(validity.run(config, Path(labels_path), bootstrap), nl=False)
        return
    if not input_path or not output_path:
        raise UserError("give --input FILE and --output FILE (or --labels FILE)")
    config = load_config(config_name, overrides)
    summary = scoring.run(config, Path(input_path), Path(output_path), batch_rows, restart)
    click.echo(
        f"scored {summary['scored']} of {summary['rows']} rows (mean combined reward "
        f"{summary['mean_combined']}): {summary['output']}"
    )


@cli.command("generate-instances")
@config_options
@click.option(
    "--variant",
    type=click.Choice(["refine_af", "baseline", "seeds_only", "seeds_matched"]),
    default="refine_af",
    show_default=True,
    help="Instances from the RL adapter (refine_af), the untuned model (baseline), or the seed "
    "tasks' own instances (seeds_only, the control).",
)
@click.option("--max-instructions", type=int, default=None, help="Use only the first N.")
@restart_option
@handle_errors
def generate_instances(
    config_name: str,
    overrides: tuple[str, ...],
    variant: str,
    max_instructions: int | None,
    restart: bool,
) -> None:
    """Stage 3a: write and filter instances for every kept instruction."""
    from refine_af.stages import instances

    extra = []
    if max_instructions is not None:
        extra.append(f"generate_instances.max_instructions={max_instructions}")
    config, run_dir = prepare_run(config_name, overrides, extra)
    summary = instances.run(config, run_dir, variant, restart=restart)
    click.echo(
        f"kept {summary['kept']} instances from {summary['candidates']} candidates "
        f"({summary['instructions']['processed']} instructions): "
        f"{run_dir.path / instances.STAGE_DIR / variant / 'instances.jsonl'}"
    )


@cli.command("sft")
@config_options
@click.option(
    "--variant",
    type=click.Choice(["refine_af", "baseline", "seeds_only", "seeds_matched"]),
    default="refine_af",
    show_default=True,
    help="Which variant's instances to fine-tune on.",
)
@restart_option
@handle_errors
def sft_command(config_name: str, overrides: tuple[str, ...], variant: str, restart: bool) -> None:
    """Stage 3b: LoRA fine-tuning of the base model on a variant's instances."""
    from refine_af.stages import sft

    config, run_dir = prepare_run(config_name, overrides, [])
    summary = sft.run(config, run_dir, variant, restart=restart)
    state = "up to date" if summary.get("skipped") else f"trained {summary['steps']} steps"
    click.echo(f"adapter {state}: {summary['adapter']}")
    if summary.get("merged"):
        click.echo(f"merged model: {summary['merged']}")


@cli.command("train")
@config_options
@click.option(
    "--baseline", is_flag=True, help="Only the Self-Instruct baseline adapter (skips stage 2)."
)
@restart_option
@handle_errors
def train(config_name: str, overrides: tuple[str, ...], baseline: bool, restart: bool) -> None:
    """Run the whole pipeline (stages 1 -> 2 -> 3) in one run directory; skip what is done."""
    from refine_af import pipeline

    extra = ["pipeline.variants=[baseline]"] if baseline else []
    config, run_dir = prepare_run(config_name, overrides, extra)
    result = pipeline.run(config, run_dir, restart=restart)
    for variant, adapter in result["adapters"].items():
        click.echo(f"{variant} adapter: {adapter}")
    click.echo(f"data card: {result['data_card']}")
    click.echo(f"done in {result['seconds']} s")


@cli.command("export")
@click.argument("run_dir")
@click.argument("out")
@click.option("--overwrite", is_flag=True, help="Replace OUT when it holds an earlier export.")
@click.option(
    "--push-to-hub", "repo", default=None, metavar="REPO", help="Also upload to this Hub dataset."
)
@click.option("--private", is_flag=True, help="With --push-to-hub: make a new repo private.")
@handle_errors
def export_command(
    run_dir: str, out: str, overwrite: bool, repo: str | None, private: bool
) -> None:
    """Write RUN_DIR's generated data to OUT as a Hugging Face dataset (parquet + card)."""
    from pathlib import Path

    from refine_af import export

    result = export.run(Path(run_dir), Path(out), overwrite=overwrite, repo=repo, private=private)
    for config, splits in result["rows"].items():
        counts = ", ".join(f"{split} {rows}" for split, rows in splits.items())
        click.echo(f"{config}: {counts} rows")
    click.echo(f"dataset: {result['out']}")
    if "url" in result:
        click.echo(f"pushed: {result['url']}")


@cli.command("eval")
@click.option(
    "-c",
    "--config",
    "config_path",
    default="default",
    show_default=True,
    help="An eval config: a packaged name (default, paper_llama2_7b, paper_llama2_13b, "
    "paper_mistral_7b) or a YAML path.",
)
@restart_option
@click.option("--force", is_flag=True, hidden=True, help="The former name of --restart.")
@click.argument("overrides", nargs=-1)
@handle_errors
def eval_command(config_path: str, overrides: tuple[str, ...], restart: bool, force: bool) -> None:
    """Evaluate the base model and adapters on SuperNI; write the report."""
    from refine_af.evaluation.commands import eval_command as run

    line = run(config_path, list(overrides), force=restart or force)
    if line:  # empty in the other processes of `accelerate launch`
        click.echo(line)


@cli.command("eval-regression")
@click.option(
    "-c",
    "--config",
    "config_path",
    default="regression",
    show_default=True,
    help="The regression config (a packaged name or a YAML path).",
)
@click.option("--update", is_flag=True, help="Rewrite the stored reference on purpose.")
@click.argument("overrides", nargs=-1)
@handle_errors
def eval_regression_command(config_path: str, overrides: tuple[str, ...], update: bool) -> None:
    """CI check: small deterministic SuperNI eval compared with the stored reference."""
    from refine_af.evaluation.commands import regression_command

    line = regression_command(config_path, list(overrides), update=update)
    if line:
        click.echo(line)


def main() -> None:  # pragma: no cover - console entry point alias
    cli()
