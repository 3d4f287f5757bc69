"""Owns the PostgreSQL LISTEN side of the invalidation channel: one thread, one psycopg connection
outside the key store's pool, reconnection with backoff. Must not read the channel nor touch keys:
it tells its owner that the channel moved, and the owner's poll (the guarantee) does the rest.

A notification carries the seq of a new row and nothing else; the owner polls the channel from
its last seq, so a notification lost while the connection was down costs nothing but speed: the
listener calls its owner once more after each reconnection, which catches up.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import threading
from collections.abc import Callable
from typing import Any, Final

import sqlalchemy as sa

from .._repr import safe_repr

__all__ = ["Listener", "listen_connect_args", "notify_channel"]

log = logging.getLogger("ccvault")

CHANNEL_PREFIX: Final = "ccvault_inv_"
APPLICATION_NAME: Final = "ccvault-listen"
_CONNECT_TIMEOUT_S = 5
_IDLE_CHECK_S = 30.0  # a connection silent this long is checked (SELECT 1): a dead one reconnects
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0
_STOP_WAIT_S = 1.0
_MIN_GAP_S = 0.05  # notifications within this gap are handled together: one poll, not one each


def notify_channel(installation_id: str) -> str:
    """The NOTIFY channel of an installation (database-wide in PostgreSQL, so named after it)."""
    return CHANNEL_PREFIX + installation_id


def listen_connect_args(url: sa.URL) -> dict[str, Any] | None:
    """``psycopg.connect`` keyword arguments for a PostgreSQL URL of any driver (psycopg,
    psycopg_async, asyncpg...), as SQLAlchemy's psycopg dialect reads it; None when psycopg is
    not installed (an asyncpg-only installation: the poll alone carries the channel)."""
    try:
        import psycopg  # noqa: F401
        from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
    except ImportError:
        return None
    dialect = PGDialect_psycopg()  # type: ignore[no-untyped-call]
    _, kwargs = dialect.create_connect_args(  # type: ignore[no-untyped-call]
        url.set(drivername="postgresql+psycopg")
    )
    return dict(kwargs)


class Listener:
    """``LISTEN <channel>`` on a connection of its own, in a daemon thread.

    ``on_notify(can_poll)`` is called from the thread once per burst of notifications (at most
    every 50 ms) and after each (re)connection; ``can_poll`` is passed through as given.
    A lost connection is logged at WARNING once per outage and retried with backoff (0.1 s
    doubling to 5 s, jittered); ``stop()`` ends the thread and closes the connection."""

    def __init__(
        self,
        connect_args: dict[str, Any],
        channel: str,
        on_notify: Callable[[bool], None],
        *,
        can_poll: bool,
        where: str,
        describe: Callable[[BaseException], str],
    ) -> None:
        self._args = {
            **connect_args,
            "autocommit": True,
            "application_name": APPLICATION_NAME,
            "connect_timeout": _CONNECT_TIMEOUT_S,
        }
        self._channel = channel
        self._on_notify = on_notify
        self._can_poll = can_poll
        self._where = where
        self._describe = describe
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="ccvault-listen", daemon=True)
        self.connections = 0  # successful LISTENs so far (the first one and each reconnection)

    @safe_repr
    def __repr__(self) -> str:
        state = "stopped" if self._stop.is_set() else "listening"
        return f"Listener({self._where!r}, {state})"

    @property
    def channel(self) -> str:
        return self._channel

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            # A thread in the middle of a connection attempt ends when it gives up; close()
            # does not wait that long (the thread is a daemon, its connection is its own).
            self._thread.join(timeout=_STOP_WAIT_S)
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        import psycopg
        from psycopg import sql

        delay = 0.0
        failing = False
        while not self._stop.is_set():
            conn: Any = None
            try:
                conn = psycopg.connect(**self._args)
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                self.connections += 1
                if failing:
                    log.info("the invalidation listener is connected again to %s", self._where)
                failing, delay = False, 0.0
                self._call()  # (re)connected: the owner catches up from its last seq
                self._serve(conn)
            except Exception as exc:  # psycopg.Error, OSError: whatever cut the connection
                if self._stop.is_set():
                    break
                if not failing:
                    log.warning(
                        "the invalidation listener lost its connection to %s (%s): reconnecting; "
                        "meanwhile the poll alone carries shreds to this process",
                        self._where,
                        self._describe(exc),
                    )
                failing = True
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            if self._stop.is_set():
                break
            delay = min(_BACKOFF_MAX_S, max(_BACKOFF_FIRST_S, delay * 2))
            self._stop.wait(delay * random.uniform(0.8, 1.2))  # noqa: S311

    def _serve(self, conn: Any) -> None:
        """Wait for notifications (or a stop) until the connection fails."""
        fileno = conn.fileno()
        while not self._stop.is_set():
            ready, _, _ = select.select([fileno, self._wake_r], [], [], _IDLE_CHECK_S)
            if self._stop.is_set():
                return
            if not ready:
                conn.execute("SELECT 1")  # raises on a connection that died in silence
                continue
            # The socket is readable: a notification, or the server's goodbye (the next read
            # raises). Everything that arrived is taken in one go; one call for all of it.
            if sum(1 for _ in conn.notifies(timeout=0)):
                self._call()
                self._stop.wait(_MIN_GAP_S)
            elif conn.closed:
                raise OSError("the listener's connection closed")

    def _call(self) -> None:
        try:
            self._on_notify(self._can_poll)
        except Exception as exc:  # the owner logs its own failures; the thread stays up
            log.debug("invalidation listener callback failed: %s", type(exc).__name__)
