"""Signed values, sessions, sign-in tokens and rate limits: the portal's trust state.

Everything lives in memory, guarded by one lock per store because waitress runs
handlers on several threads. Each store takes a `clock` so tests move time instead
of waiting for it, and sweeps its expired entries under the same lock.

* Signer: HMAC-SHA256 with a purpose ("session", "csrf", ...) mixed into every
  signature, so a value signed for one purpose is never accepted for another.
* SessionStore: random session ids, rolling idle expiry.
* MagicLinkStore: 32-byte random tokens, kept only as their SHA-256, single use.
* RateLimiter: sliding-window counts per key, with a hard cap on the keys it keeps.
"""

import base64
import collections
import dataclasses
import hashlib
import hmac
import secrets
import threading
import time

SWEEP_INTERVAL_SECONDS = 60


def _sweep(store, entries, expired):
    """Drop expired entries, at most once per SWEEP_INTERVAL_SECONDS (caller holds the lock)."""
    now = store._clock()
    if now < store._next_sweep:
        return
    store._next_sweep = now + SWEEP_INTERVAL_SECONDS
    for key in [key for key, entry in entries.items() if expired(entry, now)]:
        del entries[key]


def _b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Signer:
    """Signs short ASCII strings as `value.signature`; verifies in constant time."""

    def __init__(self, secret):
        self._key = hashlib.sha256(("chatwoot-portal|" + secret).encode("utf-8")).digest()

    def signature(self, purpose, value):
        mac = hmac.new(self._key, f"{purpose}|{value}".encode("utf-8"), hashlib.sha256)
        return _b64(mac.digest())

    def sign(self, purpose, value):
        return f"{value}.{self.signature(purpose, value)}"

    def unsign(self, purpose, untrusted_signed):
        """The value, or None when the signature does not match."""
        value, sep, signature = (untrusted_signed or "").rpartition(".")
        if not sep or not value:
            return None
        # Bytes: compare_digest refuses str with non-ASCII characters.
        if hmac.compare_digest(signature.encode("utf-8"), self.signature(purpose, value).encode("ascii")):
            return value
        return None

    def pseudonym(self, email):
        """A stable, keyed hash of an address for log lines: correlatable, not reversible."""
        return self.signature("log-email", email.lower())[:12]


# ---------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Session:
    id: str
    contact_id: int
    email: str
    name: str
    last_seen: float
    flash: str = ""
    # form_id -> DoneOnce, so a double-submitted form acts once (see `once`).
    forms: dict = dataclasses.field(default_factory=dict)


class DoneOnce:
    """The outcome of one submitted form, shared by its duplicates."""

    def __init__(self):
        self.lock = threading.Lock()
        self.result = None
        # Wall-clock time of an attempt whose answer was lost (Chatwoot may or may
        # not have done it); the next try looks before it writes again.
        self.uncertain_since = None


MAX_FORMS_PER_SESSION = 32
# Sessions are made only by magic links (rate-limited mail), so this is never
# reached in practice; it bounds memory if limits are ever set very high.
MAX_SESSIONS = 100_000


class SessionStore:
    def __init__(self, idle_seconds, clock=time.time):
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._sessions = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def create(self, contact_id, email, name):
        session = Session(secrets.token_urlsafe(32), contact_id, email, name, self._clock())
        with self._lock:
            self._sweep_if_due()
            while len(self._sessions) >= MAX_SESSIONS:  # the oldest sign-in goes first
                del self._sessions[next(iter(self._sessions))]
            self._sessions[session.id] = session
        return session

    def get(self, session_id):
        """The live session, its idle timer restarted; None when unknown or expired."""
        now = self._clock()
        with self._lock:
            self._sweep_if_due()
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.last_seen > self.idle_seconds:
                del self._sessions[session_id]
                return None
            session.last_seen = now
            return session

    def delete(self, session_id):
        with self._lock:
            self._sessions.pop(session_id, None)

    def once(self, session, form_id):
        """The DoneOnce for this form of this session (created on first use)."""
        with self._lock:
            done = session.forms.get(form_id)
            if done is None:
                if len(session.forms) >= MAX_FORMS_PER_SESSION:
                    session.forms.pop(next(iter(session.forms)))
                done = session.forms[form_id] = DoneOnce()
            return done

    def pop_flash(self, session):
        with self._lock:
            flash, session.flash = session.flash, ""
            return flash

    def __len__(self):
        with self._lock:
            return len(self._sessions)

    def _sweep_if_due(self):
        _sweep(self, self._sessions, lambda session, now: now - session.last_seen > self.idle_seconds)


# ---------------------------------------------------------------------------
# Magic links
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MagicLink:
    contact_id: int
    email: str
    name: str
    lang: str
    next_path: str
    expires: float
    client: str = ""  # the rate-limit key of the client that asked for the link


# Outstanding links are few (a handful per known address, rate-limited); this cap
# only guards memory if the limits are ever misconfigured.
MAX_MAGIC_LINKS = 50_000


class MagicLinkStore:
    def __init__(self, ttl_seconds, clock=time.time):
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._links = collections.OrderedDict()
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    @staticmethod
    def _digest(token):
        return hashlib.sha256(token.encode("utf-8")).hexdigest()

    def issue(self, contact_id, email, name, lang, next_path, client=""):
        """A new token; only its hash is kept, so a memory dump cannot sign anyone in."""
        token = secrets.token_urlsafe(32)
        link = MagicLink(contact_id, email, name, lang, next_path, self._clock() + self.ttl_seconds, client)
        with self._lock:
            self._sweep_if_due()
            while len(self._links) >= MAX_MAGIC_LINKS:
                self._links.popitem(last=False)
            self._links[self._digest(token)] = link
        return token

    def peek(self, untrusted_token):
        """The link if the token is valid now, without using it up (for the GET page)."""
        with self._lock:
            link = self._links.get(self._digest(untrusted_token or ""))
        if link is None or link.expires < self._clock():
            return None
        return link

    def consume(self, untrusted_token):
        """The link if the token is valid now; the token can never be used again.

        A successful sign-in also retires the contact's other outstanding links:
        older mails in the inbox stop being keys to the account.
        """
        with self._lock:
            link = self._links.pop(self._digest(untrusted_token or ""), None)
            if link is None or link.expires < self._clock():
                return None
            for digest in [d for d, other in self._links.items() if other.contact_id == link.contact_id]:
                del self._links[digest]
        return link

    def __len__(self):
        with self._lock:
            return len(self._links)

    def _sweep_if_due(self):
        _sweep(self, self._links, lambda link, now: link.expires < now)


# ---------------------------------------------------------------------------
# Rate limits
# ---------------------------------------------------------------------------

class RateLimiter:
    """At most `limit` hits per key within `window` seconds.

    Memory is bounded: at most `max_keys` keys are tracked. Keys idle for a whole
    window are forgotten; a key still counting is never dropped, so when the table
    is full of live keys a new key is refused until some go idle. Each key keeps a
    small tuple of hit times (a deque would cost ~600 bytes a key).
    """

    def __init__(self, limit, window, max_keys=10_000, clock=time.time):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._hits = {}  # key -> tuple of hit times; dict order = least recently hit first
        self._lock = threading.Lock()

    def hit(self, key):
        """Count one attempt; True when it is within the limit."""
        now = self._clock()
        with self._lock:
            recent = tuple(t for t in self._hits.pop(key, ()) if t > now - self.window)
            if not recent and len(self._hits) >= self.max_keys:
                self._forget_idle_keys(now)
                if len(self._hits) >= self.max_keys:
                    # Full of keys still inside their window. Evicting one would
                    # reset its count: a flood of new keys could then wash a
                    # victim's limit away. New keys wait instead (memory stays bounded).
                    return False
            allowed = len(recent) < self.limit
            self._hits[key] = recent + (now,) if allowed else recent
            return allowed

    def _forget_idle_keys(self, now):
        # Keys sit in the order of their last hit, so the idle ones are a prefix.
        while self._hits:
            key = next(iter(self._hits))
            if self._hits[key] and self._hits[key][-1] > now - self.window:
                return
            del self._hits[key]

    def forget(self, key):
        """Start `key` afresh (its requests proved legitimate)."""
        with self._lock:
            self._hits.pop(key, None)

    def __len__(self):
        with self._lock:
            return len(self._hits)
