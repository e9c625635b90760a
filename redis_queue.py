"""The reply-mail queue and the per-ticket and per-contact markers on Redis: the twin
of storage.StateFile for several portal processes (STATE_URL=redis://...).

Same methods, same answers as StateFile; what differs is that every process sees the
same queue, and a worker takes a ticket with a lease (`claim_ticket`) so exactly one
process mails it at a time.

Why a due-time sorted set with leases, not a list: a reply is mailed only once it is
NOTIFY_DELAY_SECONDS old, replies to one ticket go out together in one mail, and a
failed try comes back after a growing pause. A list moved with LMOVE/BLMOVE hands out
items in arrival order the moment they arrive; it cannot hold "due at 12:03", cannot
gather a ticket's replies, and cannot put one back for later. So:

    queue:message:<id>    hash: ticket, received_at, due_at, attempts, state, done_at.
                          Its existence is the webhook de-duplication: `enqueue`
                          creates it only if absent (SET NX semantics, inside one
                          script). No TTL while queued; DEDUP_DAYS once done, so a
                          late duplicate delivery still finds its twin.
    queue:ticket:<id>     sorted set of the ticket's queued message ids (score = id):
                          `queued_for` in message order, `cancel_seen` by range.
    queue:due             sorted set: ticket -> earliest due_at of its queued messages.
                          "Which ticket is due" is ZRANGEBYSCORE -inf now.
    queue:received        sorted set: queued message -> received_at (`queue_stats`).
    queue:states          hash: state -> count (`states`, for tests and the benchmark).
    queue:newest-reply:<ticket>  the newest agent message id the webhook told of
                          (`agent_reply_ids`), kept DEDUP_DAYS after its last use.
    queue:lease:<ticket>  who is mailing the ticket now: SET NX PX, a token per process.

Every change that touches several keys is one Lua script, so it is atomic across
processes; reads of several keys are one script or one pipeline (one round trip).

A process that dies while mailing (killed, host lost) never releases its lease: the
ticket's messages stay queued and due, the lease expires after `lease_seconds`, and
another process claims the ticket and mails it. If the first process had already
handed the mail to SMTP but not yet marked it sent, the customer gets it twice:
at-least-once, never zero times, the same as the SQLite queue after a crash.

Markers outside the queue:

    lang:<contact>             the contact's portal language, no TTL: one short string
                               per contact who ever signed in (bounded by Chatwoot's
                               contacts), and forgetting it would silently switch a
                               customer's mails to English. StateFile keeps it forever too.
    ticket-seen:<ticket>       newest message id the owner saw, SEEN_DAYS after it last
                               moved forward (StateFile purges it on the same rule).
    ticket-cancelled:<ticket>  when the customer cancelled the ticket, SEEN_DAYS: a
                               ticket nobody opened for that long needs no "Cancelled
                               by you" line.

`states()` counts every message ever finished under the prefix: StateFile forgets
done rows after DEDUP_DAYS, these counters do not (they are for tests and the
benchmark). Times (received_at, due_at, done_at) are the portal's clock, stored as
exact float text; the TTLs are Redis's own clock and only clean up. Scripts build
per-ticket and per-message key names from the prefix, so the queue needs one Redis
(or a primary with replicas), not Redis Cluster.
"""

import secrets
import time

from redis_store import guarded
from storage import DEDUP_DAYS, SEEN_DAYS

DEDUP_SECONDS = DEDUP_DAYS * 86400
SEEN_SECONDS = SEEN_DAYS * 86400
# How long a worker may hold a ticket before another process may take it over. A
# mail costs a few Chatwoot calls (CHATWOOT_TIMEOUT each) and one SMTP session
# (10 s timeouts), far below this; a dead process delays its tickets by this much.
LEASE_SECONDS = 300
# Due tickets looked at per step while claiming: most are free, few are leased.
CLAIM_BATCH = 32

# Shared by the scripts that finish or reschedule messages. KEYS[1] due, KEYS[2]
# received, KEYS[3] states; ARGV[1..3] the key-name starts of messages, tickets and
# newest replies.
_PRELUDE = """
local due_key, received_key, states_key = KEYS[1], KEYS[2], KEYS[3]
local message_base, ticket_base, newest_base = ARGV[1], ARGV[2], ARGV[3]

-- The ticket's place in "due": its earliest queued message, or gone.
local function reschedule(ticket)
  local earliest, earliest_text = nil, nil
  for _, id in ipairs(redis.call('ZRANGE', ticket_base .. ticket, 0, -1)) do
    local text = redis.call('HGET', message_base .. id, 'due_at')
    local value = tonumber(text)
    if value and (earliest == nil or value < earliest) then
      earliest, earliest_text = value, text
    end
  end
  if earliest_text then
    redis.call('ZADD', due_key, earliest_text, ticket)
  else
    redis.call('ZREM', due_key, ticket)
  end
end

-- One queued message done; its ticket, or nil when it was not queued.
local function finish_one(id, state, now, ttl)
  local key = message_base .. id
  if redis.call('HGET', key, 'state') ~= 'queued' then
    return nil
  end
  local ticket = redis.call('HGET', key, 'ticket')
  redis.call('HSET', key, 'state', state, 'done_at', now)
  redis.call('EXPIRE', key, ttl)
  redis.call('ZREM', ticket_base .. ticket, id)
  redis.call('ZREM', received_key, id)
  if redis.call('HINCRBY', states_key, 'queued', -1) <= 0 then
    redis.call('HDEL', states_key, 'queued')
  end
  redis.call('HINCRBY', states_key, state, 1)
  redis.call('EXPIRE', newest_base .. ticket, ttl)
  return ticket
end
"""

# KEYS: message, ticket, due, received, states, newest reply.
# ARGV: message id, ticket id, received_at, due_at, dedup seconds.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'ticket', ARGV[2], 'received_at', ARGV[3], 'due_at', ARGV[4],
           'attempts', 0, 'state', 'queued')
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
redis.call('ZADD', KEYS[3], 'LT', ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[5], 'queued', 1)
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[6]) or '0') then
  redis.call('SET', KEYS[6], ARGV[1], 'EX', ARGV[5])
else
  redis.call('EXPIRE', KEYS[6], ARGV[5])
end
return 1
"""

# ARGV[4] state, ARGV[5] now, ARGV[6] dedup seconds, ARGV[7..] message ids.
_FINISH = _PRELUDE + """
local tickets, count = {}, 0
for i = 7, #ARGV do
  local ticket = finish_one(ARGV[i], ARGV[4], ARGV[5], ARGV[6])
  if ticket then
    tickets[ticket] = true
    count = count + 1
  end
end
for ticket in pairs(tickets) do
  reschedule(ticket)
end
return count
"""

# ARGV[4] due_at, ARGV[5..] message ids.
_RETRY_LATER = _PRELUDE + """
local tickets = {}
for i = 5, #ARGV do
  local key = message_base .. ARGV[i]
  if redis.call('HGET', key, 'state') == 'queued' then
    redis.call('HSET', key, 'due_at', ARGV[4])
    redis.call('HINCRBY', key, 'attempts', 1)
    tickets[redis.call('HGET', key, 'ticket')] = true
  end
end
for ticket in pairs(tickets) do
  reschedule(ticket)
end
return 0
"""

# ARGV[4] ticket, ARGV[5] up to message id, ARGV[6] now, ARGV[7] dedup seconds.
_CANCEL_SEEN = _PRELUDE + """
local count = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', ticket_base .. ARGV[4], '-inf', ARGV[5])) do
  if finish_one(id, 'cancelled', ARGV[6], ARGV[7]) then
    count = count + 1
  end
end
reschedule(ARGV[4])
return count
"""

# KEYS[1] the ticket's queued set; ARGV[1] message key start.
# A flat list: id, received_at, attempts, id, ...
_QUEUED_FOR = """
local rows = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local fields = redis.call('HMGET', ARGV[1] .. id, 'received_at', 'attempts')
  if fields[1] then
    rows[#rows + 1] = id
    rows[#rows + 1] = fields[1]
    rows[#rows + 1] = fields[2]
  end
end
return rows
"""

# KEYS[1] due. ARGV: lease key start, now, token, lease milliseconds, batch, excluded tickets...
_CLAIM = """
local skip = {}
for i = 6, #ARGV do
  skip[ARGV[i]] = true
end
local offset, batch = 0, tonumber(ARGV[5])
while true do
  local tickets = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', offset, batch)
  if #tickets == 0 then
    return false
  end
  for _, ticket in ipairs(tickets) do
    if not skip[ticket] and redis.call('SET', ARGV[1] .. ticket, ARGV[3], 'NX', 'PX', ARGV[4]) then
      return ticket
    end
  end
  offset = offset + #tickets
end
"""

# KEYS[1] lease, ARGV[1] token: only our own lease is lifted.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] seen marker; ARGV: message id, ttl. Only ever forward.
_MARK_SEEN = """
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


def _number(value):
    """A float as text Redis reads back to the same float (repr is exact)."""
    return repr(float(value))


class RedisStateFile:
    """storage.StateFile's methods on Redis, shared by every portal process."""

    def __init__(self, client, keys, clock=time.time):
        self._client = client
        self._keys = keys
        self._clock = clock
        # Marks this process's leases, so a release never lifts another process's.
        self._token = secrets.token_hex(16)
        self._due = keys("queue", "due")
        self._received = keys("queue", "received")
        self._states = keys("queue", "states")
        self._bases = [keys("queue", "message", ""), keys("queue", "ticket", ""), keys("queue", "newest-reply", "")]
        self._enqueue = client.register_script(_ENQUEUE)
        self._finish = client.register_script(_FINISH)
        self._retry_later = client.register_script(_RETRY_LATER)
        self._cancel_seen = client.register_script(_CANCEL_SEEN)
        self._queued_for = client.register_script(_QUEUED_FOR)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._mark_seen = client.register_script(_MARK_SEEN)

    @guarded
    def close(self):
        # The pool is shared by every store of this process; this is its last user.
        self._client.connection_pool.disconnect()

    # -- the notification queue ----------------------------------------------

    @guarded
    def enqueue(self, message_id, ticket_id, due_at):
        """Queue one agent message; False when this message id was seen before."""
        message_id, ticket_id = int(message_id), int(ticket_id)
        keys = [self._keys("queue", "message", message_id), self._keys("queue", "ticket", ticket_id), self._due,
                self._received, self._states, self._keys("queue", "newest-reply", ticket_id)]
        args = [message_id, ticket_id, _number(self._clock()), _number(due_at), DEDUP_SECONDS]
        return self._enqueue(keys=keys, args=args) == 1

    @guarded
    def due_tickets(self, now, exclude=(), limit=8):
        """Tickets whose earliest queued message is due, most overdue first."""
        tickets = self._client.zrangebyscore(self._due, "-inf", _number(now), start=0, num=limit + len(exclude))
        return [int(t) for t in tickets if int(t) not in exclude][:limit]

    @guarded
    def next_due_at(self):
        """When the next queued message falls due, or None when the queue is empty."""
        first = self._client.zrange(self._due, 0, 0, withscores=True)
        return first[0][1] if first else None

    @guarded
    def queued_for(self, ticket_id):
        """[(message_id, received_at, attempts)] queued for one ticket, oldest first."""
        flat = self._queued_for(keys=[self._keys("queue", "ticket", int(ticket_id))], args=[self._bases[0]])
        return [(int(flat[i]), float(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]

    @guarded
    def finish(self, message_ids, state):
        """Mark messages done: sent, skipped, cancelled or failed."""
        if not message_ids:
            return
        self._finish(keys=self._queue_keys(),
                     args=[*self._bases, state, _number(self._clock()), DEDUP_SECONDS, *map(int, message_ids)])

    @guarded
    def retry_later(self, message_ids, due_at):
        if not message_ids:
            return
        self._retry_later(keys=self._queue_keys(), args=[*self._bases, _number(due_at), *map(int, message_ids)])

    @guarded
    def cancel_seen(self, ticket_id, up_to_message_id):
        """The customer saw the ticket: its queued messages up to this id need no mail."""
        return self._cancel_seen(keys=self._queue_keys(), args=[
            *self._bases, int(ticket_id), int(up_to_message_id), _number(self._clock()), DEDUP_SECONDS])

    @guarded
    def queue_stats(self, now):
        """(queued messages, age in seconds of the oldest one or None)."""
        pipe = self._client.pipeline()
        pipe.zcard(self._received)
        pipe.zrange(self._received, 0, 0, withscores=True)
        count, oldest = pipe.execute()
        return count, (max(0.0, now - oldest[0][1]) if oldest else None)

    @guarded
    def states(self):
        """{state: count} of every message queued under this prefix (tests and the benchmark)."""
        return {state: int(count) for state, count in self._client.hgetall(self._states).items() if int(count) > 0}

    def _queue_keys(self):
        return [self._due, self._received, self._states]

    # -- several processes, one queue ---------------------------------------------

    @guarded
    def claim_ticket(self, now, exclude=(), lease_seconds=LEASE_SECONDS):
        """A due ticket nobody holds, now held by this process for `lease_seconds`, or None.

        The lease is Redis's own clock (it must expire even if this process is gone);
        "due" is the portal's clock, like everywhere else.
        """
        ticket = self._claim(keys=[self._due], args=[
            self._keys("queue", "lease", ""), _number(now), self._token, max(1, round(lease_seconds * 1000)),
            CLAIM_BATCH, *(int(t) for t in exclude)])
        return None if ticket is None else int(ticket)

    @guarded
    def release_ticket(self, ticket_id):
        """Done with the ticket (mailed, postponed or dropped): another process may take it."""
        self._release(keys=[self._keys("queue", "lease", int(ticket_id))], args=[self._token])

    # -- what the customer chose and saw ----------------------------------------

    @guarded
    def remember_language(self, contact_id, lang):
        self._client.set(self._keys("lang", int(contact_id)), lang)

    @guarded
    def language_of(self, contact_id):
        return self._client.get(self._keys("lang", int(contact_id)))

    @guarded
    def mark_seen(self, ticket_id, message_id):
        """Remember the newest message the owner has seen; only ever moves forward."""
        self._mark_seen(keys=[self._keys("ticket-seen", int(ticket_id))], args=[int(message_id), SEEN_SECONDS])

    @guarded
    def seen_message_id(self, ticket_id):
        return int(self._client.get(self._keys("ticket-seen", int(ticket_id))) or 0)

    @guarded
    def seen_message_ids(self, ticket_ids):
        """{ticket id: newest message id seen} for the tickets of one dashboard page."""
        return self._many("ticket-seen", ticket_ids)

    @guarded
    def agent_reply_ids(self, ticket_ids):
        """{ticket id: newest agent reply Chatwoot's webhook told of} (queued, mailed or not)."""
        return self._many(("queue", "newest-reply"), ticket_ids)

    @guarded
    def dashboard_marks(self, ticket_ids):
        """(seen_message_ids, agent_reply_ids) of one dashboard page, in one round trip."""
        ids = [int(t) for t in ticket_ids]
        if not ids:
            return {}, {}
        values = self._client.mget([self._keys("ticket-seen", t) for t in ids] +
                                   [self._keys("queue", "newest-reply", t) for t in ids])
        return tuple({ticket: int(value) for ticket, value in zip(ids, half) if value is not None}
                     for half in (values[:len(ids)], values[len(ids):]))

    def _many(self, kind, ticket_ids):
        ids = [int(t) for t in ticket_ids]
        if not ids:
            return {}
        kind = kind if isinstance(kind, tuple) else (kind,)
        values = self._client.mget([self._keys(*kind, t) for t in ids])
        return {ticket: int(value) for ticket, value in zip(ids, values) if value is not None}

    @guarded
    def remember_cancelled(self, ticket_id, at):
        """The customer cancelled the ticket at `at` (the portal's clock)."""
        self._client.set(self._keys("ticket-cancelled", int(ticket_id)), _number(at), ex=SEEN_SECONDS)

    @guarded
    def cancelled_at(self, ticket_id):
        """When the customer cancelled the ticket, or None."""
        at = self._client.get(self._keys("ticket-cancelled", int(ticket_id)))
        return None if at is None else float(at)

    @guarded
    def ticket_marks(self, ticket_id):
        """(seen_message_id, cancelled_at) of one ticket page, in one round trip."""
        seen, at = self._client.mget([self._keys("ticket-seen", int(ticket_id)),
                                      self._keys("ticket-cancelled", int(ticket_id))])
        return int(seen or 0), None if at is None else float(at)

    @guarded
    def forget_cancelled(self, ticket_id):
        """The ticket is open again: its cancel is history."""
        self._client.delete(self._keys("ticket-cancelled", int(ticket_id)))
