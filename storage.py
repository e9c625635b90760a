"""Where the portal keeps its state: the backend choice (`open_stores`), and the
memory backend's file for what must outlive a restart (STATE_DIR/portal.sqlite3).

Two backends, one set of stores, chosen by STATE_URL; handlers never know which runs:

    store            memory (default)               Redis (STATE_URL=redis://...)
    sessions         security.SessionStore          redis_store.RedisSessionStore
    magic_links      security.MagicLinkStore        redis_store.RedisMagicLinkStore
    limit_by_*       security.RateLimiter           redis_store.RedisRateLimiter
    drafts           drafts.DraftStore              redis_store.RedisDraftStore
    state            StateFile (below, SQLite)      redis_queue.RedisStateFile

Memory is for one process: a restart signs customers out (harmless with magic
links) and the SQLite file keeps the mail queue. Redis is for several processes:
every check is atomic in Redis, and a Redis restart signs customers out too.
Two caches stay in each process on either backend, as they only save Chatwoot
calls and a miss is always checked again: the files a customer may download
(attachments.KnownFiles) and rendered Markdown (markup).

What lives here, and why it is not in memory like sessions:

* `notification`: the reply-mail queue, one row per agent message. The message id is
  the primary key, so a message Chatwoot delivers twice (it does, under different
  delivery ids) is queued once; rows stay after they are done for DEDUP_DAYS so a late
  duplicate still finds its twin.
* `contact_language`: each contact's last chosen portal language, for their mails.
* `ticket_seen`: the newest message id each ticket's owner has seen in the portal, so
  a reply already read on screen is not mailed.
* `ticket_cancelled`: when the customer cancelled a ticket in the portal, so its page
  can say "Cancelled by you": Chatwoot only records that the API token's user
  resolved it. Forgotten once the ticket is seen open again.

Standard library `sqlite3`, WAL journal, one connection shared by the process's threads
behind one lock: a single writer, and every multi-statement change is one transaction
(`BEGIN IMMEDIATE`). `synchronous=NORMAL` with WAL survives a process crash (a power
cut may lose the last transactions: at worst a mail is sent twice or not queued).
"""

import dataclasses
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path

FILE_NAME = "portal.sqlite3"
# Done rows are kept this long to catch duplicate deliveries of the same message.
DEDUP_DAYS = 30
# Markers of tickets nobody has opened for this long are forgotten.
SEEN_DAYS = 180
PURGE_INTERVAL_SECONDS = 3600

SCHEMA = """
CREATE TABLE IF NOT EXISTS notification (
    message_id  INTEGER PRIMARY KEY,
    ticket_id   INTEGER NOT NULL,
    received_at REAL NOT NULL,
    due_at      REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL DEFAULT 'queued',  -- queued, sent, skipped, cancelled, failed
    done_at     REAL
);
CREATE INDEX IF NOT EXISTS notification_queued ON notification (state, ticket_id, due_at);
CREATE TABLE IF NOT EXISTS contact_language (
    contact_id INTEGER PRIMARY KEY,
    lang       TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ticket_seen (
    ticket_id  INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL,
    seen_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ticket_cancelled (
    ticket_id INTEGER PRIMARY KEY,
    at        REAL NOT NULL
);
"""


class StateError(Exception):
    """The state file cannot be opened or written."""


class StateUnavailable(Exception):
    """The shared state (Redis) did not answer: the request gets a 503, nothing typed is lost."""


@dataclasses.dataclass
class Stores:
    """Everything the portal keeps, from one backend."""

    backend: str  # "memory" or "redis"
    sessions: object
    magic_links: object
    limit_by_address: object
    limit_by_ip: object
    drafts: object
    state: object
    ping: object = lambda: None  # () -> None, or raises StateUnavailable (Redis)

    def close(self):
        self.state.close()


def open_stores(config, signer, clock, limits, draft_max_chars):
    """The stores STATE_URL asks for. `limits`: {"address": (n, seconds), "ip": (n, seconds)}.

    `clock` runs sessions, links, limits and drafts (tests move it); the mail queue
    runs on wall-clock time, as its worker threads do."""
    idle = config.session_idle_minutes * 60
    link_ttl = config.magic_link_minutes * 60
    # Text typed as a session ended: kept while the customer asks for a link
    # (as long again as a link lives) and uses it.
    draft_ttl = 2 * link_ttl
    if config.state_url:
        import redis_queue
        import redis_store
        client = redis_store.connect(config.state_url)
        keys = redis_store.Keys(config.state_prefix, config.session_secret)
        return Stores(
            "redis",
            redis_store.RedisSessionStore(client, keys, idle, clock),
            redis_store.RedisMagicLinkStore(client, keys, link_ttl, clock, signer),
            redis_store.RedisRateLimiter(client, keys, "limit-address", *limits["address"], clock=clock),
            redis_store.RedisRateLimiter(client, keys, "limit-ip", *limits["ip"], clock=clock),
            redis_store.RedisDraftStore(client, keys, draft_ttl, clock, draft_max_chars),
            redis_queue.RedisStateFile(client, keys, time.time),
            ping=redis_store.pinger(client),
        )
    from drafts import DraftStore
    from security import MagicLinkStore, RateLimiter, SessionStore
    return Stores(
        "memory",
        SessionStore(idle, clock),
        MagicLinkStore(link_ttl, clock, signer),
        RateLimiter(*limits["address"], clock=clock),
        RateLimiter(*limits["ip"], clock=clock),
        DraftStore(draft_ttl, clock, draft_max_chars),
        StateFile(config.state_dir, time.time),
    )


class StateFile:
    def __init__(self, folder, clock=time.time):
        self.path = Path(folder) / FILE_NAME
        self._clock = clock
        self._lock = threading.Lock()
        self._next_purge = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # isolation_level=None: no implicit transactions; BEGIN IMMEDIATE where it matters.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise StateError(f"cannot use the state file {self.path}: {error}") from None

    def close(self):
        with self._lock:
            self._db.close()

    # -- the notification queue ----------------------------------------------

    def enqueue(self, message_id, ticket_id, due_at):
        """Queue one agent message; False when this message id was seen before."""
        now = self._clock()
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO notification (message_id, ticket_id, received_at, due_at) VALUES (?, ?, ?, ?)",
                (int(message_id), int(ticket_id), now, due_at))
            return cursor.rowcount == 1

    def due_tickets(self, now, exclude=(), limit=8):
        """Tickets whose earliest queued message is due, most overdue first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT ticket_id, MIN(due_at) AS due FROM notification WHERE state = 'queued' "
                "GROUP BY ticket_id HAVING due <= ? ORDER BY due LIMIT ?",
                (now, limit + len(exclude))).fetchall()
        return [ticket_id for ticket_id, _ in rows if ticket_id not in exclude][:limit]

    def next_due_at(self):
        """When the next queued message falls due, or None when the queue is empty."""
        with self._lock:
            return self._db.execute("SELECT MIN(due_at) FROM notification WHERE state = 'queued'").fetchone()[0]

    def queued_for(self, ticket_id):
        """[(message_id, received_at, attempts)] queued for one ticket, oldest first."""
        with self._lock:
            return self._db.execute(
                "SELECT message_id, received_at, attempts FROM notification "
                "WHERE state = 'queued' AND ticket_id = ? ORDER BY message_id", (int(ticket_id),)).fetchall()

    def finish(self, message_ids, state):
        """Mark messages done: sent, skipped, cancelled or failed."""
        now = self._clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("UPDATE notification SET state = ?, done_at = ? WHERE message_id = ? AND state = 'queued'",
                                 [(state, now, int(m)) for m in message_ids])
            self._db.execute("COMMIT")
            self._purge_if_due(now)

    def retry_later(self, message_ids, due_at):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE notification SET due_at = ?, attempts = attempts + 1 WHERE message_id = ? AND state = 'queued'",
                [(due_at, int(m)) for m in message_ids])
            self._db.execute("COMMIT")

    def cancel_seen(self, ticket_id, up_to_message_id):
        """The customer saw the ticket: its queued messages up to this id need no mail."""
        now = self._clock()
        with self._lock:
            cursor = self._db.execute(
                "UPDATE notification SET state = 'cancelled', done_at = ? "
                "WHERE state = 'queued' AND ticket_id = ? AND message_id <= ?",
                (now, int(ticket_id), int(up_to_message_id)))
            return cursor.rowcount

    def queue_stats(self, now):
        """(queued messages, age in seconds of the oldest one or None)."""
        with self._lock:
            count, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(received_at) FROM notification WHERE state = 'queued'").fetchone()
        return count, (None if oldest is None else max(0.0, now - oldest))

    def states(self):
        """{state: count} over the whole table (tests and the benchmark)."""
        with self._lock:
            return dict(self._db.execute("SELECT state, COUNT(*) FROM notification GROUP BY state").fetchall())

    def claim_ticket(self, now, exclude=(), lease_seconds=300):
        """A due ticket for one worker, or None. One process owns this file, so the
        caller's `exclude` (the tickets its workers hold) is the whole lease; Redis
        (redis_queue) needs a real one."""
        due = self.due_tickets(now, exclude=exclude, limit=1)
        return due[0] if due else None

    def release_ticket(self, ticket_id):
        """Nothing to release: the caller drops the ticket from its `exclude`."""

    # -- what the customer chose and saw ----------------------------------------

    def remember_language(self, contact_id, lang):
        with self._lock:
            self._db.execute(
                "INSERT INTO contact_language (contact_id, lang, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (contact_id) DO UPDATE SET lang = excluded.lang, updated_at = excluded.updated_at "
                "WHERE lang != excluded.lang",
                (int(contact_id), lang, self._clock()))

    def language_of(self, contact_id):
        with self._lock:
            row = self._db.execute("SELECT lang FROM contact_language WHERE contact_id = ?", (int(contact_id),)).fetchone()
        return row[0] if row else None

    def mark_seen(self, ticket_id, message_id):
        """Remember the newest message the owner has seen; only ever moves forward."""
        with self._lock:
            self._db.execute(
                "INSERT INTO ticket_seen (ticket_id, message_id, seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT (ticket_id) DO UPDATE SET message_id = excluded.message_id, seen_at = excluded.seen_at "
                "WHERE excluded.message_id > message_id",
                (int(ticket_id), int(message_id), self._clock()))
            self._purge_if_due(self._clock())

    def seen_message_id(self, ticket_id):
        with self._lock:
            row = self._db.execute("SELECT message_id FROM ticket_seen WHERE ticket_id = ?", (int(ticket_id),)).fetchone()
        return row[0] if row else 0

    def seen_message_ids(self, ticket_ids):
        """{ticket id: newest message id seen} for the tickets of one dashboard page."""
        ids = [int(t) for t in ticket_ids]
        with self._lock:
            return dict(self._db.execute(
                f"SELECT ticket_id, message_id FROM ticket_seen WHERE ticket_id IN ({','.join('?' * len(ids))})",
                ids).fetchall()) if ids else {}

    def agent_reply_ids(self, ticket_ids):
        """{ticket id: newest agent reply Chatwoot's webhook told of} (queued, mailed or not)."""
        ids = [int(t) for t in ticket_ids]
        with self._lock:
            return dict(self._db.execute(
                f"SELECT ticket_id, MAX(message_id) FROM notification WHERE ticket_id IN ({','.join('?' * len(ids))}) "
                "GROUP BY ticket_id", ids).fetchall()) if ids else {}

    def dashboard_marks(self, ticket_ids):
        """(seen_message_ids, agent_reply_ids) of one dashboard page."""
        return self.seen_message_ids(ticket_ids), self.agent_reply_ids(ticket_ids)

    def remember_cancelled(self, ticket_id, at):
        """The customer cancelled the ticket at `at` (the portal's clock)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO ticket_cancelled (ticket_id, at) VALUES (?, ?) "
                "ON CONFLICT (ticket_id) DO UPDATE SET at = excluded.at", (int(ticket_id), at))

    def cancelled_at(self, ticket_id):
        """When the customer cancelled the ticket, or None."""
        with self._lock:
            row = self._db.execute("SELECT at FROM ticket_cancelled WHERE ticket_id = ?", (int(ticket_id),)).fetchone()
        return row[0] if row else None

    def ticket_marks(self, ticket_id):
        """(seen_message_id, cancelled_at) of one ticket page."""
        return self.seen_message_id(ticket_id), self.cancelled_at(ticket_id)

    def forget_cancelled(self, ticket_id):
        """The ticket is open again: its cancel is history."""
        with self._lock:
            self._db.execute("DELETE FROM ticket_cancelled WHERE ticket_id = ?", (int(ticket_id),))

    # -- housekeeping -----------------------------------------------------------

    def _purge_if_due(self, now):
        """Drop old done rows and old markers, at most once an hour (caller holds the lock)."""
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL_SECONDS
        self._db.execute("DELETE FROM notification WHERE state != 'queued' AND done_at < ?", (now - DEDUP_DAYS * 86400,))
        self._db.execute("DELETE FROM ticket_seen WHERE seen_at < ?", (now - SEEN_DAYS * 86400,))


# GETDEL and SET ... GET, which the Redis stores use, came with Redis 6.2.
MIN_REDIS_VERSION = (6, 2)


def redacted_url(url):
    """STATE_URL without its password, for log lines and --check."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_redis(url, prefix):
    """A problem sentence when Redis at STATE_URL cannot hold the portal's state, else ""."""
    import redis_store
    client = redis_store.connect(url)
    probe = f"{prefix}check"
    try:
        with redis_store.redis_errors():
            version = client.info("server").get("redis_version", "0")
            client.set(probe, "1", ex=10)
            client.delete(probe)
    except StateUnavailable as error:
        return f"Redis at {redacted_url(url)} does not answer or refuses writes ({error}); check STATE_URL"
    finally:
        client.close()
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if numbers < MIN_REDIS_VERSION:
        return f"Redis {version} is too old: the portal needs {'.'.join(map(str, MIN_REDIS_VERSION))} or newer"
    return ""


def check_writable(folder):
    """A problem sentence when the state folder cannot hold the state file, else ""."""
    try:
        StateFile(folder).close()
    except StateError as error:
        return f"{error}; make STATE_DIR a folder the portal's user can write"
    return ""
