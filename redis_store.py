"""The Redis backend of the portal's state (STATE_URL=redis://...): what several
portal processes share.

Imported only when STATE_URL is set; `storage.open_stores` picks the backend, and the
handlers never know which one runs. Each store here offers the same methods as its
in-memory twin (security.SessionStore, security.MagicLinkStore, security.RateLimiter,
drafts.DraftStore), and the queue's twin of storage.StateFile is in redis_queue.py.

Redis does the atomic part, so no check-then-write in Python races another process:
TTLs for expiry (nothing to sweep), SET NX / GETDEL for single use, short Lua scripts
where a decision reads and writes several keys.

Every key is under STATE_PREFIX. Session ids and sign-in tokens appear in keys only
as their HMAC (`Keys.secret`), so a copy of the Redis database signs nobody in.
Any Redis failure (refused, timed out, loading) becomes StateUnavailable: the
request gets a localized 503 and the customer's text is shown back.
"""

import contextlib
import dataclasses
import functools
import hashlib
import hmac
import itertools
import json
import logging
import math
import random
import secrets
import threading
import time

import redis

import drafts
import security
from storage import StateUnavailable

log = logging.getLogger("portal.state")

# Seconds to wait for Redis: a request that cannot reach it answers 503 quickly.
SOCKET_TIMEOUT_SECONDS = 2
# waitress threads (16) + mail workers (4) + a few spare; a request waits for a free
# connection at most SOCKET_TIMEOUT_SECONDS.
POOL_SIZE = 24


def connect(url):
    """A client for STATE_URL with a small, blocking pool and short timeouts."""
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=SOCKET_TIMEOUT_SECONDS,
        socket_timeout=SOCKET_TIMEOUT_SECONDS, socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
        health_check_interval=30, decode_responses=True)
    return redis.Redis(connection_pool=pool)


@contextlib.contextmanager
def redis_errors():
    """Turn every redis-py error into StateUnavailable (its text names no secret)."""
    try:
        yield
    except redis.exceptions.RedisError as error:
        raise StateUnavailable(f"Redis: {type(error).__name__}: {error}") from None


def guarded(method):
    """Decorator: the method's Redis errors become StateUnavailable."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with redis_errors():
            return method(*args, **kwargs)
    return wrapper


class Keys:
    """Key names under one prefix; `secret(kind, value)` hides a secret behind its HMAC."""

    def __init__(self, prefix, key):
        self.prefix = prefix
        # Derived from SESSION_SECRET for this one purpose.
        self._key = hashlib.sha256(b"chatwoot-portal|redis-keys|" + key.encode("utf-8")).digest()

    def __call__(self, *parts):
        return self.prefix + ":".join(str(part) for part in parts)

    def secret(self, kind, value):
        mac = hmac.new(self._key, f"{kind}|{value}".encode("utf-8"), hashlib.sha256).hexdigest()
        return self(kind, mac)


def pinger(client):
    """A zero-argument health check: PING, or StateUnavailable."""
    def ping():
        with redis_errors():
            if not client.ping():
                raise StateUnavailable("Redis: no PONG")
    return ping


def _pattern(prefix):
    """A SCAN pattern for every key starting with `prefix` (glob characters escaped)."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in prefix) + "*"


def _time(value):
    """A clock reading as Redis keeps it: repr round-trips a float exactly."""
    return repr(float(value))


def _ms(seconds):
    """A real TTL in whole milliseconds, at least one (PEXPIRE refuses 0)."""
    return max(1, math.ceil(seconds * 1000))


def _as_dict(flat):
    """HGETALL's flat [field, value, ...] reply from a script, as a dict."""
    return dict(zip(flat[::2], flat[1::2])) if flat else {}


# ---------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------

# Why a script: the check and the renewal must see the same hash, or a request
# could renew a session another process has just ended.
_SESSION_GET = """
local fields = redis.call('HMGET', KEYS[1], 'contact_id', 'email', 'name', 'last_seen', 'started', 'flash')
if not fields[1] then return false end
local now, idle, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local started = tonumber(fields[5])
if now - tonumber(fields[4]) > idle or now - started > max then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
local left = math.min(idle, max - (now - started))
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(left * 1000)))
fields[4] = ARGV[1]
return fields
"""

# HSET on a missing hash would create one without a TTL: write only into a live session.
_SESSION_SET_FLASH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'flash', ARGV[1])
return 1
"""

# Read and clear in one step: two pages loaded at once show the message once.
_SESSION_POP_FLASH = """
local flash = redis.call('HGET', KEYS[1], 'flash')
if not flash or flash == '' then return '' end
redis.call('HSET', KEYS[1], 'flash', '')
return flash
"""

# The form's lock and its outcome in one round trip; false while another request
# holds it. The taker notes when it took the form: should its process die before
# it writes an outcome, the next taker knows an attempt may have reached Chatwoot.
_ONCE_ENTER = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local found = redis.call('HMGET', KEYS[2], 'result', 'uncertain_since', 'taken_at')
redis.call('HSET', KEYS[2], 'taken_at', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {found[1] or '', found[2] or '', found[3] or ''}
"""

# Keep holding the lock while the request runs, only if it is still ours.
_ONCE_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Write the outcome back, then release the lock only if it is still ours: a lock
# whose holder stopped renewing it may belong to another request by now.
_ONCE_LEAVE = """
redis.call('HSET', KEYS[2], 'result', ARGV[2], 'uncertain_since', ARGV[3])
redis.call('HDEL', KEYS[2], 'taken_at')
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# A form's lock lives this long unless its holder renews it (every third of it, from
# a small thread, while the request runs): a crashed process frees its forms within
# seconds, and a slow request (large files, a slow Chatwoot) keeps its form.
ONCE_LOCK_SECONDS = 10
# A duplicate of a form waits this long for the first request to finish (then a 503
# with its text): longer than any request, whose Chatwoot calls each time out.
ONCE_WAIT_SECONDS = 120
# How often a waiting duplicate asks again: short against a human's double click,
# jittered so two waiters do not ask in step.
ONCE_POLL_SECONDS = (0.02, 0.05)


class FormOutcome:
    """What `once` yields on Redis: the form's outcome, written back when the block ends."""

    def __init__(self, result=None, uncertain_since=None):
        self.result = result
        self.uncertain_since = uncertain_since


class RedisSessionStore:
    """security.SessionStore on Redis: one hash per session, keyed by the HMAC of its id.

    The hash holds the logical times (started, last_seen) that `get` judges with the
    store's clock; its TTL is only the cleanup of sessions nobody asks for again.
    """

    def __init__(self, client, keys, idle_seconds, clock):
        self.idle_seconds = idle_seconds
        self._client = client
        self._keys = keys
        self._clock = clock
        self._get = client.register_script(_SESSION_GET)
        self._set_flash = client.register_script(_SESSION_SET_FLASH)
        self._pop_flash = client.register_script(_SESSION_POP_FLASH)
        self._enter = client.register_script(_ONCE_ENTER)
        self._leave = client.register_script(_ONCE_LEAVE)
        self._renew = client.register_script(_ONCE_RENEW)
        self._held, self._held_lock, self._renewer = {}, threading.Lock(), None  # see _hold

    def _key(self, session_id):
        return self._keys.secret("session", session_id)

    @guarded
    def create(self, contact_id, email, name):
        now = self._clock()
        session = security.Session(secrets.token_urlsafe(32), contact_id, email, name, now, started=now)
        key = self._key(session.id)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"contact_id": contact_id, "email": email, "name": name,
                                    "last_seen": _time(now), "started": _time(now), "flash": ""})
            pipe.pexpire(key, _ms(min(self.idle_seconds, security.MAX_SESSION_SECONDS)))
            pipe.execute()
        return session

    @guarded
    def get(self, session_id):
        """The live session, its idle timer restarted; None when unknown or expired."""
        if not session_id:
            return None
        fields = self._get(keys=[self._key(session_id)],
                           args=[_time(self._clock()), self.idle_seconds, security.MAX_SESSION_SECONDS])
        if not fields:
            return None
        contact_id, email, name, last_seen, started, flash = fields
        return security.Session(session_id, int(contact_id), email, name, float(last_seen), flash or "",
                                float(started))

    @guarded
    def delete(self, session_id):
        if session_id:
            self._client.delete(self._key(session_id))

    @guarded
    def set_flash(self, session, key):
        """The message the session's next page shows once."""
        session.flash = key
        self._set_flash(keys=[self._key(session.id)], args=[key])

    @guarded
    def pop_flash(self, session):
        # No flash when `get` read the hash: nothing to clear, so no round trip. One set
        # since (by another request) stays in Redis for the next page: late, never lost.
        if not session.flash:
            return ""
        session.flash = ""
        return self._pop_flash(keys=[self._key(session.id)]) or ""

    @contextlib.contextmanager
    def once(self, session, form_id):
        """`with store.once(session, form_id) as done:` as security.SessionStore.once,
        across processes: a lock key (SET NX PX) held by one request at a time, the
        outcome in a hash the duplicate reads when it gets the lock."""
        scope = f"{session.id}|{form_id}"
        lock, outcome = self._keys.secret("once-lock", scope), self._keys.secret("once", scope)
        token = secrets.token_hex(16)
        deadline = time.monotonic() + ONCE_WAIT_SECONDS
        while True:
            with redis_errors():
                found = self._enter(keys=[lock, outcome], args=[token, _ms(ONCE_LOCK_SECONDS), repr(time.time()),
                                                               _ms(security.MAX_SESSION_SECONDS)])
            if found is not None:
                break
            if time.monotonic() > deadline:
                raise StateUnavailable("Redis: a duplicate form waited too long for the first")
            time.sleep(random.uniform(*ONCE_POLL_SECONDS))
        result, uncertain_since = (json.loads(value) if value else None for value in found[:2])
        if result is None and uncertain_since is None and found[2]:
            # An earlier taker vanished (its process died) before writing an outcome:
            # its try may have reached Chatwoot, so look before doing it again.
            uncertain_since = float(found[2])
        done = FormOutcome(result, uncertain_since)
        self._hold(lock, token)
        try:
            yield done
        finally:
            self._unhold(lock)
            # Also after an exception: `uncertain_since` is set just for that case.
            with redis_errors():
                self._leave(keys=[lock, outcome],
                            args=[token, json.dumps(done.result), json.dumps(done.uncertain_since),
                                  _ms(security.MAX_SESSION_SECONDS)])

    def _hold(self, lock, token):
        """Keep renewing this form's lock until `_unhold`. One thread per store renews
        every lock its requests hold: a thread started per form would cost each POST
        a start-up handshake, slow when every waitress thread is busy."""
        with self._held_lock:
            self._held[lock] = token
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._keep_locks, name="form-locks", daemon=True)
                self._renewer.start()

    def _unhold(self, lock):
        with self._held_lock:
            self._held.pop(lock, None)

    def _keep_locks(self):
        """The renewing thread: every third of ONCE_LOCK_SECONDS, every held lock."""
        while True:
            time.sleep(ONCE_LOCK_SECONDS / 3)
            with self._held_lock:
                held = list(self._held.items())
            for lock, token in held:
                try:
                    self._renew(keys=[lock], args=[token, _ms(ONCE_LOCK_SECONDS)])
                except redis.exceptions.RedisError as error:  # the request itself will meet it too
                    log.warning("could not renew a form's lock: %s", error)

    @guarded
    def __len__(self):
        """Live sessions (tests only: it scans every session key)."""
        keys = list(self._client.scan_iter(match=_pattern(self._keys("session", "")), count=1000))
        if not keys:
            return 0
        now = self._clock()
        with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, "last_seen", "started")
            rows = pipe.execute()
        return sum(1 for last_seen, started in rows
                   if last_seen is not None and now - float(last_seen) <= self.idle_seconds
                   and now - float(started) <= security.MAX_SESSION_SECONDS)


# ---------------------------------------------------------------------------
# Rate limits
# ---------------------------------------------------------------------------

# A Lua function shared by the limiter and the wrong-code count of sign-in codes:
# one sliding window in a sorted set of hit times; a refused hit is not counted.
_HIT_FUNCTION = """
local function hit(key, cutoff, now, limit, member, ttl_ms)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
  if redis.call('ZCARD', key) >= limit then return 0 end
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, ttl_ms)
  return 1
end
"""

_LIMITER_HIT = _HIT_FUNCTION + """
return hit(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5])
"""


class RedisRateLimiter:
    """security.RateLimiter on Redis: at most `limit` hits per key within `window`
    seconds, counted atomically across processes. Keys are addresses and networks,
    so their names hold only an HMAC; the TTL bounds memory (no max_keys)."""

    def __init__(self, client, keys, name, limit, window, clock=time.time):
        self.limit = limit
        self.window = window
        self._client = client
        self._keys = keys
        self._name = name
        self._clock = clock
        self._hit = client.register_script(_LIMITER_HIT)

    def key_of(self, key):
        """The Redis key counting `key`'s hits."""
        return self._keys.secret(self._name, key)

    def hit_arguments(self, now):
        """cutoff, now, limit, member, TTL: the arguments of the Lua `hit` above."""
        # Two hits at the same clock reading (another process) must both count.
        member = f"{_time(now)}|{secrets.token_hex(8)}"
        return [_time(now - self.window), _time(now), self.limit, member, _ms(self.window)]

    @guarded
    def hit(self, key):
        """Count one attempt; True when it is within the limit."""
        return self._hit(keys=[self.key_of(key)], args=self.hit_arguments(self._clock())) == 1

    @guarded
    def exhausted(self, key):
        """True when `key` has used up its hits in the current window (counts nothing)."""
        cutoff = self._clock() - self.window
        return self._client.zcount(self.key_of(key), f"({_time(cutoff)}", "+inf") >= self.limit

    @guarded
    def forget(self, key):
        """Start `key` afresh (its requests proved legitimate)."""
        self._client.delete(self.key_of(key))

    @guarded
    def __len__(self):
        """Keys with hits still in Redis (tests only: it scans)."""
        return sum(1 for _ in self._client.scan_iter(match=_pattern(self._keys(self._name, "")), count=1000))


# ---------------------------------------------------------------------------
# Magic links
# ---------------------------------------------------------------------------

# Records: one hash per issued token at keys.secret("link", token). A live record
# holds the MagicLink and the names of its two index sets (the contact's links, the
# address's links: the scripts find "the others" there); a retired one keeps only
# reason, email, next_path and retired_at, enough for the dead link's page.
# The scripts reach records through the index sets, keys they are not passed:
# fine on one Redis server, which is what STATE_URL names (not Redis Cluster).
_LINK_FUNCTIONS = """
local function live(key, now)
  local state, expires = unpack(redis.call('HMGET', key, 'state', 'expires'))
  return state == 'live' and tonumber(expires) >= now
end
local function retire(key, reason, now, retired_ms)
  if redis.call('HGET', key, 'state') ~= 'live' then return end
  redis.call('HDEL', key, 'contact_id', 'name', 'lang', 'expires', 'client', 'code_digest',
             'contact_key', 'address_key')
  redis.call('HSET', key, 'state', reason, 'retired_at', now)
  redis.call('PEXPIRE', key, retired_ms)
end
local function retire_contact(link_key, reason, now, retired_ms)
  local contact_key = redis.call('HGET', link_key, 'contact_key')
  if contact_key then
    for _, key in ipairs(redis.call('SMEMBERS', contact_key)) do retire(key, reason, now, retired_ms) end
    redis.call('DEL', contact_key)
  end
  retire(link_key, reason, now, retired_ms)
end
local function live_members(set_key, now)
  local found = {}
  for _, key in ipairs(redis.call('SMEMBERS', set_key)) do
    if live(key, now) then table.insert(found, key) else redis.call('SREM', set_key, key) end
  end
  return found
end
-- Equal-length hex digests compared without an early exit.
local function same(a, b)
  if not a or #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do diff = bit.bor(diff, bit.bxor(a:byte(i), b:byte(i))) end
  return diff == 0
end
"""

# KEYS: link, contact's links, address's links, address's wrong-code count.
# ARGV: now, record TTL ms, index TTL ms, field, value, ...
_LINK_ISSUE = _LINK_FUNCTIONS + """
local now = tonumber(ARGV[1])
live_members(KEYS[2], now)
-- A count of wrong codes lives only while its address has links (as in memory).
if #live_members(KEYS[3], now) == 0 then redis.call('DEL', KEYS[4]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 2, 3 do
  redis.call('SADD', KEYS[i], KEYS[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
return 1
"""

# KEYS: link. ARGV: now, retired TTL ms, EXPIRED, USED.
# Read, check and retire in one step: of two processes with the same token, one gets it.
_LINK_CONSUME = _LINK_FUNCTIONS + """
if redis.call('HGET', KEYS[1], 'state') ~= 'live' then return false end
if tonumber(redis.call('HGET', KEYS[1], 'expires')) < tonumber(ARGV[1]) then
  retire(KEYS[1], ARGV[3], ARGV[1], ARGV[2])
  return false
end
local link = redis.call('HGETALL', KEYS[1])
retire_contact(KEYS[1], ARGV[4], ARGV[1], ARGV[2])
return link
"""

# KEYS: address's links, address's wrong-code count, address's daily wrong codes.
# ARGV: now, wanted digest, "1" when a code was typed, MAX_WRONG_CODES, retired TTL
# ms, count TTL ms, USED, LOCKED, then the daily window's cutoff, now, limit, member, TTL.
_LINK_REDEEM = _LINK_FUNCTIONS + _HIT_FUNCTION + """
local now = tonumber(ARGV[1])
local links = live_members(KEYS[1], now)
if #links == 0 then
  redis.call('DEL', KEYS[2])
  return false  -- nothing to guess at: no count
end
local daily_limit = tonumber(ARGV[11])
if ARGV[3] == '1' and redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[9], '+inf') < daily_limit then
  for _, key in ipairs(links) do
    if same(redis.call('HGET', key, 'code_digest'), ARGV[2]) then
      local link = redis.call('HGETALL', key)
      retire_contact(key, ARGV[7], ARGV[1], ARGV[5])
      return link
    end
  end
end
hit(KEYS[3], ARGV[9], ARGV[10], daily_limit, ARGV[12], ARGV[13])
if redis.call('INCR', KEYS[2]) >= tonumber(ARGV[4]) then
  for _, key in ipairs(links) do retire(key, ARGV[8], ARGV[1], ARGV[5]) end
  redis.call('DEL', KEYS[2])
else
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
return false
"""


class RedisMagicLinkStore:
    """security.MagicLinkStore on Redis, with every one of its rules; each decision
    (issue, consume, redeem a code) is one Lua script, so single use holds across
    processes. Tokens appear only as their HMAC (key names), codes only as the
    memory store's keyed digest."""

    # The very digest of the memory store: a code is bound to its address by SESSION_SECRET.
    _code_digest = security.MagicLinkStore._code_digest

    def __init__(self, client, keys, ttl_seconds, clock, signer):
        self.ttl_seconds = ttl_seconds
        self._client = client
        self._keys = keys
        self._clock = clock
        self._signer = signer or security.Signer(secrets.token_urlsafe(32))
        self._daily_wrong_codes = RedisRateLimiter(client, keys, "wrong-codes-day", security.WRONG_CODES_PER_DAY,
                                                   86400, clock=clock)
        self._issue = client.register_script(_LINK_ISSUE)
        self._consume = client.register_script(_LINK_CONSUME)
        self._redeem = client.register_script(_LINK_REDEEM)

    def _link_key(self, token):
        return self._keys.secret("link", token)

    def _address_keys(self, address):
        """The address's set of links and its count of wrong codes."""
        return self._keys.secret("link-address", address), self._keys.secret("wrong-codes", address)

    @staticmethod
    def _link(record):
        return security.MagicLink(int(record["contact_id"]), record["email"], record["name"], record["lang"],
                                  record["next_path"], float(record["expires"]), record["client"],
                                  record["code_digest"])

    def issue(self, contact_id, email, name, lang, next_path, client=""):
        """A new token (and code, see issue_with_code); only its HMAC is kept."""
        return self.issue_with_code(contact_id, email, name, lang, next_path, client).token

    @guarded
    def issue_with_code(self, contact_id, email, name, lang, next_path, client=""):
        """A new token and 6-digit code for one mail; Redis keeps neither. Using either one retires both."""
        token = secrets.token_urlsafe(32)
        code = f"{secrets.randbelow(10 ** 6):06d}"  # uniform over 000000-999999
        now = self._clock()
        link_key = self._link_key(token)
        contact_key = self._keys.secret("link-contact", contact_id)
        address_key, wrong_key = self._address_keys(security._address(email))
        record = {"state": "live", "contact_id": contact_id, "email": email, "name": name, "lang": lang,
                  "next_path": next_path, "expires": _time(now + self.ttl_seconds), "client": client,
                  "code_digest": self._code_digest(email, code),
                  "contact_key": contact_key, "address_key": address_key}
        # The record outlives the link by RETIRED_LINK_SECONDS: an expired link's page still says why.
        self._issue(keys=[link_key, contact_key, address_key, wrong_key],
                    args=[_time(now), _ms(self.ttl_seconds + security.RETIRED_LINK_SECONDS), _ms(self.ttl_seconds),
                          *itertools.chain.from_iterable(record.items())])
        return security.SignInSecrets(token, code)

    @guarded
    def peek(self, untrusted_token):
        """The link if the token is valid now, without using it up (for the GET page)."""
        if not untrusted_token:
            return None
        record = self._client.hgetall(self._link_key(untrusted_token))
        if record.get("state") != "live" or float(record["expires"]) < self._clock():
            return None
        return self._link(record)

    @guarded
    def consume(self, untrusted_token):
        """The link if the token is valid now; the token can never be used again, and
        the contact's other links are retired with it."""
        if not untrusted_token:
            return None
        record = self._consume(keys=[self._link_key(untrusted_token)],
                               args=[_time(self._clock()), _ms(security.RETIRED_LINK_SECONDS),
                                     security.EXPIRED, security.USED])
        return self._link(_as_dict(record)) if record else None

    @guarded
    def redeem_code(self, untrusted_email, untrusted_code):
        """The link whose mailed code this is, used up as consume() would; else None.
        The rules of security.MagicLinkStore.redeem_code, decided in one script."""
        email = security._address(untrusted_email)
        code = security.normalize_code(untrusted_code)
        wanted = self._code_digest(email, code)  # even for no code: same work
        now = self._clock()
        address_key, wrong_key = self._address_keys(email)
        daily = self._daily_wrong_codes
        record = self._redeem(
            keys=[address_key, wrong_key, daily.key_of(email)],
            args=[_time(now), wanted, "1" if code else "0", security.MAX_WRONG_CODES,
                  _ms(security.RETIRED_LINK_SECONDS), _ms(self.ttl_seconds), security.USED, security.LOCKED,
                  *daily.hit_arguments(now)])
        return self._link(_as_dict(record)) if record else None

    @guarded
    def retired(self, untrusted_token):
        """Why an issued token no longer works (a security.RetiredLink), or None: never
        issued, forgotten, or still valid."""
        if not untrusted_token:
            return None
        record = self._client.hgetall(self._link_key(untrusted_token))
        if not record:
            return None
        # Redis drops the record by its TTL; the clock decides too, as it does everywhere.
        forgotten_before = self._clock() - security.RETIRED_LINK_SECONDS
        if record["state"] == "live":
            expires = float(record["expires"])
            if expires >= self._clock() or expires < forgotten_before:
                return None
            return security.RetiredLink(security.EXPIRED, record["email"], record["next_path"], expires)
        retired_at = float(record["retired_at"])
        if retired_at < forgotten_before:
            return None
        return security.RetiredLink(record["state"], record["email"], record["next_path"], retired_at)

    @guarded
    def __len__(self):
        """Links valid now (tests only: it scans every link key)."""
        keys = list(self._client.scan_iter(match=_pattern(self._keys("link", "")), count=1000))
        if not keys:
            return 0
        now = self._clock()
        with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, "state", "expires")
            rows = pipe.execute()
        return sum(1 for state, expires in rows if state == "live" and float(expires) >= now)


# ---------------------------------------------------------------------------
# Drafts
# ---------------------------------------------------------------------------

class RedisDraftStore:
    """drafts.DraftStore on Redis: one JSON value per ended session, keyed by the
    HMAC of its id, gone after `ttl_seconds` (TTL). The owner's address is in the
    value, beside the text it owns: hand_over checks it."""

    def __init__(self, client, keys, ttl_seconds, clock, max_chars):
        self.ttl_seconds = ttl_seconds
        self.max_chars = max_chars
        self._client = client
        self._keys = keys
        self._clock = clock

    def _key(self, session_id):
        return self._keys.secret("draft", session_id)

    def _put(self, session_id, draft):
        self._client.set(self._key(session_id), json.dumps(dataclasses.asdict(draft)), px=_ms(self.ttl_seconds))

    @staticmethod
    def _draft(value):
        return drafts.Draft(**json.loads(value)) if value else None

    @guarded
    def keep(self, session_id, email, path, form, fields):
        """Keep `fields` for the ended session `session_id` of `email` (replacing its last draft)."""
        if not session_id or not email:
            return False
        self._put(session_id, drafts.Draft(path, form, {name: value[:self.max_chars] for name, value in fields.items()},
                                           email.lower(), self._clock() + self.ttl_seconds))
        return True

    @guarded
    def hand_over(self, old_session_id, new_session_id, email):
        """Move the ended session's draft to the new session of the same address: the Draft, or None."""
        if not old_session_id:
            return None
        # GETDEL: of two sign-ins racing with the same old session, one gets the draft.
        draft = self._draft(self._client.getdel(self._key(old_session_id)))
        if draft is None or draft.expires < self._clock() or draft.email != email.lower():
            return None
        draft = dataclasses.replace(draft, expires=self._clock() + self.ttl_seconds)
        self._put(new_session_id, draft)
        return draft

    @guarded
    def get(self, session_id, path):
        """The live session's draft for the form on `path`, or None; it stays until dropped or expired."""
        if not session_id:
            return None
        draft = self._draft(self._client.get(self._key(session_id)))
        if draft is None or draft.path != path or draft.expires < self._clock():
            return None
        return draft

    @guarded
    def drop(self, session_id):
        if session_id:
            self._client.delete(self._key(session_id))

    @guarded
    def __len__(self):
        """Drafts still in Redis (tests only: it scans)."""
        return sum(1 for _ in self._client.scan_iter(match=_pattern(self._keys("draft", "")), count=1000))
