"""The memory this process holds, for bounding what the planner keeps open at once.

Each ONNX Runtime session keeps an arena as large as its model's working memory at the
largest input it ran (PP-OCR's detector: ~130 MB at 960x544, ~350 MB at 1280x1280), so
sessions opened together at large input sizes add up to gigabytes. Where the planner
opens sessions in batches (measuring candidates), it closes a batch early once the
process has grown by a stated budget.
"""

from __future__ import annotations

import os

# A batch of measuring sessions ends once the process grew by this much since it began:
# with the whole model's session and the planner's own state beside it, planning stays
# within about 2 GiB at any input size.
MEASURE_BLOCK_BYTES = 1 << 30


def rss_bytes() -> int | None:
    """This process's resident set size now (Linux: ``/proc/self/statm``); None where
    it cannot be read (then nothing is bounded by it)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
