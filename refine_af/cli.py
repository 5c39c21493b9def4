"""The ``refineaf`` command line. Commands only parse arguments and call a stage's ``run``."""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Callable
from typing import Any

import click

from refine_af.errors import UserError


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a user error into one line and exit status 2; an interrupt into status 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: run the same command again to continue", err=True)
            sys.exit(130)

    return wrapper


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


def prepare_run(config_name: str, overrides: tuple[str, ...], extra: list[str]) -> Any:
    """Load the config with overrides, open its run directory and record the config there."""
    from refine_af.config import to_dict
    from refine_af.run_config import load_config
    from refine_af.run_dir import RunDirectory

    config = load_config(config_name, [*extra, *overrides])
    run_dir = RunDirectory(config.run.output_dir)
    command = "refineaf " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run_dir.record_config(to_dict(config), command)
    return config, run_dir


@click.group()
@click.version_option(package_name="refine_af")
def cli() -> None:
    """REFINE-AF: instruction-tune a small LLM on self-generated data with RL from automated
    feedback, and score it on SuperNI."""


@cli.command("show-config")
@config_options
@handle_errors
def show_config(config_name: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved config (after overrides) as YAML."""
    from refine_af.config import dump_yaml, to_dict
    from refine_af.run_config import load_config

    click.echo(dump_yaml(to_dict(load_config(config_name, overrides))), nl=False)


@cli.command("generate-instructions")
@config_options
@click.option("--seed-tasks", type=str, default=None, help="Seed task JSONL (else download).")
@click.option("--num-instructions", type=int, default=None, help="How many to keep.")
@click.option("--restart", is_flag=True, help="Set aside instructions made with other settings.")
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


def main() -> None:  # pragma: no cover - console entry point alias
    cli()
