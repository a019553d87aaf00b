"""The chaos run (tests/chaos/runner.py): a mixed workload under injected faults, with
invariants checked and figures printed. See docs/reliability.md.

    .venv/bin/python bench/chaos.py                                 # each fault once
    .venv/bin/python bench/chaos.py --minutes 10 --fsync everysec   # the long run
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/chaos.py` puts bench/, not the root, first

from tests.chaos.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
