"""What the listener answers when aiohttp cannot even parse a request.

aiohttp's own answer is plain text that quotes the offending bytes back (an oversized
header comes back in the 400 body) and logs the whole exception. Here every such request
gets an OpenAI-shaped error with a fixed message: 431 for headers too large or too many,
414 for a request line too long, 400 for anything else malformed; the log names only the
kind of error.
"""

from __future__ import annotations

import logging

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from ..core.errors import GatewayError, InvalidRequest, error_body

log = logging.getLogger("sluice.http")

MAX_FIELD_BYTES = 16384  # one header line (name and value); aiohttp's default is 8190
# lingering_time 0: when a handler answers without reading the body (a refusal from the
# headers, 413, 404), close the connection after the answer instead of reading and
# dropping up to 10 s of whatever the caller keeps sending.
HANDLER_ARGS = {"max_field_size": MAX_FIELD_BYTES, "lingering_time": 0.0}


def parse_error(exc: BaseException | None, status: int) -> GatewayError:
    """The caller-facing error for a request aiohttp refused before any handler ran."""
    if isinstance(exc, LineTooLong):
        # The parser names the limit it hit: the header limit, or else the request line's.
        if exc.args[1] == MAX_FIELD_BYTES:
            return InvalidRequest(f"A request header is larger than {MAX_FIELD_BYTES} bytes.",
                                  code="request_header_too_large", status=431)
        return InvalidRequest("The request line (method and URL) is too long.", code="uri_too_long", status=414)
    if isinstance(exc, BadHttpMessage):
        if "Too many headers" in exc.message:
            return InvalidRequest("The request has too many headers.", code="request_header_too_large", status=431)
        return InvalidRequest("The request is not valid HTTP/1.1.", code="bad_http_request")
    if status < 500:
        return InvalidRequest("The request could not be read.", code="bad_http_request", status=status)
    return GatewayError("The server had an error processing your request.", code="internal_error")


class EnvelopeProtocol(RequestHandler):
    """aiohttp's connection handler, answering unparseable requests with the error envelope."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # part of an answer is out: the connection is broken either way
            raise ConnectionError("response already started")
        err = parse_error(exc, status)
        # The exception's text holds the caller's bytes (headers may carry credentials): log its kind only.
        log.info("refused an unreadable request from %s: %s (%d)", request.remote, type(exc).__name__, err.status)
        resp = web.Response(status=err.status, body=msgspec.json.encode(error_body(err)),
                            content_type="application/json")
        resp.force_close()
        return resp


class EnvelopeServer(web.Server):
    """An aiohttp server whose connections use ``EnvelopeProtocol``."""

    def __call__(self) -> RequestHandler:
        return EnvelopeProtocol(self, loop=self._loop, **self._kwargs)


class EnvelopeRunner(web.AppRunner):
    """``AppRunner`` serving through ``EnvelopeServer``."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # AppRunner builds a plain Server with no hook for its handler class; the subclass adds
        # no state, so re-classing it is the narrowest change (checked by the 431/400 tests).
        server.__class__ = EnvelopeServer
        return server
