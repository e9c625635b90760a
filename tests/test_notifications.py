"""Mail when support answers: Chatwoot's signed webhooks, the durable queue, the mail.

Real sockets throughout: the fake Chatwoot posts real signed webhooks to the portal
on waitress, and the mail arrives at a real aiosmtpd server.
"""

import hashlib
import hmac
import http.client
import json
import re
import time

import pytest

from conftest import BASE, portal_settings, sign_in, start_portal
from conftest import both_backends  # noqa: F401  (every test here runs on memory and on Redis)

WEBHOOK_SECRET = "whsec-0123456789abcdefghij"


def start_notifying(fake, smtp, clock, **overrides):
    settings = portal_settings(fake, smtp, WEBHOOK_SECRET=WEBHOOK_SECRET, NOTIFY_DELAY_SECONDS="0")
    settings.update(overrides)
    running = start_portal(settings, clock)
    running.app.notifier.retry_base = 0.2  # tries again in a fifth of a second, not 30 s
    running.webhook_url = f"http://127.0.0.1:{running.port}{BASE}/webhooks/chatwoot"
    running.settings = settings
    return running


@pytest.fixture
def notifying(fake, smtp, clock, printer):
    # After `printer`: its first (customer) message makes no delivery to count.
    running = start_notifying(fake, smtp, clock)
    fake.add_webhook(running.webhook_url, secret=WEBHOOK_SECRET)
    yield running
    running.close()


@pytest.fixture
def quiet(fake, smtp, clock):
    """A notifying portal that Chatwoot's webhook does not reach: the test posts itself."""
    running = start_notifying(fake, smtp, clock)
    yield running
    running.close()


@pytest.fixture
def printer(fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, subject="Printer on fire")
    fake.add_message(ticket, "My printer is on fire.")
    return ticket


def states(running):
    return running.app.state.states()


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def settled(running):
    """Nothing queued any more: every accepted reply was mailed, skipped or dropped."""
    wait_until(lambda: running.app.notifier.health()["queued"] == 0, what="an empty queue")
    return states(running)


def post_webhook(running, body, headers=None, query=""):
    """POST raw bytes to the webhook as Chatwoot would; (status, parsed JSON)."""
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    try:
        connection.request("POST", f"{BASE}/webhooks/chatwoot{query}", body=body,
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw.startswith(b"{") else raw)
    finally:
        connection.close()


def signed_headers(body, secret=WEBHOOK_SECRET, timestamp=None):
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Chatwoot-Timestamp": timestamp, "X-Chatwoot-Signature": f"sha256={signature}",
            "X-Chatwoot-Delivery": "3b1f6c9e-0000-4000-8000-000000000000"}


def agent_payload(fake, ticket, message_id, **changes):
    """A message_created payload for an agent reply, as Chatwoot's account webhook sends it."""
    payload = {
        "event": "message_created", "id": message_id, "message_type": "outgoing", "private": False,
        "content": "Hi, we replaced the toner.", "content_type": "text",
        "account": {"id": fake.account_id, "name": "Acme"}, "inbox": {"id": fake.api_inbox, "name": "Portal"},
        "sender": {"id": fake.default_agent_id, "name": "Sam Agent", "email": "sam@acme.test", "type": "user"},
        "conversation": {"id": ticket, "inbox_id": fake.api_inbox,
                         "meta": {"sender": {"id": fake.jane, "email": "jane@example.com", "type": "contact"}}},
    }
    payload.update(changes)
    return json.dumps(payload).encode()


def mail_text(message):
    return message.get_body(("plain",)).get_content()


def mail_html(message):
    return message.get_body(("html",)).get_content()


# ---------------------------------------------------------------------------
# Authentic deliveries
# ---------------------------------------------------------------------------

def test_a_signed_agent_reply_mails_the_contact_with_a_link_to_the_ticket(fake, smtp, notifying, printer):
    fake.add_message(printer, "Hi Jane, we replaced the **toner**.", "outgoing")
    [mail] = smtp.wait_for(1)
    assert mail["To"] == "jane@example.com"
    assert "Printer on fire" in mail["Subject"] and f"#{printer}" in mail["Subject"]
    text = mail_text(mail)
    assert "> Hi Jane, we replaced the **toner**." in text  # plain text keeps the source
    assert f"http://portal.test{BASE}/tickets/{printer}" in text
    assert "token" not in text.lower()  # no sign-in token in a reply mail
    html = mail_html(mail)
    assert "<strong>toner</strong>" in html  # Markdown rendered in the HTML part
    assert fake.webhook_deliveries[-1]["status"] == 200
    assert settled(notifying) == {"sent": 1}


def test_a_reply_mail_threads_per_ticket_and_marks_itself_automatic(fake, smtp, notifying, printer):
    fake.add_message(printer, "First answer.", "outgoing")
    smtp.wait_for(1)
    fake.add_message(printer, "Second answer.", "outgoing")
    first, second = smtp.wait_for(2)
    for mail in (first, second):
        assert mail["Auto-Submitted"] == "auto-generated"
        assert mail["In-Reply-To"] == mail["References"] == f"<ticket-{printer}.account-{fake.account_id}@portal.test>"
    assert first["Message-ID"] and first["Message-ID"] != second["Message-ID"]
    assert first["Subject"] == second["Subject"]


def test_a_url_secret_is_accepted_when_chatwoot_does_not_sign(fake, smtp, clock, printer):
    running = start_notifying(fake, smtp, clock)
    try:
        fake.add_webhook(running.webhook_url + f"?secret={WEBHOOK_SECRET}", signed=False)
        fake.add_message(printer, "Answer from an old Chatwoot.", "outgoing")
        [mail] = smtp.wait_for(1)
        assert "Answer from an old Chatwoot." in mail_text(mail)
        assert "X-Chatwoot-Signature" not in json.dumps(fake.webhook_deliveries)
    finally:
        running.close()


# ---------------------------------------------------------------------------
# Refused deliveries: 401 and nothing queued
# ---------------------------------------------------------------------------

def test_a_wrong_signature_is_refused_and_mails_nothing(fake, smtp, clock, printer):
    running = start_notifying(fake, smtp, clock)
    try:
        fake.add_webhook(running.webhook_url, secret="another-secret-of-24-chars")
        fake.add_message(printer, "Hello", "outgoing")
        fake.wait_for_deliveries(1)
        assert fake.webhook_deliveries[0]["status"] == 401
        assert states(running) == {} and smtp.messages == []
    finally:
        running.close()


def test_a_stale_or_future_timestamp_is_refused(fake, quiet, printer):
    message = fake.add_message(printer, "Hello", "outgoing")
    body = agent_payload(fake, printer, message)
    for skew in (-301, 301):
        status, _ = post_webhook(quiet, body, signed_headers(body, timestamp=int(time.time()) + skew))
        assert status == 401
    assert states(quiet) == {}


def test_a_signature_over_another_body_or_a_wrong_url_secret_is_refused(fake, quiet, printer):
    message = fake.add_message(printer, "Hello", "outgoing")
    body = agent_payload(fake, printer, message)
    headers = signed_headers(body)
    assert post_webhook(quiet, body.replace(b"toner", b"tonar"), headers)[0] == 401
    assert post_webhook(quiet, body, query="?secret=not-the-secret")[0] == 401
    assert post_webhook(quiet, body)[0] == 401  # neither
    assert post_webhook(quiet, body, {**headers, "X-Chatwoot-Signature": "sha256="})[0] == 401
    assert states(quiet) == {}


def test_a_refused_webhook_logs_one_line_without_the_secret(fake, quiet, printer, caplog):
    body = agent_payload(fake, printer, 1)
    with caplog.at_level("INFO"):
        post_webhook(quiet, body, query="?secret=guess-" + WEBHOOK_SECRET[:8])
    refused = [r.getMessage() for r in caplog.records if "webhook refused" in r.getMessage()]
    assert len(refused) == 1
    assert WEBHOOK_SECRET not in caplog.text and "guess-" not in caplog.text


def test_the_webhook_is_a_404_when_no_secret_is_set(fake, portal, printer):
    body = agent_payload(fake, printer, 1)
    status, _ = post_webhook(portal, body, signed_headers(body))
    assert status == 404


def test_a_body_over_one_mebibyte_is_refused_unread(fake, quiet, printer):
    body = b'{"event": "message_created", "content": "' + b"x" * (1024 * 1024) + b'"}'
    status, _ = post_webhook(quiet, body, signed_headers(body))
    assert status == 413


def test_an_authentic_body_that_is_not_json_is_a_400(quiet):
    for body in (b"<html>", b"[1, 2]", b"[" * 100_000):
        status, _ = post_webhook(quiet, body, signed_headers(body))
        assert status == 400


def test_the_webhook_needs_no_csrf_token_or_session(fake, quiet, printer):
    message = fake.add_message(printer, "Hello", "outgoing")
    body = agent_payload(fake, printer, message)
    # No cookie, no form token: the signature is the authentication.
    status, answer = post_webhook(quiet, body, signed_headers(body))
    assert status == 200 and answer == {"queued": True}


# ---------------------------------------------------------------------------
# The payload is a hint: Chatwoot's own records decide
# ---------------------------------------------------------------------------

def test_a_payload_naming_another_address_still_mails_only_chatwoots_contact(fake, smtp, quiet, printer):
    message = fake.add_message(printer, "The real answer.", "outgoing")
    forged = json.loads(agent_payload(fake, printer, message))
    forged["conversation"]["meta"]["sender"]["email"] = "attacker@example.org"
    forged["conversation"]["contact_inbox"] = {"contact_id": fake.bob}
    body = json.dumps(forged).encode()
    assert post_webhook(quiet, body, signed_headers(body))[0] == 200
    [mail] = smtp.wait_for(1)
    assert mail["To"] == "jane@example.com" and "The real answer." in mail_text(mail)
    assert settled(quiet) == {"sent": 1}


def test_a_payload_whose_message_is_not_an_agent_reply_in_chatwoot_mails_nothing(fake, smtp, quiet, printer):
    customer_message = fake.add_message(printer, "A customer's own words.", "incoming")
    note = fake.add_message(printer, "Internal: customer is upset.", "outgoing", private=True)
    # Forged as agent replies, signed with the right secret (a leaked secret).
    for message_id in (customer_message, note, 999_999):
        body = agent_payload(fake, printer, message_id)
        assert post_webhook(quiet, body, signed_headers(body))[0] == 200
    assert settled(quiet) == {"skipped": 3}
    assert smtp.messages == []


def test_a_payload_pointing_at_another_customers_ticket_mails_that_tickets_owner(fake, smtp, quiet):
    bobs = fake.add_conversation(fake.bob, fake.api_inbox, subject="Bob's ticket")
    reply = fake.add_message(bobs, "Answer for Bob.", "outgoing")
    forged = json.loads(agent_payload(fake, bobs, reply))
    forged["conversation"]["meta"]["sender"] = {"id": fake.jane, "email": "jane@example.com"}
    body = json.dumps(forged).encode()
    post_webhook(quiet, body, signed_headers(body))
    [mail] = smtp.wait_for(1)
    assert mail["To"] == "bob@example.com"
    assert settled(quiet) == {"sent": 1}


def test_the_same_message_delivered_twice_sends_one_mail(fake, smtp, notifying, printer):
    message = fake.add_message(printer, "Only once, please.", "outgoing")
    fake.wait_for_deliveries(1)
    fake.redeliver(message)
    fake.wait_for_deliveries(2)
    first, second = fake.webhook_deliveries
    assert first["delivery_id"] != second["delivery_id"] and second["status"] == 200
    smtp.wait_for(1)
    assert settled(notifying) == {"sent": 1}
    assert len(smtp.messages) == 1


@pytest.mark.parametrize("kind", ["incoming", "private", "template", "activity"])
def test_messages_that_are_not_public_agent_replies_mail_nothing(fake, smtp, notifying, printer, kind):
    if kind == "private":
        fake.add_message(printer, "Note to colleagues.", "outgoing", private=True)
    elif kind == "template":
        fake.add_message(printer, "Please rate the conversation", "template", content_type="input_csat")
    else:
        fake.add_message(printer, f"An {kind} message.", kind)
    if kind != "activity":  # activity lines are never delivered at all
        fake.wait_for_deliveries(1)
        assert fake.webhook_deliveries[0]["status"] == 200
    # A public agent reply after it proves the pipeline ran past it.
    fake.add_message(printer, "The real answer.", "outgoing")
    [mail] = smtp.wait_for(1)
    assert "The real answer." in mail_text(mail)
    assert settled(notifying) == {"sent": 1}


def test_an_inbox_outside_notify_inboxes_mails_nothing(fake, smtp, notifying):
    by_mail = fake.add_conversation(fake.jane, fake.email_inbox, subject="By e-mail")
    other_api = fake.add_inbox("Another API inbox", "Channel::Api")
    elsewhere = fake.add_conversation(fake.jane, other_api, subject="Elsewhere")
    fake.add_message(by_mail, "Answered by e-mail.", "outgoing")
    fake.add_message(elsewhere, "Answered elsewhere.", "outgoing")
    fake.wait_for_deliveries(2)
    assert states(notifying) == {} and smtp.messages == []


def test_notify_inboxes_can_name_several_inboxes(fake, smtp, clock):
    other_api = fake.add_inbox("Another API inbox", "Channel::Api")
    running = start_notifying(fake, smtp, clock, NOTIFY_INBOXES=f"{fake.api_inbox}, {other_api}")
    try:
        fake.add_webhook(running.webhook_url, secret=WEBHOOK_SECRET)
        elsewhere = fake.add_conversation(fake.jane, other_api, subject="Elsewhere")
        fake.add_message(elsewhere, "Answered elsewhere.", "outgoing")
        [mail] = smtp.wait_for(1)
        assert "Elsewhere" in mail["Subject"]
    finally:
        running.close()


def test_a_blocked_contact_gets_nothing(fake, smtp, notifying, printer):
    with fake._lock:
        fake._contacts[fake.jane]["blocked"] = True
    fake.add_message(printer, "Answer to a blocked contact.", "outgoing")
    fake.wait_for_deliveries(1)
    assert settled(notifying) == {"skipped": 1}
    assert smtp.messages == []


# ---------------------------------------------------------------------------
# The mail
# ---------------------------------------------------------------------------

def test_the_mail_speaks_the_language_the_customer_chose(fake, smtp, notifying, printer):
    browser, page = sign_in(notifying, smtp, "jane@example.com")
    browser.submit(page, "/lang", lang="es")
    fake.add_message(printer, "Hola Jane, ya está.", "outgoing")
    mail = smtp.wait_for(2)[1]
    assert mail["Subject"].startswith("Nueva respuesta")
    assert "Nuestro equipo de soporte ha respondido" in mail_text(mail)
    assert 'lang="es"' in mail_html(mail)


def test_the_language_of_sign_in_is_remembered_and_english_is_the_default(fake, smtp, notifying, printer):
    fake.add_message(printer, "In English, please.", "outgoing")
    assert smtp.wait_for(1)[0]["Subject"].startswith("New reply")
    browser = notifying.browser(**{"Accept-Language": "es-ES,es;q=0.9"})
    sign_in(notifying, smtp, "jane@example.com", browser)
    fake.add_message(printer, "En español.", "outgoing")
    assert smtp.wait_for(3)[2]["Subject"].startswith("Nueva respuesta")


def test_the_language_survives_a_restart(fake, smtp, clock, printer):
    first = start_notifying(fake, smtp, clock)
    browser, page = sign_in(first, smtp, "jane@example.com")
    browser.submit(page, "/lang", lang="es")
    first.close()
    second = start_notifying(fake, smtp, clock, STATE_DIR=first.settings["STATE_DIR"])
    try:
        fake.add_webhook(second.webhook_url, secret=WEBHOOK_SECRET)
        fake.add_message(printer, "Hola.", "outgoing")
        assert smtp.wait_for(2)[1]["Subject"].startswith("Nueva respuesta")
    finally:
        second.close()


def test_a_long_reply_is_cut_with_a_pointer_to_the_portal(fake, smtp, notifying, printer):
    fake.add_message(printer, "word " * 2000 + "THE-END", "outgoing")
    [mail] = smtp.wait_for(1)
    text = mail_text(mail)
    assert "THE-END" not in text and "Read the rest in the portal." in text
    assert len(text) < 4000


def test_agent_markdown_in_the_mail_is_rendered_safely(fake, smtp, notifying, printer):
    fake.add_message(printer, "<script>alert(1)</script> [click](javascript:alert(1)) **ok**", "outgoing")
    [mail] = smtp.wait_for(1)
    html = mail_html(mail)
    assert "<script>" not in html and "javascript:" not in html.split("[click]")[0]
    assert 'href="javascript' not in html
    assert "&lt;script&gt;" in html and "<strong>ok</strong>" in html


def test_the_mail_link_leads_a_signed_out_browser_through_sign_in_to_the_ticket(fake, smtp, notifying, printer):
    fake.add_message(printer, "Please have a look.", "outgoing")
    [mail] = smtp.wait_for(1)
    link = re.search(r"http://portal\.test(\S+/tickets/\d+)", mail_text(mail)).group(1)
    browser = notifying.browser()
    page = browser.get(link)
    assert "/auth/request" in page.text  # the sign-in page, remembering where to go
    page = browser.submit(page, "/auth/request", email="jane@example.com")
    page = browser.get(smtp.link_for("jane@example.com").replace("http://portal.test", ""))
    page = browser.submit(page, "/auth/verify")
    assert page.status == 200 and page.url.endswith(f"/tickets/{printer}")
    assert "Please have a look." in page.text


# ---------------------------------------------------------------------------
# Waiting, grouping and cancelling
# ---------------------------------------------------------------------------

def test_three_replies_within_the_delay_become_one_mail(fake, smtp, clock, printer):
    running = start_notifying(fake, smtp, clock, NOTIFY_DELAY_SECONDS="2")
    try:
        fake.add_webhook(running.webhook_url, secret=WEBHOOK_SECRET)
        for n in (1, 2, 3):
            fake.add_message(printer, f"Step {n} done.", "outgoing")
        fake.wait_for_deliveries(3)
        assert smtp.messages == []  # still waiting for more
        [mail] = smtp.wait_for(1, timeout=10)
        text = mail_text(mail)
        assert text.index("Step 1 done.") < text.index("Step 2 done.") < text.index("Step 3 done.")
        assert settled(running) == {"sent": 3}
        assert len(smtp.messages) == 1
    finally:
        running.close()


def test_reading_the_ticket_in_the_delay_cancels_the_mail(fake, smtp, clock, printer):
    running = start_notifying(fake, smtp, clock, NOTIFY_DELAY_SECONDS="60")
    try:
        fake.add_webhook(running.webhook_url, secret=WEBHOOK_SECRET)
        browser, _ = sign_in(running, smtp, "jane@example.com")
        fake.add_message(printer, "Seen on screen.", "outgoing")
        fake.wait_for_deliveries(1)
        assert running.app.notifier.health()["queued"] == 1
        page = browser.get(running.url(f"/tickets/{printer}"))
        assert "Seen on screen." in page.text
        assert states(running) == {"cancelled": 1}
        assert len(smtp.messages) == 1  # the sign-in mail only
    finally:
        running.close()


def test_a_reply_already_read_when_its_webhook_arrives_is_not_mailed(fake, smtp, clock, printer):
    running = start_notifying(fake, smtp, clock)
    try:
        browser, _ = sign_in(running, smtp, "jane@example.com")
        message = fake.add_message(printer, "Read before the webhook came.", "outgoing")
        browser.get(running.url(f"/tickets/{printer}"))
        body = agent_payload(fake, printer, message)
        assert post_webhook(running, body, signed_headers(body))[0] == 200
        settled(running)
        assert states(running) == {"cancelled": 1}
        assert len(smtp.messages) == 1  # the sign-in mail only
    finally:
        running.close()


# ---------------------------------------------------------------------------
# Failures: slow, down, refusing, restarted
# ---------------------------------------------------------------------------

def test_a_slow_mail_server_does_not_slow_the_webhook(fake, smtp, notifying, printer):
    smtp.delay = 5
    fake.add_message(printer, "Slow mail.", "outgoing")
    fake.wait_for_deliveries(1)
    delivery = fake.webhook_deliveries[0]
    assert delivery["status"] == 200 and delivery["seconds"] < 1.0
    assert smtp.messages == []
    [mail] = smtp.wait_for(1, timeout=15)
    assert "Slow mail." in mail_text(mail)


def test_a_mail_server_down_then_back_gets_the_mail_once(fake, smtp, notifying, printer):
    smtp.stop()
    fake.add_message(printer, "Sent while the mail server was down.", "outgoing")
    fake.wait_for_deliveries(1)
    assert fake.webhook_deliveries[0]["status"] == 200
    # At least two failed tries, then the server comes back.
    wait_until(lambda: notifying.app.state.queued_for(printer) and notifying.app.state.queued_for(printer)[0][2] >= 2,
               what="two failed tries")
    smtp.restart()
    [mail] = smtp.wait_for(1, timeout=15)
    assert "Sent while the mail server was down." in mail_text(mail)
    assert settled(notifying) == {"sent": 1}
    time.sleep(0.5)
    assert len(smtp.messages) == 1


def test_chatwoot_down_when_the_worker_reads_it_is_tried_again(fake, smtp, notifying, printer):
    fake.set_fault("status", 503, count=2)
    message = fake.add_message(printer, "After Chatwoot recovered.", "outgoing")
    fake.wait_for_deliveries(1)
    [mail] = smtp.wait_for(1, timeout=15)
    assert "After Chatwoot recovered." in mail_text(mail)
    assert settled(notifying) == {"sent": 1} and message


def test_a_permanent_refusal_is_dropped_not_retried(fake, smtp, notifying, printer, caplog):
    smtp.fail_with = "550 5.1.1 mailbox unavailable"
    with caplog.at_level("INFO"):
        fake.add_message(printer, "Nobody will read this.", "outgoing")
        fake.wait_for_deliveries(1)
        assert settled(notifying) == {"failed": 1}
    portal_log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("portal"))
    assert "refused it for good" in portal_log
    assert "jane@example.com" not in portal_log  # addresses are logged as a keyed hash


def test_queued_mails_are_sent_after_a_restart(fake, smtp, clock, printer):
    first = start_notifying(fake, smtp, clock)
    fake.add_webhook(first.webhook_url, secret=WEBHOOK_SECRET)
    smtp.stop()
    fake.add_message(printer, "Queued before the restart.", "outgoing")
    fake.wait_for_deliveries(1)
    first.close()
    assert smtp.messages == []
    smtp.restart()
    second = start_notifying(fake, smtp, clock, STATE_DIR=first.settings["STATE_DIR"])
    try:
        [mail] = smtp.wait_for(1, timeout=15)
        assert "Queued before the restart." in mail_text(mail)
        assert settled(second) == {"sent": 1}
    finally:
        second.close()


# ---------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------

def test_healthz_reports_the_queue_depth_and_the_oldest_items_age(fake, smtp, clock, printer):
    running = start_notifying(fake, smtp, clock, NOTIFY_DELAY_SECONDS="600")
    try:
        fake.add_webhook(running.webhook_url, secret=WEBHOOK_SECRET)
        browser = running.browser()
        health = json.loads(browser.get(running.url("/healthz")).text)
        assert health["notifications"] == {"queued": 0, "oldest_seconds": None}
        fake.add_message(printer, "One.", "outgoing")
        fake.add_message(printer, "Two.", "outgoing")
        fake.wait_for_deliveries(2)
        time.sleep(0.2)
        health = json.loads(browser.get(running.url("/healthz")).text)
        assert health["notifications"]["queued"] == 2
        assert 0.1 <= health["notifications"]["oldest_seconds"] < 60
    finally:
        running.close()


def test_check_reports_the_webhook_secret_and_where_the_queue_lives(fake, smtp, tmp_path, state_backend):
    from test_check import run_portal

    result = run_portal(["--check"], portal_settings(fake, smtp, WEBHOOK_SECRET=WEBHOOK_SECRET,
                                                     STATE_DIR=str(tmp_path / "state")), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WEBHOOK_SECRET is set" in result.stdout and WEBHOOK_SECRET not in result.stdout
    if state_backend == "memory":
        assert "State folder" in result.stdout and "writable" in result.stdout
    else:
        assert "ok    Redis at redis://" in result.stdout and "reply-mail queue" in result.stdout
    result = run_portal(["--check"], portal_settings(fake, smtp), tmp_path)
    assert "WEBHOOK_SECRET is not set" in result.stdout


def test_check_fails_on_a_state_folder_it_cannot_write(fake, smtp, tmp_path):
    from test_check import run_portal

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # The folder matters without STATE_URL only: on Redis nothing is written there.
    settings = portal_settings(fake, smtp, STATE_DIR=str(blocker / "state"), STATE_URL="")
    result = run_portal(["--check"], settings, tmp_path)
    assert result.returncode == 1
    assert "STATE_DIR" in result.stdout


def test_the_portal_refuses_to_start_without_a_usable_state_folder(fake, smtp, tmp_path):
    from test_check import run_portal

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_portal([], portal_settings(fake, smtp, STATE_DIR=str(blocker / "state"), STATE_URL=""), tmp_path)
    assert result.returncode == 2
    assert "STATE_DIR" in result.stderr and "Traceback" not in result.stderr



def test_a_reply_the_agent_deleted_before_the_mail_went_out_is_not_mailed(fake, smtp, clock, printer):
    running = start_notifying(fake, smtp, clock, NOTIFY_DELAY_SECONDS="1")
    try:
        fake.add_webhook(running.webhook_url, secret=WEBHOOK_SECRET)
        message = fake.add_message(printer, "Oops, wrong customer.", "outgoing")
        fake.wait_for_deliveries(1)
        with fake._lock:  # what Chatwoot does when an agent deletes a message
            fake._messages[message]["content"] = "This message was deleted"
            fake._messages[message]["content_attributes"] = {"deleted": True}
        assert settled(running) == {"skipped": 1}
        assert smtp.messages == []
    finally:
        running.close()
