"""The HTTP/1.1 server protocol of the API: uvicorn's httptools protocol, with a bound on what
a request may make the server hold besides its body.

Why not uvicorn's own: httptools (llhttp) costs less per request than h11 (BENCHMARKS.md,
issue 21), but it keeps a request head's URL and header values in
memory however long they grow, while a client must not make the server buffer more than
MAX_HEAD_BYTES of one (issue 8; h11 bounds it, which is why the API served with h11 before).

So the bytes that arrive are counted before the parser sees them. A head that would pass
the bound is answered 400, like every head the parser refuses, and the connection closed,
before the parser is fed: the server holds at most MAX_HEAD_BYTES of it, however slowly it
trickles in. The count is exact for requests sent one after another on a connection;
pipelined requests that share a read are counted together (the parser does not say where one
ends), so a pipelined head is held to the bound give or take the read it shares.
A chunked body's size lines and trailers count too (llhttp hands trailers on as headers, each
held until its line ends), checked after each read that leaves the request unfinished: they
are held to the bound plus at most the read that ends the request.

The hot latest-ticks request is answered here, in the parser's callbacks, when the app
(api/latest_fast.py, `LatestTicks`) has its answer and nothing in front of its ASGI
shortcut would act on the request: a GET of its path, HTTP/1.1 kept alive, no body, no
upgrade, no `Expect`, an allowed Host, no answer of this connection still being written or
its writing paused. The answer is the bytes uvicorn would write for the shortcut's. Every
other request, and every one the app has no answer for, takes uvicorn's path unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from api.latest_fast import PATH, LatestTicks, answer_headers
from api.limits import MAX_HEAD_BYTES

_END_OF_HEAD = b"\r\n\r\n"  # llhttp, as uvicorn sets it up, takes no bare LF line ends
_REFUSAL = f"the request head is larger than {MAX_HEAD_BYTES} bytes"
_PARSE_URL_MAX = 65_535
_HOT_PATH = PATH.encode()
# Request headers after which some middleware or uvicorn itself would act on the request.
_NOT_HOT_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"expect"))


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HttpToolsProtocol, refusing a request whose head (with its chunk-size lines
    and trailers, if chunked) passes MAX_HEAD_BYTES; uvicorn.run(http=...) takes it by its
    import path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._framing = 0  # bytes of the current request other than its body
        self._in_message = False  # the parser has begun a request it has not ended
        self._in_head = True  # the next byte belongs to a request's head (or precedes one)
        self._ended_in_read = False  # a request ended in the read being parsed
        self._body_in_read = 0
        self._tail = b""  # the read's last bytes: the end of a head may span two reads
        self._hot = self._hot_answer()
        self._answer: bytes | None = None  # the hot answer to write when the request ends

    def _hot_answer(self) -> LatestTicks | None:
        """The app's hot latest-ticks answer, unless this server or app does per request what
        that answer would skip (a concurrency limit, a root path, telemetry; the access log is
        asked per request), as each connection begins."""
        if self.limit_concurrency is not None or self.root_path:
            return None
        app = self.app
        while app is not None:  # uvicorn's wrappers, down to the app
            state = getattr(app, "state", None)
            if state is not None:
                # FastAPI's OpenTelemetry layer, once configured, must see every request.
                telemetry = getattr(app, "_native_telemetry", None)
                if telemetry is not None and telemetry.enabled():
                    return None
                return getattr(state, "latest_ticks", None)
            app = getattr(app, "app", None)
        return None

    def data_received(self, data: bytes) -> None:
        if self._in_head and self._framing + self._head_part(data) > MAX_HEAD_BYTES:
            self._refuse()
            return
        self._body_in_read = 0
        self._ended_in_read = False
        super().data_received(data)
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # the parser refused the request, or it became a WebSocket
        if not self._in_message:
            self._framing = 0
            return
        framing = len(data) - self._body_in_read
        # A request that began after another ended in this read gets the whole read's
        # framing: more than its own, so the bound holds.
        self._framing = framing if self._ended_in_read else self._framing + framing
        self._tail = data[-3:]
        if self._framing > MAX_HEAD_BYTES:
            self._refuse()

    def _head_part(self, data: bytes) -> int:
        """The bytes of `data` up to the end of the head being read, or all of them."""
        if self._in_message:  # the head began in an earlier read
            end = (self._tail + data).find(_END_OF_HEAD)
            return len(data) if end < 0 else end + len(_END_OF_HEAD) - len(self._tail)
        # llhttp skips empty lines before a request line; they count, but end no head.
        end = data.find(_END_OF_HEAD, len(data) - len(data.lstrip(b"\r\n")))
        return len(data) if end < 0 else end + len(_END_OF_HEAD)

    def _refuse(self) -> None:
        self.logger.warning("Refused a request: %s.", _REFUSAL)
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.transport.close()  # mid-answer: a 400 would land inside that answer
        else:
            self.send_400_response(_REFUSAL)

    # The parser's callbacks, which tell where a read's bytes belong.

    def on_message_begin(self) -> None:
        self._in_message = True
        self._in_head = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        url = self.url
        if self._hot is not None:
            self._answer = self._hot_body(url)
            if self._answer is not None:
                return  # written by on_message_complete, once the parser saw no body
        if len(url) <= _PARSE_URL_MAX or not url.startswith(b"/"):
            super().on_headers_complete()
            return
        # httptools' URL parser takes at most 65,535 bytes (llhttp's offsets are 16-bit), and
        # the longest latest-ticks query is about four times that (MAX_HEAD_BYTES): the query
        # is split off here, and uvicorn parses the path alone.
        path, _, query = url.partition(b"#")[0].partition(b"?")
        self.url = path
        super().on_headers_complete()  # builds the request's scope; its task has not run yet
        self.url = url  # what a WebSocket upgrade passes on
        self.scope["query_string"] = query

    def on_body(self, body: bytes) -> None:
        self._body_in_read += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._in_head = True
        self._ended_in_read = True
        if self._answer is None:
            super().on_message_complete()
            return
        body, self._answer = self._answer, None
        head = [STATUS_LINE[200]]
        for name, value in (*self.server_state.default_headers, *answer_headers(body)):
            head += (name, b": ", value, b"\r\n")
        head += (b"\r\n", body)
        self.transport.write(b"".join(head))  # one segment: the client wakes once
        self.on_response_complete()  # as after any answer: counted, keep-alive timer armed

    def _hot_body(self, url: bytes) -> bytes | None:
        """The hot answer's body for the request whose head just ended, or None for the ASGI
        path to answer it."""
        assert self._hot is not None
        parser = self.parser
        if (
            parser.get_method() != b"GET"
            or parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or parser.should_upgrade()
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.pipeline
            or self.flow.write_paused
            or (self.access_log and self.access_logger.isEnabledFor(logging.INFO))
            or len(url) > _PARSE_URL_MAX
        ):
            return None
        host = None  # the first Host header, as Starlette reads it
        for name, value in self.headers:
            if name in _NOT_HOT_HEADERS:
                return None
            if name == b"host" and host is None:
                host = value
        if not self._hot.lets_through(host or b""):
            return None
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            return None
        if parsed.path != _HOT_PATH:
            return None
        try:
            return self._hot.body(parsed.query or b"")
        except Exception:  # the ASGI path meets it again, and answers as for any error
            return None
