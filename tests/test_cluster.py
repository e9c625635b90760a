"""Three portal processes share their state on Redis, behind the real nginx.

Each test starts its own cluster (tests/cluster.py): three `python portal.py` on
one redis-server and a fresh STATE_PREFIX, nginx round-robin in front, the fake
Chatwoot and the mail catcher in this process. What one instance does, the others
see: a sign-in link asked for on one works on another, limits count across all of
them, a form sent to two at once is done once, a webhook delivered to two is mailed
once, and one instance killed mid-traffic costs at most the requests it held.
The outage test runs its own redis-server, so the shared one never goes down.
"""

import collections
import dataclasses
import http.client
import json
import secrets
import threading
import time

import pytest

from cluster import Cluster, get
from conftest import portal_settings
from portal import SIGNIN_PER_ADDRESS
from redis_server import RedisServer
from test_nginx import nginx_binary  # noqa: F401  (a fixture)
from test_notifications import post_webhook, signed_headers

WEBHOOK_SECRET = "whsec-cluster-0123456789abcdefgh"  # 32 characters
SUBJECT = "mail_subject"  # where Chatwoot keeps a ticket's subject


@pytest.fixture
def launch(nginx_binary, fake, smtp, tmp_path):  # noqa: F811
    """Start a cluster on a given redis-server; every process is killed at the end."""
    started = []

    def launch(redis):
        settings = portal_settings(
            fake, smtp, STATE_URL=redis.url, STATE_PREFIX=RedisServer.prefix(), WEBHOOK_SECRET=WEBHOOK_SECRET,
            NOTIFY_DELAY_SECONDS="0", TRUSTED_PROXY="127.0.0.1",
            # The fake Chatwoot shares this process with the test's client threads:
            # under the load test it may answer slower than the usual 1 s.
            CHATWOOT_TIMEOUT="5")
        cluster = Cluster(nginx_binary, tmp_path / f"cluster{len(started)}", settings, fake.url)
        started.append(cluster)
        return cluster.start()

    try:
        yield launch
    finally:
        for cluster in started:
            cluster.stop()


@pytest.fixture
def cluster(launch, redis_server):
    return launch(redis_server)



def sign_in(cluster, smtp, address, browser=None):
    """The magic-link journey through nginx; returns the signed-in browser."""
    browser = browser or cluster.browser()
    page = browser.submit(browser.get("/portal/"), "/auth/request", email=address)
    assert page.status == 200, page.text
    page = browser.get(smtp.link_for(address))  # the mail's link names nginx
    assert page.status == 200, page.text
    page = browser.submit(page, "/auth/verify")
    assert page.status == 200 and page.url.endswith("/portal/dashboard"), (page.status, page.url, page.text)
    return browser


def conversations_with(fake, subject):
    with fake._lock:
        return [c for c in fake._conversations.values() if c["additional_attributes"].get(SUBJECT) == subject]


def at_once(*calls):
    """Run the calls in threads released together; their results in order."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(number, call):
        barrier.wait()
        results[number] = call()

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def count_requests(cluster):
    return [len(portal.requests()) for portal in cluster.portals]


# ---------------------------------------------------------------------------
# One customer, three instances
# ---------------------------------------------------------------------------

def test_a_customer_signs_in_and_works_through_nginx_while_every_instance_serves_some_requests(cluster, smtp, fake):
    before = count_requests(cluster)
    browser = sign_in(cluster, smtp, "jane@example.com")
    page = browser.submit(browser.get("/portal/tickets/new"), "/tickets", subject="Shared printer",
                          message="It jams on every page.")
    assert page.status == 200 and "Shared printer" in page.text, page.text
    ticket = int(page.url.rsplit("/", 1)[1])
    page = browser.get(f"/portal/tickets/{ticket}")
    assert page.status == 200 and "It jams on every page." in page.text
    page = browser.submit(page, f"/tickets/{ticket}/reply", message="Still jamming after a restart.")
    assert page.status == 200 and "Still jamming after a restart." in page.text, page.text
    page = browser.get("/portal/dashboard")
    assert page.status == 200 and "Shared printer" in page.text

    assert [m["content"] for m in fake.messages_of(ticket) if not m["private"]] == [
        "It jams on every page.", "Still jamming after a restart."]
    served = [portal.requests()[already:] for portal, already in zip(cluster.portals, before)]
    assert all(served), [len(requests) for requests in served]
    asked = [n for n, requests in enumerate(served) if ("POST", "/auth/request", 200) in requests]
    confirmed = [n for n, requests in enumerate(served) if ("POST", "/auth/verify", 303) in requests]
    assert len(asked) == len(confirmed) == 1 and asked != confirmed, (asked, confirmed)


def test_the_sign_in_limit_per_address_holds_across_every_instance(cluster, smtp):
    limit = SIGNIN_PER_ADDRESS[0]
    browser = cluster.browser()
    form = browser.get("/portal/")
    before = count_requests(cluster)

    def ask():
        return browser.post("/portal/auth/request", {**form.form("/auth/request").fields, "email": "jane@example.com"},
                            follow=False).status

    statuses = at_once(*[ask] * (limit + 3))
    assert sorted(statuses) == [200] * limit + [429] * 3
    assert len(smtp.messages) == limit
    asks = [sum(1 for r in portal.requests()[already:] if r[:2] == ("POST", "/auth/request"))
            for portal, already in zip(cluster.portals, before)]
    assert all(asks) and sum(asks) == limit + 3, asks  # no instance counted alone


# ---------------------------------------------------------------------------
# The same thing sent to two instances
# ---------------------------------------------------------------------------

def test_one_new_ticket_form_posted_to_two_instances_at_once_makes_one_ticket(cluster, smtp, fake):
    browser = sign_in(cluster, smtp, "jane@example.com")
    form = browser.get("/portal/tickets/new").form("/tickets")
    fields = {**form.fields, "subject": "Sent twice at once", "message": "One ticket, please."}
    first, second = cluster.direct(0, browser), cluster.direct(1, browser)
    fake.delay = 0.3  # every Chatwoot call: the first request still holds the form when the second comes
    try:
        answers = at_once(lambda: first.post("/portal/tickets", fields, follow=False),
                          lambda: second.post("/portal/tickets", fields, follow=False))
    finally:
        fake.delay = 0.0
    [made] = conversations_with(fake, "Sent twice at once")
    assert [(page.status, page.header("Location")) for page in answers] == [
        (303, f"/portal/tickets/{made['display_id']}")] * 2, [page.text for page in answers]
    for portal in cluster.portals[:2]:
        assert ("POST", "/tickets", 303) in portal.requests()


def test_one_webhook_delivered_to_two_instances_sends_one_mail(cluster, smtp, fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, subject="Toner")
    fake.add_message(ticket, "The toner is empty.")
    reply = fake.add_message(ticket, "We sent a new cartridge.", "outgoing")
    body = fake.webhook_body(reply)
    headers = signed_headers(body, secret=WEBHOOK_SECRET)
    answers = at_once(lambda: post_webhook(cluster.portals[0], body, headers),
                      lambda: post_webhook(cluster.portals[1], body, headers))
    assert sorted((status, answer["queued"]) for status, answer in answers) == [(200, False), (200, True)]
    [mail] = smtp.wait_for(1)
    assert mail["To"] == "jane@example.com" and "Toner" in mail["Subject"]
    deadline = time.monotonic() + 10
    while json.loads(cluster.browser().get("/portal/healthz").body)["notifications"]["queued"]:
        assert time.monotonic() < deadline, "the reply stayed queued"
        time.sleep(0.1)
    time.sleep(2)  # room for a second mail, had the reply been queued or taken twice
    assert len(smtp.messages) == 1
    sent = [line for portal in cluster.portals for line in portal.log().splitlines() if "reply mail sent" in line]
    assert len(sent) == 1, sent


# ---------------------------------------------------------------------------
# One instance killed under load
# ---------------------------------------------------------------------------

THREADS = 8
REQUESTS = 1000
KILL_AFTER = 300
CHATWOOT_SECONDS = 0.02
# One customer's round: pages, replies and a new ticket, each with unique text.
ROUND = ("dashboard", "ticket", "reply", "ticket", "new", "dashboard", "reply", "ticket", "create", "ticket")


@dataclasses.dataclass
class Outcome:
    kind: str
    method: str
    started: float
    ended: float
    status: object  # an HTTP status, or the exception the connection raised
    expected: int
    text: str = ""  # the reply's text or the ticket's subject

    @property
    def ok(self):
        return self.status == self.expected


def test_an_instance_killed_mid_traffic_loses_no_session_and_duplicates_nothing(cluster, smtp, fake):
    contacts = [fake.jane, fake.bob, fake.ann, fake.joann] + [
        fake.add_contact(f"Customer {n}", f"customer{n}@example.com") for n in range(THREADS - 4)]
    with fake._lock:
        addresses = [fake._contacts[contact]["email"] for contact in contacts]
    tickets = [fake.add_conversation(contact, fake.api_inbox, subject=f"Seed {n}")
               for n, contact in enumerate(contacts)]
    browsers = at_once(*[lambda address=address: sign_in(cluster, smtp, address) for address in addresses])
    tokens = [b.get(f"/portal/tickets/{t}").form("/reply").fields["csrf_token"] for b, t in zip(browsers, tickets)]

    outcomes, lock, kill_now = [], threading.Lock(), threading.Event()

    def customer(number):
        browser, ticket, token = browsers[number], tickets[number], tokens[number]
        for step in range(REQUESTS // THREADS):
            kind = ROUND[step % len(ROUND)]
            text = f"{kind} {number}-{step} {secrets.token_hex(4)}"
            form = {"csrf_token": token, "form_id": secrets.token_urlsafe(16)}
            method, expected = ("POST", 303) if kind in ("reply", "create") else ("GET", 200)
            started = time.monotonic()
            try:
                if kind == "dashboard":
                    page = browser.get("/portal/dashboard", follow=False)
                elif kind == "ticket":
                    page = browser.get(f"/portal/tickets/{ticket}", follow=False)
                elif kind == "new":
                    page = browser.get("/portal/tickets/new", follow=False)
                elif kind == "reply":
                    page = browser.post(f"/portal/tickets/{ticket}/reply", {**form, "message": text}, follow=False)
                else:
                    page = browser.post("/portal/tickets", {**form, "subject": text, "message": "Made under load."},
                                        follow=False)
                status = page.status
            except (OSError, http.client.HTTPException) as error:
                status = error
            outcome = Outcome(kind, method, started, time.monotonic(), status, expected, text)
            with lock:
                outcomes.append(outcome)
                if len(outcomes) == KILL_AFTER:
                    kill_now.set()

    # Each Chatwoot call takes a moment, as a real one does: at the kill, requests are
    # inside the victim, not only on their way to it.
    fake.delay = CHATWOOT_SECONDS
    threads = [threading.Thread(target=customer, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    victim = cluster.portals[1]
    assert kill_now.wait(60), "the customers did not get going"
    served_before_kill = len(victim.requests())
    victim.kill()
    killed = time.monotonic()
    for thread in threads:
        thread.join(120)
    fake.delay = 0.0
    assert len(outcomes) == REQUESTS

    assert served_before_kill > 0  # the victim had its share of the traffic
    failed = [o for o in outcomes if not o.ok]
    assert len(failed) <= THREADS, collections.Counter((o.kind, str(o.status)) for o in failed)
    # Only what was on its way at the kill fails; nginx sends later requests elsewhere.
    assert [o for o in failed if o.started > killed] == []
    assert len([o for o in outcomes if o.started > killed]) > REQUESTS // 2  # the kill was mid-run

    for browser in browsers:  # the sessions are in Redis, not in the dead process
        page = browser.get("/portal/dashboard", follow=False)
        assert page.status == 200, (page.status, page.header("Location"))
    with fake._lock:
        subjects = collections.Counter(c["additional_attributes"].get(SUBJECT) for c in fake._conversations.values())
        contents = collections.Counter(m["content"] for thread in fake._threads.values() for m in thread)
    for outcome in outcomes:
        made = (subjects if outcome.kind == "create" else contents)[outcome.text]
        if outcome.kind in ("reply", "create"):
            # Answered: there once. Cut off by the kill: there once or not at all.
            assert made == 1 if outcome.ok else made <= 1, (outcome, made)


# ---------------------------------------------------------------------------
# Redis goes away and comes back
# ---------------------------------------------------------------------------

def assert_friendly_503(page, words):
    assert page.status == 503, page.text
    assert page.header("Retry-After") == "5"
    assert page.header("Content-Security-Policy")  # the portal's page, not nginx's
    assert words in page.text
    assert "Traceback" not in page.text and "redis" not in page.text.lower()


def test_with_redis_stopped_every_instance_answers_a_localized_503_and_recovers_without_a_restart(
        launch, private_redis, smtp, fake):
    cluster = launch(private_redis)
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, subject="Broken screen")
    browser = sign_in(cluster, smtp, "jane@example.com")
    page = browser.get(f"/portal/tickets/{ticket}")
    pids = [portal.process.pid for portal in cluster.portals]
    before = count_requests(cluster)

    private_redis.stop()
    assert_friendly_503(browser.get("/portal/dashboard"), "Please try again in a moment")
    spanish = cluster.browser()
    spanish.cookies = {**browser.cookies, "portal_lang": "es"}  # the same session, read in Spanish
    assert_friendly_503(spanish.get("/portal/tickets/new"), "Vuelve a intentarlo en un momento")
    sent = browser.submit(page, f"/tickets/{ticket}/reply", message="Still broken after the update")
    assert_friendly_503(sent, "Nothing you typed is lost")
    assert "Still broken after the update" in sent.text
    assert fake.messages_of(ticket) == []
    health = cluster.browser().get("/portal/healthz")
    assert health.status == 503 and json.loads(health.body)["status"] == "unavailable"
    # Round-robin: each instance met the outage and answered it itself.
    outage = [[r for r in portal.requests()[already:] if r[2] == 503]
              for portal, already in zip(cluster.portals, before)]
    assert all(outage), outage

    private_redis.start()  # the same port, nothing kept
    deadline = time.monotonic() + 10
    while not all(portal.running and _healthy(portal) for portal in cluster.portals):
        assert time.monotonic() < deadline, "the portals did not recover within 10 s"
        time.sleep(0.1)
    assert [portal.process.pid for portal in cluster.portals] == pids
    # Redis lost the session with everything else: sign in again, and work.
    page = browser.get("/portal/dashboard")
    assert page.status == 200 and page.form("/auth/request"), page.text
    browser = sign_in(cluster, smtp, "jane@example.com", browser)
    page = browser.submit(browser.get(f"/portal/tickets/{ticket}"), f"/tickets/{ticket}/reply",
                          message="Still broken after the update")
    assert page.status == 200, page.text
    assert [m["content"] for m in fake.messages_of(ticket)].count("Still broken after the update") == 1
    for portal in cluster.portals:
        assert "Traceback" not in portal.log(), portal.log()


def _healthy(portal):
    try:
        return get(portal.port, "/portal/healthz", timeout=2)[0] == 200
    except (OSError, http.client.HTTPException):
        return False
