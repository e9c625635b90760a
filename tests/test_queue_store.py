"""The reply-mail queue and its markers, on both backends: storage.StateFile (SQLite,
one process) and redis_queue.RedisStateFile (Redis, shared by several processes).

Every behaviour test runs on both and expects the same answers. The Redis-only tests
at the end use two stores on two connections, as two portal processes would, and a
private redis-server that the test stops and starts again.
"""

import collections
import threading
import time

import pytest

import redis_store
from redis_queue import DEDUP_SECONDS, SEEN_SECONDS, RedisStateFile
from redis_server import RedisServer
from storage import StateFile, StateUnavailable

DELAY = 60  # seconds from a reply's arrival until its mail is due, as NOTIFY_DELAY_SECONDS


def redis_state(url, prefix, clock):
    """One portal process's queue: its own connection pool, the shared prefix."""
    return RedisStateFile(redis_store.connect(url), redis_store.Keys(prefix, "k"), clock)


@pytest.fixture(params=["memory", "redis"])
def queue(request, tmp_path, clock):
    if request.param == "memory":
        store = StateFile(tmp_path, clock)
    else:
        store = redis_state(request.getfixturevalue("redis_server").url, RedisServer.prefix(), clock)
    yield store
    store.close()


@pytest.fixture
def processes(redis_server, clock):
    """Two portal processes on one Redis: (first, second)."""
    prefix = RedisServer.prefix()
    first, second = redis_state(redis_server.url, prefix, clock), redis_state(redis_server.url, prefix, clock)
    yield first, second
    first.close()
    second.close()


def queue_reply(queue, clock, message_id, ticket_id, delay=DELAY):
    return queue.enqueue(message_id, ticket_id, clock() + delay)


# ---------------------------------------------------------------------------
# Queueing and de-duplication
# ---------------------------------------------------------------------------

def test_a_message_is_queued_once_and_a_duplicate_delivery_is_refused(queue, clock):
    assert queue_reply(queue, clock, 101, 7) is True
    assert queue_reply(queue, clock, 101, 7) is False
    assert queue_reply(queue, clock, 101, 8) is False  # the id decides, whatever the payload says
    assert queue.queued_for(7) == [(101, clock(), 0)]
    assert queue.queued_for(8) == []
    assert queue.states() == {"queued": 1}


def test_a_duplicate_of_a_message_already_mailed_is_still_refused(queue, clock):
    queue_reply(queue, clock, 101, 7)
    queue.finish([101], "sent")
    clock.advance(20 * 86400)
    assert queue_reply(queue, clock, 101, 7) is False
    assert queue.states() == {"sent": 1}


def test_queued_replies_are_grouped_per_ticket_in_message_order_with_their_arrival_times(queue, clock):
    clock.advance(0.125)
    first_arrival = clock()
    queue_reply(queue, clock, 12, 7)
    clock.advance(3.5)
    queue_reply(queue, clock, 11, 7)  # delivered late, written earlier
    queue_reply(queue, clock, 20, 8)
    assert queue.queued_for(7) == [(11, first_arrival + 3.5, 0), (12, first_arrival, 0)]
    assert queue.queued_for(8) == [(20, first_arrival + 3.5, 0)]
    assert queue.queued_for(9) == []


def test_a_ticket_falls_due_with_its_earliest_reply_and_the_most_overdue_comes_first(queue, clock):
    start = clock()
    queue.enqueue(1, 7, start + 30)
    queue.enqueue(2, 8, start + 10)
    queue.enqueue(3, 9, start + 500)
    queue.enqueue(4, 7, start + 5)  # ticket 7 is now due at +5
    queue.enqueue(5, 7, start + 900)  # and stays so
    assert queue.due_tickets(start) == []
    assert queue.due_tickets(start + 5) == [7]
    assert queue.due_tickets(start + 40) == [7, 8]
    assert queue.due_tickets(start + 40, limit=1) == [7]
    assert queue.due_tickets(start + 40, exclude={7}) == [8]
    assert queue.due_tickets(start + 40, exclude={7, 8}) == []
    assert queue.due_tickets(start + 1000) == [7, 8, 9]


def test_next_due_at_is_the_earliest_due_time_or_none_when_nothing_is_queued(queue, clock):
    assert queue.next_due_at() is None
    queue.enqueue(1, 7, clock() + 30.25)
    queue.enqueue(2, 8, clock() + 10.5)
    assert queue.next_due_at() == clock() + 10.5
    queue.finish([2], "sent")
    assert queue.next_due_at() == clock() + 30.25
    queue.finish([1], "skipped")
    assert queue.next_due_at() is None


# ---------------------------------------------------------------------------
# Finishing, retrying, cancelling
# ---------------------------------------------------------------------------

def test_finishing_takes_messages_off_the_queue_and_counts_each_state(queue, clock):
    for message_id in (1, 2, 3, 4):
        queue_reply(queue, clock, message_id, 7)
    queue_reply(queue, clock, 5, 8)
    queue.finish([1, 2], "sent")
    queue.finish([3], "skipped")
    assert queue.queued_for(7) == [(4, clock(), 0)]
    assert queue.states() == {"queued": 2, "sent": 2, "skipped": 1}
    queue.finish([4], "failed")
    queue.finish([5], "cancelled")
    assert queue.states() == {"sent": 2, "skipped": 1, "failed": 1, "cancelled": 1}
    assert queue.due_tickets(clock() + DELAY) == []


def test_finishing_again_or_finishing_unknown_messages_changes_nothing(queue, clock):
    queue_reply(queue, clock, 1, 7)
    queue.finish([1], "sent")
    queue.finish([1], "failed")
    queue.finish([999], "sent")
    queue.finish([], "sent")
    assert queue.states() == {"sent": 1}


def test_a_ticket_stays_due_while_one_of_its_replies_is_queued(queue, clock):
    start = clock()
    queue.enqueue(1, 7, start + 5)
    queue.enqueue(2, 7, start + 50)
    queue.finish([1], "sent")
    assert queue.due_tickets(start + 10) == []
    assert queue.due_tickets(start + 50) == [7]
    assert queue.next_due_at() == start + 50


def test_retry_later_postpones_the_ticket_and_counts_the_attempt(queue, clock):
    start = clock()
    queue.enqueue(1, 7, start)
    queue.enqueue(2, 7, start + 1)
    queue.retry_later([1, 2], start + 120)
    assert queue.queued_for(7) == [(1, start, 1), (2, start, 1)]
    assert queue.due_tickets(start + 119) == []
    assert queue.due_tickets(start + 120) == [7]
    assert queue.next_due_at() == start + 120
    queue.retry_later([1, 2], start + 240)
    assert [attempts for _, _, attempts in queue.queued_for(7)] == [2, 2]


def test_retry_later_leaves_finished_messages_alone(queue, clock):
    queue_reply(queue, clock, 1, 7)
    queue.finish([1], "sent")
    queue.retry_later([1], clock() + 120)
    queue.retry_later([], clock() + 120)
    assert queue.queued_for(7) == [] and queue.due_tickets(clock() + 1000) == []
    assert queue.states() == {"sent": 1}


def test_reading_a_ticket_cancels_its_queued_replies_up_to_the_one_read(queue, clock):
    for message_id in (10, 11, 12):
        queue_reply(queue, clock, message_id, 7)
    queue_reply(queue, clock, 9, 8)
    assert queue.cancel_seen(7, 11) == 2
    assert queue.queued_for(7) == [(12, clock(), 0)]
    assert queue.queued_for(8) == [(9, clock(), 0)]  # another ticket, even with a lower id
    assert queue.cancel_seen(7, 11) == 0
    assert queue.cancel_seen(7, 12) == 1
    assert queue.cancel_seen(99, 1000) == 0
    assert queue.states() == {"queued": 1, "cancelled": 3}
    assert queue.due_tickets(clock() + DELAY) == [8]


def test_a_cancelled_reply_is_not_queued_again_by_a_late_duplicate(queue, clock):
    queue_reply(queue, clock, 10, 7)
    queue.cancel_seen(7, 10)
    assert queue_reply(queue, clock, 10, 7) is False
    assert queue.queued_for(7) == []


# ---------------------------------------------------------------------------
# Health figures
# ---------------------------------------------------------------------------

def test_queue_stats_count_the_queued_replies_and_the_age_of_the_oldest(queue, clock):
    assert queue.queue_stats(clock()) == (0, None)
    queue_reply(queue, clock, 1, 7)
    clock.advance(5)
    queue_reply(queue, clock, 2, 8)
    clock.advance(2.5)
    assert queue.queue_stats(clock()) == (2, 7.5)
    queue.finish([1], "sent")
    assert queue.queue_stats(clock()) == (1, 2.5)
    assert queue.queue_stats(clock() - 100) == (1, 0.0)  # never a negative age


def test_states_are_empty_for_an_empty_queue(queue):
    assert queue.states() == {}


# ---------------------------------------------------------------------------
# Languages, seen markers, newest replies, cancelled tickets
# ---------------------------------------------------------------------------

def test_a_contacts_language_is_remembered_and_replaced(queue):
    assert queue.language_of(3) is None
    queue.remember_language(3, "es")
    queue.remember_language(4, "de")
    assert queue.language_of(3) == "es"
    queue.remember_language(3, "fr")
    assert (queue.language_of(3), queue.language_of(4)) == ("fr", "de")


def test_the_seen_marker_only_moves_forward(queue):
    assert queue.seen_message_id(7) == 0
    queue.mark_seen(7, 10)
    queue.mark_seen(7, 5)
    assert queue.seen_message_id(7) == 10
    queue.mark_seen(7, 12)
    assert queue.seen_message_id(7) == 12


def test_seen_markers_of_a_page_of_tickets_name_only_the_tickets_seen(queue):
    queue.mark_seen(7, 10)
    queue.mark_seen(8, 20)
    assert queue.seen_message_ids([7, 8, 9]) == {7: 10, 8: 20}
    assert queue.seen_message_ids([9]) == {}
    assert queue.seen_message_ids([]) == {}


def test_a_dashboards_marks_are_its_seen_and_newest_reply_ids_together(queue, clock):
    queue.mark_seen(7, 10)
    queue.enqueue(12, 7, clock())
    queue.enqueue(3, 8, clock())
    assert queue.dashboard_marks([7, 8, 9]) == ({7: 10}, {7: 12, 8: 3})
    assert queue.dashboard_marks([7, 8, 9]) == (queue.seen_message_ids([7, 8, 9]), queue.agent_reply_ids([7, 8, 9]))
    assert queue.dashboard_marks([]) == ({}, {})


def test_a_ticket_pages_marks_are_its_seen_marker_and_when_it_was_cancelled(queue, clock):
    assert queue.ticket_marks(7) == (0, None)
    queue.mark_seen(7, 10)
    queue.remember_cancelled(7, 1234.5)
    assert queue.ticket_marks(7) == (10, 1234.5) == (queue.seen_message_id(7), queue.cancelled_at(7))


def test_agent_reply_ids_name_the_newest_reply_told_of_whether_mailed_or_not(queue, clock):
    queue_reply(queue, clock, 5, 7)
    queue_reply(queue, clock, 9, 7)
    queue_reply(queue, clock, 6, 7)  # a late delivery of an older reply
    queue_reply(queue, clock, 3, 8)
    queue.finish([9], "sent")
    queue.cancel_seen(8, 3)
    assert queue.agent_reply_ids([7, 8, 99]) == {7: 9, 8: 3}
    assert queue.agent_reply_ids([]) == {}


def test_a_cancelled_marker_is_kept_until_forgotten(queue, clock):
    assert queue.cancelled_at(7) is None
    queue.remember_cancelled(7, clock() + 0.375)
    queue.remember_cancelled(8, clock())
    assert queue.cancelled_at(7) == clock() + 0.375
    queue.forget_cancelled(7)
    assert queue.cancelled_at(7) is None
    assert queue.cancelled_at(8) == clock()
    queue.forget_cancelled(99)  # nothing to forget is fine


# ---------------------------------------------------------------------------
# Claiming tickets for a worker
# ---------------------------------------------------------------------------

def test_claiming_gives_the_most_overdue_ticket_or_none(queue, clock):
    start = clock()
    assert queue.claim_ticket(start) is None
    queue.enqueue(1, 7, start + 30)
    queue.enqueue(2, 8, start + 10)
    assert queue.claim_ticket(start) is None  # queued, not due yet
    assert queue.claim_ticket(start + 30) == 8


def test_claiming_skips_the_tickets_this_process_is_mailing(queue, clock):
    queue_reply(queue, clock, 1, 7, delay=0)
    queue_reply(queue, clock, 2, 8, delay=1)
    assert queue.claim_ticket(clock() + 1, exclude={7}) == 8
    assert queue.claim_ticket(clock() + 1, exclude={7, 8}) is None


def test_a_released_ticket_with_replies_left_is_claimed_again(queue, clock):
    queue_reply(queue, clock, 1, 7, delay=0)
    assert queue.claim_ticket(clock()) == 7
    queue.release_ticket(7)
    assert queue.claim_ticket(clock()) == 7
    assert queue.queued_for(7) == [(1, clock(), 0)]  # claiming takes nothing off the queue
    queue.finish([1], "sent")
    queue.release_ticket(7)
    assert queue.claim_ticket(clock()) is None


# ---------------------------------------------------------------------------
# Redis only: several processes, expiry, outages
# ---------------------------------------------------------------------------

def test_the_same_message_queued_by_two_processes_is_accepted_once(processes, clock):
    first, second = processes
    assert first.enqueue(101, 7, clock()) is True
    assert second.enqueue(101, 7, clock()) is False
    assert second.queued_for(7) == [(101, clock(), 0)]


def test_twenty_simultaneous_deliveries_of_one_message_queue_it_once(redis_server, clock):
    prefix = RedisServer.prefix()
    stores = [redis_state(redis_server.url, prefix, clock) for _ in range(20)]
    start = threading.Barrier(len(stores))
    answers = []

    def deliver(store):
        start.wait()
        answers.append(store.enqueue(101, 7, clock()))

    threads = [threading.Thread(target=deliver, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    try:
        assert sorted(answers) == [False] * 19 + [True]
        assert stores[0].states() == {"queued": 1}
        assert stores[0].queued_for(7) == [(101, clock(), 0)]
    finally:
        for store in stores:
            store.close()


def test_a_ticket_claimed_by_one_process_is_not_claimable_by_another_until_released(processes, clock):
    first, second = processes
    first.enqueue(1, 7, clock())
    first.enqueue(2, 8, clock() + 1)
    assert first.claim_ticket(clock()) == 7
    assert second.claim_ticket(clock()) is None
    assert second.claim_ticket(clock() + 1) == 8  # the next due ticket is not held up
    first.release_ticket(7)
    assert second.claim_ticket(clock() + 1) == 7
    assert second.queued_for(7) == [(1, clock(), 0)]


def test_the_ticket_of_a_process_that_died_mid_mail_is_taken_over_when_its_lease_runs_out(processes, clock):
    first, second = processes
    first.enqueue(1, 7, clock())
    first.enqueue(2, 7, clock())
    assert first.claim_ticket(clock(), lease_seconds=0.3) == 7
    # The first process dies here: it never finishes nor releases.
    assert second.claim_ticket(clock(), lease_seconds=0.3) is None
    time.sleep(0.4)
    assert second.claim_ticket(clock()) == 7
    assert [message_id for message_id, _, _ in second.queued_for(7)] == [1, 2]


def test_a_late_release_does_not_lift_the_lease_another_process_took_over(processes, clock):
    first, second = processes
    first.enqueue(1, 7, clock())
    assert first.claim_ticket(clock(), lease_seconds=0.3) == 7
    time.sleep(0.4)
    assert second.claim_ticket(clock()) == 7
    first.release_ticket(7)  # the slow first process finally gives up
    assert first.claim_ticket(clock()) is None


def test_only_queued_messages_and_languages_live_without_a_ttl(redis_server, clock):
    prefix = RedisServer.prefix()
    client = redis_store.connect(redis_server.url)
    queue = RedisStateFile(client, redis_store.Keys(prefix, "k"), clock)
    try:
        queue_reply(queue, clock, 1, 7)
        queue_reply(queue, clock, 2, 8)
        queue.finish([2], "sent")
        queue.mark_seen(7, 1)
        queue.remember_language(3, "es")
        queue.remember_cancelled(7, clock())
        assert queue.claim_ticket(clock() + DELAY) == 7
        ttls = {key[len(prefix):]: client.ttl(key) for key in client.scan_iter(match=prefix + "*")}
        lease = ttls.pop("queue:lease:7")
        assert 0 < lease <= 300
        for name in ("queue:message:2", "queue:newest-reply:7", "queue:newest-reply:8"):
            assert DEDUP_SECONDS - 60 < ttls.pop(name) <= DEDUP_SECONDS, name
        for name in ("ticket-seen:7", "ticket-cancelled:7"):
            assert SEEN_SECONDS - 60 < ttls.pop(name) <= SEEN_SECONDS, name
        # -1: no TTL. A queued message waits for its mail; the indexes follow the queue.
        assert ttls == {"queue:message:1": -1, "queue:ticket:7": -1, "queue:due": -1, "queue:received": -1,
                        "queue:states": -1, "lang:3": -1}
    finally:
        queue.close()


def test_two_portal_processes_sharing_one_redis_mail_each_reply_once(fake, smtp, clock, redis_server):
    from test_notifications import WEBHOOK_SECRET, settled, start_notifying

    shared = {"STATE_URL": redis_server.url, "STATE_PREFIX": RedisServer.prefix()}
    tickets = [fake.add_conversation(fake.jane, fake.api_inbox, subject=f"Ticket {n}") for n in range(8)]
    waiting = redis_state(redis_server.url, shared["STATE_PREFIX"], time.time)
    for ticket in tickets:  # already due when both processes start: their workers race for them
        waiting.enqueue(fake.add_message(ticket, f"Answer for {ticket}.", "outgoing"), ticket, time.time())
    waiting.close()
    portals = [start_notifying(fake, smtp, clock, **shared) for _ in range(2)]
    try:
        smtp.wait_for(len(tickets))
        for running in portals:  # from now on every delivery reaches both: a duplicate for one
            fake.add_webhook(running.webhook_url, secret=WEBHOOK_SECRET)
        for ticket in tickets[:3]:
            fake.add_message(ticket, f"Second answer for {ticket}.", "outgoing")
        smtp.wait_for(len(tickets) + 3)
        assert settled(portals[0]) == {"sent": len(tickets) + 3}
        time.sleep(0.5)  # time for a second mail, were one coming
        per_ticket = collections.Counter(message["In-Reply-To"] for message in smtp.messages)
        assert sorted(per_ticket.values()) == [1] * (len(tickets) - 3) + [2] * 3
    finally:
        for running in portals:
            running.close()



def test_with_redis_stopped_every_call_raises_state_unavailable_and_works_again_after_restart(private_redis, clock):
    queue = redis_state(private_redis.url, RedisServer.prefix(), clock)
    try:
        assert queue_reply(queue, clock, 1, 7, delay=0) is True
        private_redis.stop()
        calls = [
            lambda: queue.enqueue(2, 7, clock()),
            lambda: queue.due_tickets(clock()),
            lambda: queue.next_due_at(),
            lambda: queue.queued_for(7),
            lambda: queue.finish([1], "sent"),
            lambda: queue.retry_later([1], clock()),
            lambda: queue.cancel_seen(7, 1),
            lambda: queue.queue_stats(clock()),
            lambda: queue.states(),
            lambda: queue.claim_ticket(clock()),
            lambda: queue.release_ticket(7),
            lambda: queue.remember_language(3, "es"),
            lambda: queue.language_of(3),
            lambda: queue.mark_seen(7, 1),
            lambda: queue.seen_message_id(7),
            lambda: queue.seen_message_ids([7]),
            lambda: queue.agent_reply_ids([7]),
            lambda: queue.dashboard_marks([7]),
            lambda: queue.ticket_marks(7),
            lambda: queue.remember_cancelled(7, clock()),
            lambda: queue.cancelled_at(7),
            lambda: queue.forget_cancelled(7),
        ]
        for call in calls:
            with pytest.raises(StateUnavailable):
                call()
        private_redis.start()
        # Nothing was saved to disk, so the restarted Redis is empty; the same object works.
        assert queue_reply(queue, clock, 3, 7, delay=0) is True
        assert queue.claim_ticket(clock()) == 7
        assert queue.queued_for(7) == [(3, clock(), 0)]
    finally:
        queue.close()
