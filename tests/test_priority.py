"""Ticket priority end to end: chosen on the new-ticket form, set in Chatwoot, shown as a badge.

`POST conversations` ignores `priority` (contract §0 gotcha 3, §5.1), so a chosen
priority costs a second call, `POST conversations/{id}/toggle_priority` (§8.3); "none"
costs nothing. The tests drive the portal through its socket with the test browser
and check both the pages and the fake Chatwoot's record of what it was asked.

The test browser does not read <select> elements, so a test sends `priority` itself,
as a person's browser sends the option shown as chosen (`chosen_priority`).
"""

import logging
import threading

import pytest

import chatwoot_client
import fake_chatwoot
from conftest import sign_in
from test_tickets import calls_to, choose_language, dashboard_rows, dom, ticket_id_of

JANE = "jane@example.com"
PRIORITIES = ("low", "medium", "high", "urgent")

# What a customer reads, spelled out rather than looked up in i18n.py.
BADGES = {
    "en": {"low": "Low priority", "medium": "Medium priority", "high": "High priority", "urgent": "Urgent priority"},
    "es": {"low": "Prioridad baja", "medium": "Prioridad media", "high": "Prioridad alta", "urgent": "Prioridad urgente"},
}
NONE = {"en": "No priority", "es": "Sin prioridad"}
# The form's choices read like the badges they become.
OPTIONS = {lang: [("none", NONE[lang])] + [(p, BADGES[lang][p]) for p in PRIORITIES] for lang in BADGES}
FIELD_LABEL = {"en": "Priority", "es": "Prioridad"}
INVALID = {"en": "Please choose one of the listed priorities.", "es": "Elige una de las prioridades de la lista."}
NOT_SET = {
    "en": "Your ticket was created, but we could not set its priority. We will still answer here soon.",
    "es": "Tu ticket se ha creado, pero no hemos podido fijar su prioridad. Aun así, te responderemos aquí pronto.",
}
CREATED = "Your ticket was created. We will answer here soon."


@pytest.fixture
def jane(portal, smtp):
    """A browser signed in as Jane, on her dashboard."""
    browser, page = sign_in(portal, smtp, JANE)
    assert page.status == 200, page.text
    return browser


def priority_select(page):
    select = dom(page).find("select", predicate=lambda n: n.attrs.get("name") == "priority")
    assert select is not None, f"no priority select on {page.url}"
    return select


def chosen_priority(page):
    """The option a browser would send: the one marked selected, else the first."""
    options = priority_select(page).find_all("option")
    selected = [o.attrs["value"] for o in options if "selected" in o.attrs]
    assert len(selected) <= 1, selected
    return selected[0] if selected else options[0].attrs["value"]


def priority_badges(page):
    """The text of every priority badge in <main>."""
    main = dom(page).find("main")
    return [" ".join(n.text().split()) for n in main.find_all(cls="badge-priority")]


def notice(page):
    found = dom(page).find(predicate=lambda n: n.attrs.get("role") == "status")
    return found.text().strip() if found else None


def toggle_priority_calls(fake):
    return calls_to(fake, "POST", "/toggle_priority")


def create(browser, portal, priority=None, subject="Printer on fire", message="It smokes.", **kwargs):
    form_page = browser.get(portal.url("/tickets/new"))
    fields = {} if priority is None else {"priority": priority}
    return browser.submit(form_page, "/tickets", subject=subject, message=message, **fields, **kwargs)


def fail_the_call_after_the_create(fake, monkeypatch, **fault):
    """The create succeeds; then the fake misbehaves once, on the very next call."""
    answer = fake_chatwoot.FakeChatwoot._answer

    def create_then_fault(self, method, target, headers, raw_body):
        result = answer(self, method, target, headers, raw_body)
        if method == "POST" and target.split("?")[0].endswith("/conversations"):
            self.set_fault(count=1, **fault)
        return result

    monkeypatch.setattr(fake_chatwoot.FakeChatwoot, "_answer", create_then_fault)


# ---------------------------------------------------------------------------
# The form
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "es"])
def test_the_new_ticket_form_offers_every_priority_in_a_labelled_select_with_none_chosen(portal, jane, lang):
    page = jane.get(portal.url("/tickets/new"))
    page = choose_language(jane, page, lang)
    select = priority_select(page)
    labels = dom(page).find_all("label", predicate=lambda n: n.attrs.get("for") == select.attrs.get("id"))
    assert select.attrs.get("id") and [label.text().strip() for label in labels] == [FIELD_LABEL[lang]]
    assert [(o.attrs["value"], o.text().strip()) for o in select.find_all("option")] == OPTIONS[lang]
    assert chosen_priority(page) == "none"
    assert select.ancestor("form").attrs["action"].endswith("/tickets")


@pytest.mark.parametrize("priority", PRIORITIES)
def test_creating_a_ticket_with_a_priority_sets_it_in_chatwoot_after_the_create(portal, fake, jane, priority):
    fake.reset_calls()
    page = create(jane, portal, priority)
    assert page.status == 200, page.text
    ticket_id = ticket_id_of(page)
    assert fake.conversation(ticket_id)["priority"] == priority
    assert [c[1] for c in calls_to(fake, "POST")] == [
        "/api/v1/accounts/1/conversations", f"/api/v1/accounts/1/conversations/{ticket_id}/toggle_priority"]
    assert notice(page) == CREATED
    assert priority_badges(page) == [BADGES["en"][priority]]


@pytest.mark.parametrize("sent", [{"priority": "none"}, {"priority": ""}, {}], ids=["none", "blank", "absent"])
def test_creating_a_ticket_without_a_priority_leaves_it_null_and_never_calls_toggle_priority(portal, fake, jane, sent):
    form_page = jane.get(portal.url("/tickets/new"))
    fake.reset_calls()
    page = jane.submit(form_page, "/tickets", subject="No hurry", message="Whenever you can.", **sent)
    assert page.status == 200, page.text
    assert fake.conversation(ticket_id_of(page))["priority"] is None
    assert toggle_priority_calls(fake) == []
    assert [c[0] for c in fake.calls if c[0] != "GET"] == ["POST"]  # the create, and no PATCH either
    assert priority_badges(page) == []


@pytest.mark.parametrize("untrusted", ["critical", "High", "none ", "null", "0", "2", "low,high"])
def test_an_unknown_priority_is_refused_with_400_keeps_the_text_and_creates_nothing(portal, fake, jane, untrusted):
    form_page = jane.get(portal.url("/tickets/new"))
    fake.reset_calls()
    page = jane.submit(form_page, "/tickets", subject="Kept subject", message="Kept\nmessage", priority=untrusted)
    assert page.status == 400
    assert INVALID["en"] in page.text
    form = page.form("/tickets")
    assert (form.fields["subject"], form.fields["message"]) == ("Kept subject", "Kept\nmessage")
    assert priority_select(page).attrs.get("aria-invalid") == "true"
    assert chosen_priority(page) == "none"
    assert fake.calls == []


def test_an_unknown_priority_is_refused_in_spanish_when_spanish_is_chosen(portal, fake, jane):
    page = choose_language(jane, jane.get(portal.url("/tickets/new")), "es")
    fake.reset_calls()
    page = jane.submit(page, "/tickets", subject="Asunto", message="Mensaje", priority="crítica")
    assert page.status == 400
    assert INVALID["es"] in page.text and INVALID["en"] not in page.text
    assert page.form("/tickets").fields["message"] == "Mensaje"
    assert fake.calls == []


def test_a_form_refused_for_its_text_keeps_the_chosen_priority(portal, fake, jane):
    page = create(jane, portal, "urgent", subject="")
    assert page.status == 400
    assert chosen_priority(page) == "urgent"
    page = jane.submit(page, "/tickets", subject="Now with a subject", priority=chosen_priority(page))
    assert page.status == 200, page.text
    assert fake.conversation(ticket_id_of(page))["priority"] == "urgent"


def test_a_form_shown_again_while_chatwoot_is_down_keeps_the_chosen_priority(portal, fake, jane):
    fake.set_fault("status", 503, count=1)
    page = create(jane, portal, "high")
    assert page.status == 503
    assert chosen_priority(page) == "high"
    page = jane.submit(page, "/tickets", priority=chosen_priority(page))  # the same form, sent again
    assert page.status == 200, page.text
    assert fake.conversation(ticket_id_of(page))["priority"] == "high"
    assert len(toggle_priority_calls(fake)) == 1


def test_a_ticket_whose_create_answer_was_lost_gets_its_priority_when_the_form_is_sent_again(portal, fake, jane, monkeypatch):
    answer = fake_chatwoot.FakeChatwoot._answer
    lost = []

    def lose_the_create_answer(self, method, target, headers, raw_body):
        result = answer(self, method, target, headers, raw_body)
        if not lost and method == "POST" and target.split("?")[0].endswith("/conversations"):
            lost.append(target)
            return None  # Chatwoot created it; the answer never arrives
        return result

    monkeypatch.setattr(fake_chatwoot.FakeChatwoot, "_answer", lose_the_create_answer)
    page = create(jane, portal, "medium", subject="Lost answer")
    assert page.status == 503 and lost
    assert toggle_priority_calls(fake) == []
    page = jane.submit(page, "/tickets", priority=chosen_priority(page))
    assert page.status == 200, page.text
    ticket_id = ticket_id_of(page)
    # The one create is the lost one: the second send found its ticket instead of making another.
    assert len([c for c in calls_to(fake, "POST") if c[1].endswith("/conversations")]) == 1
    assert fake.conversation(ticket_id)["priority"] == "medium"
    assert len(toggle_priority_calls(fake)) == 1


# ---------------------------------------------------------------------------
# A failing priority call never loses the ticket
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 422, "body": {"message": "Priority is invalid", "attributes": ["priority"]}},
    {"kind": "garbage"},
], ids=["500", "422", "garbage"])
def test_a_failing_priority_call_keeps_the_ticket_and_lands_on_it_with_a_notice(
        portal, fake, jane, monkeypatch, caplog, fault):
    fail_the_call_after_the_create(fake, monkeypatch, **fault)
    fake.reset_calls()
    with caplog.at_level(logging.WARNING, logger="portal"):
        page = create(jane, portal, "urgent", subject="Still here")
    assert page.status == 200, page.text
    ticket_id = ticket_id_of(page)
    assert "<h1>Still here</h1>" in page.text
    assert notice(page) == NOT_SET["en"]
    assert priority_badges(page) == []
    conversation = fake.conversation(ticket_id)
    assert (conversation["contact_id"], conversation["priority"]) == (fake.jane, None)
    assert len(toggle_priority_calls(fake)) == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "portal" and r.levelno == logging.WARNING]
    assert any(f"ticket={ticket_id}" in w and "priority" in w for w in warnings), warnings


def test_the_priority_notice_is_in_spanish_when_spanish_is_chosen(portal, fake, jane, monkeypatch):
    choose_language(jane, jane.get(portal.url("/tickets/new")), "es")
    fail_the_call_after_the_create(fake, monkeypatch, kind="status", status=500)
    page = create(jane, portal, "low", subject="Sigue aquí")
    assert page.status == 200, page.text
    assert notice(page) == NOT_SET["es"]
    assert fake.conversation(ticket_id_of(page))["priority"] is None


def test_sending_the_form_again_after_a_failed_priority_call_makes_no_second_ticket_or_call(
        portal, fake, jane, monkeypatch):
    form_page = jane.get(portal.url("/tickets/new"))
    fail_the_call_after_the_create(fake, monkeypatch, kind="status", status=500)
    first = jane.submit(form_page, "/tickets", subject="Once", message="Only once", priority="high")
    monkeypatch.undo()  # Chatwoot works again
    fake.reset_calls()
    second = jane.submit(form_page, "/tickets", subject="Once", message="Only once", priority="high")
    assert ticket_id_of(first) == ticket_id_of(second)
    assert calls_to(fake, "POST") == []


# ---------------------------------------------------------------------------
# Double submission
# ---------------------------------------------------------------------------

def test_a_double_submitted_form_with_a_priority_creates_one_ticket_and_sets_the_priority_once(portal, fake, jane):
    form_page = jane.get(portal.url("/tickets/new"))
    fake.reset_calls()
    first = jane.submit(form_page, "/tickets", subject="Double click", message="Clicked twice", priority="high")
    second = jane.submit(form_page, "/tickets", subject="Double click", message="Clicked twice", priority="high")
    assert first.status == second.status == 200
    assert ticket_id_of(first) == ticket_id_of(second)
    assert [c[1].rsplit("/", 1)[-1] for c in calls_to(fake, "POST")] == ["conversations", "toggle_priority"]
    assert fake.conversation(ticket_id_of(first))["priority"] == "high"


def test_two_concurrent_submissions_of_a_form_with_a_priority_create_one_ticket_and_set_it_once(portal, fake, jane):
    form_page = jane.get(portal.url("/tickets/new"))
    fake.reset_calls()
    fake.delay = 0.3  # keeps the first create and its priority call in flight while the second arrives
    twins = [portal.browser(), portal.browser()]
    for twin in twins:
        twin.cookies = dict(jane.cookies)
    results = [None, None]

    def submit(index):
        results[index] = twins[index].submit(form_page, "/tickets", subject="Race", message="Same form twice",
                                             priority="urgent")

    threads = [threading.Thread(target=submit, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    fake.delay = 0
    assert [r.status for r in results] == [200, 200], [r.text for r in results]
    assert ticket_id_of(results[0]) == ticket_id_of(results[1])
    assert [c[1].rsplit("/", 1)[-1] for c in calls_to(fake, "POST")] == ["conversations", "toggle_priority"]
    assert fake.conversation(ticket_id_of(results[0]))["priority"] == "urgent"


# ---------------------------------------------------------------------------
# Badges
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "es"])
def test_the_dashboard_and_the_ticket_page_show_a_localized_priority_badge_when_one_is_set(portal, smtp, fake, lang):
    ids = {priority: fake.add_conversation(fake.jane, fake.api_inbox, f"A {priority} ticket", priority=priority)
           for priority in PRIORITIES}
    plain = fake.add_conversation(fake.jane, fake.api_inbox, "No priority here")
    browser, page = sign_in(portal, smtp, JANE)
    page = choose_language(browser, page, lang)
    assert f'<html lang="{lang}"' in page.text
    rows = {row["id"]: row for row in dashboard_rows(page)}
    items = {ticket_id: dom(page).find("a", predicate=lambda n, i=ticket_id: (n.attrs.get("href") or "").split("#")[0].endswith(f"/tickets/{i}"))
             for ticket_id in rows}
    shown = {ticket_id: [" ".join(b.text().split()) for b in link.find_all(cls="badge-priority")]
             for ticket_id, link in items.items()}
    assert shown == {**{ids[p]: [BADGES[lang][p]] for p in PRIORITIES}, plain: []}
    status = {"en": "We're on it", "es": "Estamos en ello"}[lang]  # an open ticket, in the customer's words
    assert all(row["badge"] == status for row in rows.values())  # the status badge still comes first
    for priority, ticket_id in ids.items():
        page = browser.get(portal.url(f"/tickets/{ticket_id}"))
        head = dom(page).find(cls="page-head")
        assert [" ".join(b.text().split()) for b in head.find_all(cls="badge")] == [status, BADGES[lang][priority]]
    page = browser.get(portal.url(f"/tickets/{plain}"))
    assert priority_badges(page) == []


@pytest.mark.parametrize("raw, expected", [
    (None, ""), ("low", "low"), ("medium", "medium"), ("high", "high"), ("urgent", "urgent"),
    ("none", ""), ("", ""), ("URGENT", ""), ("critical", ""), (2, ""), (["high"], ""), ({"high": 1}, ""),
])
def test_chatwoots_priority_reaches_the_ticket_record_and_anything_unknown_counts_as_none(raw, expected):
    conversation = {"id": 7, "meta": {"sender": {"id": 3}}, "status": "open", "priority": raw}
    assert chatwoot_client._ticket(conversation).priority == expected


def test_a_conversation_without_a_priority_field_has_none():
    assert chatwoot_client._ticket({"id": 7, "meta": {"sender": {"id": 3}}}).priority == ""
