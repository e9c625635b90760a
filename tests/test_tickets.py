"""Tickets end to end: dashboard, create, ticket page, reply, cancel, round trips.

Every test drives the portal through its real socket with the test browser, against
the fake Chatwoot on its own socket, and checks the outcome both on the page the
customer sees and in the fake's record of what Chatwoot was asked to do.
"""

import html.parser
import json
import re
import threading

import pytest

import fake_chatwoot
from conftest import sign_in
from conftest import both_backends  # noqa: F401  (every test here runs on memory and on Redis)

JANE = "jane@example.com"
BOB = "bob@example.com"
ANN = "ann@example.com"
NOW = 1_800_000_000  # the FakeClock's start; the fake itself runs on wall-clock time
MISSING_ID = 987654


# ---------------------------------------------------------------------------
# A tiny DOM, so tests look at elements rather than at template spelling
# ---------------------------------------------------------------------------

VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    @property
    def classes(self):
        return (self.attrs.get("class") or "").split()

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self):
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def find_all(self, tag=None, cls=None, predicate=None):
        return [n for n in self.walk()
                if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)
                and (predicate is None or predicate(n))]

    def find(self, tag=None, cls=None, predicate=None):
        found = self.find_all(tag, cls, predicate)
        return found[0] if found else None

    def ancestor(self, *tags):
        node = self.parent
        while node is not None and node.tag not in tags:
            node = node.parent
        return node


class _TreeBuilder(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {})

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.current)
        self.current.children.append(node)
        if tag not in VOID_TAGS:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, attrs, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def dom(page):
    builder = _TreeBuilder()
    builder.feed(page.text)
    return builder.root


TICKET_HREF = re.compile(r"/portal/tickets/(\d+)(?:#latest)?$")  # the dashboard opens a ticket at its newest message


def dashboard_rows(page):
    """[{id, subject, badge, badge_class, datetime, text}] in page order, one per ticket link."""
    rows = []
    for link in dom(page).find_all("a", predicate=lambda n: TICKET_HREF.search(n.attrs.get("href") or "")):
        row = link.ancestor("li", "tr") or link
        subject = row.find(predicate=lambda n: any("subject" in c for c in n.classes))
        badge = row.find(predicate=lambda n: any("badge" in c for c in n.classes))
        time = row.find("time")
        rows.append({
            "id": int(TICKET_HREF.search(link.attrs["href"]).group(1)),
            "subject": (subject or link).text().strip(),
            "badge": badge.text().strip() if badge else None,
            "badge_class": " ".join(badge.classes) if badge else "",
            "datetime": time.attrs.get("datetime") if time else None,
            "text": " ".join(row.text().split()),
        })
    return rows


def thread_messages(page):
    """[{side, sender, body}] for every message shown on a ticket page, in page order."""
    found = []
    for node in dom(page).find_all(predicate=lambda n: {"from-customer", "from-agent"} & set(n.classes)):
        sender = node.find(cls="sender")
        body = node.find(cls="message-body")
        found.append({
            "side": "customer" if "from-customer" in node.classes else "agent",
            "sender": sender.text().strip() if sender else "",
            "body": body.text() if body else "",
        })
    return found


def main_part(page):
    """The <main> element's markup: what a page says, without the layout around it."""
    match = re.search(r"<main\b.*?</main>", page.text, re.S)
    assert match, page.text
    return match.group(0)


def csrf_of(page):
    return next(f.fields["csrf_token"] for f in page.forms if "csrf_token" in f.fields)


def ticket_id_of(page):
    match = re.search(r"/portal/tickets/(\d+)(?:#.*)?$", page.url)
    assert match, f"not on a ticket page: {page.url} ({page.status})"
    return int(match.group(1))


def choose_language(browser, page, lang):
    return browser.submit(page, "/lang", lang=lang)


def calls_to(fake, method=None, contains=""):
    return [c for c in fake.calls if (method is None or c[0] == method) and contains in c[1]]


@pytest.fixture
def jane(portal, smtp):
    """A browser signed in as Jane, on her dashboard."""
    browser, page = sign_in(portal, smtp, JANE)
    assert page.status == 200, page.text
    return browser


# ---------------------------------------------------------------------------
# Dashboard (issue point 3)
# ---------------------------------------------------------------------------

def test_dashboard_lists_the_contacts_tickets_from_the_api_inbox_and_the_email_inbox(portal, smtp, fake):
    by_portal = fake.add_conversation(fake.jane, fake.api_inbox, "Printer on fire")
    by_email = fake.add_conversation(fake.jane, fake.email_inbox, "Delivery address")
    browser, page = sign_in(portal, smtp, JANE)
    rows = {row["id"]: row["subject"] for row in dashboard_rows(page)}
    assert rows == {by_portal: "Printer on fire", by_email: "Delivery address"}


def test_dashboard_never_lists_another_contacts_ticket(portal, smtp, fake):
    mine = fake.add_conversation(fake.jane, fake.api_inbox, "Jane's own ticket")
    fake.add_conversation(fake.bob, fake.api_inbox, "Bob's private trouble")
    fake.add_conversation(fake.joann, fake.email_inbox, "Joann's mail ticket")
    browser, page = sign_in(portal, smtp, JANE)
    assert [row["id"] for row in dashboard_rows(page)] == [mine]
    assert "Bob's private trouble" not in page.text
    assert "Joann's mail ticket" not in page.text


def test_dashboard_orders_tickets_by_newest_activity_first(portal, smtp, fake):
    oldest_but_busy = fake.add_conversation(fake.jane, fake.api_inbox, "Busy", created_at=NOW - 3000)
    middle = fake.add_conversation(fake.jane, fake.email_inbox, "Middle", created_at=NOW - 2000)
    newest_created = fake.add_conversation(fake.jane, fake.api_inbox, "Quiet", created_at=NOW - 1000)
    fake.add_message(oldest_but_busy, "Any news?", created_at=NOW - 10)
    browser, page = sign_in(portal, smtp, JANE)
    assert [row["id"] for row in dashboard_rows(page)] == [oldest_but_busy, newest_created, middle]


def test_dashboard_subject_is_the_conversations_mail_subject(portal, smtp, fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Invoice 2024-117 is wrong")
    fake.add_message(ticket, "The invoice lists 12 toner cartridges.")
    browser, page = sign_in(portal, smtp, JANE)
    assert dashboard_rows(page)[0]["subject"] == "Invoice 2024-117 is wrong"


def test_dashboard_subject_falls_back_to_the_first_public_message_never_a_note_or_the_latest(portal, smtp, fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, created_at=NOW - 500)
    fake.add_message(ticket, "Internal: VIP customer, be nice", "outgoing", private=True, created_at=NOW - 400)
    fake.add_message(ticket, "My screen stays black", created_at=NOW - 300)
    fake.add_message(ticket, "Have you tried the power button?", "outgoing", created_at=NOW - 200)
    fake.add_message(ticket, "Escalate to hardware team", "outgoing", private=True, created_at=NOW - 100)
    browser, page = sign_in(portal, smtp, JANE)
    assert dashboard_rows(page)[0]["subject"] == "My screen stays black"
    assert "VIP customer" not in page.text
    assert "Escalate to hardware" not in page.text
    assert "power button" not in page.text


def test_dashboard_subject_excerpt_of_a_long_first_message_is_short(portal, smtp, fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox)
    long_text = "Paper jams in tray two whenever I print " + "double-sided pages " * 30 + "ENDMARK"
    fake.add_message(ticket, long_text)
    browser, page = sign_in(portal, smtp, JANE)
    subject = dashboard_rows(page)[0]["subject"]
    assert subject.startswith("Paper jams in tray two")
    assert len(subject) <= 120
    assert "ENDMARK" not in page.text


def test_dashboard_subject_falls_back_to_the_ticket_number_without_any_public_text(portal, smtp, fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox)
    fake.add_message(ticket, "Only agents see this", "outgoing", private=True)
    browser, page = sign_in(portal, smtp, JANE)
    assert dashboard_rows(page)[0]["subject"] == f"Ticket #{ticket}"
    assert "Only agents see this" not in page.text


# What each status means to a customer, not Chatwoot's word for it (tests/test_words.py
# has the waiting, snoozed-until and Chatwoot-word details).
@pytest.mark.parametrize("lang, expected", [
    ("en", {"open": "We're on it", "pending": "We're on it", "resolved": "Closed", "snoozed": "On hold"}),
    ("es", {"open": "Estamos en ello", "pending": "Estamos en ello", "resolved": "Cerrado", "snoozed": "En espera"}),
])
def test_dashboard_shows_a_localized_status_badge_for_every_status(portal, smtp, fake, lang, expected):
    ids = {status: fake.add_conversation(fake.jane, fake.api_inbox, f"A {status} ticket", status=status)
           for status in expected}
    browser, page = sign_in(portal, smtp, JANE)
    page = choose_language(browser, page, lang)
    assert f'<html lang="{lang}"' in page.text
    page = browser.get(portal.url("/dashboard?status=all"))  # closed tickets too
    badges = {row["id"]: row["badge"] for row in dashboard_rows(page)}
    assert badges == {ids[status]: label for status, label in expected.items()}


def test_dashboard_shows_each_tickets_last_activity_time(portal, smtp, fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Timed", created_at=NOW - 7200)
    fake.add_message(ticket, "Latest word", created_at=NOW)  # 2027-01-15 08:00:00 UTC
    browser, page = sign_in(portal, smtp, JANE)
    row = dashboard_rows(page)[0]
    assert row["datetime"] == "2027-01-15T08:00:00Z"
    # Recent, so in words; the date is the element's title (tests/test_words.py).
    assert "Last activity just now" in row["text"]
    assert dom(page).find("time").attrs["title"] == "15 Jan 2027, 08:00 UTC"


def test_dashboard_pages_all_thirty_tickets_of_a_contact_beyond_chatwoots_twenty_limit(portal, smtp, fake):
    ids = [fake.add_conversation(fake.jane, fake.api_inbox if n % 3 else fake.email_inbox,
                                 f"Ticket subject number {n}", created_at=NOW - 10_000 + n * 10)
           for n in range(30)]
    fake.add_conversation(fake.bob, fake.api_inbox, "Not Jane's")
    browser, page = sign_in(portal, smtp, JANE)
    shown = [row["id"] for row in dashboard_rows(page)]
    next_page = browser.get(re.search(r'<a href="([^"]+)" rel="next"', page.text).group(1).replace("&amp;", "&"))
    shown += [row["id"] for row in dashboard_rows(next_page)]
    assert shown == list(reversed(ids))
    assert "Not Jane's" not in page.text + next_page.text


def test_dashboard_shows_an_empty_state_when_the_contact_has_no_tickets(portal, smtp, fake):
    fake.add_conversation(fake.jane, fake.api_inbox, "Jane's, not Ann's")
    browser, page = sign_in(portal, smtp, ANN)
    assert page.status == 200
    assert dashboard_rows(page) == []
    assert "no tickets" in page.text.lower()
    assert any(f.action.endswith("/tickets/new") for f in page.forms) or 'href="/portal/tickets/new"' in main_part(page)


# ---------------------------------------------------------------------------
# Create (issue point 4)
# ---------------------------------------------------------------------------

def test_creating_a_ticket_makes_one_conversation_in_the_portal_inbox_with_an_incoming_first_message(portal, fake, jane):
    page = jane.get(portal.url("/tickets/new"))
    page = jane.submit(page, "/tickets", subject="Printer on fire", message="It smokes.\nHelp!")
    assert page.status == 200, page.text
    ticket_id = ticket_id_of(page)
    conversation = fake.conversation(ticket_id)
    assert conversation["inbox_id"] == fake.api_inbox
    assert conversation["contact_id"] == fake.jane
    assert conversation["additional_attributes"]["mail_subject"] == "Printer on fire"
    messages = fake.messages_of(ticket_id)
    first = [m for m in messages if m["message_type"] != 2][0]
    assert (first["message_type"], first["private"], first["content"]) == (0, False, "It smokes.\nHelp!")
    assert len([c for c in fake.calls if c[0] == "POST" and c[1].endswith("/conversations")]) == 1


def test_after_creating_a_ticket_the_browser_lands_on_the_new_ticket_page(portal, fake, jane):
    page = jane.get(portal.url("/tickets/new"))
    page = jane.submit(page, "/tickets", subject="Lamp flickers", message="The desk lamp flickers.")
    ticket_id = ticket_id_of(page)
    assert "<h1>Lamp flickers</h1>" in page.text
    assert [m["body"] for m in thread_messages(page)] == ["The desk lamp flickers."]
    assert any(f.action.endswith(f"/tickets/{ticket_id}/reply") for f in page.forms)


TOO_LONG_SUBJECT = "S" * 151
TOO_LONG_MESSAGE = "M" * 10_001


@pytest.mark.parametrize("subject, message, error", [
    ("", "A message with no subject", "Please write a subject."),
    ("   ", "Only spaces as a subject", "Please write a subject."),
    ("A subject with no message", "", "Please write a message."),
    ("A subject with a blank message", " \n\t ", "Please write a message."),
    (TOO_LONG_SUBJECT, "Subject is one character too long", "at most 150 characters"),
    ("Message is one character too long", TOO_LONG_MESSAGE, "at most 10000 characters"),
], ids=["empty-subject", "blank-subject", "empty-message", "blank-message", "long-subject", "long-message"])
def test_create_refuses_invalid_input_with_400_keeps_what_was_typed_and_writes_nothing(
        portal, fake, jane, subject, message, error):
    page = jane.get(portal.url("/tickets/new"))
    fake.reset_calls()
    page = jane.submit(page, "/tickets", subject=subject, message=message)
    assert page.status == 400
    assert error in page.text
    form = page.form("/tickets")
    assert form.fields["subject"] == subject
    assert form.fields["message"] == message
    assert fake.calls == []


def test_create_at_the_exact_length_limits_is_accepted(portal, fake, jane):
    page = jane.get(portal.url("/tickets/new"))
    page = jane.submit(page, "/tickets", subject="S" * 150, message="M" * 10_000)
    ticket_id = ticket_id_of(page)
    assert fake.conversation(ticket_id)["additional_attributes"]["mail_subject"] == "S" * 150


def test_create_errors_are_in_spanish_when_spanish_is_chosen(portal, fake, jane):
    page = jane.get(portal.url("/tickets/new"))
    page = choose_language(jane, page, "es")
    page = jane.submit(page, "/tickets", subject="", message="Mi impresora arde")
    assert page.status == 400
    assert "Escribe un asunto." in page.text
    assert page.form("/tickets").fields["message"] == "Mi impresora arde"


def test_double_submitting_the_same_new_ticket_form_creates_one_ticket(portal, fake, jane):
    form_page = jane.get(portal.url("/tickets/new"))
    first = jane.submit(form_page, "/tickets", subject="Double click", message="Clicked twice")
    second = jane.submit(form_page, "/tickets", subject="Double click", message="Clicked twice")
    assert first.status == second.status == 200
    assert ticket_id_of(first) == ticket_id_of(second)
    assert len([c for c in fake.calls if c[0] == "POST" and c[1].endswith("/conversations")]) == 1
    page = jane.get(portal.url("/dashboard"))
    assert [row["subject"] for row in dashboard_rows(page)] == ["Double click"]


def test_two_concurrent_submissions_of_the_same_form_create_one_ticket(portal, fake, jane):
    form_page = jane.get(portal.url("/tickets/new"))
    fake.delay = 0.3  # keeps the first create in flight while the second arrives
    twins = [portal.browser(), portal.browser()]
    for twin in twins:
        twin.cookies = dict(jane.cookies)
    results = [None, None]

    def submit(index):
        results[index] = twins[index].submit(form_page, "/tickets", subject="Race", message="Same form twice")

    threads = [threading.Thread(target=submit, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    fake.delay = 0
    assert [r.status for r in results] == [200, 200], [r.text for r in results]
    assert ticket_id_of(results[0]) == ticket_id_of(results[1])
    assert len([c for c in fake.calls if c[0] == "POST" and c[1].endswith("/conversations")]) == 1


def test_two_different_new_ticket_forms_create_two_tickets(portal, fake, jane):
    first_form = jane.get(portal.url("/tickets/new"))
    second_form = jane.get(portal.url("/tickets/new"))
    first = jane.submit(first_form, "/tickets", subject="Same words", message="Same text")
    second = jane.submit(second_form, "/tickets", subject="Same words", message="Same text")
    assert ticket_id_of(first) != ticket_id_of(second)


# ---------------------------------------------------------------------------
# Ticket page (issue point 5)
# ---------------------------------------------------------------------------

def _long_thread(fake, count):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, f"{count} messages", created_at=NOW - 10 * count - 10)
    for n in range(count):
        kind = "incoming" if n % 2 == 0 else "outgoing"
        fake.add_message(ticket, f"Message {n:04d}", kind, created_at=NOW - 10 * count + 10 * n)
    return ticket


@pytest.mark.parametrize("count", [45, 1050])
def test_ticket_page_shows_the_whole_thread_oldest_first_across_every_page(portal, fake, jane, count):
    ticket = _long_thread(fake, count)
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert page.status == 200
    assert [m["body"] for m in thread_messages(page)] == [f"Message {n:04d}" for n in range(count)]


def test_ticket_page_tells_customer_and_agent_messages_apart_with_the_senders_name(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Who said what")
    agent = fake.add_agent("Rosa Ortega", "rosa@acme.test", display_name="Rosa")
    fake.add_message(ticket, "Customer speaking", "incoming", created_at=NOW - 30)
    fake.add_message(ticket, "Agent Sam speaking", "outgoing", created_at=NOW - 20)
    fake.add_message(ticket, "Agent Rosa speaking", "outgoing", sender=agent, created_at=NOW - 10)
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    shown = [(m["side"], m["body"]) for m in thread_messages(page)]
    assert shown == [("customer", "Customer speaking"), ("agent", "Agent Sam speaking"),
                     ("agent", "Agent Rosa speaking")]
    senders = [m["sender"] for m in thread_messages(page)]
    assert senders[1] == "Sam" and senders[2] == "Rosa"
    assert senders[0] not in ("", "Sam", "Rosa")


def test_ticket_page_never_shows_private_notes_even_the_latest_message(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Notes stay inside")
    fake.add_message(ticket, "Please help", created_at=NOW - 40)
    fake.add_message(ticket, "Early note: customer owes us money", "outgoing", private=True, created_at=NOW - 30)
    fake.add_message(ticket, "We are on it", "outgoing", created_at=NOW - 20)
    fake.add_message(ticket, "Latest note: do not refund", "outgoing", private=True, created_at=NOW - 10)
    assert fake.conversation(ticket)["last_activity_at"] == NOW - 10  # the note is messages[0]
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert [m["body"] for m in thread_messages(page)] == ["Please help", "We are on it"]
    assert "owes us money" not in page.text
    assert "do not refund" not in page.text
    page = jane.get(portal.url("/dashboard"))
    assert "do not refund" not in page.text and "owes us money" not in page.text


def test_ticket_page_never_shows_activity_messages(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Activity stays inside")
    fake.add_message(ticket, "Hello", created_at=NOW - 20)
    fake.add_message(ticket, "Sam Agent self-assigned this conversation", "activity", created_at=NOW - 10)
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert [m["body"] for m in thread_messages(page)] == ["Hello"]
    assert "self-assigned" not in page.text


def test_ticket_page_escapes_html_in_messages_and_subject(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "<img src=x onerror=alert(2)>")
    fake.add_message(ticket, "<script>alert(1)</script>", "outgoing")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<img src=x" not in page.text
    assert [m["body"] for m in thread_messages(page)] == ["<script>alert(1)</script>"]
    dashboard = jane.get(portal.url("/dashboard"))
    assert "<img src=x" not in dashboard.text


def test_agent_markdown_shows_as_emphasis_and_links_but_customer_text_as_typed(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Markdown")
    fake.add_message(ticket, "I wrote **not bold** here", "incoming")
    fake.add_message(ticket, "Arrives **tomorrow at 9**, see [guide](https://example.com/g) <b>x</b>", "outgoing")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert "I wrote **not bold** here" in page.text
    assert "<strong>tomorrow at 9</strong>" in page.text
    assert '<a href="https://example.com/g" rel="noopener noreferrer nofollow">guide</a>' in page.text
    assert "&lt;b&gt;x&lt;/b&gt;" in page.text


def test_ticket_page_keeps_line_breaks_inside_the_message_body(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Lines")
    fake.add_message(ticket, "First line\nSecond line\n\nAfter a blank line")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert thread_messages(page)[0]["body"] == "First line\nSecond line\n\nAfter a blank line"


def test_ticket_page_shows_message_times_in_the_chosen_language(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Times", created_at=NOW - 60)
    fake.add_message(ticket, "January words", created_at=NOW)  # 15 Jan 2027
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert "15 Jan 2027" in page.text
    page = choose_language(jane, page, "es")
    assert "15 ene 2027" in page.text and "15 Jan 2027" not in page.text


# ---------------------------------------------------------------------------
# Reply and cancel (issue point 6)
# ---------------------------------------------------------------------------

def test_reply_adds_an_incoming_public_message_to_the_thread(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Replying")
    fake.add_message(ticket, "First words")  # the fake's own clock, as the reply will be
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    page = jane.submit(page, f"/tickets/{ticket}/reply", message="One more thing:\nit beeps.")
    assert page.status == 200
    added = [m for m in fake.messages_of(ticket) if m["content"] == "One more thing:\nit beeps."]
    assert [(m["message_type"], m["private"]) for m in added] == [(0, False)]
    assert thread_messages(page)[-1] == {"side": "customer", "sender": thread_messages(page)[0]["sender"],
                                        "body": "One more thing:\nit beeps."}


def test_resubmitting_the_same_reply_form_adds_the_message_once(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Replying twice")
    form_page = jane.get(portal.url(f"/tickets/{ticket}"))
    jane.submit(form_page, f"/tickets/{ticket}/reply", message="Only once please")
    jane.submit(form_page, f"/tickets/{ticket}/reply", message="Only once please")
    assert [m["content"] for m in fake.messages_of(ticket)].count("Only once please") == 1


def test_resolved_ticket_says_that_a_reply_will_reopen_it_before_sending(portal, fake, jane):
    resolved = fake.add_conversation(fake.jane, fake.api_inbox, "Done", status="resolved")
    still_open = fake.add_conversation(fake.jane, fake.api_inbox, "Not done")
    warning = "Sending a reply will reopen it"
    page = jane.get(portal.url(f"/tickets/{resolved}"))
    assert warning in page.text
    assert page.form(f"/tickets/{resolved}/reply")
    assert warning not in jane.get(portal.url(f"/tickets/{still_open}")).text


def test_replying_to_a_resolved_ticket_reopens_it(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Done", status="resolved")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    page = jane.submit(page, f"/tickets/{ticket}/reply", message="It broke again")
    assert fake.conversation(ticket)["status"] == "open"
    badge = dom(page).find(predicate=lambda n: any("badge" in c for c in n.classes))
    assert badge.text().strip() == "We're on it"
    assert "Sending a reply will reopen it" not in page.text


def test_email_inbox_ticket_shows_its_thread_and_an_email_note_instead_of_a_reply_form(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.email_inbox, "Delivery address")
    fake.add_message(ticket, "Please ship to 5 Main St.", created_at=NOW - 20)
    fake.add_message(ticket, "Noted.", "outgoing", created_at=NOW - 10)
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert page.status == 200
    assert [m["body"] for m in thread_messages(page)] == ["Please ship to 5 Main St.", "Noted."]
    assert "e-mail" in main_part(page).lower()
    assert not [f for f in page.forms if f.action.endswith("/reply")]
    assert "<textarea" not in main_part(page)


def test_a_crafted_reply_to_an_email_inbox_ticket_is_refused_without_a_write(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.email_inbox, "Delivery address")
    fake.add_message(ticket, "Please ship to 5 Main St.")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    before = fake.messages_of(ticket)
    fake.reset_calls()
    page = jane.post(portal.url(f"/tickets/{ticket}/reply"),
                     {"csrf_token": csrf_of(page), "message": "Sneaky reply", "form_id": "crafted-1"})
    assert page.status in (400, 403, 409, 422)
    assert "Traceback" not in page.text
    assert fake.messages_of(ticket) == before
    assert not calls_to(fake, "POST", "/messages")


def test_cancel_resolves_through_toggle_status_and_never_patches(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Cancel me")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    fake.reset_calls()
    page = jane.submit(page, f"/tickets/{ticket}/cancel")
    assert page.status == 200
    assert fake.conversation(ticket)["status"] == "resolved"
    assert calls_to(fake, "POST", f"/conversations/{ticket}/toggle_status")
    assert not calls_to(fake, "PATCH")
    badge = dom(page).find(predicate=lambda n: any("badge" in c for c in n.classes))
    assert badge.text().strip() == "Closed"


def test_cancel_confirmation_is_a_details_element_holding_a_plain_form(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Confirm first")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    form = page.form(f"/tickets/{ticket}/cancel")
    assert form.method == "POST" and "csrf_token" in form.fields
    cancel_form = dom(page).find("form", predicate=lambda n: n.attrs.get("action", "").endswith("/cancel"))
    details = cancel_form.ancestor("details")
    assert details is not None, "the cancel form is not inside a <details> confirmation"
    assert details.find("summary") is not None
    assert cancel_form.find("button") is not None or cancel_form.find("input", predicate=lambda n: n.attrs.get("type") == "submit")
    assert fake.conversation(ticket)["status"] == "open"  # showing the step changed nothing


def test_cancel_of_an_already_resolved_ticket_does_not_toggle_it_back_open(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Cancel me")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    jane.submit(page, f"/tickets/{ticket}/cancel")
    page = jane.submit(page, f"/tickets/{ticket}/cancel")  # the same form again, e.g. a back button
    assert page.status == 200
    assert fake.conversation(ticket)["status"] == "resolved"


def _refusal(page):
    return page.status, main_part(page)


@pytest.mark.parametrize("action", ["view", "reply", "cancel"])
def test_another_contacts_ticket_answers_404_exactly_like_a_missing_one_and_changes_nothing(portal, fake, jane, action):
    bobs = fake.add_conversation(fake.bob, fake.api_inbox, "Bob's secret printer")
    fake.add_message(bobs, "Bob's own words")
    page = jane.get(portal.url("/dashboard"))
    token = csrf_of(page)
    before = (fake.conversation(bobs), fake.messages_of(bobs))

    def attempt(ticket_id):
        if action == "view":
            return jane.get(portal.url(f"/tickets/{ticket_id}"))
        fields = {"csrf_token": token, "message": "Hijack", "form_id": f"f-{action}-{ticket_id}"}
        return jane.post(portal.url(f"/tickets/{ticket_id}/{action}"), fields)

    fake.reset_calls()
    someone_elses = attempt(bobs)
    missing = attempt(MISSING_ID)
    assert someone_elses.status == 404
    assert _refusal(someone_elses) == _refusal(missing)
    assert "Bob" not in someone_elses.text
    assert (fake.conversation(bobs), fake.messages_of(bobs)) == before
    assert [c for c in fake.calls if c[0] != "GET"] == []


@pytest.mark.parametrize("method, path", [
    ("GET", "/tickets/abc"), ("GET", "/tickets/12abc"), ("GET", "/tickets/-1"),
    ("POST", "/tickets/abc/reply"), ("POST", "/tickets/abc/cancel"),
])
def test_non_numeric_ticket_ids_answer_404(portal, fake, jane, method, path):
    page = jane.get(portal.url("/dashboard"))
    fake.reset_calls()
    if method == "GET":
        page = jane.get(portal.url(path))
    else:
        page = jane.post(portal.url(path), {"csrf_token": csrf_of(page), "message": "x"})
    assert page.status == 404
    assert fake.calls == []


# ---------------------------------------------------------------------------
# Round trips to Chatwoot (issue point 11)
# ---------------------------------------------------------------------------

def test_a_sign_in_request_costs_one_chatwoot_call(portal, smtp, fake):
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    fake.reset_calls()
    page = browser.submit(page, "/auth/request", email=JANE)
    assert page.status == 200
    assert [(c[0], c[1].rsplit("/", 2)[-2:]) for c in fake.calls] == [("POST", ["contacts", "filter"])]


def test_the_dashboard_costs_two_chatwoot_calls_when_tickets_have_subjects(portal, fake, jane):
    for n in range(5):
        ticket = fake.add_conversation(fake.jane, fake.api_inbox if n % 2 else fake.email_inbox, f"Subject {n}")
        fake.add_message(ticket, f"Body {n}")
    fake.reset_calls()
    page = jane.get(portal.url("/dashboard"))
    assert len(dashboard_rows(page)) == 5
    # The page, and the count of the other status group, side by side.
    assert [c[1].rsplit("/", 2)[-2:] for c in fake.calls] == [["conversations", "filter"]] * 2


def test_creating_a_ticket_costs_one_chatwoot_call(portal, fake, jane):
    page = jane.get(portal.url("/tickets/new"))
    fake.reset_calls()
    answer = jane.submit(page, "/tickets", follow=False, subject="One call", message="Just one")
    assert answer.status == 303
    assert [(c[0], c[1].rsplit("/", 1)[-1]) for c in fake.calls] == [("POST", "conversations")]


def test_pages_after_sign_in_never_look_the_contact_up_again(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Lookups")
    fake.reset_calls()
    jane.get(portal.url("/dashboard"))
    jane.get(portal.url("/tickets/new"))
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    jane.submit(page, f"/tickets/{ticket}/reply", message="Hi")
    assert fake.calls, "the pages made no Chatwoot calls at all"
    assert not [c for c in fake.calls if "/contacts/filter" in c[1] or "/contacts/search" in c[1]]
    assert not [c for c in fake.calls if re.search(r"/contacts/\d+$", c[1])]


def _answer_differently(monkeypatch, path_part, answer):
    """Make the fake answer one kind of request its own way (an older or odder Chatwoot)."""
    original = fake_chatwoot.FakeChatwoot._answer

    def patched(self, method, target, headers, raw_body):
        if path_part in target:
            self.calls.append((method, target.split("?")[0], {}))
            return answer
        return original(self, method, target, headers, raw_body)

    monkeypatch.setattr(fake_chatwoot.FakeChatwoot, "_answer", patched)


def _many_tickets(fake, count):
    return [fake.add_conversation(fake.jane, fake.api_inbox, f"Ticket {n}") for n in range(count)]


def test_a_chatwoot_too_old_for_the_complete_list_still_shows_the_latest_twenty(portal, fake, jane, monkeypatch):
    _many_tickets(fake, 30)
    refusal = json.dumps({"error": "Invalid attribute key - [contact_id]."}).encode()
    _answer_differently(monkeypatch, "/conversations/filter", (422, "application/json", refusal, {}))
    page = jane.get(portal.url("/dashboard"))
    assert page.status == 200
    assert page.text.count('class="ticket-item"') == 20
    fake.reset_calls()
    jane.get(portal.url("/dashboard"))
    assert not [c for c in fake.calls if "filter" in c[1]]  # not asked again


def test_a_failing_complete_list_still_shows_the_latest_twenty(portal, fake, jane, monkeypatch):
    _many_tickets(fake, 30)
    failure = json.dumps({"status": 500, "error": "Internal Server Error"}).encode()
    _answer_differently(monkeypatch, "/conversations/filter", (500, "application/json", failure, {}))
    page = jane.get(portal.url("/dashboard"))
    assert page.status == 200
    assert page.text.count('class="ticket-item"') == 20


def test_a_filter_that_ignores_the_contact_shows_no_one_elses_ticket(portal, fake, jane, monkeypatch):
    _many_tickets(fake, 20)
    bobs = fake.add_conversation(fake.bob, fake.api_inbox, "Bob's secret")
    original = fake_chatwoot.FakeChatwoot._answer

    def everyone(self, method, target, headers, raw_body):
        if "/conversations/filter" in target:  # an old Chatwoot dropping the unknown key
            raw_body = json.dumps({"payload": [{"attribute_key": "status", "filter_operator": "equal_to",
                                                "values": ["open"], "query_operator": None}]}).encode()
        return original(self, method, target, headers, raw_body)

    monkeypatch.setattr(fake_chatwoot.FakeChatwoot, "_answer", everyone)
    page = jane.get(portal.url("/dashboard"))
    assert page.status == 200
    assert "Bob&#39;s secret" not in page.text and "Bob's secret" not in page.text
    assert f"#{bobs}<" not in page.text


def test_a_404_page_from_a_proxy_is_unavailable_not_a_missing_ticket(portal, fake, jane, monkeypatch):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Mine")
    _answer_differently(monkeypatch, f"/conversations/{ticket}",
                        (404, "text/html", b"<html><body>404 Not Found</body></html>", {}))
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert page.status == 503
    assert jane.get(portal.url("/dashboard")).status == 200  # and still signed in
