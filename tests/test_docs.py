"""The README and docs/ stay true to the tree: links resolve, every recipe key is documented, the README opens
with the two commands a newcomer needs."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

from recipes.schema import RecipeConfig

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RECIPE_KEYS_PAGE = DOCS / "recipe-keys.md"

# Inline links and images: [text](target) and ![alt](target), with an optional "title" after the target.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# Reference definitions: [name]: target
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
EXTERNAL = ("http://", "https://", "mailto:")
# A path of this repository written as code (`tools/export.py`, `recipes/smoke.yaml`): its first folder is one of
# the project's, and it has no placeholder or wildcard.
REPO_FOLDERS = (
    "recipes",
    "data",
    "algorithms",
    "callbacks",
    "training",
    "tools",
    "scripts",
    "bench",
    "notebooks",
)
CODE_PATH = re.compile(rf"`((?:{'|'.join(REPO_FOLDERS)}|tests|docs)/[^`\s*{{}}<>]*)`")


def markdown_files() -> list[Path]:
    """The pages a reader follows links in: the README and every page under docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def link_targets(text: str) -> list[str]:
    """Link targets of a markdown text, ignoring code, where brackets and parentheses are not links."""
    prose = INLINE_CODE.sub("", FENCED_BLOCK.sub("", text))
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)


def broken_links(page: Path) -> list[str]:
    """Relative link targets in ``page`` whose file or folder does not exist, resolved from the page's folder."""
    return [
        target
        for target in link_targets(page.read_text(encoding="utf-8"))
        if not target.startswith((*EXTERNAL, "#")) and not (page.parent / target.split("#", 1)[0]).exists()
    ]


def missing_code_paths(page: Path) -> list[str]:
    """Repository paths named in inline code in ``page`` that do not exist (resolved from the repository root)."""
    return [
        path for path in CODE_PATH.findall(page.read_text(encoding="utf-8")) if not (ROOT / path).exists()
    ]


def recipe_keys(config: type = RecipeConfig, prefix: str = "") -> Iterator[str]:
    """Every key of the recipe schema as its full dotted path, recursing into nested sections."""
    for field in dataclasses.fields(config):
        factory = field.default_factory
        section = factory() if factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(section):
            yield from recipe_keys(type(section), f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}"


def test_relative_links_point_to_existing_files() -> None:
    """A moved or renamed file must not leave a reader at a dead link."""
    broken = [
        f"{page.relative_to(ROOT)}: {target}" for page in markdown_files() for target in broken_links(page)
    ]
    assert not broken, "Broken relative links:\n" + "\n".join(broken)


def test_link_check_sees_links_outside_code_only(tmp_path: Path) -> None:
    """The checker must catch a dead link in prose, and not mistake code that looks like a link for one."""
    page = tmp_path / "page.md"
    page.write_text(
        "[gone](missing.md) ![plot](missing.png#x) [web](https://example.com) [up](#top) [self](page.md)\n"
        "`[code](not-a-link.md)`\n```bash\necho [x](also-not.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["missing.md", "missing.png#x"]


def test_paths_named_in_code_exist() -> None:
    """A module that moved must not stay behind in the prose as `old/path.py`."""
    missing = [
        f"{page.relative_to(ROOT)}: {path}" for page in markdown_files() for path in missing_code_paths(page)
    ]
    assert not missing, "Paths named in the docs that do not exist:\n" + "\n".join(missing)


def test_code_path_check_finds_moved_files(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "`tools/export.py` `algorithms/export.py` `runs/{run_name}` `scripts/*.sh`\n", encoding="utf-8"
    )
    assert missing_code_paths(page) == ["algorithms/export.py"]


def test_every_recipe_key_is_documented() -> None:
    """A key added to recipes/schema.py is not finished until docs/recipe-keys.md explains it."""
    page = RECIPE_KEYS_PAGE.read_text(encoding="utf-8")
    keys = list(recipe_keys())
    assert "data.train_resolution" in keys and "doctor.enabled" in keys and "max_duration" in keys
    missing = [key for key in keys if f"`{key}`" not in page]
    page_name = RECIPE_KEYS_PAGE.relative_to(ROOT)
    assert not missing, f"Recipe keys missing from {page_name}: {', '.join(missing)}"


def test_readme_opens_with_the_two_commands() -> None:
    """A newcomer's first screen is how to train and how to test, under a one-line title, before anything else."""
    lines = [line for line in README.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines[0] == "# mosaic-resnet50", f"README.md starts with {lines[0]!r}, not its title"
    assert lines[1] == "```bash", f"README.md's second line is {lines[1]!r}, not a ```bash block"
    assert lines[2].startswith("make train"), f"README.md's third line is {lines[2]!r}"
    assert lines[3].startswith("make test"), f"README.md's fourth line is {lines[3]!r}"
