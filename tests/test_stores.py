"""The stores' contract, on both backends: every behaviour a handler relies on runs
against the memory stores (security.py, drafts.py) and their Redis twins
(redis_store.py) alike, so the handlers never need to know which one runs.

Then what only Redis has to prove: several processes (separate connections) share
one state, single use holds under concurrency, nothing secret is in clear, every
key expires, and a Redis outage is a StateUnavailable that heals by itself.

Time moves through the `clock` fixture; the Redis stores judge validity by that
clock too, so the same tests hold on both. The Redis tests use a real redis-server
(`redis_server`), each test under its own STATE_PREFIX.
"""

import hashlib
import re
import threading
import time

import pytest

import drafts
import redis_store
import security
from conftest import require_tools
from redis_server import RedisServer
from security import (
    EXPIRED,
    LOCKED,
    MAX_SESSION_SECONDS,
    MAX_WRONG_CODES,
    RETIRED_LINK_SECONDS,
    SWEEP_INTERVAL_SECONDS,
    USED,
    WRONG_CODES_PER_DAY,
    MagicLink,
    Signer,
)
from storage import StateUnavailable

IDLE = 30 * 60
TTL = 15 * 60
DRAFT_TTL = 2 * TTL
DRAFT_MAX_CHARS = 100
KEY_SECRET = "test-secret"
SIGNER_SECRET = "stores-secret-0123456789abcdef0123456789abcdef"
JANE, BOB = "jane@example.com", "bob@example.com"


# ---------------------------------------------------------------------------
# The two backends
# ---------------------------------------------------------------------------

class MemoryBackend:
    name = "memory"

    def __init__(self, clock):
        self.clock = clock

    def sessions(self, idle=IDLE):
        return security.SessionStore(idle, self.clock)

    def links(self, ttl=TTL, signer=None):
        return security.MagicLinkStore(ttl, self.clock, signer or Signer(SIGNER_SECRET))

    def limiter(self, limit, window, name="limit-test"):
        return security.RateLimiter(limit, window, clock=self.clock)

    def drafts(self, ttl=DRAFT_TTL, max_chars=DRAFT_MAX_CHARS):
        return drafts.DraftStore(ttl, self.clock, max_chars)

    def close(self):
        pass


class RedisBackend:
    """The Redis stores of one "process": its own client (connection pool), a shared prefix."""

    name = "redis"

    def __init__(self, url, prefix, clock):
        self.url, self.prefix, self.clock = url, prefix, clock
        self.client = redis_store.connect(url)
        self.keys = redis_store.Keys(prefix, KEY_SECRET)

    def sessions(self, idle=IDLE):
        return redis_store.RedisSessionStore(self.client, self.keys, idle, self.clock)

    def links(self, ttl=TTL, signer=None):
        # Every process signs with SESSION_SECRET: a code mailed by one works in another.
        return redis_store.RedisMagicLinkStore(self.client, self.keys, ttl, self.clock, signer or Signer(SIGNER_SECRET))

    def limiter(self, limit, window, name="limit-test"):
        return redis_store.RedisRateLimiter(self.client, self.keys, name, limit, window, clock=self.clock)

    def drafts(self, ttl=DRAFT_TTL, max_chars=DRAFT_MAX_CHARS):
        return redis_store.RedisDraftStore(self.client, self.keys, ttl, self.clock, max_chars)

    def another_process(self):
        """Stores of a second portal process: same Redis and prefix, another connection pool."""
        return RedisBackend(self.url, self.prefix, self.clock)

    def close(self):
        self.client.close()
        self.client.connection_pool.disconnect()


@pytest.fixture(params=["memory", "redis"])
def backend(request, clock):
    if request.param == "memory":
        chosen = MemoryBackend(clock)
    else:
        chosen = RedisBackend(request.getfixturevalue("redis_server").url, RedisServer.prefix(), clock)
    yield chosen
    chosen.close()


@pytest.fixture
def on_redis(redis_server, clock):
    """Redis only: one process's stores, and `another_process()` for a second."""
    opened = [RedisBackend(redis_server.url, RedisServer.prefix(), clock)]
    original_another = opened[0].another_process

    def another_process():
        opened.append(original_another())
        return opened[-1]

    opened[0].another_process = another_process
    yield opened[0]
    for backend_ in opened:
        backend_.close()


def issue(store, contact_id=17, email=JANE, next_path=""):
    return store.issue_with_code(contact_id, email, "Jane", "en", next_path)


def a_wrong_code(code):
    return f"{(int(code) + 1) % 10 ** 6:06d}"


def run_together(count, target):
    """`target(index)` on `count` threads released at once; their results in order."""
    barrier = threading.Barrier(count)
    results = [None] * count
    errors = []

    def run(index):
        barrier.wait()
        try:
            results[index] = target(index)
        except Exception as error:  # reported below: a thread's exception is otherwise lost
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    return results


# ---------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------

def test_a_created_session_comes_back_with_its_contact_and_a_fresh_last_seen(backend, clock):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    clock.advance(60)
    found = store.get(session.id)
    assert isinstance(found, security.Session)
    assert (found.id, found.contact_id, found.email, found.name) == (session.id, 17, JANE, "Jane")
    assert (found.started, found.last_seen, found.flash) == (session.started, clock(), "")


def test_activity_keeps_a_session_alive_past_the_idle_period(backend, clock):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    for _ in range(4):
        clock.advance(IDLE - 60)
        assert store.get(session.id).id == session.id
    # Nearly four idle periods have passed in total; activity kept it alive.


def test_idleness_beyond_the_idle_period_ends_a_session(backend, clock):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    clock.advance(IDLE + 1)
    assert store.get(session.id) is None
    clock.advance(-IDLE)  # gone for good, not merely judged idle
    assert store.get(session.id) is None


def test_however_active_a_session_ends_twelve_hours_after_sign_in(backend, clock):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    elapsed = 0
    while elapsed + IDLE - 60 < MAX_SESSION_SECONDS:
        clock.advance(IDLE - 60)
        elapsed += IDLE - 60
        assert store.get(session.id) is not None
    clock.advance(MAX_SESSION_SECONDS - elapsed)  # exactly at the cap: still valid
    assert store.get(session.id) is not None
    clock.advance(1)
    assert store.get(session.id) is None


def test_a_deleted_session_is_gone(backend):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    store.delete(session.id)
    assert store.get(session.id) is None


def test_an_unknown_session_id_is_no_session(backend):
    store = backend.sessions()
    store.create(17, JANE, "Jane")
    assert store.get("not-a-session-id") is None
    assert store.get(None) is None
    assert store.get("") is None


def test_expired_sessions_are_not_counted(backend, clock):
    store = backend.sessions()
    for number in range(5):
        store.create(number, f"user{number}@example.com", "")
    assert len(store) == 5
    clock.advance(IDLE + SWEEP_INTERVAL_SECONDS + 1)
    store.create(99, "late@example.com", "Late")
    assert len(store) == 1


def test_session_ids_are_long_random_and_url_safe(backend):
    store = backend.sessions()
    ids = [store.create(1, JANE, "Jane").id for _ in range(50)]
    assert len(set(ids)) == len(ids)
    for session_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", session_id), session_id


def test_a_flash_set_by_one_request_is_shown_once_by_the_next_page(backend):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    store.set_flash(store.get(session.id), "ticket_created")
    assert store.pop_flash(store.get(session.id)) == "ticket_created"
    assert store.pop_flash(store.get(session.id)) == ""


def test_a_flash_popped_from_the_session_that_set_it_is_shown_once(backend):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    store.set_flash(session, "rating_saved")
    assert store.pop_flash(session) == "rating_saved"
    assert store.pop_flash(session) == ""
    assert store.pop_flash(store.get(session.id)) == ""


def test_two_pages_loaded_at_once_show_a_flash_only_once(backend):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    store.set_flash(session, "reply_sent")
    first, second = store.get(session.id), store.get(session.id)
    assert sorted([store.pop_flash(first), store.pop_flash(second)]) == ["", "reply_sent"]


def test_a_flash_set_while_a_page_is_loading_is_shown_once_and_never_lost(backend):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    loading = store.get(session.id)
    store.set_flash(store.get(session.id), "ticket_cancelled")  # another request, meanwhile
    shown = [store.pop_flash(loading), store.pop_flash(store.get(session.id)), store.pop_flash(store.get(session.id))]
    assert shown.count("ticket_cancelled") == 1 and shown.count("") == 2


def test_a_flash_set_on_a_deleted_session_does_not_bring_it_back(backend):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    store.delete(session.id)
    store.set_flash(session, "ticket_created")
    assert store.get(session.id) is None


def test_a_duplicate_form_finds_the_outcome_the_first_left(backend, clock):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    with store.once(session, "create:abc") as done:
        assert (done.result, done.uncertain_since) == (None, None)
        done.result, done.uncertain_since = 4242, clock()
    with store.once(store.get(session.id), "create:abc") as again:
        assert (again.result, again.uncertain_since) == (4242, clock())
    with store.once(session, "create:other") as other:
        assert (other.result, other.uncertain_since) == (None, None)


def test_the_same_form_id_in_another_session_is_another_form(backend):
    store = backend.sessions()
    jane, bob = store.create(17, JANE, "Jane"), store.create(18, BOB, "Bob")
    with store.once(jane, "create:abc") as done:
        done.result = 1
    with store.once(bob, "create:abc") as done:
        assert done.result is None


def test_an_outcome_is_kept_when_the_request_that_held_it_failed(backend, clock):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    with pytest.raises(RuntimeError):
        with store.once(session, "reply:7:abc") as done:
            done.uncertain_since = clock()
            raise RuntimeError("Chatwoot's answer was lost")
    with store.once(session, "reply:7:abc") as again:  # not left held, and it says what happened
        assert (again.result, again.uncertain_since) == (None, clock())


def test_a_duplicate_form_waits_for_the_first_request_then_sees_its_result(backend):
    store = backend.sessions()
    session = store.create(17, JANE, "Jane")
    first_inside, first_may_finish, second_inside = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def first():
        with store.once(session, "create:abc") as done:
            first_inside.set()
            first_may_finish.wait(timeout=10)
            done.result = 99

    def second():
        first_inside.wait(timeout=10)
        with store.once(store.get(session.id), "create:abc") as done:
            second_inside.set()
            seen.append(done.result)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    assert first_inside.wait(timeout=10)
    assert not second_inside.wait(timeout=0.3)  # held out while the first is inside
    first_may_finish.set()
    for thread in threads:
        thread.join(timeout=10)
    assert seen == [99]


# ---------------------------------------------------------------------------
# Magic links
# ---------------------------------------------------------------------------

def test_a_sign_in_token_carries_32_random_bytes_url_safe(backend):
    store = backend.links()
    tokens = {store.issue(17, JANE, "Jane", "en", "") for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", token), token


def test_peeking_at_a_link_does_not_use_it_up(backend):
    store = backend.links()
    token = store.issue(17, JANE, "Jane", "es", "/tickets/42", client="203.0.113.0/24")
    assert store.peek(token) is not None
    peeked = store.peek(token)
    link = store.consume(token)
    assert isinstance(link, MagicLink) and link == peeked
    assert (link.contact_id, link.email, link.name, link.lang, link.next_path, link.client) == (
        17, JANE, "Jane", "es", "/tickets/42", "203.0.113.0/24")


def test_a_link_can_be_consumed_only_once(backend):
    store = backend.links()
    token = store.issue(17, JANE, "Jane", "en", "")
    assert store.consume(token) is not None
    assert store.consume(token) is None
    assert store.peek(token) is None


def test_a_link_still_works_just_before_its_ttl(backend, clock):
    store = backend.links()
    token = store.issue(17, JANE, "Jane", "en", "")
    clock.advance(TTL - 1)
    assert store.consume(token) is not None


def test_a_link_expires_after_its_ttl(backend, clock):
    store = backend.links()
    token = store.issue(17, JANE, "Jane", "en", "")
    clock.advance(TTL + 1)
    assert store.peek(token) is None
    assert store.consume(token) is None
    assert store.retired(token).reason == EXPIRED


@pytest.mark.parametrize("untrusted", [None, "", "x" * 43])
def test_an_unknown_or_missing_token_is_no_link(backend, untrusted):
    store = backend.links()
    store.issue(17, JANE, "Jane", "en", "")
    assert store.peek(untrusted) is None
    assert store.consume(untrusted) is None
    assert store.retired(untrusted) is None


def test_signing_in_retires_the_contacts_other_links_but_not_other_contacts_links(backend):
    store = backend.links()
    first = store.issue(1, JANE, "Jane", "en", "")
    second = store.issue(1, JANE, "Jane", "en", "")
    bobs = store.issue(2, BOB, "Bob", "en", "")
    assert store.consume(second) is not None
    assert store.peek(first) is None
    assert store.retired(first).reason == USED
    assert store.peek(bobs) is not None


def test_the_store_keeps_the_code_only_as_a_keyed_hash(backend, monkeypatch):
    monkeypatch.setattr(security.secrets, "randbelow", lambda limit: 424242)
    stores = [backend.links(signer=Signer(SIGNER_SECRET)), backend.links(signer=Signer(SIGNER_SECRET)),
              backend.links(signer=Signer("another-secret-" + "x" * 40))]
    digests = []
    for store in stores:
        sent = issue(store)
        assert sent.code == "424242"
        digests.append(store.peek(sent.token).code_digest)
    assert digests[0] == digests[1] != digests[2]  # keyed with the portal's secret
    plain = {hashlib.sha256(value.encode()).hexdigest() for value in ("424242", f"{JANE}|424242", f"424242{JANE}")}
    assert not plain & set(digests)


def test_a_code_redeems_its_link_for_its_address_only(backend):
    store = backend.links()
    jane = issue(store)
    bob = issue(store, 18, BOB)
    assert store.redeem_code(BOB, jane.code) is None
    link = store.redeem_code("JANE@Example.com ", f"{jane.code[:3]} {jane.code[3:]}")
    assert isinstance(link, MagicLink) and link.contact_id == 17
    assert store.redeem_code(JANE, jane.code) is None  # used
    assert store.consume(jane.token) is None
    assert store.retired(jane.token).reason == USED
    assert store.redeem_code(BOB, bob.code).contact_id == 18


def test_signing_in_with_a_code_retires_the_contacts_older_mails_too(backend):
    store = backend.links()
    older, newer, bobs = issue(store), issue(store), issue(store, 18, BOB)
    assert store.redeem_code(JANE, newer.code) is not None
    assert store.peek(older.token) is None
    assert store.retired(older.token).reason == USED
    assert store.redeem_code(JANE, older.code) is None
    assert store.peek(bobs.token) is not None


def test_a_used_link_makes_its_code_fail(backend):
    store = backend.links()
    sent = issue(store)
    assert store.consume(sent.token) is not None
    assert store.redeem_code(JANE, sent.code) is None


def test_the_fifth_wrong_code_retires_every_link_of_the_address_and_a_new_one_starts_afresh(backend):
    store = backend.links()
    first, second = issue(store), issue(store)
    wrong = a_wrong_code(first.code) if a_wrong_code(first.code) != second.code else a_wrong_code(second.code)
    for _ in range(MAX_WRONG_CODES - 1):
        assert store.redeem_code(JANE, wrong) is None
    assert store.peek(first.token) is not None
    assert store.redeem_code(JANE, wrong) is None  # the fifth
    assert store.peek(first.token) is None and store.peek(second.token) is None
    assert store.redeem_code(JANE, first.code) is None and store.redeem_code(JANE, second.code) is None
    assert store.retired(first.token).reason == LOCKED
    fresh = issue(store)
    for _ in range(MAX_WRONG_CODES - 1):
        assert store.redeem_code(JANE, a_wrong_code(fresh.code)) is None
    assert store.redeem_code(JANE, fresh.code) is not None


def test_a_missing_or_malformed_code_counts_as_a_wrong_one(backend):
    store = backend.links()
    sent = issue(store)
    for typed in ["", None, "12345", "abcdef", "1234567"]:
        assert store.redeem_code(JANE, typed) is None
    assert store.peek(sent.token) is None  # five wrong ones
    assert store.retired(sent.token).reason == LOCKED


def test_wrong_codes_are_counted_per_address(backend):
    store = backend.links()
    jane, bob = issue(store), issue(store, 18, BOB)
    for _ in range(MAX_WRONG_CODES - 1):
        store.redeem_code(JANE, a_wrong_code(jane.code))
        store.redeem_code(BOB, a_wrong_code(bob.code))
    assert store.redeem_code(JANE, jane.code) is not None
    assert store.redeem_code(BOB, bob.code) is not None


def test_a_count_of_wrong_codes_ends_with_its_links(backend, clock):
    store = backend.links()
    old = issue(store)
    for _ in range(MAX_WRONG_CODES - 1):
        store.redeem_code(JANE, a_wrong_code(old.code))
    clock.advance(TTL + SWEEP_INTERVAL_SECONDS + 1)
    fresh = issue(store)
    for _ in range(MAX_WRONG_CODES - 1):
        store.redeem_code(JANE, a_wrong_code(fresh.code))
    assert store.redeem_code(JANE, fresh.code) is not None


def test_an_expired_code_is_refused(backend, clock):
    store = backend.links()
    sent = issue(store)
    clock.advance(TTL - 1)
    store.redeem_code(BOB, "123456")  # the memory store sweeps now, the next is a minute away
    clock.advance(2)
    assert store.redeem_code(JANE, sent.code) is None


def test_the_retired_record_says_why_and_for_whom(backend, clock):
    store = backend.links()
    used, expired = issue(store, next_path="/tickets/7"), issue(store, 18, BOB)
    ann_first = issue(store, 19, "ann@example.com")
    store.consume(used.token)
    clock.advance(TTL - 1)
    valid_now = issue(store, 19, "ann@example.com")
    clock.advance(2)
    record = store.retired(used.token)
    assert isinstance(record, security.RetiredLink)
    assert (record.reason, record.email, record.next_path) == (USED, JANE, "/tickets/7")
    assert store.retired(expired.token).reason == EXPIRED
    assert store.retired(valid_now.token) is None  # still valid: nothing to explain
    clock.advance(SWEEP_INTERVAL_SECONDS + 1)
    issue(store, 20, "joann@example.com")  # the memory store sweeps
    assert (store.retired(expired.token).reason, store.retired(expired.token).email) == (EXPIRED, BOB)
    assert store.retired(ann_first.token).reason == EXPIRED
    assert store.retired("A" * 43) is None and store.retired("") is None and store.retired(None) is None


def test_the_retired_record_forgets_after_a_day(backend, clock):
    store = backend.links()
    sent = issue(store)
    store.consume(sent.token)
    clock.advance(RETIRED_LINK_SECONDS - 1)
    assert store.retired(sent.token).reason == USED
    clock.advance(SWEEP_INTERVAL_SECONDS + 2)
    issue(store, 18, BOB)  # the memory store sweeps
    assert store.retired(sent.token) is None


def test_new_mails_do_not_buy_endless_guesses_twenty_wrong_codes_a_day_stop_the_codes(backend, clock):
    store = backend.links()
    for _ in range(WRONG_CODES_PER_DAY):  # a fresh mail whenever the last was locked
        if not len(store):
            issue(store)
        assert store.redeem_code(JANE, "000000") is None
    sent = issue(store)
    assert store.redeem_code(JANE, sent.code) is None  # codes are off for today
    assert store.consume(sent.token) is not None  # the link in the mail still works
    clock.advance(86400 + 1)
    sent = issue(store)
    assert store.redeem_code(JANE, sent.code) is not None  # a new day


# ---------------------------------------------------------------------------
# Rate limits
# ---------------------------------------------------------------------------

def test_the_rate_limiter_allows_the_limit_and_refuses_the_next_hit(backend):
    limiter = backend.limiter(3, 60)
    assert [limiter.hit(JANE) for _ in range(4)] == [True, True, True, False]


def test_the_rate_limit_window_slides_with_the_clock(backend, clock):
    limiter = backend.limiter(3, 60)
    limiter.hit(JANE)          # t=0
    clock.advance(30)
    limiter.hit(JANE)          # t=30
    clock.advance(10)
    limiter.hit(JANE)          # t=40
    assert limiter.hit(JANE) is False
    clock.advance(21)          # t=61: only the t=0 hit has left the window
    assert limiter.hit(JANE) is True
    assert limiter.hit(JANE) is False


def test_a_refused_hit_is_not_counted(backend, clock):
    limiter = backend.limiter(2, 60)
    limiter.hit(JANE)          # t=0
    clock.advance(30)
    limiter.hit(JANE)          # t=30
    for _ in range(10):
        assert limiter.hit(JANE) is False
    clock.advance(31)          # t=61: the t=0 hit left; the refused ones never counted
    assert limiter.hit(JANE) is True


def test_rate_limits_of_distinct_keys_are_independent(backend):
    limiter = backend.limiter(2, 60)
    limiter.hit(JANE)
    limiter.hit(JANE)
    assert limiter.hit(JANE) is False
    assert limiter.hit(BOB) is True
    assert limiter.hit("203.0.113.0/24") is True


def test_exhausted_tells_without_counting(backend):
    limiter = backend.limiter(2, 60)
    assert limiter.exhausted(JANE) is False
    limiter.hit(JANE)
    assert limiter.exhausted(JANE) is False
    assert limiter.exhausted(JANE) is False
    limiter.hit(JANE)
    assert limiter.exhausted(JANE) is True


def test_a_forgotten_key_starts_afresh(backend):
    limiter = backend.limiter(2, 60)
    limiter.hit(JANE)
    limiter.hit(JANE)
    limiter.forget(JANE)
    assert limiter.exhausted(JANE) is False
    assert [limiter.hit(JANE) for _ in range(3)] == [True, True, False]


# ---------------------------------------------------------------------------
# Drafts
# ---------------------------------------------------------------------------

TYPED = {"subject": "Printer jam", "message": "It jams.", "priority": "high"}


def test_a_draft_is_handed_over_to_the_next_session_of_the_same_address(backend, clock):
    store = backend.drafts()
    assert store.keep("old-session", "Jane@Example.com", "/tickets/new", "ticket", TYPED) is True
    draft = store.hand_over("old-session", "new-session", JANE)
    assert isinstance(draft, drafts.Draft)
    assert (draft.path, draft.form, draft.fields, draft.email) == ("/tickets/new", "ticket", TYPED, JANE)
    assert store.get("new-session", "/tickets/new") == draft
    assert store.get("old-session", "/tickets/new") is None


def test_a_draft_is_not_handed_over_to_another_address_and_is_dropped(backend):
    store = backend.drafts()
    store.keep("old-session", JANE, "/tickets/new", "ticket", TYPED)
    assert store.hand_over("old-session", "new-session", BOB) is None
    assert store.get("new-session", "/tickets/new") is None
    assert store.hand_over("old-session", "new-session", JANE) is None


def test_a_draft_is_handed_over_once(backend):
    store = backend.drafts()
    store.keep("old-session", JANE, "/tickets/7", "reply", {"message": "Thanks"})
    assert store.hand_over("old-session", "one", JANE) is not None
    assert store.hand_over("old-session", "two", JANE) is None


def test_without_an_old_session_nothing_is_handed_over(backend):
    store = backend.drafts()
    assert store.hand_over(None, "new-session", JANE) is None
    assert store.hand_over("", "new-session", JANE) is None


def test_a_draft_is_shown_only_on_the_page_it_was_typed_on(backend):
    store = backend.drafts()
    store.keep("session", JANE, "/tickets/7", "reply", {"message": "Thanks"})
    assert store.get("session", "/tickets/7").fields == {"message": "Thanks"}
    assert store.get("session", "/tickets/8") is None
    assert store.get("other-session", "/tickets/7") is None
    assert store.get("session", "/tickets/7") is not None  # get leaves it in place


def test_a_draft_expires_after_its_ttl(backend, clock):
    store = backend.drafts()
    store.keep("session", JANE, "/tickets/new", "ticket", TYPED)
    clock.advance(DRAFT_TTL - 1)
    assert store.get("session", "/tickets/new") is not None
    clock.advance(2)
    assert store.get("session", "/tickets/new") is None
    assert store.hand_over("session", "new-session", JANE) is None


def test_a_handed_over_draft_lives_a_whole_ttl_again(backend, clock):
    store = backend.drafts()
    store.keep("old-session", JANE, "/tickets/new", "ticket", TYPED)
    clock.advance(DRAFT_TTL - 10)
    store.hand_over("old-session", "new-session", JANE)
    clock.advance(DRAFT_TTL - 10)
    assert store.get("new-session", "/tickets/new") is not None


def test_a_dropped_draft_is_gone(backend):
    store = backend.drafts()
    store.keep("session", JANE, "/tickets/new", "ticket", TYPED)
    store.drop("session")
    assert store.get("session", "/tickets/new") is None


def test_nothing_is_kept_without_a_session_or_an_address(backend):
    store = backend.drafts()
    assert store.keep("", JANE, "/tickets/new", "ticket", TYPED) is False
    assert store.keep(None, JANE, "/tickets/new", "ticket", TYPED) is False
    assert store.keep("session", "", "/tickets/new", "ticket", TYPED) is False
    assert len(store) == 0


def test_a_newer_draft_of_the_same_session_replaces_the_last(backend):
    store = backend.drafts()
    store.keep("session", JANE, "/tickets/new", "ticket", TYPED)
    store.keep("session", JANE, "/tickets/7", "reply", {"message": "Later"})
    assert store.get("session", "/tickets/new") is None
    assert store.get("session", "/tickets/7").fields == {"message": "Later"}
    assert len(store) == 1


def test_each_kept_field_is_cut_to_the_forms_limit(backend):
    store = backend.drafts()
    store.keep("session", JANE, "/tickets/new", "ticket", {"message": "x" * (DRAFT_MAX_CHARS + 50)})
    assert store.get("session", "/tickets/new").fields["message"] == "x" * DRAFT_MAX_CHARS


# ---------------------------------------------------------------------------
# Redis only: several processes share one state
# ---------------------------------------------------------------------------

def test_a_session_created_by_one_process_is_seen_and_ended_by_another(on_redis, clock):
    one, two = on_redis.sessions(), on_redis.another_process().sessions()
    session = one.create(17, JANE, "Jane")
    assert two.get(session.id).contact_id == 17
    one.set_flash(session, "ticket_created")
    assert two.pop_flash(two.get(session.id)) == "ticket_created"
    two.delete(session.id)
    assert one.get(session.id) is None


def test_a_link_issued_by_one_process_is_used_up_for_every_process(on_redis):
    one, two = on_redis.links(), on_redis.another_process().links()
    first, second = issue(one), issue(one)
    assert two.peek(first.token) is not None
    assert two.consume(first.token) is not None
    assert one.consume(first.token) is None
    assert one.retired(second.token).reason == USED
    third = issue(two)
    assert one.redeem_code(JANE, third.code).contact_id == 17


def test_a_draft_kept_by_one_process_is_handed_over_by_another(on_redis):
    one, two = on_redis.drafts(), on_redis.another_process().drafts()
    one.keep("old-session", JANE, "/tickets/new", "ticket", TYPED)
    assert two.hand_over("old-session", "new-session", JANE).fields == TYPED
    assert one.get("new-session", "/tickets/new").fields == TYPED


def test_processes_share_one_rate_limit(on_redis):
    one, two = on_redis.limiter(3, 60), on_redis.another_process().limiter(3, 60)
    assert [one.hit(JANE), two.hit(JANE), one.hit(JANE), two.hit(JANE)] == [True, True, True, False]


def test_a_duplicate_form_in_another_process_waits_for_the_first(on_redis):
    one, two = on_redis.sessions(), on_redis.another_process().sessions()
    session = one.create(17, JANE, "Jane")
    second_inside = threading.Event()
    seen = []

    def second():
        with two.once(two.get(session.id), "create:abc") as done:
            second_inside.set()
            seen.append(done.result)

    with one.once(session, "create:abc") as done:
        thread = threading.Thread(target=second)
        thread.start()
        assert not second_inside.wait(timeout=0.3)
        done.result = 5
    thread.join(timeout=10)
    assert seen == [5]


def test_a_duplicate_form_gives_up_with_state_unavailable_after_its_deadline(on_redis, monkeypatch):
    monkeypatch.setattr(redis_store, "ONCE_WAIT_SECONDS", 0.3)
    one, two = on_redis.sessions(), on_redis.another_process().sessions()
    session = one.create(17, JANE, "Jane")
    with one.once(session, "create:abc"):
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            with two.once(session, "create:abc"):
                pass
        assert 0.3 <= time.monotonic() - started < 3


def test_a_form_held_by_a_process_that_died_is_free_again_and_marked_uncertain(on_redis, monkeypatch):
    monkeypatch.setattr(redis_store, "ONCE_LOCK_SECONDS", 0.3)
    one, two = on_redis.sessions(), on_redis.another_process().sessions()
    session = one.create(17, JANE, "Jane")
    # What a process does on taking the form, and then it dies: no renewal, no outcome.
    scope = f"{session.id}|create:abc"
    lock, outcome = one._keys.secret("once-lock", scope), one._keys.secret("once", scope)
    taken = time.time()
    assert one._enter(keys=[lock, outcome], args=["dead-process", 300, repr(taken), 60_000])
    started = time.monotonic()
    with two.once(session, "create:abc") as done:
        # Its try may have reached Chatwoot: the next one looks before doing it again.
        assert done.result is None and done.uncertain_since == taken
    assert time.monotonic() - started < 5


def test_a_slow_request_keeps_its_form_past_the_lock_time_by_renewing_it(on_redis, monkeypatch):
    monkeypatch.setattr(redis_store, "ONCE_LOCK_SECONDS", 0.3)
    monkeypatch.setattr(redis_store, "ONCE_WAIT_SECONDS", 0.8)
    one, two = on_redis.sessions(), on_redis.another_process().sessions()
    session = one.create(17, JANE, "Jane")
    with one.once(session, "create:abc") as done:
        with pytest.raises(StateUnavailable):  # still held after more than twice the lock time
            with two.once(session, "create:abc"):
                pass
        done.result = 7
    with two.once(session, "create:abc") as done:
        assert done.result == 7 and done.uncertain_since is None


# ---------------------------------------------------------------------------
# Redis only: single use under concurrency
# ---------------------------------------------------------------------------

def test_twenty_threads_consuming_one_token_get_exactly_one_link(on_redis):
    stores = [on_redis.links(), on_redis.another_process().links()]
    token = issue(stores[0]).token
    links = run_together(20, lambda index: stores[index % 2].consume(token))
    assert len([link for link in links if link is not None]) == 1


def test_two_threads_redeeming_the_right_code_get_exactly_one_link(on_redis):
    stores = [on_redis.links(), on_redis.another_process().links()]
    for _ in range(10):  # a race lost by luck once must not pass
        code = issue(stores[0]).code
        links = run_together(2, lambda index: stores[index].redeem_code(JANE, code))
        assert len([link for link in links if link is not None]) == 1


def test_the_link_and_the_code_of_one_mail_used_at_once_sign_in_once(on_redis):
    stores = [on_redis.links(), on_redis.another_process().links()]
    for _ in range(10):
        sent = issue(stores[0])
        links = run_together(2, lambda index: stores[0].consume(sent.token) if index == 0
                             else stores[1].redeem_code(JANE, sent.code))
        assert len([link for link in links if link is not None]) == 1


def test_a_flood_of_hits_from_two_processes_never_passes_the_limit(on_redis):
    limiters = [on_redis.limiter(10, 60), on_redis.another_process().limiter(10, 60)]
    # The fake clock stands still: every hit has the same time, and each must still count.
    allowed = run_together(16, lambda index: sum(limiters[index % 2].hit(JANE) for _ in range(20)))
    assert sum(allowed) == 10


def test_concurrent_wrong_codes_never_pass_the_daily_cap(on_redis, monkeypatch):
    monkeypatch.setattr(security, "MAX_WRONG_CODES", 10 ** 6)  # only the daily cap counts here
    stores = [on_redis.links(), on_redis.another_process().links()]
    sent = issue(stores[0])
    run_together(8, lambda index: [stores[index % 2].redeem_code(JANE, a_wrong_code(sent.code)) for _ in range(10)])
    assert stores[0].redeem_code(JANE, sent.code) is None  # the cap holds the right code back
    daily = stores[0]._daily_wrong_codes
    assert on_redis.client.zcard(daily.key_of(JANE)) == WRONG_CODES_PER_DAY


# ---------------------------------------------------------------------------
# Redis only: what a copy of the database holds
# ---------------------------------------------------------------------------

def dump(client, prefix):
    """{key: (type, TTL in ms, value as text)} for every key under `prefix`."""
    found = {}
    for key in client.scan_iter(match=redis_store._pattern(prefix), count=1000):
        kind = client.type(key)
        value = {"string": lambda: client.get(key), "hash": lambda: client.hgetall(key),
                 "set": lambda: client.smembers(key),
                 "zset": lambda: client.zrange(key, 0, -1, withscores=True)}[kind]()
        found[key] = (kind, client.pttl(key), repr(value))
    return found


@pytest.fixture
def everything_written(on_redis, clock, monkeypatch):
    """Every kind of key the stores write, made once; returns the secrets they were given."""
    monkeypatch.setattr(security.secrets, "randbelow", lambda limit: 424242)
    sessions, links, ip_limit, drafts_ = (on_redis.sessions(), on_redis.links(), on_redis.limiter(5, 60, "limit-ip"),
                                          on_redis.drafts())
    address_limit = on_redis.limiter(5, 900, "limit-address")
    session = sessions.create(17, JANE, "Jane Doe")
    sessions.set_flash(sessions.get(session.id), "ticket_created")
    with sessions.once(session, "create:form-1") as done:
        done.result, done.uncertain_since = 42, clock()
    used = issue(links, next_path="/tickets/7")
    links.consume(used.token)
    live = issue(links)
    wrong = issue(links, 18, BOB)
    links.redeem_code(BOB, a_wrong_code(wrong.code))  # a count of wrong codes, and of the day's
    locked = issue(links, 19, "ann@example.com")
    for _ in range(MAX_WRONG_CODES):
        links.redeem_code("ann@example.com", a_wrong_code(locked.code))
    ip_limit.hit("203.0.113.0/24")
    address_limit.hit(JANE)
    drafts_.keep(session.id, JANE, "/tickets/new", "ticket", TYPED)
    handed = sessions.create(17, JANE, "Jane Doe")
    drafts_.hand_over(session.id, handed.id, JANE)
    return {"session ids": [session.id, handed.id], "tokens": [used.token, live.token, wrong.token, locked.token],
            "code": live.code, "addresses": [JANE, BOB, "ann@example.com"], "network": "203.0.113.0/24"}


def test_a_copy_of_redis_holds_no_session_id_token_or_code(on_redis, everything_written):
    keys = dump(on_redis.client, on_redis.prefix)
    kinds = {key[len(on_redis.prefix):].split(":")[0] for key in keys}
    assert {"session", "once", "link", "link-contact", "link-address", "wrong-codes", "wrong-codes-day",
            "limit-ip", "limit-address", "draft"} <= kinds  # the dump reaches every kind of key
    text = repr(keys)
    assert JANE in text  # the scan does read values
    for secret in [*everything_written["session ids"], *everything_written["tokens"], everything_written["code"]]:
        assert secret not in text


def test_key_names_hold_no_address_or_network(on_redis, everything_written):
    names = "\n".join(dump(on_redis.client, on_redis.prefix))
    for address in everything_written["addresses"]:
        assert address not in names.lower()
        assert address.split("@")[0] not in names
    assert "203.0.113" not in names
    # Every name is the prefix, a kind, and an HMAC.
    for name in names.splitlines():
        assert re.fullmatch(re.escape(on_redis.prefix) + r"[a-z-]+:[0-9a-f]{64}", name), name


def test_every_key_the_stores_write_expires(on_redis, everything_written):
    longest = max(RETIRED_LINK_SECONDS + TTL, MAX_SESSION_SECONDS, 86400) * 1000
    for key, (kind, ttl, _) in dump(on_redis.client, on_redis.prefix).items():
        assert 0 < ttl <= longest, (key, kind, ttl)


def test_a_flash_or_outcome_written_for_an_ended_session_leaves_no_key_without_expiry(on_redis):
    sessions = on_redis.sessions()
    session = sessions.create(17, JANE, "Jane")
    sessions.delete(session.id)
    sessions.set_flash(session, "ticket_created")
    with sessions.once(session, "create:abc") as done:
        done.result = 1
    session.flash = "stale"
    sessions.pop_flash(session)
    assert sessions.get(session.id) is None
    for key, (kind, ttl, _) in dump(on_redis.client, on_redis.prefix).items():
        assert ttl > 0, (key, kind, ttl)


# ---------------------------------------------------------------------------
# Redis only: an outage
# ---------------------------------------------------------------------------

def test_a_redis_outage_is_state_unavailable_quickly_and_heals_without_a_rebuild(clock):
    require_tools("redis-server")
    server = RedisServer().start()  # its own server: stopping the shared one would fail other tests
    process = RedisBackend(server.url, RedisServer.prefix(), clock)
    try:
        sessions, links, limiter, drafts_ = process.sessions(), process.links(), process.limiter(5, 60), process.drafts()
        ping = redis_store.pinger(process.client)
        session = sessions.create(17, JANE, "Jane")
        sent = issue(links)
        ping()
        server.stop()
        calls = {
            "ping": ping,
            "create": lambda: sessions.create(17, JANE, "Jane"),
            "get": lambda: sessions.get(session.id),
            "delete": lambda: sessions.delete(session.id),
            "set_flash": lambda: sessions.set_flash(session, "ticket_created"),
            "pop_flash": lambda: sessions.pop_flash(session),
            "once": lambda: sessions.once(session, "create:abc").__enter__(),
            "sessions len": lambda: len(sessions),
            "issue": lambda: issue(links),
            "peek": lambda: links.peek(sent.token),
            "consume": lambda: links.consume(sent.token),
            "redeem_code": lambda: links.redeem_code(JANE, sent.code),
            "retired": lambda: links.retired(sent.token),
            "links len": lambda: len(links),
            "hit": lambda: limiter.hit(JANE),
            "exhausted": lambda: limiter.exhausted(JANE),
            "forget": lambda: limiter.forget(JANE),
            "keep": lambda: drafts_.keep("s", JANE, "/tickets/new", "ticket", TYPED),
            "hand_over": lambda: drafts_.hand_over("s", "t", JANE),
            "draft get": lambda: drafts_.get("s", "/tickets/new"),
            "drop": lambda: drafts_.drop("s"),
        }
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StateUnavailable):
                call()
            assert time.monotonic() - started < 5, name
        server.start()  # same port, empty: a Redis restart signs everyone out
        ping()
        assert sessions.get(session.id) is None
        again = sessions.create(17, JANE, "Jane")
        assert sessions.get(again.id).contact_id == 17
        assert links.consume(issue(links).token) is not None
        assert limiter.hit(JANE) is True
        with sessions.once(again, "create:abc") as done:
            done.result = 1
    finally:
        process.close()
        server.stop()


def test_a_script_cache_emptied_by_a_restart_is_filled_again(on_redis):
    sessions = on_redis.sessions()
    session = sessions.create(17, JANE, "Jane")
    on_redis.client.script_flush()
    assert sessions.get(session.id) is not None
