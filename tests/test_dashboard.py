"""The dashboard for a customer with many tickets: status filter with counts, subject
search, Chatwoot's pages with rel links, "new reply" and "waiting for your reply".

End to end: the portal on waitress, the fake Chatwoot's conversations/filter (paging,
counts, mail_subject contains) as a real HTTP server.
"""

import html
import json
import re

import pytest

import fake_chatwoot
from conftest import BASE, sign_in

JANE = "jane@example.com"


@pytest.fixture
def jane(portal, smtp):
    browser, _ = sign_in(portal, smtp, JANE)
    return browser


def rows(page):
    """[(ticket id, row html)] in page order."""
    return [(int(m.group(2)), m.group(0)) for m in
            re.finditer(rf'<li class="ticket-item([^"]*)">\s*<a href="{BASE}/tickets/(\d+)(?:#latest)?".*?</li>', page.text, re.S)]


def ids(page):
    return [ticket_id for ticket_id, _ in rows(page)]


def tab_counts(page):
    """{tab label: count} of the status filter."""
    return {m.group(1).strip(): int(m.group(2)) for m in
            re.finditer(r'<a href="[^"]*/dashboard[^"]*"[^>]*>([^<]+)<span class="count">(\d+)</span>', page.text)}


def link(page, rel):
    found = re.search(rf'<a href="([^"]+)" rel="{rel}"', page.text)
    return html.unescape(found.group(1)) if found else None


@pytest.fixture
def mixed(fake):
    """Jane's tickets in every status, newest activity last created."""
    made = {}
    for n, status in enumerate(["open", "pending", "snoozed", "resolved", "resolved", "open"]):
        made[f"{status}-{n}"] = fake.add_conversation(fake.jane, fake.api_inbox, f"Printer {status} {n}", status=status)
    fake.add_conversation(fake.bob, fake.api_inbox, "Bob's open ticket")
    return made


def test_the_dashboard_shows_open_tickets_by_default_with_counts_per_status(portal, jane, mixed):
    page = jane.get(portal.url("/dashboard"))
    assert page.status == 200
    assert sorted(ids(page)) == sorted(v for k, v in mixed.items() if not k.startswith("resolved"))
    assert tab_counts(page) == {"Open": 4, "Closed": 2, "All": 6}
    assert 'aria-current="page">Open' in page.text


@pytest.mark.parametrize("status, expected", [("resolved", 2), ("all", 6), ("open", 4), ("nonsense", 4)])
def test_the_status_filter_is_in_the_url(portal, jane, mixed, status, expected):
    page = jane.get(portal.url(f"/dashboard?status={status}"))
    assert page.status == 200 and len(ids(page)) == expected
    assert tab_counts(page) == {"Open": 4, "Closed": 2, "All": 6}


def test_the_filter_is_a_plain_get_form_that_works_without_javascript(portal, jane, mixed):
    page = jane.get(portal.url("/dashboard?status=resolved"))
    [form] = [f for f in page.forms if f.action.endswith("/dashboard")]
    assert form.method == "GET" and form.fields == {"status": "resolved", "q": ""}
    page = jane.get(portal.url("/dashboard?status=resolved&q=printer"))
    assert len(ids(page)) == 2


def test_search_finds_words_in_subjects_case_insensitively_and_counts_follow(portal, jane, fake, mixed):
    fake.add_conversation(fake.jane, fake.api_inbox, "Invoice 7 is WRONG", status="resolved")
    page = jane.get(portal.url("/dashboard?status=all&q=invoice"))
    assert [re.search(r'ticket-subject">([^<]+)', row).group(1) for _, row in rows(page)] == ["Invoice 7 is WRONG"]
    assert tab_counts(page) == {"Open": 0, "Closed": 1, "All": 1}
    assert 'value="invoice"' in page.text  # the search box keeps the words


def test_search_takes_percent_and_underscore_literally(portal, jane, fake):
    wanted = fake.add_conversation(fake.jane, fake.api_inbox, "Disk 100% full")
    fake.add_conversation(fake.jane, fake.api_inbox, "Disk 1000 blocks")
    fake.add_conversation(fake.jane, fake.api_inbox, "snake_case error")
    fake.add_conversation(fake.jane, fake.api_inbox, "snakeXcase error")
    assert ids(jane.get(portal.url("/dashboard?q=100%25"))) == [wanted]
    assert len(ids(jane.get(portal.url("/dashboard?q=snake_case")))) == 1


def test_an_empty_result_says_so_and_offers_to_clear_the_filter(portal, jane, mixed):
    page = jane.get(portal.url("/dashboard?status=all&q=toaster"))
    assert ids(page) == []
    assert "No ticket subject contains “toaster”." in page.text
    assert link(page, "next") is None
    assert f'href="{BASE}/dashboard?status=all">Show all my tickets' in page.text


def test_a_contact_with_sixty_tickets_gets_pages_of_25_with_rel_links(portal, jane, fake):
    made = [fake.add_conversation(fake.jane, fake.api_inbox, f"Ticket {n}", created_at=1_700_000_000 + n)
            for n in range(60)]
    first = jane.get(portal.url("/dashboard"))
    assert len(ids(first)) == 25 and link(first, "prev") is None
    assert "Page 1 of 3" in first.text
    second = jane.get(link(first, "next"))
    assert "page=2" in second.url and len(ids(second)) == 25
    third = jane.get(link(second, "next"))
    assert len(ids(third)) == 10 and link(third, "next") is None
    assert ids(first) + ids(second) + ids(third) == list(reversed(made))
    assert ids(jane.get(link(third, "prev"))) == ids(second)


def test_a_page_past_the_end_goes_to_the_last_page(portal, jane, fake):
    for n in range(30):
        fake.add_conversation(fake.jane, fake.api_inbox, f"Ticket {n}")
    page = jane.get(portal.url("/dashboard?page=9"), follow=False)
    assert page.status == 303 and page.header("Location") == f"{BASE}/dashboard?page=2"


def test_paging_keeps_the_filter_and_the_search(portal, jane, fake):
    for n in range(30):
        fake.add_conversation(fake.jane, fake.api_inbox, f"Router {n}", status="resolved")
    page = jane.get(portal.url("/dashboard?status=resolved&q=router"))
    assert link(page, "next") == f"{BASE}/dashboard?status=resolved&q=router&page=2"


def test_a_chatwoot_too_old_for_the_contact_filter_shows_the_latest_and_says_why_in_the_log(
        portal, jane, fake, monkeypatch, caplog):
    for n in range(5):
        fake.add_conversation(fake.jane, fake.api_inbox, f"Old {n}", status="resolved" if n % 2 else "open")
    original = fake_chatwoot.FakeChatwoot._answer

    def refuse_filter(self, method, target, headers, raw_body):
        if "/conversations/filter" in target:
            self.calls.append((method, target.split("?")[0], {}))
            return 422, "application/json", json.dumps({"error": "Invalid attribute key - [contact_id]."}).encode(), {}
        return original(self, method, target, headers, raw_body)

    monkeypatch.setattr(fake_chatwoot.FakeChatwoot, "_answer", refuse_filter)
    with caplog.at_level("WARNING"):
        page = jane.get(portal.url("/dashboard?status=all&q=old"))
    assert page.status == 200 and len(ids(page)) == 5
    assert tab_counts(page) == {"Open": 3, "Closed": 2, "All": 5}
    assert "older than 4.14.2" in caplog.text
    fake.reset_calls()
    jane.get(portal.url("/dashboard"))
    assert not [c for c in fake.calls if "filter" in c[1]]  # not asked again


# ---------------------------------------------------------------------------
# New replies and tickets waiting on the customer
# ---------------------------------------------------------------------------

def test_a_new_agent_reply_marks_the_row_until_the_ticket_is_viewed(portal, jane, fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer")
    fake.add_message(ticket, "It is broken.")
    assert "unread" not in dict(rows(jane.get(portal.url("/dashboard"))))[ticket]
    fake.add_message(ticket, "We are on it.", "outgoing")
    row = dict(rows(jane.get(portal.url("/dashboard"))))[ticket]
    assert 'class="ticket-item unread"' in row and "New reply" in row  # words, not colour alone
    jane.get(portal.url(f"/tickets/{ticket}"))
    row = dict(rows(jane.get(portal.url("/dashboard"))))[ticket]
    assert "unread" not in row and "New reply" not in row
    fake.add_message(ticket, "Fixed now.", "outgoing")
    assert "New reply" in dict(rows(jane.get(portal.url("/dashboard"))))[ticket]


def test_a_private_note_after_a_reply_does_not_hide_nor_make_a_new_reply(portal, jane, fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer")
    fake.add_message(ticket, "It is broken.")
    jane.get(portal.url(f"/tickets/{ticket}"))
    fake.add_message(ticket, "Internal: call the vendor", "outgoing", private=True)
    assert "New reply" not in dict(rows(jane.get(portal.url("/dashboard"))))[ticket]


def test_customer_messages_and_activity_never_make_a_new_reply(portal, jane, fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer")
    fake.add_message(ticket, "First.")
    fake.add_message(ticket, "Conversation was marked open", "activity")
    fake.add_message(ticket, "Second.")
    assert "New reply" not in dict(rows(jane.get(portal.url("/dashboard"))))[ticket]


def test_old_closed_tickets_never_opened_here_are_not_all_new(portal, jane, fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Long ago", status="resolved")
    fake.add_message(ticket, "Done, closing.", "outgoing")
    assert "New reply" not in dict(rows(jane.get(portal.url("/dashboard?status=all"))))[ticket]


def test_a_ticket_the_agent_answered_last_waits_for_the_customer(portal, jane, fake):
    waiting = fake.add_conversation(fake.jane, fake.api_inbox, "Needs your answer", status="pending")
    fake.add_message(waiting, "Which model is it?")
    fake.add_message(waiting, "Could you tell us the model?", "outgoing")
    ours = fake.add_conversation(fake.jane, fake.api_inbox, "Our turn")
    fake.add_message(ours, "It smokes.")
    answered = dict(rows(jane.get(portal.url("/dashboard"))))
    assert "Waiting for your reply" in answered[waiting]
    assert "Waiting for your reply" not in answered[ours]
    fake.add_message(waiting, "It is a P-100.", "incoming")
    assert "Waiting for your reply" not in dict(rows(jane.get(portal.url("/dashboard"))))[waiting]


def test_the_dashboard_speaks_spanish(portal, smtp, fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Impresora")
    fake.add_message(ticket, "¿Qué modelo es?", "outgoing")
    browser = portal.browser(**{"Accept-Language": "es"})
    browser, page = sign_in(portal, smtp, JANE, browser)
    assert "Nueva respuesta" in page.text and "Esperando tu respuesta" in page.text
    assert tab_counts(page) == {"Abiertos": 1, "Cerrados": 0, "Todos": 1}
