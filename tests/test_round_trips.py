"""Chatwoot round trips per customer action, counted at the fake Chatwoot.

The table these tests hold the portal to:

    request a magic link (known address)   1
    dashboard page (any filter, any size)  2, issued concurrently (the page, the other status count)
    ticket page (thread of <= 20 messages) 2, issued concurrently
    reply                                  2
    create ticket                          1, or 2 with a priority (toggle_priority after)
    cancel                                 2

They count calls, never seconds: a change that adds a round trip fails here.
"""

import threading

import pytest

import fake_chatwoot
from conftest import sign_in

JANE = "jane@example.com"


@pytest.fixture
def ticket(fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer on fire")
    for n in range(12):
        fake.add_message(ticket, f"message {n}", "incoming" if n % 2 == 0 else "outgoing")
    fake.add_message(ticket, "internal remark", "outgoing", private=True)
    return ticket


@pytest.fixture
def jane(portal, smtp, fake, ticket):
    browser, _ = sign_in(portal, smtp, JANE)
    return browser


def calls_during(fake, action):
    fake.reset_calls()
    action()
    return [(method, path) for method, path, _ in fake.calls]


def test_requesting_a_magic_link_costs_one_call(portal, fake):
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    calls = calls_during(fake, lambda: browser.submit(page, "/auth/request", email=JANE))
    assert calls == [("POST", "/api/v1/accounts/1/contacts/filter")]


@pytest.mark.parametrize("query", ["", "?status=resolved", "?status=all&q=ticket", "?page=7", "?status=all&page=20"])
def test_a_dashboard_page_of_a_contact_with_500_tickets_costs_two_calls(portal, fake, jane, query):
    for n in range(500):
        fake.add_conversation(fake.jane, fake.api_inbox, f"Ticket {n}", status="resolved" if n % 3 else "open")
    calls = calls_during(fake, lambda: jane.get(portal.url("/dashboard" + query)))
    assert calls == [("POST", "/api/v1/accounts/1/conversations/filter")] * 2


def test_a_ticket_page_costs_two_calls(portal, fake, jane, ticket):
    calls = calls_during(fake, lambda: jane.get(portal.url(f"/tickets/{ticket}")))
    assert sorted(calls) == [("GET", f"/api/v1/accounts/1/conversations/{ticket}"),
                             ("GET", f"/api/v1/accounts/1/conversations/{ticket}/messages")]


def test_a_reply_costs_two_calls(portal, fake, jane, ticket):
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    calls = calls_during(fake, lambda: jane.submit(page, f"/tickets/{ticket}/reply", message="Hi", follow=False))
    assert calls == [("GET", f"/api/v1/accounts/1/conversations/{ticket}"),
                     ("POST", f"/api/v1/accounts/1/conversations/{ticket}/messages")]


def test_creating_a_ticket_costs_one_call(portal, fake, jane):
    page = jane.get(portal.url("/tickets/new"))
    calls = calls_during(fake, lambda: jane.submit(page, "/tickets", subject="New", message="Text", follow=False))
    assert calls == [("POST", "/api/v1/accounts/1/conversations")]


def test_creating_a_ticket_with_no_priority_chosen_costs_one_call(portal, fake, jane):
    page = jane.get(portal.url("/tickets/new"))
    answer = []
    calls = calls_during(fake, lambda: answer.append(jane.submit(page, "/tickets", subject="New", message="Text",
                                                                 priority="none", follow=False)))
    assert answer[0].status == 303
    assert calls == [("POST", "/api/v1/accounts/1/conversations")]


def test_creating_a_ticket_with_a_priority_costs_two_calls(portal, fake, jane):
    page = jane.get(portal.url("/tickets/new"))
    answer = []
    calls = calls_during(fake, lambda: answer.append(jane.submit(page, "/tickets", subject="New", message="Text",
                                                                 priority="high", follow=False)))
    assert answer[0].status == 303
    created = int(answer[0].header("Location").rsplit("/", 1)[1])
    assert calls == [("POST", "/api/v1/accounts/1/conversations"),
                     ("POST", f"/api/v1/accounts/1/conversations/{created}/toggle_priority")]


def test_cancelling_costs_two_calls(portal, fake, jane, ticket):
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    calls = calls_during(fake, lambda: jane.submit(page, f"/tickets/{ticket}/cancel", follow=False))
    assert calls == [("GET", f"/api/v1/accounts/1/conversations/{ticket}"),
                     ("POST", f"/api/v1/accounts/1/conversations/{ticket}/toggle_status")]


def test_the_two_calls_of_a_ticket_page_are_in_flight_together(portal, fake, jane, ticket, monkeypatch):
    # Each call waits at a barrier for the other: calls made one after the other
    # would break the barrier (after its timeout) and the page would fail.
    barrier = threading.Barrier(2, timeout=5)
    answer = fake_chatwoot.FakeChatwoot._answer

    def answer_together(self, method, target, headers, raw_body):
        if method == "GET" and f"/conversations/{ticket}" in target:
            barrier.wait()
        return answer(self, method, target, headers, raw_body)

    monkeypatch.setattr(fake_chatwoot.FakeChatwoot, "_answer", answer_together)
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert page.status == 200, page.text
    assert not barrier.broken


def test_pages_reuse_connections_to_chatwoot(portal, fake, jane, ticket, monkeypatch):
    opened = []
    setup = fake_chatwoot._Handler.setup

    def counting_setup(handler):
        opened.append(handler.client_address)
        setup(handler)

    monkeypatch.setattr(fake_chatwoot._Handler, "setup", counting_setup)
    for _ in range(10):
        assert jane.get(portal.url("/dashboard")).status == 200
    # Ten sequential pages: one kept-alive connection serves them all.
    assert len(opened) <= 1


def test_a_read_on_a_connection_chatwoot_dropped_is_retried_once(portal, fake, jane):
    assert jane.get(portal.url("/dashboard")).status == 200  # leaves a pooled connection
    fake.set_fault("close", count=1)
    fake.reset_calls()
    page = jane.get(portal.url("/dashboard"))
    assert page.status == 200
    assert len(fake.calls) == 3  # the page's two calls, one dropped and retried once


def test_a_write_is_never_retried_when_chatwoot_drops_it(portal, fake, jane):
    page = jane.get(portal.url("/tickets/new"))
    fake.set_fault("close", count=1)
    fake.reset_calls()
    page = jane.submit(page, "/tickets", subject="Once", message="Only once")
    assert page.status == 503
    assert [c[0] for c in fake.calls] == ["POST"]


@pytest.mark.parametrize("only_header", ["api_access_token", "api-access-token"])
def test_a_server_that_reads_one_spelling_of_the_token_header_costs_one_extra_call_once(
        portal, smtp, fake, monkeypatch, only_header):
    def authenticate(self, headers):
        offered = headers.get(only_header)  # e.g. a proxy dropped the other spelling
        if offered is None:
            raise fake_chatwoot._ApiError(401, fake_chatwoot.NO_TOKEN)
        if offered != self.token:
            raise fake_chatwoot._ApiError(401, fake_chatwoot.BAD_TOKEN)

    monkeypatch.setattr(fake_chatwoot.FakeChatwoot, "_authenticate", authenticate)
    browser, page = sign_in(portal, smtp, JANE)
    assert page.status == 200 and "/portal/dashboard" in page.url
    fake.reset_calls()
    assert browser.get(portal.url("/dashboard")).status == 200
    assert len(fake.calls) == 2  # the dashboard's two calls: settled on the spelling that works


def test_a_wrong_token_is_not_retried_under_the_other_header_spelling(portal, fake):
    fake.token = "another-token"
    browser = portal.browser()
    page = browser.submit(browser.get(portal.url("/")), "/auth/request", email=JANE)
    assert page.status == 503
    assert len(fake.calls) == 1
