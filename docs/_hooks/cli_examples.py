"""MkDocs hook: the examples in `redwork --help` stay one command per line in the CLI
reference.

Click prints the paragraph after a line holding only `\\b` as written. mkdocs-click
drops that line and hands the paragraph to Markdown, which joins its lines into one run
of text. On a page made with `::: mkdocs-click`, lines indented by two spaces under a
line that ends in a colon ("Examples:") become a code block again.
"""

from __future__ import annotations

import re

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

PARAGRAPH = re.compile(r"<p>(.*?)</p>", re.DOTALL)


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if "::: mkdocs-click" not in (page.markdown or ""):
        return html
    return PARAGRAPH.sub(lambda p: _split(p[1]), html)


def _split(paragraph: str) -> str:
    """The paragraph as paragraphs of text and code blocks of the indented lines."""
    blocks: list[tuple[bool, list[str]]] = []  # (is code, lines)
    for line in paragraph.split("\n"):
        code = line.startswith("  ") and bool(blocks) and _opens_code(blocks[-1])
        if blocks and blocks[-1][0] == code:
            blocks[-1][1].append(line)
        else:
            blocks.append((code, [line]))
    return "\n".join(
        f"<pre><code>{chr(10).join(line[2:] for line in lines)}</code></pre>"
        if code
        else f"<p>{chr(10).join(lines)}</p>"
        for code, lines in blocks
    )


def _opens_code(block: tuple[bool, list[str]]) -> bool:
    """A code block goes on, or a text block ends with a colon."""
    code, lines = block
    return code or lines[-1].rstrip().endswith(":")
