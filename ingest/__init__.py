"""The ingest: the Upstox feed into the journal, the decoder, the handlers and TimescaleDB.

Its loggers are named after their modules (`ingest.service`, `ingest.client.connection`, ...)
and all answer to `websocket` as well, the name the Phase 2 guide's users know:
`logging.getLogger("websocket").setLevel(logging.DEBUG)` turns on the ingest's debug output,
and a handler added to `websocket` receives every ingest record.
"""

import logging

# The `ingest` logger is made a child of `websocket`: a record of `ingest.x` goes on to
# `ingest`, then `websocket`, then the root, and a level set on `websocket` is the effective
# level of every `ingest.*` logger that has none of its own. Set here, where the package is
# first imported, so it holds before any ingest module creates its logger; the logging module
# never reassigns the parent of a logger once it exists.
logging.getLogger("ingest").parent = logging.getLogger("websocket")
