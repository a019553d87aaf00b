"""The documentation site builds in strict mode (any warning fails it: a broken link or
anchor, a page left out of the nav, a docstring mkdocstrings cannot render), and its two
generated pages are complete: the CLI reference has every command of `redwork` with its
options and its help's examples line by line, the Python API reference every name
`redwork` exports."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import click
import pytest

import redwork
from redwork.cli import cli
from tests.conftest import ROOT

HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


@dataclass
class Section:
    """A heading, and the text that follows it up to the next heading of its level or
    above (so a command's section holds its options)."""

    id: str
    level: int
    title: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)

    @property
    def heading(self) -> str:
        return "".join(self.title).replace("¶", "").strip()


class Sections(HTMLParser):
    """A built page's headings with the text under each, and its <pre> blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[Section] = []
        self.preformatted: list[str] = []
        """The text of each <pre> block."""
        self._in_heading = False
        self._in_pre = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in HEADINGS:
            self.sections.append(Section(dict(attrs).get("id") or "", int(tag[1])))
            self._in_heading = True
        elif tag == "pre":
            self.preformatted.append("")
            self._in_pre = True

    def handle_endtag(self, tag: str) -> None:
        if tag in HEADINGS:
            self._in_heading = False
        elif tag == "pre":
            self._in_pre = False

    def handle_data(self, data: str) -> None:
        if self._in_pre:
            self.preformatted[-1] += data
        if not self.sections:
            return
        if self._in_heading:
            self.sections[-1].title.append(data)
        for section in self._open_sections():
            section.body.append(data)

    def _open_sections(self) -> Iterator[Section]:
        """The last section and those that enclose it."""
        level = 7
        for section in reversed(self.sections):
            if section.level < level:
                level = section.level
                yield section


def parse(page: Path) -> Sections:
    parser = Sections()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {
        **os.environ,
        # Material prints a notice about MkDocs 2.0 on every build; it is not about this
        # site and is not a warning of the build.
        "NO_MKDOCS_2_WARNING": "1",
        # Loading the hook under docs/ must not leave __pycache__ in the tree.
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    """Every command under group, nested ones too, as its command line ("redwork job show")."""
    for name, command in group.commands.items():
        line = " ".join(("redwork", *path, name))
        yield line, command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


def test_the_cli_reference_documents_every_command_with_its_options(site: Path) -> None:
    found = {s.heading: s for s in parse(site / "cli" / "index.html").sections}
    expected = dict(commands(cli))
    assert sorted(set(expected) - set(found)) == []
    for line, command in expected.items():
        text = "".join(found[line].body)
        options = [o for p in command.params if isinstance(p, click.Option) for o in p.opts]
        assert [o for o in options if o not in text] == [], line


def test_the_cli_reference_shows_help_examples_one_per_line(site: Path) -> None:
    """The lines of a help paragraph that click prints as written (after a `\\b` line) are
    lines of a code block, not words run together."""
    lines = {
        line
        for block in parse(site / "cli" / "index.html").preformatted
        for line in block.splitlines()
    }
    examples = [
        line.strip()
        for _, command in [("redwork", cli), *commands(cli)]
        for paragraph in inspect.cleandoc(command.help or "").split("\b\n")[1:]
        for line in paragraph.split("\n\n")[0].splitlines()
        if line.startswith(" ")
    ]
    assert examples
    assert [line for line in examples if line not in lines] == []


def test_the_api_reference_documents_every_public_name(site: Path) -> None:
    ids = {s.id for s in parse(site / "api" / "index.html").sections}
    missing = [name for name in redwork.__all__ if f"redwork.{name}" not in ids]
    assert missing == []
