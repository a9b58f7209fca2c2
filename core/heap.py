"""A long-running process takes its start-up heap out of the cyclic garbage collector.

A full collection walks every object the collector tracks. In an API worker, the ingest or
the simulator those are mostly what imports and start-up made (modules, classes, pydantic and
FastAPI models, the instrument master), hundreds of thousands of objects that live as long
as the process; walking them stopped the event loop for 100-330 ms a few times a minute, and
a tick that waits behind such a pause is late by that much (BENCHMARKS.md, issue 18).
`gc.freeze()` moves them to a generation no collection visits: later full collections walk
only what was made since, and garbage is still found there.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect once (start-up's own garbage is not kept forever), then freeze what is left.
    Call it once a process has started its job, never in a process that builds and drops
    many of them (a test): frozen objects in a cycle are not freed."""
    gc.collect()
    gc.freeze()
