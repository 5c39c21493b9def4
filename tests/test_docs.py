"""The README and docs stay true: the generated configuration reference is current, the README is
short, its quick-start commands are the ones CI and the contributor guide run, and every link
resolves."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import re
import shlex
import sys
from pathlib import Path
from types import ModuleType

import pytest

from refine_af.config import help_field

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CI = ROOT / ".ci" / "run"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
GENERATOR = DOCS / "_generate_configuration.py"
REGENERATE = "python docs/_generate_configuration.py"
MAX_README_LINES = 200


def load_generator() -> ModuleType:
    name = "refineaf_docs_generate_configuration"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# The configuration reference.


def test_configuration_reference_is_current() -> None:
    expected = load_generator().render()
    path = DOCS / "configuration.md"
    current = path.read_text() if path.is_file() else ""
    if current != expected:
        diff = "\n".join(
            list(
                difflib.unified_diff(
                    current.splitlines(),
                    expected.splitlines(),
                    "docs/configuration.md (checked in)",
                    "docs/configuration.md (generated now)",
                    lineterm="",
                    n=0,
                )
            )[:40]
        )
        pytest.fail(
            f"docs/configuration.md is stale: run `{REGENERATE}` and commit the result.\n{diff}"
        )


def test_configuration_reference_says_how_it_is_made() -> None:
    head = "\n".join(load_generator().render().splitlines()[:4])
    assert "Generated" in head and REGENERATE in head


@dataclasses.dataclass
class _Inner:
    depth: int = help_field(3, "How deep.")


@dataclasses.dataclass
class _Item:
    label: str = help_field("a", "A label | with a pipe.")


@dataclasses.dataclass
class _Section:
    plain: float | None = help_field(None, "A plain value.")
    inner: _Inner = dataclasses.field(
        default_factory=_Inner, metadata={"help": "A nested section."}
    )
    items: list[_Item] = dataclasses.field(
        default_factory=lambda: [_Item()], metadata={"help": "A list of items."}
    )
    weights: dict[str, float] = help_field({"x": 0.5}, "Weights.")  # noqa: RUF009


def test_generator_finds_nested_fields_by_walking_the_dataclasses() -> None:
    generator = load_generator()
    rows = {row.key: row for row in generator.rows_of(_Section, "s.", ("s",), {})}
    assert list(rows) == ["s.plain", "s.inner.depth", "s.items", "s.items[].label", "s.weights"]
    assert rows["s.plain"].type == "float or null" and rows["s.plain"].default == "null"
    assert rows["s.inner.depth"].default == "3" and rows["s.inner.depth"].path == (
        "s",
        "inner",
        "depth",
    )
    assert rows["s.items"].default == "[{label: a}]"
    assert rows["s.weights"].default == "{x: 0.5}"
    table = generator.table(
        list(rows.values()),
        {"demo": {"s": {"plain": 2.0, "inner": {"depth": 3}, "items": [], "weights": {"x": 0.5}}}},
    )
    assert "A label \\| with a pipe." in "\n".join(table)  # a pipe would split the table's cell
    plain = next(line for line in table if line.startswith("| `s.plain`"))
    depth = next(line for line in table if line.startswith("| `s.inner.depth`"))
    assert "`2.0`" in plain  # a packaged config's value where it differs from the default
    assert depth.count("`3`") == 1  # and nothing where it is the default


def test_generator_lists_every_train_config_key() -> None:
    from refine_af.config import to_dict
    from refine_af.train_config import TrainConfig

    text = load_generator().render()
    for section, values in to_dict(TrainConfig()).items():
        for key in values:
            assert f"| `{section}.{key}` |" in text, f"{section}.{key} missing from the reference"


def test_generator_refuses_a_field_without_help() -> None:
    @dataclasses.dataclass
    class NoHelp:
        size: int = 1

    with pytest.raises(SystemExit, match=r"NoHelp\.size has no help text"):
        load_generator().rows_of(NoHelp, "", (), {})


# ---------------------------------------------------------------------------------------------
# The README and the commands it shows.


def test_readme_is_short() -> None:
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move detail to a docs/ page "
        "and link it"
    )


def section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh)?\n(.*?)^```", text, re.M | re.S)


def commands(block: str) -> list[str]:
    """Each command of a shell block, comments and blank lines dropped, `&&` chains split."""
    found = []
    for line in block.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            found += [part.strip() for part in line.split("&&")]
    return found


def normalized(command: str) -> str:
    """`python -m pip install --quiet X` and `pip install X` are the same install."""
    words = shlex.split(command)
    if words[:3] == ["python", "-m", "pip"]:
        words = ["pip", *words[3:]]
    return " ".join(word for word in words if word not in ("--quiet", "-q"))


def quick_start() -> tuple[list[str], list[str]]:
    blocks = code_blocks(section(README.read_text(), "Quick start"))
    assert len(blocks) == 2, "README's quick start must show exactly two commands"
    return commands(blocks[0]), commands(blocks[1])


def ci_commands() -> list[str]:
    """The commands .ci/run runs, one per entry (continued lines joined)."""
    text = CI.read_text().replace("\\\n", " ")
    return [
        " ".join(line.split())
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_quick_start_installs_what_ci_installs_and_runs_the_default_train() -> None:
    main, _ = quick_start()
    *installs, job = main
    ci_installs = [normalized(c) for c in ci_commands() if normalized(c).startswith("pip install")]
    assert [normalized(c) for c in installs] == ci_installs, (
        "README's quick-start install differs from .ci/run's: make them the same"
    )
    first_line = (ROOT / "refine_af" / "configs" / "default.yaml").read_text().splitlines()[0]
    assert job == "refineaf train -c default" == first_line.lstrip("# ").strip()


def test_quick_start_test_command_is_what_ci_runs() -> None:
    _, tests = quick_start()
    assert len(tests) == 1, "README's second quick-start block is one command: the tests"
    assert tests[0] in ci_commands(), (
        f"README's test command `{tests[0]}` is not what .ci/run runs: make them the same"
    )


def test_contributing_uses_the_quick_start_commands() -> None:
    main, tests = quick_start()
    text = CONTRIBUTING.read_text()
    setup = commands(code_blocks(section(text, "Set up"))[0])
    assert [normalized(c) for c in setup] == [normalized(c) for c in main[:-1]], (
        "CONTRIBUTING.md's set-up commands differ from README's quick-start install"
    )
    assert tests[0] in commands(code_blocks(section(text, "Test and lint"))[0]), (
        f"CONTRIBUTING.md's 'Test and lint' does not show README's test command `{tests[0]}`"
    )


def test_quick_start_figures_name_command_machine_and_date() -> None:
    text = README.read_text()
    match = re.search(r"<!-- figures: begin.*?-->(.*?)<!-- figures: end -->", text, re.S)
    assert match, "README's figures block (<!-- figures: begin ... end -->) is missing"
    block = match.group(1)
    assert "refineaf train -c default" in block
    assert "/usr/bin/time" in block or "benchmarks/train_time.py" in block, "name the command"
    assert re.search(r"\d+-core", block) and re.search(r"AVX", block), "name the machine"
    assert re.search(r"\b20\d\d-\d\d\b", block), "give the date of the measurement"


# ---------------------------------------------------------------------------------------------
# Links.


def markdown_files() -> list[Path]:
    return [README, CONTRIBUTING, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """Text outside fenced code blocks and inline code, where links are links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def links(path: Path) -> list[str]:
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose(path.read_text()))


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, code marks and punctuation dropped, spaces as
    hyphens, a repeated heading numbered."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, number = slug, 0
        while candidate in found:
            number += 1
            candidate = f"{slug}-{number}"
        found.add(candidate)
    return found


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {', '.join(broken)}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for target in links(README)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)
    }
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {', '.join(missing)}"
