"""One client connection of the native server: an ``asyncio.Protocol`` over llhttp.

The parser runs inside ``data_received``; each parsed request joins a queue and the
connection's one task answers the queue in order (pipelining). The task lives as long as the
connection: between requests it waits on a future, which the next request resolves (a task
created per request cost ~4% of a plain request's CPU). What bounds memory:

- a request head may not exceed ``max_header_bytes`` (431) nor a body ``max_body`` (413),
  both counted while the bytes arrive, not after;
- reading pauses while a second request waits behind the one being answered, and a
  response is not started while the transport's write buffer is above its high-water mark,
  so a client that sends but never reads cannot grow our buffers;
- a streamed reply waits for the client to drain before asking its producer for more (which stops
  reading the upstream); a streamed body (``stream_body``: a file upload) pauses reading past ``STREAM_HIGH``.

Timeouts (idle keep-alive, request head, request body, and a send that makes no progress) are
deadlines checked by the server's one ticker, so a request costs no timer of its own.
Connections past the server's ``max_connections`` get a 503 on arrival and are closed
(``NativeListener.refuse``). The writing half (batching, backpressure, the send timeout's check) is
``writes.Writes``; what a connection reads from its listener is ``host.ConnectionHost``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from urllib.parse import parse_qsl, unquote

import httptools

from ..core.errors import GatewayError, InvalidRequest
from ..core.exchange import HEADERS_FIRST_ABOVE, Exchange, StreamReply
from .envelope import error_reply
from .host import ConnectionHost
from .tls import Untrusted
from .listener import next_request_id
from .parsed import ParsedRequest
from .refusals import ExpectationFailed, Refuse, RequestTimeout, UriTooLong, head_too_large, too_large
from .wire import CONTINUE, Headers
from .writes import Writes

log = logging.getLogger("sluice.http")

_NO_QUERY: dict[str, str] = {}
_SMALL_PIECE = 4096  # body pieces under this are gathered into one buffer (on_body)
STREAM_HIGH = 1024 * 1024  # bytes of a streamed body waiting for its route before reading pauses
SHED_LINGER = 1.0  # seconds a connection refused for being over the bound may take to read its 503
# Headers' own get and `in` lower-case the name for callers; the parser's names are lower-cased already
_get = dict.get
_has = dict.__contains__


class Connection(Writes):
    """Parses requests off one socket and writes their answers back (``Writes``), in order."""

    def __init__(self, server: ConnectionHost) -> None:
        super().__init__(server)
        self._parser = httptools.HttpRequestParser(self)
        self._peer: str | None = None
        self._cert: object = None  # the client certificate as the listener read it (mTLS), or None
        self._queue: deque[ParsedRequest] = deque()
        self._task: asyncio.Task[None] | None = None  # the runner, while it answers a request
        self._runner: asyncio.Task[None] | None = None  # this connection's task, from its first request
        self._more: asyncio.Future[None] | None = None  # the runner waits on it between requests
        self._closing = False  # answer what is queued, then close
        self._parsing = True  # false after a framing error: the rest of the bytes mean nothing
        self._read_paused = False
        # Request being parsed
        self._url = b""
        self._hdrs: Headers | None = None
        self._header_count = 0
        self._head_bytes = 0
        self._in_head = False
        self._current: ParsedRequest | None = None
        self._refused = False  # answered 503 on arrival (too many connections); lingers until read
        self.deadline = 0.0  # when the ticker closes us (0: none); see module doc

    # -- transport events --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        server = self._server
        if len(server.connections) >= server.max_connections:
            # Over the bound: a 503, then what the client sends is read and dropped, so that the
            # close after its answer (or SHED_LINGER) is a FIN that cannot overtake the 503.
            self._parsing = False
            self._closing = True
            if server.refuse(transport):  # type: ignore[arg-type]
                self._refused = True
                self._loop.call_later(SHED_LINGER, self.abort)
            return
        if server.peer_cert is not None:
            try:
                self._cert = server.peer_cert(transport.get_extra_info("ssl_object"))
            except (Untrusted, ValueError):  # a resumed session's certificate no CA vouches for now: refused as its
                self._parsing = False  # full handshake would be (ValueError: one OpenSSL took that we cannot read)
                transport.abort()
                return
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if peer else None
        transport.set_write_buffer_limits(high=self._server.write_high_water)  # type: ignore[attr-defined]
        self._server.connections.add(self)
        self.deadline = self._loop.time() + self._server.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._refused:
            self._refused = False
            self._server.shedding -= 1
        if self._more is not None and self._runner is not None:
            self._runner.cancel()  # waiting for a next request that cannot come
        self._server.connections.discard(self)
        for req in self._queue:
            req.wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        task = self._task
        if task is not None and self._streaming:
            # The client left mid-stream: stop the producer now, which closes the upstream.
            task.cancel()

    def eof_received(self) -> bool:
        if self._streaming:
            # As nginx does: the end of a stream's client is the client gone (a socket that is
            # only half-closed would tell us no sooner than the next event's write).
            return False
        # A half-closed client may still read: answer what it sent, then close.
        self._closing = True
        if self._parsing and (self._in_head or self._current is not None):
            # What was started can never finish now: say so instead of waiting for a deadline.
            self._stop_parsing(InvalidRequest("The request ended before it was complete.", code="bad_http_request"))
        if self._task is None and not self._queue:
            return False
        return True

    def data_received(self, data: bytes) -> None:
        if not self._parsing:
            return
        if self._in_head or not self._queue or self._current is None:
            # Count head bytes as they arrive: llhttp buffers a header until it is whole.
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop_parsing(None)  # no protocol switching here: answer the request, then close
        except httptools.HttpParserError as exc:
            refusal = exc.__context__
            self._stop_parsing(refusal.error if isinstance(refusal, Refuse)
                               else InvalidRequest("The request could not be parsed as HTTP/1.1.", code="bad_http_request"))
            return
        if self._in_head and self._head_bytes > self._server.max_header_bytes:
            self._stop_parsing(head_too_large())

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._hdrs = Headers()
        self._header_count = 0
        self.deadline = self._loop.time() + self._server.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        server = self._server
        hdrs = self._hdrs
        assert hdrs is not None
        if len(name) + len(value) > server.max_header_field_bytes or self._header_count >= server.max_headers:
            raise Refuse(head_too_large())
        self._header_count += 1
        key = name.decode("latin-1").lower()
        if not _has(hdrs, key):  # the key is lower-cased already: the plain dict's own lookups
            hdrs[key] = value.decode("latin-1")
        elif key == "transfer-encoding":
            # a second Transfer-Encoding is how requests get smuggled
            raise Refuse(InvalidRequest("Repeated Transfer-Encoding headers are refused.", code="bad_http_request"))

    def on_headers_complete(self) -> None:
        parser = self._parser
        server = self._server
        self._in_head = False
        self._head_bytes = 0
        hdrs = self._hdrs
        assert hdrs is not None
        req = ParsedRequest(parser.get_method().decode("ascii", "replace"), self._url, hdrs, parser.should_keep_alive(),
                       parser.get_http_version() == "1.0")
        self._current = req
        queue = self._queue
        queue.append(req)
        if len(self._url) > server.max_url_bytes:
            req.error = UriTooLong("The request URL is too long.")
        te = _get(hdrs, "transfer-encoding")
        cl = _get(hdrs, "content-length")
        if te is not None:
            req.chunked = True
        elif cl is not None:
            req.length = int(cl)  # llhttp has already refused anything but digits
            if req.length > server.max_body and req.length > self._body_limit(req):
                req.error = req.error or too_large(req.max_body)
        expect = _get(hdrs, "expect")
        if expect is not None:
            if expect.lower() == "100-continue":
                req.expect = True
            else:
                req.error = req.error or ExpectationFailed("Only 'Expect: 100-continue' is supported.")
        if req.error is not None:
            # Answer without reading the body; the connection cannot be reused after.
            req.complete = True
            self._stop_parsing(None)
            self._schedule()
            return
        self.deadline = self._loop.time() + server.body_timeout
        if len(queue) > 1:
            self._pause_reading()  # pipelined: one request in hand is enough
        self._schedule()

    def on_body(self, body: bytes) -> None:
        req = self._current
        assert req is not None
        req.size += len(body)
        limit = self._server.max_body
        if req.size > limit and req.size > (limit := self._body_limit(req)):
            req.body.clear()
            raise Refuse(too_large(limit))
        pieces = req.body
        if req.stream:
            pieces.append(body)
            if req.size - req.taken > STREAM_HIGH:
                self._pause_reading()  # the route takes what waits, then reading resumes
            req.wake()
            return
        if not pieces or len(body) >= _SMALL_PIECE:
            pieces.append(body)  # the common case: the body in one or a few reads, joined once at the end
        elif type(pieces[-1]) is bytearray:
            pieces[-1] += body
        else:
            # Tiny chunks (a chunked body of one-byte chunks) gather in one buffer: a bytes object
            # each would cost 40 times the body's size in memory.
            pieces.append(bytearray(body))

    def _body_limit(self, req: ParsedRequest) -> int:
        """Past the listener's body limit: the larger one of the route the request is for (a batch file upload),
        asked once per request; the listener's own for every other route."""
        if not req.max_body:
            try:
                handler, _ = self._server.router.resolve(req.method, req.url.split(b"?", 1)[0].decode("latin-1"))
            except GatewayError:
                handler = None
            req.max_body = max(self._server.max_body, getattr(handler, "max_body", 0))
        return req.max_body

    def on_message_complete(self) -> None:
        req = self._current
        assert req is not None
        req.complete = True
        self._current = None
        if self._task is None or req is self._queue[0]:
            self.deadline = 0.0
        req.wake()

    # -- answering -----------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._task is None and self._queue:
            more = self._more
            if more is not None:
                self._more = None
                self._task = self._runner
                more.set_result(None)
            else:
                self._task = self._runner = self._loop.create_task(self._run())

    async def _run(self) -> None:
        """Answer the queue whenever it has requests, until the connection closes."""
        while True:
            await self._answer_queue()
            if self._closing or self._lost:
                return
            self._more = self._loop.create_future()
            await self._more

    def _stop_parsing(self, error: GatewayError | None) -> None:
        """No more requests from this connection: answer what is queued (and the error), then close."""
        self._parsing = False
        self._closing = True
        self._pause_reading()
        if error is not None:
            req = self._current
            if req is None:
                # A head that never completed: answer it with its own error.
                req = ParsedRequest("GET", b"", Headers(), False)
                self._queue.append(req)
            if req.error is None:
                req.error = error
            req.complete = True
            req.wake()
            self._current = None
        self._schedule()
        if self._task is None and not self._queue:
            self._close()

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None and not self._lost:
            self._read_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self._parsing and not self._lost:
            self._read_paused = False
            self._transport.resume_reading()  # type: ignore[union-attr]

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    async def _answer_queue(self) -> None:
        queue = self._queue
        try:
            while queue and not self._lost:
                req = queue[0]
                keep = await self._answer(req)
                queue.popleft()
                if not keep:
                    self._closing = True
                    break
                if len(queue) <= 1:
                    self._resume_reading()
        except asyncio.CancelledError:
            self._closing = True
        except Exception as exc:  # never leave a connection hanging on a bug of ours
            log.error("native server: unhandled %s", type(exc).__name__)
            self._closing = True
        finally:
            self._task = None
            self._streaming = False
        if self._closing or self._lost:
            queue.clear()
            self._close()
            return
        server = self._server
        if self._current is None and not self._in_head:
            self.deadline = self._loop.time() + (server.keepalive_timeout if not queue else server.body_timeout)
        elif self._in_head:
            self.deadline = self._loop.time() + server.header_timeout
        else:
            self.deadline = self._loop.time() + server.body_timeout
        if server.draining and not queue and self._current is None and not self._in_head:
            self._close()

    async def _answer(self, req: ParsedRequest) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        server = self._server
        rid = next_request_id()
        if req.error is None and not req.complete:
            error = await self._before_body(req)
            if error is not None:
                req.error = error
                self._stop_parsing(None)
        if req.error is not None:
            await self._write_reply(error_reply(self._in_route_shape(req, req.error)), rid, False, req.head)
            return False
        path = req.url
        query: dict[str, str] = _NO_QUERY
        q = path.find(b"?")
        if q >= 0:
            if len(path) > q + 1:
                query = dict(parse_qsl(path[q + 1:].decode("latin-1")))
            path = path[:q]
        text = path.decode("latin-1")
        if "%" in text:
            text = unquote(text)
        try:
            handler, params = server.router.resolve(req.method, text)
            if req.stream:
                reply = await self._streamed(req, handler, Exchange(
                    req.method, text, params, query, req.headers, b"", self._peer, rid, self._cert, server.served))
            else:
                body = b"".join(req.body) if req.body else b""
                req.body = []
                reply = await handler(Exchange(req.method, text, params, query, req.headers, body, self._peer, rid,
                                               self._cert, server.served))
        except GatewayError as exc:
            reply = error_reply(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the last line of defence: log the type, show nothing inside
            log.error("unhandled error on %s %s: %s", req.method, text[:200], type(exc).__name__)
            reply = error_reply(GatewayError("The server had an error processing your request.", code="internal_error"))
        keep = req.keep_alive and not server.draining
        if server.access_log:
            log.info('%s "%s %s" %d %s', self._peer, req.method, text[:200], reply.status, rid)
        if isinstance(reply, StreamReply):
            return await self._write_stream(reply, rid, keep, req)
        await self._write_reply(reply, rid, keep, req.head)
        return keep

    def _in_route_shape(self, req: ParsedRequest, exc: GatewayError) -> GatewayError:
        """A refusal made while parsing (a body too large, a URL too long), in the error shape of the route
        it was for: a route whose API has its own (Anthropic's) says so with a ``refusal`` method."""
        path = req.url.split(b"?", 1)[0].decode("latin-1")
        try:
            handler, _ = self._server.router.resolve(req.method, path)
        except GatewayError:
            return exc
        shape = getattr(handler, "refusal", None)
        return exc if shape is None or exc.rendered is not None else shape(exc)

    async def _before_body(self, req: ParsedRequest) -> GatewayError | None:
        """A body still to come: decide from the headers first, send 100 Continue, then wait for it."""
        server = self._server
        if req.chunked or req.length > HEADERS_FIRST_ABOVE or req.expect:
            path = req.url.split(b"?", 1)[0].decode("latin-1")
            try:
                handler, params = server.router.resolve(req.method, path)
            except GatewayError:
                handler = None  # the answer after the body names the error; nothing to ask first
            check_headers = getattr(handler, "check_headers", None)
            if check_headers is not None:
                try:
                    await check_headers(Exchange(req.method, path, params, _NO_QUERY, req.headers, b"", self._peer, "",
                                                 self._cert, server.served))
                except GatewayError as exc:
                    return exc
            if getattr(handler, "stream_body", None) is not None and not req.complete:
                req.stream = True  # the route reads the body as it comes (``_streamed``)
        if req.expect and not self._lost and not req.complete:
            self._transport.write(CONTINUE)  # type: ignore[union-attr]
        if not req.complete and not req.stream:
            req.waiter = self._loop.create_future()
            self._resume_reading()
            await req.waiter
            req.waiter = None
        return None

    async def _streamed(self, req: ParsedRequest, handler: object, ex: Exchange) -> object:
        """A route that reads its body as it arrives; answered once the body is read to its end (what it did not
        take is dropped, so a client still sending reads the answer, not a reset), or with the body's refusal."""
        pieces = self._body_pieces(req)
        try:
            reply = await handler.stream_body(ex, pieces)  # type: ignore[attr-defined]
        except Exception as exc:
            if not isinstance(exc, GatewayError):
                log.error("unhandled error on %s %s: %s", req.method, ex.path[:200], type(exc).__name__)
            reply = error_reply(exc if isinstance(exc, GatewayError) else GatewayError(
                "The server had an error processing your request.", code="internal_error"))
        try:
            async for _ in pieces:  # what it did not take, dropped piece by piece
                pass
        except GatewayError as exc:
            return error_reply(self._in_route_shape(req, exc))
        return reply

    async def _body_pieces(self, req: ParsedRequest):  # type: ignore[no-untyped-def]
        """The pieces of a streamed body as they arrive; raises its refusal (too large, timed out, cut)."""
        while True:
            if req.body:
                pieces, req.body, req.taken = req.body, [], req.size
                self._resume_reading()
                self.deadline = self._loop.time() + self._server.body_timeout  # a body that makes progress
                for piece in pieces:
                    yield bytes(piece)
            elif req.error is not None:
                raise req.error
            elif req.complete:
                return
            elif self._lost:
                raise InvalidRequest("The request ended before it was complete.", code="bad_http_request")
            else:
                req.waiter = self._loop.create_future()
                await req.waiter

    # -- the server's hooks --------------------------------------------------------------

    def expire(self) -> None:
        """The ticker found our deadline passed: say why if a request was under way, then close."""
        self.deadline = 0.0
        if self._task is not None and (not self._queue or self._queue[0].complete):
            return  # a request is being answered; its own timeouts govern it
        if self._in_head or (self._queue and not self._queue[0].complete):
            self._stop_parsing(RequestTimeout("The request was not received in time."))
            return
        self._close()

    def shutdown(self) -> None:
        """Graceful stop: finish what is being answered, take nothing new."""
        self._closing = True
        if self._task is None and not self._queue:
            self._close()

    def abort(self) -> None:
        """Cut the connection and stop its work (the drain deadline passed, or a refused one lingered)."""
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.abort()
