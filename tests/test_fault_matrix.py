"""Every page and every form against every way Chatwoot (or SMTP) can fail: a table.

For each (route, fault): the page is localized, its status fits (never 200 for a
failure, never 500), typed input comes back in the form, nothing reaches Chatwoot
twice, no traceback, token or secret shows (page or log), the server keeps
answering with a bounded number of threads, and once the fault clears the same
action succeeds.

The faults are injected by wrapping FakeChatwoot._answer (API, public API and
file storage alike, so a download is broken where it really reads); "refused"
stops the fake and brings it back on the same port. CHATWOOT_TIMEOUT is 0.5 s here
so the hanging cases stay cheap.
"""

import logging
import re
import threading
import time
import tracemalloc
import urllib.parse

import pytest

import fake_chatwoot
import mailer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from conftest import SECRET, portal_settings, sign_in, start_portal

JANE = "jane@example.com"
NOW = 1_800_000_000  # the portal's FakeClock
TIMEOUT = 0.5  # CHATWOOT_TIMEOUT of these tests (its lowest allowed value)
HANG_SECONDS = TIMEOUT + 0.7
JSON = "application/json; charset=utf-8"
BIG_BYTES = 50 * 1024 * 1024
# Built once, before any measurement: the fake's own copy of the answer.
_BIG = []


def big_body():
    if not _BIG:
        item = b'{"id": 1, "content": "' + b"x" * 1000 + b'"},'
        _BIG.append(b'{"payload": [' + item * (BIG_BYTES // len(item)) + b'{"id": 2}]}')
    return _BIG[0]


# (status, content type, body, headers) of each answer-shaped fault.
ANSWERS = {
    "401": (401, JSON, b'{"error":"Invalid Access Token"}', {}),
    "403": (403, JSON, b'{"error":"You are not authorized to do this action"}', {}),
    "404": (404, JSON, b'{"error":"Resource could not be found"}', {}),
    "422": (422, JSON, b'{"message":"Validation failed: Content is invalid"}', {}),
    "429": (429, "text/plain", b"Retry later\n", {"Retry-After": "30"}),
    "500": (500, JSON, b'{"status":500,"error":"Internal Server Error"}', {}),
    "502": (502, "text/html", b"<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>", {}),
    "503": (503, "text/html", b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>", {}),
    "truncated": (200, JSON, b'{"payload": [{"id": 1, "meta": {"sender": {"id": ', {}),
    "html": (200, "text/html", b"<!DOCTYPE html><html><body><p>We'll be back soon.</p></body></html>", {}),
}
CHATWOOT_FAULTS = ["refused", "hang", "401", "403", "404", "422", "429", "500", "502", "503",
                   "truncated", "html", "big", "flap"]
REJECTIONS = {"401", "403", "422"}  # Chatwoot refused: 502 (404 is its own case)
# A 4xx/500 from conversations/filter is what Chatwoot before 4.14.2 answers: the
# dashboard then falls back to each contact's latest conversations by design.
FILTER_FALLBACK_BY_DESIGN = {"404", "422", "500"}
ROUTES = ["dashboard", "ticket", "new_form", "signin", "create", "reply", "cancel", "rating",
          "attachment", "attachment_known"]
WRITES = re.compile(r"/conversations(/\d+/(messages|toggle_status|toggle_priority))?$|/csat_survey/")


# ---------------------------------------------------------------------------
# The fault layer
# ---------------------------------------------------------------------------

def restart_on_the_same_port(fake, monkeypatch):
    port = urllib.parse.urlsplit(fake.url).port
    original = fake_chatwoot._Server

    class SamePort(original):
        def __init__(self, address, handler):
            super().__init__((address[0], port), handler)

    monkeypatch.setattr(fake_chatwoot, "_Server", SamePort)
    try:
        fake.start()
    finally:
        monkeypatch.setattr(fake_chatwoot, "_Server", original)


class Trouble:
    """One Chatwoot fault at a time. `writes_only`: the write is carried out, then
    its answer is replaced by the fault (Chatwoot did it, the portal never heard)."""

    def __init__(self, fake, monkeypatch):
        self.fake, self.monkeypatch = fake, monkeypatch
        self.kind, self.writes_only, self.flaps_left, self.down = None, False, 0, False
        self.lock = threading.Lock()
        original = fake_chatwoot.FakeChatwoot._answer
        trouble = self

        def answer(fake_self, method, target, headers, raw_body):
            return trouble.answer(original, fake_self, method, target, headers, raw_body)

        monkeypatch.setattr(fake_chatwoot.FakeChatwoot, "_answer", answer)

    def begin(self, kind, writes_only=False):
        self.writes_only = writes_only
        if kind == "refused":
            self.fake.stop()
            self.down = True
        elif kind == "flap":
            self.flaps_left = 1  # the next call fails, then Chatwoot is fine again
        self.kind = kind

    def end(self):
        if self.down:
            restart_on_the_same_port(self.fake, self.monkeypatch)
            self.down = False
        self.kind = None

    def answer(self, original, fake, method, target, headers, raw_body):
        path = urllib.parse.urlsplit(target).path
        api = path.startswith(("/api/", "/public/api/"))
        kind = self.kind
        if kind in (None, "refused") or path.startswith("/demo") or (kind == "big" and not api):
            return original(fake, method, target, headers, raw_body)
        if kind == "flap":
            with self.lock:
                if self.flaps_left <= 0:
                    return original(fake, method, target, headers, raw_body)
                self.flaps_left -= 1
            kind = "503"
        if self.writes_only:
            if not (method in ("POST", "PUT") and WRITES.search(path)):
                return original(fake, method, target, headers, raw_body)
            original(fake, method, target, headers, raw_body)  # done in Chatwoot; the answer is lost
        elif api:
            with fake._lock:
                fake.calls.append((method, path, dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query))))
        if kind == "hang":
            fake._stopping.wait(HANG_SECONDS)
            return None
        if kind == "big":
            return 200, JSON, big_body(), {}
        return ANSWERS[kind]


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------

@pytest.fixture
def portal(fake, smtp, clock):
    running = start_portal(portal_settings(fake, smtp, CHATWOOT_TIMEOUT=str(TIMEOUT)), clock)
    yield running
    running.close()


@pytest.fixture
def trouble(fake, monkeypatch):
    made = Trouble(fake, monkeypatch)
    yield made
    made.end()


PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@pytest.fixture
def world(fake):
    """Jane's open ticket with a file, and her resolved ticket with a survey."""
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer on fire")
    fake.add_message(ticket, "It smokes.")
    fake.add_message(ticket, "Here is the manual.", "outgoing",
                     attachments=[{"filename": "manual.pdf", "content_type": "application/pdf", "data": PDF}])
    file_id = fake.messages_of(ticket)[-1]["attachments"][0]["id"]
    rated = fake.add_conversation(fake.jane, fake.api_inbox, "Old paper jam", "resolved", created_at=NOW - 86400)
    fake.add_message(rated, "Paper jam.", "incoming", created_at=NOW - 86400)
    fake.add_message(rated, "Please rate", "template", content_type="input_csat",
                     content_attributes={"display_type": "emoji"}, created_at=NOW - 3600)
    return {"ticket": ticket, "file": file_id, "rated": rated}


def assert_clean(page, browser, fake):
    assert "Traceback" not in page.text
    assert fake.token not in page.text and SECRET not in page.text
    session_cookie = browser.cookies.get("portal_session")
    if session_cookie:
        assert session_cookie not in page.text


def assert_log_clean(caplog, fake):
    text = caplog.text
    assert fake.token not in text and SECRET not in text
    assert "Traceback" not in text and "unhandled error" not in text
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


def assert_localized_failure(page, status):
    assert page.status == status, (page.status, page.text[:2000])
    assert '<html lang="en"' in page.text
    assert "<h1" in page.text


def write_calls(fake):
    return [(m, p) for m, p, _ in list(fake.calls) if m in ("POST", "PUT") and WRITES.search(p)]


def wait_for_threads(limit, seconds=HANG_SECONDS + 3):
    deadline = time.monotonic() + seconds
    while threading.active_count() > limit and time.monotonic() < deadline:
        time.sleep(0.05)
    return threading.active_count()


def expected_status(route, fault):
    if route == "new_form":
        return 200
    if route == "attachment_known" and fault in ("truncated", "html", "big"):
        return 200  # storage's 200 is the file's bytes, whatever they are (no JSON there)
    if route == "signin":
        return 503  # whatever Chatwoot says, the sign-in form says "try again soon"
    if fault == "404":
        return {"dashboard": 303, "create": 502}.get(route, 404)  # 303: the contact is gone, sign in again
    if fault in REJECTIONS:
        return 503 if route == "attachment_known" else 502  # storage's 4xx is no verdict on the ticket
    return 503


# ---------------------------------------------------------------------------
# The matrix: route x Chatwoot fault
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fault", CHATWOOT_FAULTS)
@pytest.mark.parametrize("route", ROUTES)
def test_route_under_chatwoot_fault(route, fault, portal, fake, smtp, world, trouble, caplog):
    caplog.set_level(logging.INFO)
    ticket, rated, file_id = world["ticket"], world["rated"], world["file"]
    browser = portal.browser()
    if route != "signin":
        browser, _ = sign_in(portal, smtp, JANE, browser)
    threads_before = threading.active_count()
    status = expected_status(route, fault)
    typed = {}

    # -- the page or form as the customer has it before the fault ------------
    if route == "signin":
        before = browser.get(portal.url("/"))
    elif route == "create":
        before = browser.get(portal.url("/tickets/new"))
    elif route in ("reply", "cancel"):
        before = browser.get(portal.url(f"/tickets/{ticket}"))
    elif route == "rating":
        before = browser.get(portal.url(f"/tickets/{rated}"))
        assert before.form(f"/tickets/{rated}/rating")
    elif route == "attachment_known":
        before = browser.get(portal.url(f"/tickets/{ticket}"))  # the portal learns the file here
    fake.reset_calls()
    mails_before = len(smtp.messages)

    # -- the action, during the fault -----------------------------------------
    trouble.begin(fault)
    if route == "dashboard":
        page = browser.get(portal.url("/dashboard"), follow=False)
    elif route == "ticket":
        page = browser.get(portal.url(f"/tickets/{ticket}"))
    elif route == "new_form":
        page = browser.get(portal.url("/tickets/new"))
    elif route == "signin":
        typed = {"email": "Jane@Example.com"}
        page = browser.submit(before, "/auth/request", **typed)
    elif route == "create":
        typed = {"subject": "Scanner smokes too", "message": "Grey smoke.\nSmells of toast.", "priority": "high"}
        page = browser.submit(before, "/tickets", **typed)
    elif route == "reply":
        typed = {"message": "Still smoking.\nShould I unplug it?"}
        page = browser.submit(before, f"/tickets/{ticket}/reply", **typed)
    elif route == "cancel":
        page = browser.submit(before, f"/tickets/{ticket}/cancel")
    elif route == "rating":
        typed = {"rating": "4", "feedback": "Quick and kind, thanks."}
        page = browser.submit(before, f"/tickets/{rated}/rating", **typed)
    else:
        page = browser.get(portal.url(f"/tickets/{ticket}/attachments/{file_id}/manual.pdf"))
    during_writes = write_calls(fake)

    # -- what the customer sees -------------------------------------------------
    if status == 200:
        assert page.status == 200 and '<html lang="en"' in page.text or route == "attachment_known", page.status
    elif status == 303:
        assert page.status == 303 and "notice=session_expired" in page.header("Location"), page.status
    else:
        assert_localized_failure(page, status)
    assert_clean(page, browser, fake)
    if route == "signin":
        assert page.form("/auth/request").fields["email"] == typed["email"]
        assert len(smtp.messages) == mails_before  # no link for a lookup that failed
    elif route == "create":
        form = page.form("/tickets")
        assert (form.fields["subject"], form.fields["message"]) == (typed["subject"], typed["message"])
        assert re.search(r'<option value="high" selected>', page.text)
    elif route == "reply" and status != 404:
        assert page.form(f"/tickets/{ticket}/reply").fields["message"] == typed["message"]
    elif route == "rating" and status != 404:
        assert page.form(f"/tickets/{rated}/rating").fields["feedback"] == typed["feedback"]
        assert re.search(r'value="4" checked', page.text)
    elif route == "new_form":
        assert page.form("/tickets")
    # Never a write sent twice (writes are not retried); none at all once a read failed.
    assert len(during_writes) == len(set(during_writes)), during_writes
    if route in ("reply", "cancel", "rating", "dashboard", "ticket", "attachment", "attachment_known",
                 "new_form", "signin"):
        assert during_writes == [], during_writes
    if route == "new_form":
        assert fake.calls == []
    assert portal.browser().get(portal.url("/healthz")).status == 200  # still answering

    # -- Chatwoot recovers: the same action works ----------------------------
    if fault != "flap":
        trouble.end()
    if route == "dashboard":
        if fault == "404":
            browser, _ = sign_in(portal, smtp, JANE, browser)
        fake.reset_calls()
        again = browser.get(portal.url("/dashboard"))
        assert again.status == 200 and "Printer on fire" in again.text
        if fault not in FILTER_FALLBACK_BY_DESIGN:  # full dashboard back, not the degraded fallback
            assert any(p.endswith("/conversations/filter") for _, p, _ in fake.calls), fake.calls
    elif route == "ticket":
        again = browser.get(portal.url(f"/tickets/{ticket}"))
        assert again.status == 200 and "It smokes." in again.text
    elif route == "new_form":
        again = browser.get(portal.url("/tickets/new"))
        assert again.status == 200
    elif route == "signin":
        again = browser.submit(page, "/auth/request")
        assert again.status == 200
        assert len(smtp.messages) == mails_before + 1 and smtp.link_for(JANE)
    elif route == "create":
        again = browser.submit(page, "/tickets", priority="high")  # the test browser does not read <select>
        assert again.status == 200, again.text[:2000]
        made = [c for c in range(1, 100) if _exists(fake, c)
                and fake.conversation(c)["additional_attributes"].get("mail_subject") == typed["subject"]]
        assert len(made) == 1, made  # one ticket, whatever happened before
        assert fake.conversation(made[0])["priority"] == "high"
        assert [m["content"] for m in fake.messages_of(made[0])].count(typed["message"]) == 1
    elif route == "reply":
        if status == 404:
            page = browser.get(portal.url(f"/tickets/{ticket}"))
        again = browser.submit(page, f"/tickets/{ticket}/reply", **typed)
        assert again.status == 200, again.text[:2000]
        assert [m["content"] for m in fake.messages_of(ticket)].count(typed["message"]) == 1
    elif route == "cancel":
        assert fake.conversation(ticket)["status"] == "open"
        again = browser.submit(browser.get(portal.url(f"/tickets/{ticket}")), f"/tickets/{ticket}/cancel")
        assert again.status == 200 and fake.conversation(ticket)["status"] == "resolved"
    elif route == "rating":
        assert fake.csat_responses == []
        if status == 404:
            page = browser.get(portal.url(f"/tickets/{rated}"))
        again = browser.submit(page, f"/tickets/{rated}/rating", **typed)
        assert again.status == 200, again.text[:2000]
        assert len(fake.csat_responses) == 1
        assert fake.csat_record(rated)["rating"] == 4
    else:
        again = browser.get(portal.url(f"/tickets/{ticket}/attachments/{file_id}/manual.pdf"))
        assert again.status == 200 and again.body == PDF
    assert_clean(again, browser, fake)
    assert_log_clean(caplog, fake)
    assert wait_for_threads(threads_before + 6) <= threads_before + 6


def _exists(fake, display_id):
    try:
        fake.conversation(display_id)
        return True
    except (KeyError, LookupError):
        return False


# ---------------------------------------------------------------------------
# Writes Chatwoot carried out whose answer was lost: sending again makes no second
# ---------------------------------------------------------------------------

LOST_ANSWER_FAULTS = ["hang", "502", "truncated", "big"]


@pytest.mark.parametrize("fault", LOST_ANSWER_FAULTS)
@pytest.mark.parametrize("route", ["create", "reply", "cancel", "rating"])
def test_a_write_done_but_unanswered_is_not_repeated(route, fault, portal, fake, smtp, world, trouble, caplog):
    caplog.set_level(logging.INFO)
    ticket, rated = world["ticket"], world["rated"]
    browser, _ = sign_in(portal, smtp, JANE)
    path = {"create": "/tickets/new", "rating": f"/tickets/{rated}"}.get(route, f"/tickets/{ticket}")
    before = browser.get(portal.url(path))
    typed = {"create": {"subject": "Lost answer", "message": "Only once.", "priority": "urgent"},
             "reply": {"message": "Only once, please."},
             "rating": {"rating": "5", "feedback": "Once."}}.get(route, {})
    action = {"create": "/tickets", "reply": f"/tickets/{ticket}/reply", "cancel": f"/tickets/{ticket}/cancel",
              "rating": f"/tickets/{rated}/rating"}[route]
    fake.reset_calls()
    trouble.begin(fault, writes_only=True)
    page = browser.submit(before, action, **typed)
    assert_localized_failure(page, 503)
    assert_clean(page, browser, fake)
    assert len(write_calls(fake)) == 1, write_calls(fake)
    trouble.end()
    if route == "cancel":
        page = browser.get(portal.url(f"/tickets/{ticket}"))
        if page.forms and any(f.action.endswith("/cancel") for f in page.forms):
            page = browser.submit(page, action)
        assert page.status == 200 and fake.conversation(ticket)["status"] == "resolved"
        assert [c for c in write_calls(fake) if c[1].endswith("toggle_status")] == [
            ("POST", f"/api/v1/accounts/{fake.account_id}/conversations/{ticket}/toggle_status")]
    else:
        changes = dict(typed, priority="urgent") if route == "create" else typed
        again = browser.submit(page, action, **changes)
        assert again.status == 200, again.text[:2000]
    if route == "create":
        made = [c for c in range(1, 100) if _exists(fake, c)
                and fake.conversation(c)["additional_attributes"].get("mail_subject") == "Lost answer"]
        assert len(made) == 1
        assert fake.conversation(made[0])["priority"] == "urgent"
    elif route == "reply":
        assert [m["content"] for m in fake.messages_of(ticket)].count("Only once, please.") == 1
    elif route == "rating":
        assert fake.csat_record(rated)["rating"] == 5  # the same answer again changes nothing
    assert_log_clean(caplog, fake)


# ---------------------------------------------------------------------------
# A 50 MB answer: the portal reads a bounded part of it, never the whole
# ---------------------------------------------------------------------------

def test_a_50_mb_answer_is_refused_without_holding_it(portal, fake, smtp, world, trouble):
    browser, _ = sign_in(portal, smtp, JANE)
    big_body()  # the fake's copy, allocated before measuring
    trouble.begin("big")
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        page = browser.get(portal.url(f"/tickets/{world['ticket']}"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert page.status == 503
    print(f"peak memory while Chatwoot answered 50 MB: {peak / 1e6:.1f} MB")
    assert peak < 20 * 1024 * 1024, f"{peak / 1e6:.1f} MB held for a 50 MB answer"
    trouble.end()
    assert browser.get(portal.url(f"/tickets/{world['ticket']}")).status == 200


# ---------------------------------------------------------------------------
# The sign-in form against every SMTP fault
# ---------------------------------------------------------------------------

class AuthServer:
    """An SMTP server that offers AUTH on plain connections; `accept` decides logins."""

    def __init__(self, catcher, port):
        self.accept = False
        self.controller = Controller(catcher, hostname="127.0.0.1", port=port, auth_require_tls=False,
                                     authenticator=lambda *args: AuthResult(success=self.accept))
        self.controller.start()


def _free_port():
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SMTP_FAULTS = ["refused", "timeout_in_data", "451_at_data", "550_at_data", "auth_refused", "auth_missing",
               "recipient_refused"]


@pytest.mark.parametrize("fault", SMTP_FAULTS)
def test_sign_in_under_smtp_fault(fault, fake, smtp, clock, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    # A refused AUTH leaves aiosmtpd silent until the client gives up: keep that wait short.
    monkeypatch.setattr(mailer, "SMTP_TIMEOUT_SECONDS", 1)
    overrides = {"CHATWOOT_TIMEOUT": str(TIMEOUT)}
    auth_server = None
    if fault == "auth_refused":
        auth_server = AuthServer(smtp, _free_port())
        overrides.update(SMTP_PORT=str(auth_server.controller.port), SMTP_USERNAME="portal@example.com",
                         SMTP_PASSWORD="smtp-password-never-shown")
    elif fault == "auth_missing":  # the fixture's server offers no AUTH without TLS
        overrides.update(SMTP_USERNAME="portal@example.com", SMTP_PASSWORD="smtp-password-never-shown")
    running = start_portal(portal_settings(fake, smtp, **overrides), clock)
    try:
        threads_before = threading.active_count()
        browser = running.browser()
        page = browser.get(running.url("/"))
        if fault == "refused":
            smtp.stop()
        elif fault == "timeout_in_data":
            monkeypatch.setattr(mailer, "SMTP_TIMEOUT_SECONDS", 0.5)
            smtp.delay = 1.5
        elif fault in ("451_at_data", "550_at_data"):
            smtp.fail_with = "451 4.3.0 Try again later" if fault.startswith("451") else "550 5.7.1 Rejected"
        elif fault == "recipient_refused":
            async def refuse(server, session, envelope, address, rcpt_options):
                return "550 5.1.1 No such user here"
            smtp.handle_RCPT = refuse
        page = browser.submit(page, "/auth/request", email=JANE)
        assert_localized_failure(page, 503)
        assert "could not send the e-mail" in page.text
        assert page.form("/auth/request").fields["email"] == JANE
        assert_clean(page, browser, fake)
        assert "smtp-password-never-shown" not in page.text and "smtp-password-never-shown" not in caplog.text
        assert running.browser().get(running.url("/healthz")).status == 200
        # Repaired: the same form goes through.
        if fault == "refused":
            smtp.restart()
        elif fault == "timeout_in_data":
            smtp.delay = 0
            time.sleep(1.2)  # the slow server's late answer lands first
        smtp.fail_with = None
        smtp.__dict__.pop("handle_RCPT", None)
        if fault == "auth_missing":
            return  # only a configuration change repairs it (see --check); the page was right
        if auth_server:
            auth_server.accept = True
        mails = len(smtp.messages)
        again = browser.submit(page, "/auth/request")
        assert again.status == 200, again.text[:2000]
        assert len(smtp.messages) == mails + 1 and smtp.link_for(JANE)
        assert_log_clean(caplog, fake)
        assert wait_for_threads(threads_before + 6) <= threads_before + 6
    finally:
        running.close()
        if auth_server:
            auth_server.controller.stop()
