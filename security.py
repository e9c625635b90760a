"""Signed values, sessions, sign-in tokens and rate limits: the portal's trust state.

Everything lives in memory, guarded by one lock per store because waitress runs
handlers on several threads. Each store takes a `clock` so tests move time instead
of waiting for it, and sweeps its expired entries under the same lock.

* Signer: HMAC-SHA256 with a purpose ("session", "csrf", ...) mixed into every
  signature, so a value signed for one purpose is never accepted for another.
* SessionStore: random session ids, rolling idle expiry.
* MagicLinkStore: 32-byte random tokens, kept only as their SHA-256, each with a
  6-digit code kept only as an HMAC bound to its address; single use, and a short
  record of retired tokens so a dead link's page can say why.
* RateLimiter: sliding-window counts per key, with a hard cap on the keys it keeps.
"""

import base64
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import re
import secrets
import threading
import time
import typing

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

@dataclasses.dataclass(slots=True)
class Session:
    id: str
    contact_id: int
    email: str
    name: str
    last_seen: float
    flash: str = ""
    started: float = 0.0  # sign-in time: a session ends MAX_SESSION_SECONDS after it, active or not
    # form_id -> DoneOnce, so a double-submitted form acts once (see `once`).
    forms: dict = dataclasses.field(default_factory=dict)


class DoneOnce:
    """The outcome of one submitted form, shared by its duplicates."""

    __slots__ = ("lock", "result", "uncertain_since")

    def __init__(self, result=None):
        self.lock = threading.Lock()
        self.result = result
        # Wall-clock time of an attempt whose answer was lost (Chatwoot may or may
        # not have done it); the next try looks before it writes again.
        self.uncertain_since = None


MAX_FORMS_PER_SESSION = 32
# Sessions are made only by magic links (rate-limited mail), so this is never
# reached in practice; it bounds memory if limits are ever set very high.
MAX_SESSIONS = 100_000
# However active, a session ends this long after its sign-in (ASVS 3.3.2): a
# stolen cookie stops working the same day, and a magic link is quick to ask for.
MAX_SESSION_SECONDS = 12 * 3600


class SessionStore:
    def __init__(self, idle_seconds, clock=time.time):
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._sessions = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def create(self, contact_id, email, name):
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), contact_id, email, name, now, started=now)
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
            if now - session.last_seen > self.idle_seconds or now - session.started > MAX_SESSION_SECONDS:
                del self._sessions[session_id]
                return None
            session.last_seen = now
            return session

    def delete(self, session_id):
        with self._lock:
            self._sessions.pop(session_id, None)

    def done_once(self, session, form_id):
        """The DoneOnce for this form of this session (created on first use)."""
        with self._lock:
            done = session.forms.get(form_id)
            if done is None:
                if len(session.forms) >= MAX_FORMS_PER_SESSION:
                    session.forms.pop(next(iter(session.forms)))
                done = session.forms[form_id] = DoneOnce()
            elif not isinstance(done, DoneOnce):  # a finished form, kept as its bare result
                done = session.forms[form_id] = DoneOnce(done)
            return done

    @contextlib.contextmanager
    def once(self, session, form_id):
        """`with store.once(session, form_id) as done:` one submitted form's outcome,
        held by one request at a time. A duplicate of the form waits here for the
        first, then finds `done.result` (and `done.uncertain_since`) as it left them."""
        done = self.done_once(session, form_id)
        try:
            with done.lock:
                yield done
        finally:
            self._compact(session, form_id, done)

    def _compact(self, session, form_id, done):
        """A finished form is kept as its result alone (a ticket id), without its lock:
        most sessions send a few forms, and each would otherwise hold ~350 bytes for
        as long as the session lives. A duplicate already waiting holds the DoneOnce."""
        with self._lock:
            if (session.forms.get(form_id) is done and done.result is not None and done.uncertain_since is None
                    and not done.lock.locked()):
                session.forms[form_id] = done.result

    def set_flash(self, session, key):
        """The message the session's next page shows once."""
        with self._lock:
            session.flash = key

    def pop_flash(self, session):
        with self._lock:
            flash, session.flash = session.flash, ""
            return flash

    def __len__(self):
        with self._lock:
            return len(self._sessions)

    def _sweep_if_due(self):
        _sweep(self, self._sessions, lambda session, now: now - session.last_seen > self.idle_seconds
               or now - session.started > MAX_SESSION_SECONDS)


# ---------------------------------------------------------------------------
# Magic links
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class MagicLink:
    contact_id: int
    email: str
    name: str
    lang: str
    next_path: str
    expires: float
    client: str = ""  # the rate-limit key of the client that asked for the link
    code_digest: str = ""  # HMAC of (address, code): the mailed code itself is never kept


class SignInSecrets(typing.NamedTuple):
    """What one sign-in mail carries: a link token and a code, each usable once."""

    token: str
    code: str


# Why a link stopped working, as its page tells the customer.
EXPIRED, USED, LOCKED = "expired", "used", "locked"


@dataclasses.dataclass(frozen=True, slots=True)
class RetiredLink:
    """What is left of a link that no longer works: enough for its page, nothing to sign in with."""

    reason: str  # EXPIRED, USED or LOCKED
    email: str
    next_path: str
    retired_at: float


# Outstanding links are few (a handful per known address, rate-limited); this cap
# only guards memory if the limits are ever misconfigured.
MAX_MAGIC_LINKS = 50_000
# A code has 10**6 values. This many wrong ones for an address retire its links and
# codes, and only a new (rate-limited) mail starts afresh: a guesser gets 5 tries
# at the few codes an address has live, then must make the customer get a mail.
MAX_WRONG_CODES = 5
# Wrong codes an address may see in a day, whatever number of mails it asked for:
# past that its codes stop working until the day is over (its links still do).
# 20 guesses against a few live 6-digit codes: a chance of about 1 in 6,000 a day.
WRONG_CODES_PER_DAY = 20
# Retired tokens are remembered this long, so a used or expired link's page can say
# which it was and offer a new link to its own address. Only issued tokens get a
# record, so the cap (oldest forgotten first) bounds memory, not a guessing flood.
RETIRED_LINK_SECONDS = 24 * 3600
MAX_RETIRED_LINKS = 50_000
# What people type between the two halves of "123 456": spaces, hyphens, dashes.
_CODE_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212]")
_CODE = re.compile(r"[0-9]{6}")


def normalize_code(untrusted_code):
    """The six ASCII digits of a typed code ("123 456", "123-456"), or "" if it is not one."""
    code = _CODE_SEPARATORS.sub("", (untrusted_code or "")[:32])
    return code if _CODE.fullmatch(code) else ""


def _address(email):
    return (email or "").strip().lower()


class MagicLinkStore:
    def __init__(self, ttl_seconds, clock=time.time, signer=None):
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        # Codes are kept as an HMAC, never a plain hash, which trying a million
        # values would undo at once. The portal passes its Signer (SESSION_SECRET);
        # alone (unit tests), the store makes a key that dies with the process.
        self._signer = signer or Signer(secrets.token_urlsafe(32))
        self._links = collections.OrderedDict()  # token digest -> MagicLink
        self._retired = collections.OrderedDict()  # token digest -> RetiredLink, oldest first
        # address -> wrong codes so far; kept only while the address has links.
        self._wrong_codes = {}
        # Across mails too: asking for new ones must not buy endless guesses.
        self._daily_wrong_codes = RateLimiter(WRONG_CODES_PER_DAY, 86400, clock=clock)
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    @staticmethod
    def _digest(token):
        return hashlib.sha256(token.encode("utf-8")).hexdigest()

    def _code_digest(self, email, code):
        # The address is inside the MAC: a code works only for the address it was mailed to.
        return self._signer.signature("sign-in-code", f"{_address(email)}|{code}")

    def issue(self, contact_id, email, name, lang, next_path, client=""):
        """A new token (and code, see issue_with_code); only its hash is kept."""
        return self.issue_with_code(contact_id, email, name, lang, next_path, client).token

    def issue_with_code(self, contact_id, email, name, lang, next_path, client=""):
        """A new token and 6-digit code for one mail; only their hashes are kept, so a
        memory dump cannot sign anyone in. Using either one retires both."""
        token = secrets.token_urlsafe(32)
        code = f"{secrets.randbelow(10 ** 6):06d}"  # uniform over 000000-999999
        link = MagicLink(contact_id, email, name, lang, next_path, self._clock() + self.ttl_seconds, client,
                         self._code_digest(email, code))
        with self._lock:
            self._sweep_if_due()
            while len(self._links) >= MAX_MAGIC_LINKS:
                self._links.popitem(last=False)
            self._links[self._digest(token)] = link
        return SignInSecrets(token, code)

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
        digest = self._digest(untrusted_token or "")
        with self._lock:
            link = self._links.get(digest)
            if link is None:
                return None
            if link.expires < self._clock():
                self._retire([digest], EXPIRED)
                return None
            self._retire_contact(link)
        return link

    def redeem_code(self, untrusted_email, untrusted_code):
        """The link whose mailed code this is, used up as consume() would; else None.

        A wrong code, an expired or used one and an address without links all give
        None alike. Wrong codes count per address: the MAX_WRONG_CODES-th retires
        every link and code of that address, and the customer asks for a new mail.
        """
        email = _address(untrusted_email)
        code = normalize_code(untrusted_code)
        wanted = self._code_digest(email, code).encode("ascii")  # even for no code: same work
        with self._lock:
            self._sweep_if_due()
            now = self._clock()
            live = [(digest, link) for digest, link in self._links.items()
                    if _address(link.email) == email and link.expires >= now]
            if not live:
                return None  # nothing to guess at: no count, so no memory for strangers
            if code and not self._daily_wrong_codes.exhausted(email):
                for _, link in live:
                    if hmac.compare_digest(link.code_digest.encode("ascii"), wanted):
                        self._retire_contact(link)
                        return link
            self._daily_wrong_codes.hit(email)
            wrong = self._wrong_codes.get(email, 0) + 1
            if wrong < MAX_WRONG_CODES:
                self._wrong_codes[email] = wrong
            else:
                self._retire([digest for digest, _ in live], LOCKED)
                self._wrong_codes.pop(email, None)
        return None

    def retired(self, untrusted_token):
        """Why an issued token no longer works (a RetiredLink), or None: never issued,
        forgotten, or still valid."""
        digest = self._digest(untrusted_token or "")
        with self._lock:
            link = self._links.get(digest)
            if link is not None:
                if link.expires < self._clock():  # expired, not swept yet
                    return RetiredLink(EXPIRED, link.email, link.next_path, link.expires)
                return None
            return self._retired.get(digest)

    def __len__(self):
        with self._lock:
            return len(self._links)

    def _retire_contact(self, link):
        """A link was used: it and every other link of its contact are used up (caller holds the lock)."""
        self._retire([digest for digest, other in self._links.items() if other.contact_id == link.contact_id], USED)

    def _retire(self, digests, reason):
        """Move these links to the record of retired tokens (caller holds the lock)."""
        now = self._clock()
        addresses = set()
        for digest in digests:
            link = self._links.pop(digest)
            addresses.add(_address(link.email))
            while len(self._retired) >= MAX_RETIRED_LINKS:
                self._retired.popitem(last=False)
            self._retired[digest] = RetiredLink(reason, link.email, link.next_path, now)
        addresses.difference_update(_address(link.email) for link in self._links.values())
        for address in addresses:  # no links left: nothing more to guess at
            self._wrong_codes.pop(address, None)

    def _sweep_if_due(self):
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL_SECONDS
        self._retire([digest for digest, link in self._links.items() if link.expires < now], EXPIRED)
        for digest in [d for d, old in self._retired.items() if old.retired_at < now - RETIRED_LINK_SECONDS]:
            del self._retired[digest]
        # Links dropped at the cap leave counters behind; they go here.
        with_links = {_address(link.email) for link in self._links.values()}
        for address in [a for a in self._wrong_codes if a not in with_links]:
            del self._wrong_codes[address]


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

    def exhausted(self, key):
        """True when `key` has used up its hits in the current window (counts nothing)."""
        now = self._clock()
        with self._lock:
            return sum(1 for t in self._hits.get(key, ()) if t > now - self.window) >= self.limit

    def forget(self, key):
        """Start `key` afresh (its requests proved legitimate)."""
        with self._lock:
            self._hits.pop(key, None)

    def __len__(self):
        with self._lock:
            return len(self._hits)
