"""CSRF, security headers, inline-free pages, log hygiene and routing, end to end.

Issue points 9 (routing errors), 10 (security headers) and 12 (logs), plus the
CSRF rule of the interface. Everything goes through the portal's real socket.
"""

import collections
import hashlib
import html.parser
import http.cookies
import json
import logging
import re
import socket
import urllib.parse
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

import conftest
from conftest import SECRET, sign_in
from portal import SIGNIN_PER_ADDRESS

REPO = Path(__file__).resolve().parent.parent
SESSION = "portal_session"
ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
MAX_BODY = 256 * 1024


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def local(link):
    return urllib.parse.urlsplit(link)._replace(scheme="", netloc="").geturl()


def csrf_of(page):
    """The CSRF token of any page (every page has the language form)."""
    return page.form("/lang").fields["csrf_token"]


def set_cookie_names(page):
    names = set()
    for value in page.headers_named("Set-Cookie"):
        cookie = http.cookies.SimpleCookie()
        cookie.load(value)
        names.update(cookie.keys())
    return names


def chatwoot_route(path, account_id):
    """`/api/v1/accounts/1/conversations/42/messages` -> `/conversations/:id/messages`."""
    rest = path[len(f"/api/v1/accounts/{account_id}"):]
    return "/".join(":id" if part.isdigit() else part for part in rest.split("/"))


def portal_records(caplog):
    return [r for r in caplog.records if r.name == "portal" or r.name.startswith("portal.")]


def log_text(caplog):
    lines = []
    for record in portal_records(caplog):
        lines.append(record.getMessage())
        if record.exc_info:
            lines.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(lines) + "\n" + caplog.text


class InlineScanner(html.parser.HTMLParser):
    """Collects every inline script or style a strict CSP would block."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.problems, self._in_script = [], False

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        if tag == "style":
            self.problems.append("<style> block")
        if tag == "script":
            self._in_script = True
            if not names.get("src"):
                self.problems.append("<script> without src")
        for name, value in attrs:
            if name == "style":
                self.problems.append(f"style= on <{tag}>")
            if name.startswith("on"):
                self.problems.append(f"{name}= on <{tag}>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.problems.append(f"javascript: URL on <{tag}>")

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.problems.append("inline script body")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False


def inline_problems(page):
    scanner = InlineScanner()
    scanner.feed(page.text)
    return scanner.problems


@pytest.fixture
def jane(portal, smtp, fake):
    """Jane signed in, with one open ticket in the API inbox."""
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, subject="Printer jam")
    fake.add_message(ticket, "The printer jams on every page.")
    browser, page = sign_in(portal, smtp, "jane@example.com")
    return browser, page, ticket


# ---------------------------------------------------------------------------
# CSRF: every POST route
# ---------------------------------------------------------------------------

def _forged_fields(route, ticket, token, code):
    return {
        "/auth/request": {"email": "bob@example.com", "next": ""},
        "/auth/verify": {"token": token},
        "/auth/code": {"email": "bob@example.com", "code": code},
        "/tickets/N/rating": {"rating": "1", "feedback": "Forged rating"},
        "/tickets": {"subject": "Forged", "message": "Forged ticket", "form_id": "forged-1"},
        "/tickets/N/reply": {"message": "Forged reply", "form_id": "forged-2"},
        "/tickets/N/cancel": {},
        "/lang": {"lang": "es", "next": "/dashboard"},
        "/logout": {},
    }[route]


POST_ROUTES = ["/auth/request", "/auth/verify", "/auth/code", "/tickets", "/tickets/N/reply", "/tickets/N/cancel",
               "/tickets/N/rating", "/lang", "/logout"]
FORGERIES = ["missing", "wrong", "from another browser", "without the csrf cookie"]
FORMS_THAT_COME_BACK = ["/tickets", "/tickets/N/reply", "/tickets/N/rating"]


@pytest.mark.parametrize("forgery", FORGERIES)
@pytest.mark.parametrize("route", POST_ROUTES)
def test_a_post_without_a_valid_csrf_token_is_refused_and_changes_nothing(portal, smtp, fake, jane, route, forgery):
    browser, page, ticket = jane
    # A pending sign-in link for bob, so a forged verify has something to burn.
    other = portal.browser()
    other.submit(other.get(portal.url("/")), "/auth/request", email="bob@example.com")
    bob_link = local(smtp.link_for("bob@example.com"))
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(bob_link).query)["token"][0]
    code = re.search(r"\b(\d{3}) (\d{3})\b", smtp.messages[-1].get_body(("plain",)).get_content()).group(0)
    mails_before = len(smtp.messages)
    messages_before = len(fake.messages_of(ticket))
    cookies_before = dict(browser.cookies)

    fields = _forged_fields(route, ticket, token, code)
    sender = browser
    if forgery == "wrong":
        real = csrf_of(page)
        fields["csrf_token"] = real[:-1] + ("A" if real[-1] != "A" else "B")
    elif forgery == "from another browser":
        fields["csrf_token"] = csrf_of(other.get(portal.url("/")))
    elif forgery == "without the csrf cookie":
        fields["csrf_token"] = csrf_of(page)
        sender = portal.browser()
        sender.cookies[SESSION] = browser.cookies[SESSION]
    fake.reset_calls()
    answer = sender.post(portal.url(route.replace("N", str(ticket))), fields, follow=False)

    assert answer.status == 403
    if route in FORMS_THAT_COME_BACK:
        # Changed deliberately (issue point 6): these forms come back filled in,
        # with a fresh token, instead of an error page; the customer sends again.
        assert "For your security the form had to be reloaded: check it and send it again." in answer
        typed = {"subject", "message", "feedback"} & set(fields)
        assert all(answer.form(route.replace("N", str(ticket))).fields[name] == fields[name] for name in typed)
    else:
        assert "This form has expired" in answer
    assert fake.calls == []  # no lookup, no write
    assert len(smtp.messages) == mails_before
    assert not set_cookie_names(answer) & {SESSION, "portal_lang"}
    assert browser.cookies == cookies_before
    dashboard = browser.get(portal.url("/dashboard"))
    assert dashboard.url.endswith("/portal/dashboard"), "a forged logout signed Jane out"
    assert '<html lang="en">' in dashboard.text
    assert "Forged ticket" not in dashboard
    assert fake.conversation(ticket)["status"] == "open"
    assert len(fake.messages_of(ticket)) == messages_before
    signed_in = portal.browser()
    page = signed_in.submit(signed_in.get(bob_link), "/auth/verify")
    assert "Signed in as bob@example.com" in page, "a forged verify burnt the link"


def test_a_form_of_this_browser_with_its_own_token_is_accepted(portal, jane):
    browser, page, ticket = jane
    answer = browser.post(portal.url("/lang"), {"csrf_token": csrf_of(page), "lang": "es", "next": "/dashboard"},
                          follow=False)
    assert answer.status == 303  # the control for the refusals above


def test_two_browsers_get_different_csrf_tokens(portal):
    first, second = portal.browser(), portal.browser()
    one, two = csrf_of(first.get(portal.url("/"))), csrf_of(second.get(portal.url("/")))
    assert one and two and one != two


def test_the_csrf_refusal_is_localized(portal, jane):
    browser, page, _ = jane
    page = browser.submit(page, "/lang", lang="es")
    answer = browser.post(portal.url("/logout"), {"csrf_token": "nope"})
    assert answer.status == 403
    assert "Este formulario ha caducado" in answer
    assert '<html lang="es">' in answer.text


def test_a_forged_sign_in_request_sends_no_mail_and_asks_chatwoot_nothing(portal, smtp, fake):
    browser = portal.browser()
    browser.get(portal.url("/"))
    fake.reset_calls()
    answer = browser.post(portal.url("/auth/request"), {"email": "jane@example.com"})
    assert answer.status == 403
    assert smtp.messages == [] and fake.calls == []


# ---------------------------------------------------------------------------
# 10. Security headers on every kind of response
# ---------------------------------------------------------------------------

def _response(kind, portal, smtp):
    browser = portal.browser()
    if kind == "page":
        return browser.get(portal.url("/"))
    if kind == "redirect":
        return browser.get("/portal", follow=False)
    if kind == "sign-in redirect":
        return browser.get(portal.url("/dashboard"), follow=False)
    if kind == "verify page":
        browser.submit(browser.get(portal.url("/")), "/auth/request", email="jane@example.com")
        return browser.get(local(smtp.link_for("jane@example.com")))
    if kind == "invalid link 400":
        return browser.get(portal.url("/auth/verify?token=nope"))
    if kind == "404":
        return browser.get(portal.url("/nothing-here"))
    if kind == "404 outside the base path":
        return browser.get("/elsewhere")
    if kind == "405":
        return browser.get(portal.url("/logout"))
    if kind == "403":
        return browser.post(portal.url("/lang"), {"lang": "es"})
    if kind == "413":
        browser.get(portal.url("/"))
        return browser.post(portal.url("/auth/request"), {"email": "a" * (MAX_BODY + 1)})
    if kind == "stylesheet":
        return browser.get(portal.url("/static/style.css"))
    if kind == "script":
        return browser.get(portal.url("/static/portal.js"))
    if kind == "logo":
        return browser.get(portal.url("/brand/logo.png"))
    if kind == "favicon":
        return browser.get(portal.url("/brand/favicon.png"))
    if kind == "healthz":
        return browser.get(portal.url("/healthz"))
    raise AssertionError(kind)


RESPONSE_KINDS = ["page", "redirect", "sign-in redirect", "verify page", "invalid link 400", "404",
                  "404 outside the base path", "405", "403", "413", "stylesheet", "script", "logo",
                  "favicon", "healthz"]


def csp_directives(value):
    directives = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


@pytest.mark.parametrize("kind", RESPONSE_KINDS)
def test_every_kind_of_response_carries_the_security_headers(portal, smtp, kind):
    page = _response(kind, portal, smtp)
    assert page.status in (200, 303, 400, 403, 404, 405, 413)
    policy = page.header("Content-Security-Policy")
    assert policy, f"no CSP on {kind}"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    directives = csp_directives(policy)
    assert directives.get("frame-ancestors") == ["'none'"]
    for kind_of_code in ("script-src", "style-src"):
        sources = directives.get(kind_of_code, directives.get("default-src"))
        assert sources is not None, f"{kind_of_code} is not restricted"
        assert set(sources) <= {"'self'", "'none'"}, sources
    assert page.header("X-Content-Type-Options") == "nosniff"
    assert page.header("Referrer-Policy") in (
        "no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin")
    assert len(page.headers_named("Referrer-Policy")) == 1
    assert len(page.headers_named("Content-Security-Policy")) == 1


def test_pages_with_personal_data_are_not_cached(portal, jane):
    browser, _, ticket = jane
    for path in ("/dashboard", f"/tickets/{ticket}", "/tickets/new"):
        assert "no-store" in browser.get(portal.url(path)).header("Cache-Control")


def test_no_page_contains_inline_script_or_style(portal, smtp, fake, clock, jane):
    browser, page, ticket = jane
    resolved = fake.add_conversation(fake.jane, fake.api_inbox, subject="Done", status="resolved")
    fake.add_message(resolved, "Fixed <b onclick=x>bold</b> style=\"color:red\"")
    by_mail = fake.add_conversation(fake.jane, fake.email_inbox, subject="By mail")
    fake.add_message(by_mail, "Sent by e-mail")
    pages = {"dashboard": page}
    pages["ticket"] = browser.get(portal.url(f"/tickets/{ticket}"))
    pages["resolved ticket"] = browser.get(portal.url(f"/tickets/{resolved}"))
    pages["e-mail ticket"] = browser.get(portal.url(f"/tickets/{by_mail}"))
    pages["new ticket"] = browser.get(portal.url("/tickets/new"))
    pages["new ticket with errors"] = browser.submit(pages["new ticket"], "/tickets", subject="", message="")
    pages["reply error"] = browser.submit(pages["ticket"], f"/tickets/{ticket}/reply", message="")
    fake.set_fault("status", status=500, count=1)
    pages["reply retry"] = browser.submit(pages["ticket"], f"/tickets/{ticket}/reply", message="Try again")
    fake.set_fault("close", count=2)
    pages["unavailable"] = browser.get(portal.url("/dashboard"))
    fake.set_fault(None)
    pages["404"] = browser.get(portal.url("/nothing"))
    pages["405"] = browser.get(portal.url("/logout"))
    pages["403"] = browser.post(portal.url("/logout"), {})
    pages["413"] = browser.post(portal.url("/tickets"), {"message": "x" * (MAX_BODY + 1)})
    clock.advance(31 * 60)
    pages["draft after session end"] = browser.submit(pages["ticket"], f"/tickets/{ticket}/reply", message="Draft")
    visitor = portal.browser()
    pages["sign-in"] = visitor.get(portal.url("/"))
    pages["sign-in with notice"] = visitor.get(portal.url("/?notice=signed_out"))
    pages["sign-in error"] = visitor.submit(pages["sign-in"], "/auth/request", email="not an address")
    pages["link sent"] = visitor.submit(pages["sign-in"], "/auth/request", email="jane@example.com")
    pages["verify"] = visitor.get(local(smtp.link_for("jane@example.com")))
    pages["invalid link"] = visitor.get(portal.url("/auth/verify?token=nope"))
    for name, page in pages.items():
        assert page.header("Content-Type").startswith("text/html"), name
        assert inline_problems(page) == [], (name, inline_problems(page))
    assert pages["reply retry"].status in (502, 503)
    assert pages["draft after session end"].status == 401 and "Draft" in pages["draft after session end"]


def test_the_inline_scanner_catches_what_it_is_meant_to_catch():
    class Fake:
        text = '<p style="x">a</p><style>p{}</style><script>alert(1)</script><a onclick="y" href="javascript:z">'
    assert len(inline_problems(Fake)) == 6


# ---------------------------------------------------------------------------
# 12. Logs
# ---------------------------------------------------------------------------

REQUEST_LINE = re.compile(r"request (GET|POST|HEAD|PUT|PATCH|DELETE) (\S+) (\d{3}) (\d+(?:\.\d+)?)ms")
CHATWOOT_LINE = re.compile(r"chatwoot (GET|POST|PATCH|PUT|DELETE) (/\S*) (\d{3}|timeout|unreachable|error) (\d+(?:\.\d+)?)ms")
SMTP_LINE = re.compile(r"smtp send to=(\S+) (sent|failed.*) (\d+(?:\.\d+)?)ms")


def _journey(portal, smtp, fake, caplog):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, subject="Printer jam")
    fake.add_message(ticket, "The printer jams.")
    fake.reset_calls()
    caplog.set_level(logging.INFO, logger="portal")
    browser, _ = sign_in(portal, smtp, "jane@example.com")
    page = browser.get(portal.url(f"/tickets/{ticket}"))
    assert page.status == 200
    return browser, ticket


def test_every_request_gets_one_line_with_method_route_status_and_duration(portal, smtp, fake, caplog):
    browser, ticket = _journey(portal, smtp, fake, caplog)
    lines = [r.getMessage() for r in portal_records(caplog) if r.getMessage().startswith("request ")]
    matches = [REQUEST_LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    logged = [(m.group(1), m.group(2), int(m.group(3))) for m in matches]
    assert logged == [
        ("GET", "/", 200),
        ("POST", "/auth/request", 200),
        ("GET", "/auth/verify", 200),
        ("POST", "/auth/verify", 303),
        ("GET", "/dashboard", 200),
        ("GET", "/tickets/:ticket_id", 200),
    ]
    assert [status for _, _, status in browser.history] == [status for _, _, status in logged]


def test_an_unknown_route_is_logged_without_its_path(portal, caplog):
    caplog.set_level(logging.INFO, logger="portal")
    portal.browser().get(portal.url("/secret-looking-path-jane@example.com"))
    lines = [r.getMessage() for r in portal_records(caplog) if r.getMessage().startswith("request ")]
    assert len(lines) == 1 and " 404 " in lines[0]
    assert "secret-looking" not in lines[0] and "@" not in lines[0]


def test_every_chatwoot_call_gets_a_line_with_method_route_status_and_duration(portal, smtp, fake, caplog):
    _journey(portal, smtp, fake, caplog)
    lines = [r.getMessage() for r in portal_records(caplog) if r.getMessage().startswith("chatwoot ")]
    matches = [CHATWOOT_LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    logged = collections.Counter((m.group(1), m.group(2)) for m in matches)
    called = collections.Counter((method, chatwoot_route(path, fake.account_id)) for method, path, _ in fake.calls)
    assert logged == called
    assert ("POST", "/contacts/filter") in logged
    assert all(m.group(3) == "200" for m in matches)


def test_the_mail_gets_a_line_naming_the_recipient_by_pseudonym_only(portal, smtp, fake, caplog):
    _journey(portal, smtp, fake, caplog)
    lines = [r.getMessage() for r in portal_records(caplog) if r.getMessage().startswith("smtp ")]
    assert len(lines) == 1
    match = SMTP_LINE.fullmatch(lines[0])
    assert match and match.group(2) == "sent"
    assert "@" not in match.group(1) and "jane" not in match.group(1).lower()


def test_no_address_token_cookie_or_secret_reaches_the_logs(portal, smtp, fake, caplog):
    browser, ticket = _journey(portal, smtp, fake, caplog)
    browser.submit(browser.get(portal.url(f"/tickets/{ticket}")), f"/tickets/{ticket}/reply", message="More")
    browser.submit(browser.get(portal.url("/dashboard")), "/logout")
    link = smtp.link_for("jane@example.com")
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]
    text = log_text(caplog)
    assert portal_records(caplog), "nothing was logged"
    assert not ADDRESS.search(text), ADDRESS.search(text)
    forbidden = {
        "magic token": token,
        "SESSION_SECRET": SECRET,
        "Chatwoot API token": fake.token,
        "csrf cookie": browser.cookies["portal_csrf"],
    }
    for name, value in forbidden.items():
        assert value not in text, name


def test_the_session_cookie_never_reaches_the_logs(portal, smtp, fake, caplog):
    browser, ticket = _journey(portal, smtp, fake, caplog)
    cookie = browser.cookies[SESSION]
    session_id, _, signature = cookie.rpartition(".")
    browser.get(portal.url("/dashboard"))
    text = log_text(caplog)
    for part in (cookie, session_id, signature):
        assert part not in text


def test_the_address_is_logged_as_a_stable_keyed_pseudonym(portal, smtp, fake, caplog):
    _journey(portal, smtp, fake, caplog)
    caplog.clear()
    bob = portal.browser()
    bob.submit(bob.get(portal.url("/")), "/auth/request", email="Bob@Example.com")
    bob.submit(bob.get(portal.url("/")), "/auth/request", email="bob@example.com")
    names = re.findall(r"(?:email|to)=(\S+)", log_text(caplog))
    assert len(names) >= 4
    assert len(set(names)) == 1, names  # the same person reads the same in every line
    caplog.clear()
    jane = portal.browser()
    jane.submit(jane.get(portal.url("/")), "/auth/request", email="jane@example.com")
    jane_names = set(re.findall(r"(?:email|to)=(\S+)", log_text(caplog)))
    assert len(jane_names) == 1 and jane_names != set(names)
    plain_hashes = [hashlib.new(algorithm, b"bob@example.com").hexdigest()
                    for algorithm in ("md5", "sha1", "sha256")]
    for pseudonym in names[:1]:
        assert not any(digest.startswith(pseudonym.lower()) or pseudonym.lower() in digest
                       for digest in plain_hashes), "an unkeyed hash of an address is reversible"


def test_an_unknown_address_does_not_reach_the_logs_either(portal, smtp, caplog):
    caplog.set_level(logging.INFO, logger="portal")
    browser = portal.browser()
    browser.submit(browser.get(portal.url("/")), "/auth/request", email="stranger@example.org")
    browser.submit(browser.get(portal.url("/")), "/auth/request", email="not an address")
    assert portal_records(caplog)
    text = log_text(caplog)
    assert "stranger" not in text and "not an address" not in text


def test_a_rate_limited_address_does_not_reach_the_logs(portal, smtp, caplog):
    caplog.set_level(logging.INFO, logger="portal")
    browser = portal.browser()
    for _ in range(SIGNIN_PER_ADDRESS[0] + 1):
        page = browser.submit(browser.get(portal.url("/")), "/auth/request", email="jane@example.com")
    assert page.status == 429
    assert not ADDRESS.search(log_text(caplog))


def test_an_smtp_rejection_echoing_the_address_does_not_put_it_in_the_logs(portal, smtp, caplog):
    # Real servers often quote the recipient in their reply text.
    caplog.set_level(logging.INFO, logger="portal")
    smtp.fail_with = "550 5.7.1 <jane@example.com>: Message rejected by policy"
    browser = portal.browser()
    page = browser.submit(browser.get(portal.url("/")), "/auth/request", email="jane@example.com")
    assert page.status == 503
    text = log_text(caplog)
    assert "smtp send" in text
    assert "jane@example.com" not in text, [line for line in text.splitlines() if "jane@" in line]


class _RefuseRecipients:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return "550 5.1.1 Mailbox unavailable"


@pytest.fixture
def refusing_smtp():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(_RefuseRecipients(), hostname="127.0.0.1", port=port)
    controller.start()
    controller.port = port
    yield controller
    controller.stop()


def test_a_refused_recipient_does_not_put_the_address_in_the_logs(fake, refusing_smtp, clock, caplog):
    running = conftest.start_portal(conftest.portal_settings(fake, refusing_smtp), clock)
    try:
        caplog.set_level(logging.INFO, logger="portal")
        browser = running.browser()
        page = browser.submit(browser.get(running.url("/")), "/auth/request", email="jane@example.com")
        assert page.status == 503
        assert "We could not send the e-mail right now" in page
        text = log_text(caplog)
        assert "jane@example.com" not in text, [line for line in text.splitlines() if "jane@" in line]
    finally:
        running.close()


# ---------------------------------------------------------------------------
# 9. Routing
# ---------------------------------------------------------------------------

def test_an_unknown_route_is_a_localized_404_page(portal):
    page = portal.browser().get(portal.url("/no/such/page"))
    assert page.status == 404
    assert page.header("Content-Type").startswith("text/html")
    assert "Page not found" in page
    page = portal.browser(**{"Accept-Language": "es"}).get(portal.url("/no/such/page"))
    assert page.status == 404
    assert "Página no encontrada" in page and '<html lang="es">' in page.text


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/logout", {"POST"}),
    ("GET", "/lang", {"POST"}),
    ("GET", "/tickets", {"POST"}),
    ("GET", "/tickets/7/reply", {"POST"}),
    ("POST", "/dashboard", {"GET"}),
    ("PUT", "/tickets/7", {"GET"}),
    ("DELETE", "/auth/verify", {"GET", "POST"}),
    ("PATCH", "/", {"GET"}),
    ("POST", "/healthz", {"GET"}),
])
def test_a_wrong_method_is_405_with_an_allow_header(portal, fake, method, path, allowed):
    browser = portal.browser()
    browser.get(portal.url("/"))
    fake.reset_calls()
    page = browser.request(method, portal.url(path), body=b"", follow=False)
    assert page.status == 405
    assert {m.strip() for m in page.header("Allow").split(",")} >= allowed
    assert "This page cannot be used that way." in page
    assert fake.calls == []


def test_a_body_over_256_kib_is_refused_with_413_and_changes_nothing(portal, fake, jane):
    browser, _, ticket = jane
    page = browser.get(portal.url(f"/tickets/{ticket}"))
    messages_before = len(fake.messages_of(ticket))
    fake.reset_calls()
    answer = browser.submit(page, f"/tickets/{ticket}/reply", message="x" * MAX_BODY)
    assert answer.status == 413
    assert "That was too much text" in answer
    assert fake.calls == []
    assert len(fake.messages_of(ticket)) == messages_before


def test_a_body_just_under_the_limit_is_read_and_judged_by_the_form_rules(portal, fake, jane):
    browser, _, ticket = jane
    page = browser.get(portal.url(f"/tickets/{ticket}"))
    answer = browser.submit(page, f"/tickets/{ticket}/reply", message="x" * (MAX_BODY - 2000))
    assert answer.status == 400
    assert "The message is too long" in answer


@pytest.mark.parametrize("path", ["/tickets/abc", "/tickets/1abc", "/tickets/-1", "/tickets/1.0",
                                  "/tickets/%D9%A1", "/tickets/12345678901", "/tickets/", "/tickets/1/"])
def test_a_non_numeric_ticket_id_is_404_without_asking_chatwoot(portal, fake, jane, path):
    browser, _, _ = jane
    fake.reset_calls()
    page = browser.get(portal.url(path))
    assert page.status == 404
    assert "Page not found" in page
    assert fake.calls == []


def test_a_post_to_a_non_numeric_ticket_is_404(portal, fake, jane):
    browser, page, _ = jane
    fake.reset_calls()
    answer = browser.post(portal.url("/tickets/abc/cancel"), {"csrf_token": csrf_of(page)})
    assert answer.status == 404
    assert fake.calls == []


@pytest.mark.parametrize("path", ["/portal", "/"])
def test_the_bare_base_path_redirects_to_the_sign_in_page(portal, path):
    browser = portal.browser()
    answer = browser.get(path, follow=False)
    assert answer.status in (301, 302, 303, 307, 308)
    assert answer.header("Location") == "/portal/"
    assert "Sign in to see your tickets" in browser.get(path)


@pytest.mark.parametrize("path", ["/elsewhere", "/portalx", "/portal-admin/", "/static/style.css",
                                  "/healthz", "/dashboard", "/PORTAL/"])
def test_paths_outside_the_base_path_are_404(portal, path):
    page = portal.browser().get(path, follow=False)
    assert page.status == 404
    assert "Page not found" in page


def test_healthz_answers_json_ok(portal, fake):
    fake.reset_calls()
    page = portal.browser().get(portal.url("/healthz"))
    assert page.status == 200
    assert page.header("Content-Type").startswith("application/json")
    assert page.header("Content-Disposition").startswith("attachment")  # never rendered as a page
    assert json.loads(page.body)["status"] == "ok"


def _asset_urls(page):
    found = {
        "stylesheet": re.search(r'<link rel="stylesheet" href="([^"]+)"', page.text),
        "script": re.search(r'<script src="([^"]+)"', page.text),
        "favicon": re.search(r'<link rel="icon"[^>]*href="([^"]+)"', page.text),
        "logo": re.search(r'<img src="([^"]*/brand/logo\.png[^"]*)"', page.text),
    }
    assert all(found.values()), found
    return {name: match.group(1).replace("&amp;", "&") for name, match in found.items()}


def _max_age(page):
    match = re.search(r"max-age=(\d+)", page.header("Cache-Control") or "")
    return int(match.group(1)) if match else 0


def test_static_and_brand_files_are_served_at_the_versioned_url_of_the_page(portal):
    browser = portal.browser()
    urls = _asset_urls(browser.get(portal.url("/")))
    on_disk = {
        "stylesheet": (REPO / "static" / "style.css", "text/css"),
        "script": (REPO / "static" / "portal.js", "javascript"),
        "favicon": (REPO / "static" / "brand" / "logo_thumbnail.png", "image/png"),
        "logo": (REPO / "static" / "brand" / "logo.png", "image/png"),
    }
    for name, url in urls.items():
        assert url.startswith("/portal/"), url
        assert re.search(r"[?&]v=[\w-]{6,}", url), url
        page = browser.get(url)
        path, content_type = on_disk[name]
        assert page.status == 200, name
        assert page.body == path.read_bytes(), name
        assert content_type in page.header("Content-Type"), name
        assert _max_age(page) >= 30 * 24 * 3600, (name, page.header("Cache-Control"))
        assert "no-store" not in page.header("Cache-Control")


def test_a_stale_asset_version_gets_only_a_short_cache(portal):
    browser = portal.browser()
    for path in ("/static/style.css?v=stale", "/brand/logo.png?v=stale", "/brand/favicon.png"):
        page = browser.get(portal.url(path))
        assert page.status == 200
        assert _max_age(page) < 24 * 3600, (path, page.header("Cache-Control"))
        assert "immutable" not in page.header("Cache-Control")


def test_the_asset_version_follows_the_file_content(fake, smtp, clock, portal, tmp_path):
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n other logo")
    (tmp_path / "logo_thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n other favicon")
    running = conftest.start_portal(conftest.portal_settings(fake, smtp, BRAND_ASSETS_DIR=str(tmp_path)), clock)
    try:
        browser = running.browser()
        urls = _asset_urls(browser.get(running.url("/")))
        default = _asset_urls(portal.browser().get(portal.url("/")))
        assert urls["logo"] != default["logo"] and urls["favicon"] != default["favicon"]
        assert urls["stylesheet"] == default["stylesheet"]
        assert browser.get(urls["logo"]).body == b"\x89PNG\r\n\x1a\n other logo"
        assert browser.get(urls["favicon"]).body == b"\x89PNG\r\n\x1a\n other favicon"
    finally:
        running.close()


@pytest.mark.parametrize("path", ["/static/nope.css", "/static/..%2Fconfig.py", "/static/%2E%2E/portal.py",
                                  "/brand/logo_thumbnail.png", "/brand/..%2F..%2Fconfig.py", "/static/"])
def test_an_unknown_or_escaping_file_path_is_404(portal, path):
    page = portal.browser().get(portal.url(path))
    assert page.status == 404
    assert b"SESSION_SECRET" not in page.body and b"import " not in page.body


def test_a_csrf_token_with_non_ascii_characters_is_refused_with_403_not_a_crash(portal):
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    fields = dict(page.form("/auth/request").fields, csrf_token="é" * 43, email="jane@example.com")
    assert browser.post(portal.url("/auth/request"), fields).status == 403


def test_a_session_cookie_with_non_ascii_characters_just_means_signed_out(portal):
    browser = portal.browser()  # no cookies of its own: the raw header below is all it sends
    raw_cookie = "portal_session=abc.\u00e9\u00e9".encode("utf-8").decode("latin-1")
    page = browser.request("GET", portal.url("/dashboard"), headers={"Cookie": raw_cookie})
    assert page.status == 200 and "/portal/?" in page.url


def test_every_post_route_but_the_self_authenticated_webhook_is_in_the_csrf_test():
    import portal as portal_module

    routes = {portal_module._route_label(pattern).replace(":ticket_id", "N")
              for method, pattern, handler in portal_module.ROUTES
              if method == "POST" and handler not in portal_module.SELF_AUTHENTICATED}
    assert routes == set(POST_ROUTES)
