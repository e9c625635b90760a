"""Nothing typed is lost, and the sign-in pages know where the customer stands.

End to end through real sockets: a form refused by its CSRF check or for its size
comes back filled in with a fresh token; text typed as the session ended comes
back in its form after signing in again; a dead sign-in link opened by a signed-in
browser says so; the language switch keeps the sign-in confirmation; and every
413, whatever the size announced, is the portal's own page. Then waitress' parser
as the portal sets it up, on its own.
"""

import html
import io
import logging
import re
import socket
import time
import urllib.parse

import pytest
from waitress.adjustments import Adjustments

import oversize
from browser import encode_multipart
from conftest import portal_settings, sign_in, start_portal

JANE = "jane@example.com"
BOB = "bob@example.com"
SESSION = "portal_session"
ADDRESS = "portal_address"
MAGIC_LINK_MINUTES = 15
IDLE = 31 * 60  # past the 30-minute session
NOW = 1_800_000_000  # the portal's FakeClock at the start of a test
RELOADED = "For your security the form had to be reloaded: check it and send it again."
TOO_LARGE = "What you sent is larger than we accept, so nothing was sent."
RESTORED = "What you typed before signing in again is back in the form"
HOSTILE = 'Printer <script>alert("x")</script> & "quotes"'
SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy")


@pytest.fixture
def jane(portal, smtp):
    browser, page = sign_in(portal, smtp, JANE)
    assert page.url.endswith("/portal/dashboard"), page.url
    return browser


def local(link):
    return urllib.parse.urlsplit(link)._replace(scheme="", netloc="").geturl()


def token_of(link):
    return urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]


def code_for(smtp, address):
    for message in reversed(smtp.messages):
        if message["To"] == address:
            match = re.search(r": ([0-9]{3}) ([0-9]{3})\r?$", message.get_body(("plain",)).get_content(), re.M)
            return match.group(1) + match.group(2)
    raise AssertionError(f"no mail to {address}")


def selected_priority(page):
    found = re.findall(r'<option value="(\w+)" selected>', page.text)
    return found[0] if found else None


def checked_rating(page):
    found = re.findall(r'<input type="radio" name="rating" value="(\d)" checked', page.text)
    return found[0] if found else None


def ticket_with_survey(fake):
    """A resolved ticket of Jane's whose CSAT survey is open."""
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer on fire", "resolved", created_at=NOW - 86400)
    fake.add_message(ticket, "My printer is on fire.", "incoming", created_at=NOW - 86400)
    fake.add_message(ticket, "Please rate the conversation", "template", content_type="input_csat",
                     content_attributes={"display_type": "emoji"}, created_at=NOW - 3600)
    return ticket


def words(page):
    return html.unescape(page.text)


def log_text(caplog):
    return "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("portal", "waitress"))


# ---------------------------------------------------------------------------
# 5. A dead sign-in link in a signed-in browser
# ---------------------------------------------------------------------------

def test_a_used_link_opened_while_signed_in_says_you_are_already_signed_in(portal, smtp, jane):
    page = jane.get(local(smtp.link_for(JANE)))  # the link that signed Jane in
    assert page.status == 200
    assert "You're already signed in" in words(page)
    assert "This sign-in link no longer works" not in words(page)
    assert 'href="/portal/dashboard"' in page.text and "Go to my tickets" in page
    assert page.header("Referrer-Policy") == "no-referrer"


def test_an_expired_link_posted_while_signed_in_says_you_are_already_signed_in(portal, smtp, clock, jane):
    other = portal.browser()
    other.submit(other.get(portal.url("/")), "/auth/request", email=JANE)
    confirm = jane.get(local(smtp.link_for(JANE)))  # a second mail, opened while signed in
    assert confirm.status == 200 and confirm.form("/auth/verify")
    clock.advance(MAGIC_LINK_MINUTES * 60 + 1)
    jane.get(portal.url("/dashboard"))  # still active: the session lives on, the link does not
    page = jane.submit(confirm, "/auth/verify")
    assert page.status == 200
    assert "You're already signed in" in words(page)
    assert "This sign-in link no longer works" not in words(page)
    assert 'href="/portal/dashboard"' in page.text


# ---------------------------------------------------------------------------
# 6. CSRF refusals bring the form back filled in
# ---------------------------------------------------------------------------

def test_a_new_ticket_with_a_stale_token_comes_back_filled_in_and_sends_on_the_second_press(portal, fake, jane):
    page = jane.get(portal.url("/tickets/new"))
    fake.reset_calls()
    answer = jane.submit(page, "/tickets", csrf_token="stale-token", subject=HOSTILE,
                         message="Line one\nLine two", priority="high")
    assert answer.status == 403
    assert RELOADED in answer
    assert fake.calls == []  # nothing asked of, or sent to, Chatwoot
    assert "<script>alert" not in answer.text and "&lt;script&gt;" in answer.text
    form = answer.form("/tickets")
    assert (form.fields["subject"], form.fields["message"]) == (HOSTILE, "Line one\nLine two")
    assert selected_priority(answer) == "high"
    assert form.fields["csrf_token"] not in ("", "stale-token")
    created = jane.submit(answer, "/tickets", priority="high")
    assert re.search(r"/portal/tickets/\d+$", created.url), created.url
    assert HOSTILE in html.unescape(created.text)


def test_a_reply_after_the_form_cookie_was_lost_comes_back_filled_in_and_sends(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer on fire")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    del jane.cookies["portal_csrf"]  # a browser that dropped it
    fake.reset_calls()
    answer = jane.submit(page, f"/tickets/{ticket}/reply", message="Still <b>broken</b>")
    assert answer.status == 403
    assert RELOADED in answer
    assert fake.calls == [] and fake.messages_of(ticket) == []
    assert answer.form(f"/tickets/{ticket}/reply").fields["message"] == "Still <b>broken</b>"
    sent = jane.submit(answer, f"/tickets/{ticket}/reply")
    assert sent.url.endswith(f"/portal/tickets/{ticket}")
    assert [m["content"] for m in fake.messages_of(ticket)] == ["Still <b>broken</b>"]


def test_a_rating_with_a_stale_token_comes_back_with_its_choice_and_comment(portal, fake, jane):
    ticket = ticket_with_survey(fake)
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    fake.reset_calls()
    answer = jane.submit(page, f"/tickets/{ticket}/rating", csrf_token="stale", rating="4", feedback="Quick & kind")
    assert answer.status == 403
    assert RELOADED in answer
    assert fake.calls == [] and fake.csat_responses == []
    assert checked_rating(answer) == "4"
    assert answer.form(f"/tickets/{ticket}/rating").fields["feedback"] == "Quick & kind"
    done = jane.submit(answer, f"/tickets/{ticket}/rating", rating="4")
    assert "Thank you for your rating." in done


# ---------------------------------------------------------------------------
# 6. A session that ended: the text comes back after signing in again
# ---------------------------------------------------------------------------

def test_the_sign_in_page_after_the_session_ended_has_the_address_filled_in(portal, smtp, clock, jane):
    clock.advance(IDLE)
    page = jane.get(portal.url("/dashboard"))
    assert "Your session has ended" in page
    assert page.form("/auth/request").fields["email"] == JANE
    # Signed out on purpose: the address is forgotten with the session.
    browser, page = sign_in(portal, smtp, JANE)
    answer = browser.submit(page, "/logout", follow=False)
    assert any(re.match(rf"{ADDRESS}=\"?\"?;", value) for value in answer.headers_named("Set-Cookie"))
    page = browser.get(answer.header("Location"))
    assert ADDRESS not in browser.cookies
    assert page.form("/auth/request").fields["email"] == ""


def test_the_address_cookie_is_signed_http_only_and_bound_to_its_session(portal, smtp, clock):
    browser = portal.browser()
    browser.submit(browser.get(portal.url("/")), "/auth/request", email=JANE)
    answer = browser.submit(browser.get(local(smtp.link_for(JANE))), "/auth/verify", follow=False)
    cookie = next(v for v in answer.headers_named("Set-Cookie") if v.startswith(ADDRESS + "="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/portal" in cookie
    assert JANE not in cookie  # signed, not readable at a glance
    clock.advance(IDLE)
    # Another browser's ended session with Jane's address cookie: no address.
    bob, _ = sign_in(portal, smtp, BOB)
    bob.cookies[ADDRESS] = browser.cookies[ADDRESS]
    clock.advance(IDLE)
    assert bob.get(portal.url("/")).form("/auth/request").fields["email"] == ""
    tampered = browser.cookies[ADDRESS][:-2] + ("AA" if not browser.cookies[ADDRESS].endswith("AA") else "BB")
    browser.cookies[ADDRESS] = tampered
    assert browser.get(portal.url("/")).form("/auth/request").fields["email"] == ""


def test_the_address_cookie_is_secure_over_https(fake, smtp, clock):
    running = start_portal(portal_settings(fake, smtp, PORTAL_URL="https://x.test"), clock)
    try:
        browser = running.browser()
        browser.submit(browser.get(running.url("/")), "/auth/request", email=JANE)
        answer = browser.submit(browser.get(local(smtp.link_for(JANE))), "/auth/verify", follow=False)
        cookie = next(v for v in answer.headers_named("Set-Cookie") if v.startswith(ADDRESS + "="))
        assert "Secure" in cookie
    finally:
        running.close()


def test_a_new_ticket_typed_as_the_session_ended_comes_back_after_signing_in_by_link(
        portal, fake, smtp, clock, jane, caplog):
    caplog.set_level(logging.DEBUG)
    page = jane.get(portal.url("/tickets/new"))
    clock.advance(IDLE)
    answer = jane.submit(page, "/tickets", subject="Toner empty", message="Secret draft words", priority="urgent")
    assert answer.status == 401
    assert "Your session has ended" in answer
    assert "Secret draft words" in words(answer)  # to copy, as before
    assert answer.form("/auth/request").fields["email"] == JANE
    assert "it will be back in the form for you" in answer
    answer = jane.submit(answer, "/auth/request")
    link = smtp.link_for(JANE)
    assert "Secret" not in link and "Secret" not in smtp.messages[-1].as_string()
    page = jane.submit(jane.get(local(link)), "/auth/verify")
    assert page.url.endswith("/portal/tickets/new")
    assert RESTORED in page
    form = page.form("/tickets")
    assert (form.fields["subject"], form.fields["message"]) == ("Toner empty", "Secret draft words")
    assert selected_priority(page) == "urgent"
    created = jane.submit(page, "/tickets", priority="urgent")
    assert re.search(r"/portal/tickets/\d+$", created.url)
    assert "Secret draft words" not in jane.get(portal.url("/tickets/new")).text  # sent: the draft is gone
    assert "Secret draft words" not in log_text(caplog)


def test_a_reply_typed_as_the_session_ended_comes_back_after_signing_in_by_code(portal, fake, smtp, clock, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer on fire")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    clock.advance(IDLE)
    answer = jane.submit(page, f"/tickets/{ticket}/reply", message="It smokes again")
    assert answer.status == 401
    sent = jane.submit(answer, "/auth/request")
    page = jane.submit(sent, "/auth/code", code=code_for(smtp, JANE))
    assert page.url.endswith(f"/portal/tickets/{ticket}")
    assert page.form(f"/tickets/{ticket}/reply").fields["message"] == "It smokes again"
    assert RESTORED in page
    assert fake.messages_of(ticket) == []  # nothing sent until the customer presses the button


def test_a_rating_typed_as_the_session_ended_comes_back_after_signing_in(portal, fake, smtp, clock, jane):
    ticket = ticket_with_survey(fake)
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    clock.advance(IDLE)
    answer = jane.submit(page, f"/tickets/{ticket}/rating", rating="5", feedback="Lovely service")
    assert answer.status == 401
    sent = jane.submit(answer, "/auth/request")
    page = jane.submit(sent, "/auth/code", code=code_for(smtp, JANE))
    assert page.url.endswith(f"/portal/tickets/{ticket}")
    assert checked_rating(page) == "5"
    assert page.form(f"/tickets/{ticket}/rating").fields["feedback"] == "Lovely service"
    assert fake.csat_responses == []


def test_a_draft_never_goes_to_another_address_signing_in_on_the_same_browser(portal, fake, smtp, clock, jane):
    page = jane.get(portal.url("/tickets/new"))
    clock.advance(IDLE)
    answer = jane.submit(page, "/tickets", subject="Jane's own", message="Only for Jane")
    assert answer.status == 401
    sent = jane.submit(answer, "/auth/request", email=BOB)
    page = jane.submit(sent, "/auth/code", code=code_for(smtp, BOB))
    assert "Signed in as bob@example.com" in page
    assert "Only for Jane" not in page.text
    assert "Only for Jane" not in jane.get(portal.url("/tickets/new")).text


def test_a_draft_expires_with_the_time_to_sign_in(portal, fake, smtp, clock, jane):
    page = jane.get(portal.url("/tickets/new"))
    clock.advance(IDLE)
    answer = jane.submit(page, "/tickets", subject="Late", message="Too late now")
    assert answer.status == 401 and "within 30 minutes" in answer
    clock.advance(2 * MAGIC_LINK_MINUTES * 60 + 1)  # time to ask for a link, and the link's own
    page = jane.get(portal.url("/tickets/new"))
    sent = jane.submit(page, "/auth/request")
    page = jane.submit(sent, "/auth/code", code=code_for(smtp, JANE))
    assert page.url.endswith("/portal/tickets/new")  # the page it was typed on...
    assert "Too late now" not in page.text  # ...but the draft is gone


# ---------------------------------------------------------------------------
# 9. The language switch on the sign-in confirmation page
# ---------------------------------------------------------------------------

def test_switching_language_on_the_confirmation_page_keeps_the_link_and_the_sign_in(portal, smtp, caplog):
    caplog.set_level(logging.DEBUG)
    browser = portal.browser()
    browser.submit(browser.get(portal.url("/")), "/auth/request", email=JANE)
    link = local(smtp.link_for(JANE))
    confirm = browser.get(link)
    language_form = confirm.form("/lang")
    assert "token" not in language_form.action  # the token travels in the form's body, not its URL
    answer = browser.submit(confirm, "/lang", lang="es", follow=False)
    assert answer.status == 303
    assert answer.header("Location") == portal.url("/auth/verify?token=" + token_of(link))
    assert answer.header("Referrer-Policy") == "no-referrer"
    page = browser.get(answer.header("Location"))
    assert page.status == 200 and '<html lang="es">' in page.text
    assert page.header("Referrer-Policy") == "no-referrer"
    assert "Pulsa el botón para terminar de entrar" in page
    done = browser.submit(page, "/auth/verify")
    assert done.url.endswith("/portal/dashboard") and "Mis tickets" in done
    assert token_of(link) not in log_text(caplog)


# ---------------------------------------------------------------------------
# 6 and 10. Bodies over the limit: the portal's page, the text kept
# ---------------------------------------------------------------------------

def raw_post(port, path, headers, body, declared, read_timeout=5.0):
    """POST `body` (only part of what `declared` announces) on a socket of its own;
    (status, headers, html, seconds until the whole answer)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: portal.test\r\nContent-Length: {declared}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        sock.sendall(head.encode("latin-1") + body)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:  # the rest of the upload was never read
            pass
    elapsed = time.monotonic() - started
    head, _, page = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0] else 0
    parsed = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
    return status, parsed, page.decode("utf-8", "replace"), elapsed


def header(headers, name):
    return next((value for key, value in headers if key.lower() == name.lower()), None)


def cookie_header(browser):
    return "; ".join(f"{k}={v}" for k, v in browser.cookies.items())


def test_a_new_ticket_announcing_two_gigabytes_comes_back_at_once_in_the_form(portal, fake, jane):
    page = jane.submit(jane.get(portal.url("/tickets/new")), "/lang", lang="es")
    form = page.form("/tickets")
    fields = {"csrf_token": form.fields["csrf_token"], "form_id": form.fields["form_id"],
              "subject": "Vídeo del fallo", "message": "Adjunto el vídeo <grande>", "priority": "medium"}
    body, content_type = encode_multipart(fields, [("files", "fallo.mp4", b"\x00" * 100_000)])
    fake.reset_calls()
    status, headers, text, seconds = raw_post(portal.port, portal.url("/tickets"), {
        "Content-Type": content_type, "Cookie": cookie_header(jane)}, body[:-200], declared=2_000_000_000)
    assert seconds < 3, "the answer waited for the body"
    assert status == 413
    for name in SECURITY_HEADERS:
        assert header(headers, name), name
    assert header(headers, "Connection") == "close"
    assert '<html lang="es">' in text
    assert "Lo que has enviado es más grande de lo que aceptamos" in text
    assert "Vídeo del fallo" in text and "Adjunto el vídeo &lt;grande&gt;" in text
    assert '<option value="medium" selected>' in text
    assert "Vuelve a elegir los archivos" in text
    assert fake.calls == []
    # The fresh token in that page sends the text as it is.
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', text).group(1)
    created = jane.post_multipart(portal.url("/tickets"), dict(fields, csrf_token=csrf), [("files", "", b"")])
    assert re.search(r"/portal/tickets/\d+$", created.url), created.url


def test_a_reply_over_the_limit_sent_slowly_is_answered_once_its_text_is_in(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer on fire")
    form = jane.get(portal.url(f"/tickets/{ticket}")).form(f"/tickets/{ticket}/reply")
    fields = {"csrf_token": form.fields["csrf_token"], "form_id": form.fields["form_id"], "message": "See video"}
    body, content_type = encode_multipart(fields, [("files", "fire.mp4", b"\x00" * 50_000)])
    declared = 2_000_000_000
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", portal.port), timeout=5) as sock:
        sock.sendall((f"POST {portal.url(f'/tickets/{ticket}/reply')} HTTP/1.1\r\nHost: portal.test\r\n"
                      f"Content-Type: {content_type}\r\nContent-Length: {declared}\r\n"
                      f"Cookie: {cookie_header(jane)}\r\n\r\n").encode())
        sock.settimeout(0.01)
        answer, sent = b"", 0
        while time.monotonic() - started < 10 and b"</html>" not in answer:
            if sent < len(body):
                try:
                    sock.sendall(body[sent:sent + 500])  # 500 bytes at a time
                    sent += 500
                except OSError:  # closed after the answer: the rest is never read
                    sent = len(body)
            try:
                answer += sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                pass
            except ConnectionResetError:
                break
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"See video" in answer
    assert sent < 2000, f"{sent} bytes went in before the answer: it waited for more than the text"
    assert fake.messages_of(ticket) == []


def test_a_body_announced_over_the_limit_on_any_form_gets_the_localized_page_at_once(portal):
    browser = portal.browser(**{"Accept-Language": "es"})
    page = browser.get(portal.url("/"))
    status, headers, text, seconds = raw_post(portal.port, portal.url("/auth/request"), {
        "Content-Type": "application/octet-stream", "Accept-Language": "es", "Cookie": cookie_header(browser)},
        b"x" * 10, declared=2_000_000_000)
    assert seconds < 3 and status == 413
    for name in SECURITY_HEADERS:
        assert header(headers, name), name
    assert "Demasiado texto" in text and '<html lang="es">' in text
    assert "generated by" not in text
    assert page.status == 200


def test_a_rating_over_the_limit_comes_back_with_what_fit(portal, fake, jane):
    ticket = ticket_with_survey(fake)
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    fields = dict(page.form(f"/tickets/{ticket}/rating").fields, rating="2", feedback="x" * 300_000)
    answer = jane.post(portal.url(f"/tickets/{ticket}/rating"), fields)
    assert answer.status == 413
    assert "That was too large to send" in answer and TOO_LARGE in answer
    assert checked_rating(answer) == "2"
    assert answer.form(f"/tickets/{ticket}/rating").fields["csrf_token"]
    assert fake.csat_responses == []


def test_a_chunked_body_over_the_limit_gets_the_portals_page(fake, smtp, clock):
    # The smallest limits, so the cut comes after a few megabytes.
    running = start_portal(portal_settings(fake, smtp, ATTACHMENT_MAX_FILES="1", ATTACHMENT_MAX_MB="1"), clock)
    try:
        browser = running.browser()
        page = browser.get(running.url("/"))
        chunk = b"x" * 65536
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40)) + b"0\r\n\r\n"
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall((f"POST {running.url('/auth/request')} HTTP/1.1\r\nHost: portal.test\r\n"
                          "Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n"
                          f"Cookie: {cookie_header(browser)}\r\n\r\n").encode() + chunks)
            answer = b""
            try:
                while part := sock.recv(65536):
                    answer += part
            except ConnectionResetError:
                pass
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b"Content-Security-Policy" in answer and b"That was too much text" in answer
        assert page.status == 200
    finally:
        running.close()


# ---------------------------------------------------------------------------
# waitress' parser as the portal sets it up
# ---------------------------------------------------------------------------

def feed(parser, data, step=8192):
    """Feed `data` as waitress' channel does, one recv-sized read at a time, until the
    request is complete; how many bytes were read from the "socket"."""
    offset = 0
    while not parser.completed and offset < len(data):
        piece = data[offset:offset + step]
        while piece and not parser.completed:
            used = parser.received(piece)
            offset, piece = offset + used, piece[used:]
    return offset


def test_the_parser_keeps_only_the_text_of_a_huge_multipart_body():
    body, content_type = encode_multipart({"message": "Hello"}, [("files", "big.bin", b"\x00" * 3_000_000)])
    head = (f"POST /portal/tickets HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: 2000000000\r\n\r\n").encode()
    parser = oversize.PortalParser(Adjustments(max_request_body_size=1024 * 1024))
    read = feed(parser, head + body)
    assert parser.completed and parser.error is None and parser.body_cut
    assert read <= len(head) + 2 * 8192  # stopped as soon as the file began
    kept = parser.get_body_stream().read()
    assert len(kept) <= oversize.TEXT_PREFIX_BYTES
    assert parser.headers["CONTENT_LENGTH"] == "2000000000" and parser.headers["CONNECTION"] == "close"
    environ = {"CONTENT_TYPE": content_type, "wsgi.input": io.BytesIO(kept)}
    assert oversize.text_fields(environ) == {"message": ["Hello"]}


def test_the_parser_never_keeps_more_than_the_prefix_of_a_form_without_files():
    parser = oversize.PortalParser(Adjustments(max_request_body_size=1024 * 1024))
    head = (b"POST /portal/lang HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 2000000000\r\n\r\n")
    read = feed(parser, head + b"a=" + b"x" * 3_000_000)
    assert parser.completed and parser.error is None
    assert len(parser.get_body_stream().read()) == oversize.TEXT_PREFIX_BYTES
    assert read <= len(head) + oversize.TEXT_PREFIX_BYTES + 8192
