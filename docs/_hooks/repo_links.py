"""MkDocs hook: links from a page to files of the repository outside docs/.

`[bench/README.md](../bench/README.md)` works where the repository is browsed as
files, but the site holds docs/ only, so MkDocs reports such a link as broken. In the
site it becomes the file's path in the repository, in code. A link whose target does
not exist is left alone, for MkDocs to report.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

# [text](../some/file#anchor), but not an image: ![alt](../x.png)
LINK = re.compile(r"(?<!!)\[[^\]\n]+\]\((\.\./[^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    docs_dir = Path(config.docs_dir).resolve()
    repository = docs_dir.parent
    page_dir = (docs_dir / page.file.src_uri).parent

    def as_path(link: re.Match[str]) -> str:
        target = (page_dir / link[1]).resolve()
        elsewhere = repository in target.parents and docs_dir not in target.parents
        if not (elsewhere and target.exists()):
            return link[0]  # a page of the site, or nothing: MkDocs checks it as usual
        return f"`{target.relative_to(repository).as_posix()}`"

    return LINK.sub(as_path, markdown)
