"""Failures end to end: Chatwoot down, slow, 4xx/5xx, garbage; SMTP refusing or down.

Each test breaks one service in one way during one customer action, checks the
page (status, friendly localized words, what was typed still in the form, nothing
secret), then repairs the service and shows that the same browser carries on.
The test settings use CHATWOOT_TIMEOUT=1, so "slow" costs about a second.
"""

import asyncio
import re
import urllib.parse

import pytest

import fake_chatwoot
from conftest import SECRET, sign_in

JANE = "jane@example.com"
UNAVAILABLE_EN = "support system"
UNAVAILABLE_ES = "sistema de soporte"


# ---------------------------------------------------------------------------
# Ways to break Chatwoot, and to repair it
# ---------------------------------------------------------------------------

def restart_on_the_same_port(fake, monkeypatch):
    """Bring a stopped fake back where the portal expects it (Chatwoot restarted)."""
    port = urllib.parse.urlsplit(fake.url).port
    original = fake_chatwoot._Server

    class SamePort(original):
        def __init__(self, address, handler):
            super().__init__((address[0], port), handler)

    monkeypatch.setattr(fake_chatwoot, "_Server", SamePort)
    fake.start()
    monkeypatch.setattr(fake_chatwoot, "_Server", original)
    assert urllib.parse.urlsplit(fake.url).port == port


class Outage:
    """One kind of Chatwoot trouble: `begin()` breaks it, `end()` repairs it."""

    def __init__(self, kind, fake, monkeypatch):
        self.kind, self.fake, self.monkeypatch = kind, fake, monkeypatch

    def begin(self):
        fake = self.fake
        if self.kind == "down":
            fake.stop()
        elif self.kind == "dropped":
            fake.set_fault("close")
        elif self.kind == "slow":
            fake.set_fault("hang", seconds=4)  # longer than CHATWOOT_TIMEOUT=1
        elif self.kind == "delayed":
            fake.delay = 3
        elif self.kind == "5xx":
            fake.set_fault("status", status=500)
        elif self.kind == "4xx":
            fake.set_fault("status", status=401, body={"error": "Invalid Access Token"})
        elif self.kind == "garbage":
            fake.set_fault("garbage")
        else:
            raise ValueError(self.kind)

    def end(self):
        if self.kind == "down":
            restart_on_the_same_port(self.fake, self.monkeypatch)
        self.fake.delay = 0
        self.fake.set_fault(None)

    def expected_status(self):
        # A refusal (4xx) may fairly be a 502 "bad gateway"; everything else is 503.
        return (502, 503) if self.kind == "4xx" else (503,)


OUTAGES = ["down", "slow", "5xx", "4xx", "garbage"]


@pytest.fixture
def outage_factory(fake, monkeypatch):
    return lambda kind: Outage(kind, fake, monkeypatch)


def assert_clean(page, browser, fake):
    """No traceback, API token, session secret or session cookie on any page."""
    assert "Traceback" not in page.text
    assert fake.token not in page.text
    assert SECRET not in page.text
    session_cookie = browser.cookies.get("portal_session")
    if session_cookie:
        assert session_cookie not in page.text


def assert_friendly(page, lang="en"):
    assert f'<html lang="{lang}"' in page.text
    words = UNAVAILABLE_EN if lang == "en" else UNAVAILABLE_ES
    assert words in page.text, page.text


def ticket_id_of(page):
    match = re.search(r"/portal/tickets/(\d+)(?:#.*)?$", page.url)
    assert match, f"not on a ticket page: {page.url} ({page.status}) {page.text[:500]}"
    return int(match.group(1))


def incoming_with(fake, ticket, text):
    return [m for m in fake.messages_of(ticket) if m["message_type"] == 0 and m["content"] == text]


@pytest.fixture
def jane(portal, smtp):
    browser, page = sign_in(portal, smtp, JANE)
    assert page.status == 200, page.text
    return browser


@pytest.fixture
def ticket(fake):
    ticket_id = fake.add_conversation(fake.jane, fake.api_inbox, "Printer on fire")
    fake.add_message(ticket_id, "It smokes.")
    return ticket_id


# ---------------------------------------------------------------------------
# Every Chatwoot failure, on every action that calls Chatwoot
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", OUTAGES)
def test_sign_in_request_during_a_chatwoot_failure_answers_503_keeps_the_email_then_recovers(
        portal, smtp, fake, outage_factory, kind):
    outage = outage_factory(kind)
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    outage.begin()
    page = browser.submit(page, "/auth/request", email="Jane@Example.com")
    assert page.status == 503
    assert_friendly(page)
    assert page.form("/auth/request").fields["email"] == "Jane@Example.com"
    assert smtp.messages == []
    assert_clean(page, browser, fake)
    outage.end()
    page = browser.submit(page, "/auth/request")  # the same form, the email still in it
    assert page.status == 200, page.text
    assert smtp.link_for(JANE)


@pytest.mark.parametrize("kind", OUTAGES)
def test_dashboard_during_a_chatwoot_failure_shows_a_friendly_page_then_recovers(
        portal, fake, jane, ticket, outage_factory, kind):
    outage = outage_factory(kind)
    outage.begin()
    page = jane.get(portal.url("/dashboard"))
    assert page.status in outage.expected_status()
    assert_friendly(page)
    assert_clean(page, jane, fake)
    outage.end()
    page = jane.get(portal.url("/dashboard"))
    assert page.status == 200
    assert "Printer on fire" in page.text


@pytest.mark.parametrize("kind", OUTAGES)
def test_ticket_page_during_a_chatwoot_failure_shows_a_friendly_page_then_recovers(
        portal, fake, jane, ticket, outage_factory, kind):
    outage = outage_factory(kind)
    outage.begin()
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert page.status in outage.expected_status()
    assert_friendly(page)
    assert "It smokes." not in page.text
    assert_clean(page, jane, fake)
    outage.end()
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert page.status == 200
    assert "It smokes." in page.text


@pytest.mark.parametrize("kind", OUTAGES + ["dropped"])
def test_create_during_a_chatwoot_failure_keeps_subject_and_message_in_the_form_then_recovers(
        portal, fake, jane, outage_factory, kind):
    outage = outage_factory(kind)
    page = jane.get(portal.url("/tickets/new"))
    outage.begin()
    page = jane.submit(page, "/tickets", subject="Printer still on fire", message="Smoke everywhere.\nHelp!")
    assert page.status in outage.expected_status()
    assert_friendly(page)
    form = page.form("/tickets")
    assert (form.fields["subject"], form.fields["message"]) == ("Printer still on fire", "Smoke everywhere.\nHelp!")
    assert_clean(page, jane, fake)
    outage.end()
    page = jane.submit(page, "/tickets")  # send the kept form again as it is
    ticket_id = ticket_id_of(page)
    assert fake.conversation(ticket_id)["additional_attributes"]["mail_subject"] == "Printer still on fire"
    assert incoming_with(fake, ticket_id, "Smoke everywhere.\nHelp!")
    dashboard = jane.get(portal.url("/dashboard"))
    assert dashboard.text.count("Printer still on fire") == 1


@pytest.mark.parametrize("kind", OUTAGES)
def test_reply_during_a_chatwoot_failure_keeps_the_text_in_a_form_that_can_be_resent(
        portal, fake, jane, ticket, outage_factory, kind):
    outage = outage_factory(kind)
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    outage.begin()
    page = jane.submit(page, f"/tickets/{ticket}/reply", message="Still smoking.\nShould I call 112?")
    assert page.status in outage.expected_status()
    assert_friendly(page)
    form = page.form(f"/tickets/{ticket}/reply")
    assert form.fields["message"] == "Still smoking.\nShould I call 112?"
    assert "csrf_token" in form.fields
    assert_clean(page, jane, fake)
    outage.end()
    page = jane.submit(page, f"/tickets/{ticket}/reply")  # "Try again" with the kept text
    assert page.status == 200, page.text
    assert ticket_id_of(page) == ticket
    assert len(incoming_with(fake, ticket, "Still smoking.\nShould I call 112?")) == 1


@pytest.mark.parametrize("kind", OUTAGES)
def test_cancel_during_a_chatwoot_failure_shows_a_friendly_page_and_can_be_repeated(
        portal, fake, jane, ticket, outage_factory, kind):
    outage = outage_factory(kind)
    ticket_page = jane.get(portal.url(f"/tickets/{ticket}"))
    outage.begin()
    page = jane.submit(ticket_page, f"/tickets/{ticket}/cancel")
    assert page.status in outage.expected_status()
    assert_friendly(page)
    assert_clean(page, jane, fake)
    outage.end()
    assert fake.conversation(ticket)["status"] == "open"
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    page = jane.submit(page, f"/tickets/{ticket}/cancel")
    assert page.status == 200
    assert fake.conversation(ticket)["status"] == "resolved"


def test_a_chatwoot_that_answers_after_the_timeout_gives_503_instead_of_a_hung_page(portal, fake, jane, ticket,
                                                                                      outage_factory):
    outage = outage_factory("delayed")  # fake.delay = 3 > CHATWOOT_TIMEOUT = 1
    outage.begin()
    page = jane.get(portal.url("/dashboard"))
    assert page.status == 503
    assert_friendly(page)
    outage.end()
    assert jane.get(portal.url("/dashboard")).status == 200


def test_a_ticket_created_right_after_chatwoot_restarts_succeeds_at_the_first_try(portal, fake, jane, outage_factory):
    page = jane.get(portal.url("/dashboard"))  # leaves a kept-alive connection to Chatwoot
    page = jane.get(portal.url("/tickets/new"))
    outage = outage_factory("down")
    outage.begin()
    outage.end()  # Chatwoot restarted while nobody was using the portal
    page = jane.submit(page, "/tickets", subject="After the restart", message="First thing after the restart")
    assert page.status == 200, page.text
    assert fake.conversation(ticket_id_of(page))["additional_attributes"]["mail_subject"] == "After the restart"


# ---------------------------------------------------------------------------
# Localized failure pages
# ---------------------------------------------------------------------------

def test_dashboard_failure_page_is_in_spanish_when_spanish_is_chosen(portal, fake, jane):
    page = jane.get(portal.url("/dashboard"))
    jane.submit(page, "/lang", lang="es")
    fake.set_fault("status", status=500)
    page = jane.get(portal.url("/dashboard"))
    assert page.status == 503
    assert_friendly(page, "es")
    assert UNAVAILABLE_EN not in page.text


def test_create_failure_in_spanish_keeps_the_form_and_explains_in_spanish(portal, fake, jane):
    page = jane.get(portal.url("/tickets/new"))
    page = jane.submit(page, "/lang", lang="es")
    fake.set_fault("close")
    page = jane.submit(page, "/tickets", subject="La impresora arde", message="Humo por todas partes")
    assert page.status == 503
    assert_friendly(page, "es")
    form = page.form("/tickets")
    assert (form.fields["subject"], form.fields["message"]) == ("La impresora arde", "Humo por todas partes")


def test_sign_in_failure_page_is_in_spanish_when_spanish_is_chosen(portal, fake):
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    page = browser.submit(page, "/lang", lang="es")
    fake.set_fault("garbage")
    page = browser.submit(page, "/auth/request", email=JANE)
    assert page.status == 503
    assert_friendly(page, "es")
    assert page.form("/auth/request").fields["email"] == JANE


# ---------------------------------------------------------------------------
# SMTP failures
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("lang, words", [("en", "could not send the e-mail"), ("es", "No hemos podido enviar el correo")])
def test_sign_in_when_smtp_refuses_answers_503_in_the_chosen_language_with_the_email_kept(
        portal, smtp, fake, lang, words):
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    if lang != "en":
        page = browser.submit(page, "/lang", lang=lang)
    smtp.fail_with = "451 4.3.0 try later"
    page = browser.submit(page, "/auth/request", email=JANE)
    assert page.status == 503
    assert f'<html lang="{lang}"' in page.text
    assert words in page.text
    assert page.form("/auth/request").fields["email"] == JANE
    assert_clean(page, browser, fake)
    smtp.fail_with = None
    page = browser.submit(page, "/auth/request")
    assert page.status == 200
    assert smtp.link_for(JANE)


@pytest.fixture
def smtp_outage(smtp):
    """Stops the SMTP server; the test calls restart(); teardown restarts it if needed."""
    controller = smtp.controller
    state = {"down": False}

    def stop():
        controller.stop()
        state["down"] = True

    def restart():
        controller.loop = asyncio.new_event_loop()  # a stopped controller closed its loop
        controller.start()
        state["down"] = False

    yield stop, restart
    if state["down"]:
        restart()


def test_sign_in_when_the_smtp_server_is_down_answers_503_then_recovers(portal, smtp, fake, smtp_outage):
    stop, restart = smtp_outage
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    stop()
    page = browser.submit(page, "/auth/request", email=JANE)
    assert page.status == 503
    assert "could not send the e-mail" in page.text
    assert page.form("/auth/request").fields["email"] == JANE
    assert_clean(page, browser, fake)
    restart()
    page = browser.submit(page, "/auth/request")
    assert page.status == 200
    link = smtp.link_for(JANE)
    page = browser.get(link.replace("http://portal.test", ""))
    page = browser.submit(page, "/auth/verify")
    assert page.status == 200 and page.url.endswith("/portal/dashboard")


# ---------------------------------------------------------------------------
# The session ends while the customer is typing
# ---------------------------------------------------------------------------

def test_session_expired_while_typing_a_reply_shows_the_text_to_copy_and_a_sign_in_form(
        portal, smtp, fake, clock, jane, ticket):
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    clock.advance(31 * 60)
    page = jane.submit(page, f"/tickets/{ticket}/reply", message="A long reply\nI typed for half an hour")
    assert "A long reply\nI typed for half an hour" in [
        node for node in re.findall(r"<textarea[^>]*>\n?(.*?)</textarea>", page.text, re.S)]
    signin = page.form("/auth/request")
    assert "email" in signin.fields
    assert incoming_with(fake, ticket, "A long reply\nI typed for half an hour") == []
    assert_clean(page, jane, fake)
    # Signing in again from that very page leads back to the ticket.
    page = jane.submit(page, "/auth/request", email=JANE)
    page = jane.get(smtp.link_for(JANE).replace("http://portal.test", ""))
    page = jane.submit(page, "/auth/verify")
    assert page.status == 200
    assert ticket_id_of(page) == ticket


def test_session_expired_while_writing_a_new_ticket_shows_subject_and_message_to_copy(
        portal, smtp, fake, clock, jane):
    page = jane.get(portal.url("/tickets/new"))
    clock.advance(31 * 60)
    fake.reset_calls()
    page = jane.submit(page, "/tickets", subject="Typed subject line", message="Typed body\nof the ticket")
    assert "Typed body\nof the ticket" in page.text
    assert "Typed subject line" in page.text
    assert page.form("/auth/request")
    assert [c for c in fake.calls if c[0] == "POST"] == []
    assert_clean(page, jane, fake)


# ---------------------------------------------------------------------------
# A write whose answer was lost: Chatwoot did it, the portal never heard back
# ---------------------------------------------------------------------------

def lose_the_answer_once(fake, monkeypatch, method, path_end):
    """Chatwoot carries out the request, then the connection drops before the answer."""
    original = fake_chatwoot.FakeChatwoot._answer
    lost = []

    def answer(self, request_method, target, headers, raw_body):
        result = original(self, request_method, target, headers, raw_body)
        if not lost and request_method == method and target.split("?")[0].endswith(path_end):
            lost.append(target)
            return None  # the fake hangs up without a word
        return result

    monkeypatch.setattr(fake_chatwoot.FakeChatwoot, "_answer", answer)
    return lost


def test_sending_a_new_ticket_again_after_a_lost_answer_does_not_create_a_second(portal, smtp, fake, monkeypatch):
    browser, _ = sign_in(portal, smtp, JANE)
    lost = lose_the_answer_once(fake, monkeypatch, "POST", "/conversations")
    page = browser.submit(browser.get(portal.url("/tickets/new")), "/tickets", subject="Once only", message="Hello")
    assert page.status == 503 and lost
    page = browser.submit(page, "/tickets")  # the same form, sent again
    assert page.status == 200 and "Once only" in page.text
    mine = [c for c in range(1, 50) if _exists(fake, c) and fake.conversation(c)["contact_id"] == fake.jane]
    assert len(mine) == 1


def test_sending_a_reply_again_after_a_lost_answer_does_not_post_it_twice(portal, smtp, fake, monkeypatch):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer")
    browser, _ = sign_in(portal, smtp, JANE)
    page = browser.get(portal.url(f"/tickets/{ticket}"))
    lost = lose_the_answer_once(fake, monkeypatch, "POST", f"/conversations/{ticket}/messages")
    page = browser.submit(page, f"/tickets/{ticket}/reply", message="Only once, please")
    assert page.status == 503 and lost
    page = browser.submit(page, f"/tickets/{ticket}/reply")  # the retry form keeps the text
    assert page.status == 200
    assert [m["content"] for m in fake.messages_of(ticket)].count("Only once, please") == 1


def test_a_reply_whose_first_try_never_arrived_is_sent_on_the_retry(portal, smtp, fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer")
    browser, _ = sign_in(portal, smtp, JANE)
    page = browser.get(portal.url(f"/tickets/{ticket}"))
    fake.set_fault("status", status=503, count=2)  # the ownership read fails: nothing was sent
    page = browser.submit(page, f"/tickets/{ticket}/reply", message="Second time lucky")
    assert page.status == 503
    fake.set_fault(None)
    page = browser.submit(page, f"/tickets/{ticket}/reply")
    assert page.status == 200
    assert [m["content"] for m in fake.messages_of(ticket)].count("Second time lucky") == 1


def _exists(fake, display_id):
    try:
        fake.conversation(display_id)
        return True
    except (KeyError, LookupError):
        return False
