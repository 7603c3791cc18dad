"""Connection limits uvicorn lacks: a deadline for request headers, a cap on open connections, and
quiet logs under attack.

Why hand-written: uvicorn has no header-read timeout (its issue #157, "--timeout-request-start", is
still open), and `timeout_keep_alive` is reset by every received byte, so a client that trickles a
header byte at a time keeps its connection, and its file descriptor, for ever. Its
`limit_concurrency` only answers 503 to requests once too many connections are open: it still
accepts every connection, so 20,000 half-open ones exhaust the descriptors and /healthz stops
answering. ASGI middleware cannot help: it runs only once the headers are complete.

So `guarded_protocol(...)` subclasses uvicorn's own h11 protocol (passed as `uvicorn.run(http=...)`):
  * every connection must deliver a request's headers within `header_timeout` s of opening, or of
    its previous response, else it is closed (the body has its own limit in app.BodyLimit);
  * at most `max_connections` are open: a new one beyond that evicts the connection that has waited
    longest for its headers (an attacker's, as a real client sends its headers at once), provided
    that one has had its chance: it sent an incomplete header, or is older than EVICT_AFTER_S. A
    connection accepted in the same burst as hundreds of others has not been read yet, so it is not
    evicted for being slow. If nothing is evictable the new connection is let in anyway, up to twice
    the cap (the unread ones become evictable within EVICT_AFTER_S); beyond that it is closed.
Both count into `STATS`, logged at most once a minute (see RateLimit), not once per connection.
Under a flood what matters is how fast the listen queue drains, since a /healthz whose handshake
finds the queue full waits for the kernel's 1 s SYN retry. uvicorn runs on uvloop when it is
installed (the serve extra brings it): accepting and closing a connection then costs ~40% less CPU
(the 20,000 half-open connections of `digitlab bench serve --hostile`: 2.7 s of server CPU, not 4.3 s).
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from collections import OrderedDict
from itertools import islice

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from digitlab.errors import DigitlabError

log = logging.getLogger("digitlab.serve")

HEADER_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 1000
EVICT_AFTER_S = 0.5
STATS = {"header_timeouts": 0, "evicted": 0, "refused": 0}


def guarded_protocol(header_timeout: float = HEADER_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
    """A fresh protocol class (its own waiting list) with these limits."""

    class Guarded(_GuardedH11):
        pass

    Guarded.header_timeout, Guarded.max_connections = header_timeout, max_connections
    Guarded.waiting = OrderedDict()
    return Guarded


class _GuardedH11(H11Protocol):
    header_timeout: float
    max_connections: int
    waiting: OrderedDict  # protocols still owing their request headers, oldest first

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline, self._opened, self._partial = None, time.monotonic(), False
        over = len(self.connections) > self.max_connections
        if over and not self._evict_oldest() and len(self.connections) > 2 * self.max_connections:
            STATS["refused"] += 1
            transport.abort()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # headers complete (or the connection is ending)
            self._disarm()
        else:
            self._partial = True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # keep-alive: the next request's headers are due within the deadline too

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_overdue)
        self.waiting[self] = True

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None
        self.waiting.pop(self, None)

    def _headers_overdue(self) -> None:
        self._deadline = None
        self.waiting.pop(self, None)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            STATS["header_timeouts"] += 1
            _report()
            self.transport.abort()  # no 408: the client is not reading, and a reply costs a write

    def _evict_oldest(self) -> bool:
        now = time.monotonic()
        for victim in list(islice(self.waiting, 64)):  # oldest first; a bounded look keeps accepting O(1)
            if victim.transport.is_closing():
                self.waiting.pop(victim, None)
            elif victim is not self and (victim._partial or now - victim._opened >= EVICT_AFTER_S):
                victim._disarm()
                victim.transport.abort()
                STATS["evicted"] += 1
                _report()
                return True
        return False


_last_report = [0.0]


def _report() -> None:
    now = time.monotonic()
    if now - _last_report[0] >= 60:
        _last_report[0] = now
        log.warning("closing slow or excess connections (so far: %d without headers in time, %d evicted at the "
                    "connection cap, %d refused)", STATS["header_timeouts"], STATS["evicted"], STATS["refused"])


class RateLimit(logging.Filter):
    """Let each distinct message through at most `burst` times per `period` s, then say how many were
    dropped. Why: under attack uvicorn and asyncio log one line (or a traceback) per bad connection,
    which grew the log by 140 MB in 30 s."""

    def __init__(self, burst: int = 5, period: float = 60.0):
        super().__init__()
        self.burst, self.period = burst, period
        self.seen: dict[str, list] = {}  # template -> [window start, count, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        entry = self.seen.setdefault(str(record.msg)[:200], [now, 0, 0])
        if now - entry[0] >= self.period:
            if entry[2]:
                record.msg = f"{record.msg} (and {entry[2]} more like it in the last {self.period:g} s)"
            entry[:] = [now, 0, 0]
        entry[1] += 1
        if entry[1] > self.burst:
            entry[2] += 1
            return False
        if len(self.seen) > 1000:  # bounded memory whatever the messages
            self.seen.clear()
        return True


def quiet_logs(burst: int = 5, period: float = 60.0) -> None:
    """Attach one RateLimit to the loggers that speak per connection."""
    limit = RateLimit(burst, period)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio", "digitlab.serve"):
        logging.getLogger(name).addFilter(limit)


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (a server's usual first step); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core) and keeps freed
    memory in them; with the 40 threads of the request pool decoding images, RSS then grows far past
    what is in use. Two arenas keep it near the live size, at no measurable cost here. glibc only
    (mallopt M_ARENA_MAX = -8); elsewhere a no-op. Call before the threads start."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc and libc.mallopt(-8, arenas) == 1)
    except (OSError, AttributeError):
        return False


def check_port(host: str, port: int) -> None:
    """Fail before loading models if the address is taken, with a fix (uvicorn would only log it)."""
    if not 0 <= port <= 65535:
        raise DigitlabError(f"--port {port} is not a TCP port",
                            "use a port from 1 to 65535 (0: any free one), e.g. --port 8000")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        fix = ("pick another port with --port, or stop the program using it" if exc.errno == errno.EADDRINUSE
               else "use an address of this machine with --host (default 127.0.0.1)")
        raise DigitlabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", fix) from None


def uvicorn_options(host: str, port: int, max_connections: int, header_timeout: float,
                    access_log: bool) -> tuple[dict, str | None]:
    """uvicorn.run's settings with this module's limits, and a note when the connection cap had to be
    lowered to fit the open-files limit. Also quiets the per-connection logs and malloc's arenas."""
    if max_connections < 1 or not 0 < header_timeout <= 600:
        raise DigitlabError(f"--max-connections {max_connections} / --header-timeout {header_timeout} is out of range",
                            "use at least 1 connection and a header timeout in (0, 600] seconds")
    fds = raise_fd_limit()
    # Up to 2x the cap can be open briefly, plus a few accept batches of `backlog` sockets each.
    backlog = max(64, min(2048, fds // 8))
    cap = max(1, min(max_connections, (fds - 4 * backlog - 100) // 2))
    note = None
    if cap < max_connections:
        note = f"note: --max-connections lowered to {cap} to fit the open-files limit ({fds}; raise `ulimit -n`)"
    quiet_logs()
    limit_malloc_arenas()
    return {"host": host, "port": port, "log_level": "warning", "access_log": access_log,
            "http": guarded_protocol(header_timeout, cap),
            "timeout_keep_alive": 5, "backlog": backlog, "h11_max_incomplete_event_size": 16 * 1024}, note
