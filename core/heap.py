"""A long-running process takes its start-up heap out of the cyclic garbage collector; the
ingest also collects its young objects less often.

A full collection walks every object the collector tracks. In an API worker, the ingest or
the simulator those are mostly what imports and start-up made (modules, classes, pydantic and
FastAPI models, the instrument master), hundreds of thousands of objects that live as long
as the process; walking them stopped the event loop for 100-330 ms a few times a minute, and
a tick that waits behind such a pause is late by that much (BENCHMARKS.md, issue 18).
`gc.freeze()` moves them to a generation no collection visits: later full collections walk
only what was made since, and garbage is still found there.

The young generation is collected once container allocations outrun frees by 700 (the
default). The ingest allocates steadily and frees in bursts (a batch's ticks when it
commits), so the count passed 700 between two bursts 25 times a second: about 3% of its CPU
went to young collections that walked objects reference counting was about to free
(BENCHMARKS.md, issue 21). At INGEST_YOUNG_THRESHOLD the bursts bring the count down first,
and a real growth of containers is still collected, cycles and all. An API worker keeps the
default: its requests leave reference cycles (asyncio's futures, exceptions) that only a
collection frees, so rarer passes free more at once, and with every process at 50,000 the
latest-ticks p99 at 500 requests a second was higher in each of three pairs (1.12-1.28).
"""

from __future__ import annotations

import gc

# The ingest's container allocations, net of frees, between two young collections.
INGEST_YOUNG_THRESHOLD = 50_000


def settle_startup_heap(young_threshold: int | None = None) -> None:
    """Collect once (start-up's own garbage is not kept forever), freeze what is left, and
    collect the young generation every `young_threshold` net allocations where given. Call
    it once a process has started its job, never in a process that builds and drops many of
    them (a test): frozen objects in a cycle are not freed."""
    gc.collect()
    gc.freeze()
    if young_threshold is not None:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(young_threshold, older, oldest)
