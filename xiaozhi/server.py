"""The web server: Daphne with the transport limits it lacks. ``python -m xiaozhi.server -b 0.0.0.0 -p 8000``.

Daphne (Twisted and autobahn, below Channels) leaves three doors open, each probed as an outage:

- A request may take for ever to arrive: Twisted's idle timer restarts on every byte, so a client
  sending one header line a second holds its descriptor indefinitely, and 1,200 such clients use up
  a 1,024-descriptor process. Here the whole request, head and body, must arrive within
  ``server.request_timeout`` of the connection (or of the previous response on a kept-alive one);
  otherwise it is answered 408 and closed.
- An oversized request head gets no answer: Twisted drops a line over 16 KB silently, and over the
  total it writes a bare 400 and closes while the client is still sending, so the client sees a
  reset. Here it is answered 431 (a malformed head 400) with a body, and what the client still
  sends is read and discarded for a moment, so the answer reaches it before the close.
- Incoming WebSocket frames wait for the application in an unbounded queue: a client sending faster
  than its consumer handles grows the process by gigabytes. Here the socket is no longer read once
  ``server.max_queued_frames`` frames or ``server.max_queued_bytes`` bytes wait, and is read again
  when half have been taken: a fast sender is slowed by TCP, and nothing it sent is lost (until it
  disconnects: the frames it left queued are dropped then, none could be answered).

Each refusal is counted (``http_requests_timed_out``, ``http_heads_too_large``, ``http_bad_requests``,
``ws_reads_paused`` in voice.live_stats) rather than logged: a hostile client would fill the log.
The limits live in performance.yaml's ``server`` section. autobahn's per-frame receive work is made
cheaper for small frames by ``xiaozhi.ws_frames``. Everything else is Daphne's own: its
command line (-b, -p, -u, --proxy-headers, ...); the application defaults to ours.
"""
# daphne.server installs Twisted's asyncio reactor: it must be imported before anything imports Twisted.
import daphne.server  # isort:skip

import asyncio
import logging
import sys
from functools import partial

from daphne import cli
from daphne.http_protocol import HTTPFactory
from twisted.web import http

from voice import live_stats
from xiaozhi import ws_frames

log = logging.getLogger(__name__)

DEFAULT_APPLICATION = "xiaozhi.asgi:application"


class LimitedHTTPChannel(http.HTTPChannel):
    """Twisted's HTTP/1.1 channel with a hard deadline per request and answered size refusals."""

    LINGER_SECONDS = 2.0  # after a refusal, how long what the client still sends is read and dropped
    LINGER_BYTES = 1 << 20  # ... and at most how much of it
    abortTimeout = 5  # after a close, seconds a client that reads nothing gets before the socket is aborted

    def __init__(self, limits):
        super().__init__()
        self.request_timeout = limits.request_timeout
        # MAX_LENGTH bounds one line (LineReceiver drops the connection silently past it), the other the total.
        self.totalHeadersSize = self.MAX_LENGTH = limits.max_header_bytes
        self._deadline = None
        self._linger = None
        self._started = False  # whether any byte of the awaited request has arrived
        self._refused = False
        self._discarded = 0

    # -- the deadline: armed at the connection and after each response, disarmed by a complete request --
    def connectionMade(self):
        super().connectionMade()
        self._arm()

    def dataReceived(self, data):
        self._started = True
        super().dataReceived(data)

    def allContentReceived(self):
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request):
        self._arm()  # the next request on a kept-alive connection has the same time to arrive
        super().requestDone(request)

    def connectionLost(self, reason):
        self._disarm()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)

    def _arm(self):
        self._disarm()
        self._started = False
        self._deadline = self.callLater(self.request_timeout, self._too_slow)

    def _disarm(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self):
        self._deadline = None
        if self.transport is None or self.transport.disconnecting or self._refused:
            return
        if not self._started:  # an idle kept-alive connection: nothing to answer
            self.loseConnection()
            return
        live_stats.incr("http_requests_timed_out")
        log.debug("closing %s: no complete request within %s s (server.request_timeout)",
                  self.transport.getPeer(), self.request_timeout)
        self._refuse(408, b"Request Timeout", f"The request did not arrive within {self.request_timeout:g} s.",
                     linger=False)

    # -- refusals with an answer ------------------------------------------------------------------------
    def lineReceived(self, line):
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse_too_large()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line):
        self._discarded += len(line)
        self._refuse_too_large()

    def _respondToBadRequestAndDisconnect(self):
        """Twisted's answer to a malformed request (a bare 400 and an abrupt close), with a body and a linger."""
        live_stats.incr("http_bad_requests")
        self._refuse(400, b"Bad Request", "Malformed HTTP request.")

    def _refuse_too_large(self):
        live_stats.incr("http_heads_too_large")
        log.debug("refusing %s: request head over %d bytes (server.max_header_bytes)",
                  self.transport.getPeer(), self.totalHeadersSize)
        self._refuse(431, b"Request Header Fields Too Large",
                     f"The request line and headers must fit in {self.totalHeadersSize} bytes.")

    def _refuse(self, status: int, reason: bytes, text: str, linger: bool = True):
        """Answer and close. With ``linger``, close our side only, then read and drop what the client
        is still sending for a moment: closing with unread data makes the kernel send a reset, and the
        client loses the answer it has not read yet."""
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._disarm()
        self.setTimeout(None)
        body = (text + "\n").encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.clearLineBuffer()
        self.dataReceived = self._discard  # parse nothing more
        if linger and hasattr(self.transport, "loseWriteConnection"):
            self.transport.loseWriteConnection()
            self._linger = self.callLater(self.LINGER_SECONDS, self.transport.abortConnection)
        else:
            self.loseConnection()
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)

    def _discard(self, data):
        self._discarded += len(data)
        if self._discarded > self.LINGER_BYTES:
            self.transport.abortConnection()


class LimitedHTTPFactory(HTTPFactory):
    """Daphne's HTTP factory building :class:`LimitedHTTPChannel` (HTTP/1.1; TLS and HTTP/2 belong to the proxy)."""

    def protocol(self):  # called by Factory.buildProtocol as self.protocol()
        return LimitedHTTPChannel(self.server.limits)

    def acceptableProtocols(self):
        return [b"http/1.1"]


class FlowControlledQueue(asyncio.Queue):
    """An application instance's receive queue that stops its connection being read while too full.

    ``_put`` and ``_get`` are asyncio.Queue's hooks for subclasses (as in PriorityQueue): every put
    and get passes through them, on the event loop the Twisted reactor runs on."""

    def __init__(self, max_frames: int, max_bytes: int, pause, resume):
        super().__init__()
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.pause, self.resume = pause, resume
        self.queued_bytes = 0
        self.paused = False

    @staticmethod
    def _size(message: dict) -> int:
        return len(message.get("bytes") or message.get("text") or b"")

    def _put(self, item):
        if item.get("type") == "websocket.disconnect" and self.qsize():
            # The client is gone: what it sent last can no longer be answered. Without this a client
            # that floods and then resets keeps its consumer (and its slot) busy for seconds.
            live_stats.incr("ws_frames_dropped_after_disconnect", self.qsize())
            self._queue.clear()
            self.queued_bytes = 0
        super()._put(item)
        self.queued_bytes += self._size(item)
        if not self.paused and (self.qsize() > self.max_frames or self.queued_bytes > self.max_bytes):
            self.paused = True
            live_stats.incr("ws_reads_paused")
            self.pause()

    def _get(self):
        item = super()._get()
        self.queued_bytes -= self._size(item)
        if self.paused and self.qsize() <= self.max_frames // 2 and self.queued_bytes <= self.max_bytes // 2:
            self.paused = False
            self.resume()
        return item


class LimitedServer(daphne.server.Server):
    """Daphne's server with the factory above and flow-controlled WebSocket receive queues."""

    def __init__(self, *args, limits=None, **kwargs):
        super().__init__(*args, **kwargs)
        if limits is None:
            from voice.conf import performance_config

            limits = performance_config().server
        self.limits = limits

    def run(self):
        from monitoring import collectors

        collectors.watch_event_loop(daphne.server.twisted_loop)  # its task count is a leak figure
        # Server.run builds its HTTP factory by this module-level name; ours is a drop-in subclass.
        daphne.server.HTTPFactory = LimitedHTTPFactory
        ws_frames.install()  # the WebSocket factory the same way, and autobahn's small-frame unmasking
        from devices import session_owner  # the application (and so Django) is loaded by now

        session_owner.start()  # close the rows a dead predecessor left open, then heartbeat our own
        super().run()

    def create_application(self, protocol, scope):
        """Daphne's create_application, with a :class:`FlowControlledQueue` for a WebSocket."""
        if scope["type"] != "websocket":
            return super().create_application(protocol, scope)
        assert "application_instance" not in self.connections[protocol]
        transport = protocol.transport
        input_queue = FlowControlledQueue(self.limits.max_queued_frames, self.limits.max_queued_bytes,
                                          pause=transport.pauseProducing, resume=transport.resumeProducing)
        scope.setdefault("asgi", {"version": "3.0"})
        instance = self.application(scope=scope, receive=input_queue.get, send=partial(self.handle_reply, protocol))
        if protocol not in self.connections:
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(instance, loop=asyncio.get_event_loop())
        return input_queue


class CommandLineInterface(cli.CommandLineInterface):
    description = "The xiaozhi server: Daphne with the transport limits of performance.yaml's server section"
    server_class = LimitedServer

    def __init__(self):
        super().__init__()
        for action in self.parser._actions:  # the application becomes optional, defaulting to ours
            if action.dest == "application":
                action.nargs, action.default, action.required = "?", DEFAULT_APPLICATION, False


def main(argv=None) -> None:
    CommandLineInterface().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
