"""The server-side scripts, one file per job state transition, and how to call them.

Each script is loaded once per server and called by SHA; a server that lost its
script cache (a restart) gets the source again on NOSCRIPT.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from importlib import resources

_INCLUDE = re.compile(r"^-- @include (\w+)$", re.MULTILINE)


class Code(IntEnum):
    """Return codes shared by every script (see includes/common.lua)."""

    OK = 0
    LEASE_LOST = 1
    ALREADY_DONE = 2
    DUPLICATE = 3
    CONFLICT = 4
    LATER = 5


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def _read(relative: str) -> str:
    return resources.files(__package__).joinpath(relative).read_text(encoding="utf-8")


@cache
def load(name: str) -> Script:
    """The script `name`.lua with its includes expanded (includes may include others)."""
    source = _read(f"{name}.lua")
    while _INCLUDE.search(source):
        source = _INCLUDE.sub(lambda m: _read(f"includes/{m.group(1)}.lua"), source)
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())
