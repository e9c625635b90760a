"""Fuzz the WSGI entry point: hypothesis-generated raw environs straight into
`portal.Portal(config)` (method, path, query, headers, cookies, body).

No uncaught exception, no 500, no traceback in a body, and every response with
the security headers. FUZZ_EXAMPLES sets the number of requests (default 2000 for
`make test`; `make fuzz` runs 100,000 and prints the count).
"""

import io
import os
import secrets
import sys
import tempfile
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import portal  # noqa: E402
from config import load_config  # noqa: E402
from fake_chatwoot import FakeChatwoot  # noqa: E402
from mailer import ConsoleMailer  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
# make test fuzzes the same requests every time (no flaky CI); make fuzz explores.
DERANDOMIZE = os.environ.get("HYPOTHESIS_RANDOM") != "1"
BASE = "/portal"
SECRET = "test-secret-0123456789abcdef0123456789abcdef"
KNOWN_STATUSES = {200, 303, 400, 401, 403, 404, 405, 409, 413, 429}
SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options")


@pytest.fixture(scope="module")
def app():
    fake = FakeChatwoot(token="test-token").start()
    api_inbox = fake.add_inbox("Customer Portal", "Channel::Api")
    email_inbox = fake.add_inbox("Support email", "Channel::Email")
    jane = fake.add_contact("Jane Doe", "jane@example.com")
    bob = fake.add_contact("Bob Stone", "bob@example.com")
    fake.add_conversation(jane, api_inbox, subject="Printer on fire")
    fake.add_conversation(jane, email_inbox, subject="By mail", status="resolved")
    fake.add_conversation(bob, api_inbox, subject="Not Jane's")
    config = load_config({
        "PORT": "3001", "BASE_PATH": BASE, "PORTAL_URL": "http://portal.test",
        "CHATWOOT_URL": fake.url, "CHATWOOT_API_TOKEN": fake.token,
        "CHATWOOT_ACCOUNT_ID": str(fake.account_id), "CHATWOOT_INBOX_ID": str(api_inbox),
        "CHATWOOT_TIMEOUT": "2", "SESSION_SECRET": SECRET, "SMTP_ADDRESS": "127.0.0.1", "SMTP_PORT": "25",
        "SMTP_SECURITY": "none", "SMTP_FROM": "support@example.com", "WEBHOOK_SECRET": "webhook-secret-0123456789",
        "TRUSTED_PROXY": "127.0.0.1", "STATE_DIR": tempfile.mkdtemp(prefix="portal-fuzz-"),
    }, dotenv_path=None)
    application = portal.Portal(config, mailer=ConsoleMailer(io.StringIO()))
    session = application.sessions.create(jane, "jane@example.com", "Jane Doe")
    seed = secrets.token_urlsafe(32)
    application.fuzz_cookie = (f"{portal.SESSION_COOKIE}={application.signer.sign('session', session.id)}; "
                               f"{portal.CSRF_COOKIE}={seed}")
    application.fuzz_token = application.signer.signature("csrf", f"{seed}|{session.id}")
    application.fuzz_session = session
    yield application
    print(f"\nfuzz: {COUNT['requests']} requests, statuses {dict(sorted(COUNT['statuses'].items()))}")
    application.close()
    fake.stop()


COUNT = {"requests": 0, "statuses": {}}

LATIN1 = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=40)
PIECES = st.sampled_from([
    "", "/", "dashboard", "tickets", "new", "1", "2", "3", "0", "4294967296", "attachments", "reply", "cancel",
    "rating", "auth", "request", "verify", "code", "lang", "logout", "healthz", "webhooks", "chatwoot", "static",
    "portal.css", "portal.js", "brand", "logo.png", "favicon.png", "..", "%2e%2e", "%2f", "\\", "//", "\x00", "é",
    "\xff", "?", "#", ";", "portal",
])
PATH = st.one_of(
    st.lists(PIECES, max_size=6).map(lambda parts: BASE + "/" + "/".join(parts)),
    LATIN1.map(lambda text: BASE + text),
    LATIN1,
    st.sampled_from(["", "/", BASE, BASE + "/", "/portalx", "//portal/", BASE + "//dashboard"]),
)
QUERY_VALUE = st.one_of(LATIN1, st.sampled_from(["open", "resolved", "all", "2", "-1", "99999999999", "thumb",
                                                 "/dashboard", "//evil.example", "session_expired", "es", "en"]))
QUERY = st.one_of(
    LATIN1,
    st.lists(st.tuples(st.sampled_from(["status", "q", "page", "next", "notice", "token", "v", "size", "secret", "",
                                        "x"]), QUERY_VALUE), max_size=25).map(urllib.parse.urlencode),
)
CONTENT_TYPE = st.one_of(st.none(), LATIN1, st.sampled_from([
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=B", "multipart/form-data",
    "multipart/form-data; boundary=", "text/plain", "application/json", "MULTIPART/form-data; boundary=\"B\"",
]))
CONTENT_LENGTH = st.one_of(st.none(), st.just("body"), st.sampled_from(
    ["", "0", "-1", "abc", "1e9", "99999999999999999999", str(256 * 1024 + 1), " 3", "١٢"]))
FIELDS = st.lists(st.tuples(
    st.sampled_from(["email", "next", "token", "code", "subject", "message", "priority", "form_id", "rating",
                     "feedback", "lang", "csrf_token", "x", ""]),
    st.one_of(LATIN1, st.sampled_from(["jane@example.com", "high", "none", "5", "es", "/dashboard",
                                       "123456", "x" * 12000]))), max_size=12)


def _multipart(fields, files):
    pieces = [f'--B\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode("utf-8")
              for name, value in fields]
    pieces += [f'--B\r\nContent-Disposition: form-data; name="attachments[]"; filename="{name}"\r\n'
               f"Content-Type: application/octet-stream\r\n\r\n".encode("utf-8") + data + b"\r\n"
               for name, data in files]
    return b"".join(pieces) + b"--B--\r\n"


BODY = st.one_of(
    st.binary(max_size=300),
    st.tuples(FIELDS, st.booleans()),
    st.tuples(FIELDS, st.lists(st.tuples(st.sampled_from(["a.png", "b.txt", "../c.pdf", "d.exe", ""]),
                                         st.sampled_from([b"\x89PNG\r\n\x1a\nxx", b"hello", b"%PDF-1", b""])),
                               max_size=7), st.booleans()),
)
HEADER_NAMES = st.sampled_from(["HTTP_ACCEPT_LANGUAGE", "HTTP_X_FORWARDED_FOR", "HTTP_X_CHATWOOT_SIGNATURE",
                                "HTTP_X_CHATWOOT_TIMESTAMP", "HTTP_HOST", "HTTP_REFERER", "HTTP_ORIGIN",
                                "HTTP_USER_AGENT", "HTTP_IF_NONE_MATCH", "REMOTE_ADDR"])
COOKIE = st.one_of(st.none(), LATIN1, st.just("signed-in"), st.sampled_from([
    "portal_session=x.y", "portal_csrf=" + "a" * 43, "portal_lang=es", "portal_lang=zz; portal_lang=es",
    "portal_address=abc.def", "a=b; c", "=;=;", 'portal_session="quoted"',
]))


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=DERANDOMIZE,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(method=st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "post"]), LATIN1),
       path=PATH, query=QUERY, cookie=COOKIE, content_type=CONTENT_TYPE, content_length=CONTENT_LENGTH, body=BODY,
       with_token=st.booleans(), headers=st.dictionaries(HEADER_NAMES, LATIN1, max_size=4))
def test_wsgi_entry_point_survives_any_request(app, method, path, query, cookie, content_type, content_length, body,
                                               with_token, headers):
    if isinstance(body, tuple):
        fields = list(body[0]) + ([("csrf_token", app.fuzz_token)] if body[-1] or with_token else [])
        if len(body) == 3:
            body, content_type = _multipart(fields, body[1]), content_type or "multipart/form-data; boundary=B"
        else:
            body = urllib.parse.urlencode(fields).encode("utf-8")
            content_type = content_type or "application/x-www-form-urlencoded"
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "portal.test",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "192.0.2.9",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr}
    environ.update(headers)
    if cookie is not None:
        environ["HTTP_COOKIE"] = app.fuzz_cookie if cookie == "signed-in" else cookie
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    if content_length is not None:
        environ["CONTENT_LENGTH"] = str(len(body)) if content_length == "body" else content_length
    app.sessions.get(app.fuzz_session.id) or app.sessions._sessions.setdefault(app.fuzz_session.id,
                                                                                 app.fuzz_session)
    captured = {}

    def start_response(status, response_headers, exc_info=None):
        assert "status" not in captured, "start_response called twice"
        captured["status"], captured["headers"] = status, response_headers

    result = app(environ, start_response)
    try:
        payload = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    status = int(captured["status"].split()[0])
    COUNT["requests"] += 1
    COUNT["statuses"][status] = COUNT["statuses"].get(status, 0) + 1
    assert status in KNOWN_STATUSES, (status, payload[:300])
    assert b"Traceback" not in payload
    names = {name for name, _ in captured["headers"]}
    assert all(name in names for name in SECURITY_HEADERS), captured["headers"]
    for name, value in captured["headers"]:
        assert "\n" not in value and "\r" not in value, (name, value)
    if method.upper() == "HEAD":
        assert payload == b""
