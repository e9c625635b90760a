"""The customer portal's HTTP side: entry point, routes, handlers, cookies.

    python portal.py            serve with waitress (configuration: config.py)
    python portal.py --check    validate the configuration, reach Chatwoot and SMTP
    python portal.py --demo     serve on an embedded fake Chatwoot; links go to the console

A request reads top to bottom in `Portal.__call__`: parse, match a route in ROUTES,
check CSRF on every POST, run the handler, turn known errors into localized pages,
log one line. Handlers parse input, call `chatwoot_client`, render a template; only
`chatwoot_client` talks to Chatwoot and only `mailer` opens SMTP. Chatwoot's webhook
is checked by `webhooks` and queued by `notifications`, whose state is in `storage`.
Nothing typed is lost: a form refused by its CSRF check or for its size comes back
filled in (the text of an oversized body read back by `oversize`), and text typed
as the session ended waits in `drafts` until the customer signs in again.
"""

import argparse
import base64
import hashlib
import hmac
import http
import http.cookies
import ipaddress
import json
import logging
import mimetypes
import os
import re
import secrets
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import jinja2
from markupsafe import Markup

import attachments
import i18n
import oversize
import webhooks
from chatwoot_client import PRIORITIES, STATUS_GROUPS, ChatwootClient, ChatwootError, ChatwootNotFound, ChatwootUnavailable
from chatwoot_client import CSAT_RATINGS, ChatwootRejected
from config import BRAND_FILES, HERE, ConfigError, load_config
from mailer import ConsoleMailer, Mailer, MailError
from markup import agent_markdown
from notifications import Notifier
from security import MAX_WRONG_CODES, Signer
from storage import StateError, StateUnavailable, check_redis, check_writable, open_stores, redacted_url

log = logging.getLogger("portal")

# Form limits. The body cap leaves room for a full-length message in any script
# (url-encoding can triple UTF-8); nginx.conf.example uses the same figure.
MAX_BODY_BYTES = 256 * 1024
SUBJECT_MAX_CHARS = 150
SEARCH_MAX_CHARS = 100
MAX_PAGE = 10_000
MESSAGE_MAX_CHARS = 10_000
# A rating's comment: Chatwoot takes any length; a comment is not a new ticket.
FEEDBACK_MAX_CHARS = 1000
EMAIL_MAX_CHARS = 254  # RFC 5321 path limit

# Sign-in requests: per address, so nobody floods one inbox; per client IP, so one
# client cannot walk through many addresses (or many Chatwoot lookups).
# The IP limit leaves room for an office of customers behind one NAT address.
SIGNIN_PER_ADDRESS = (8, 15 * 60)
SIGNIN_PER_IP = (40, 15 * 60)

# Chatwoot's clock against ours when looking for a write whose answer was lost;
# on the same host they agree, across hosts NTP keeps them within this.
CLOCK_SLACK_SECONDS = 120

SESSION_COOKIE = "portal_session"
CSRF_COOKIE = "portal_csrf"
LANG_COOKIE = "portal_lang"
LANG_COOKIE_MAX_AGE = 365 * 24 * 3600
# The address of this browser's session, bound to its id: prefills the sign-in
# form once the session has ended. Lives as long as the session cookie does.
ADDRESS_COOKIE = "portal_address"

# One line per content type; nothing inline, so an injected <script> or style
# attribute cannot run even if escaping ever failed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
]

# One plain address: no spaces, and none of the characters that make an address
# list or a display name in a mail header (RFC 5322 specials).
_ADDRESS_CHARACTER = r"[^\s@,;:<>()\[\]\"\\]"
EMAIL_PATTERN = re.compile(rf"{_ADDRESS_CHARACTER}+@{_ADDRESS_CHARACTER}+\.[^\s@,;:<>()\[\]\"\\.]{{2,}}")
# C0 controls and DEL, except tab and line feed (a lone CR is kept out too).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
NOTICES = ("signin_required", "session_expired", "signed_out")
# The new-ticket form's priority choices: "none", the default, is no call at all,
# never Chatwoot's "none" (a 500, contract §8.3).
NO_PRIORITY = "none"
PRIORITY_CHOICES = (NO_PRIORITY, *PRIORITIES)

# ---------------------------------------------------------------------------
# Requests and responses
# ---------------------------------------------------------------------------

class Response:
    """A page (bytes), or a file streamed through: `body` is then an iterable of
    chunks with a close(), and its length, if known, is in `headers`."""

    def __init__(self, status=200, body=b"", content_type="text/html; charset=utf-8", headers=()):
        self.status = status
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.headers = [("Content-Type", content_type), *headers]

    def set_cookie(self, name, value, path, secure, max_age=None):
        self.headers.append(cookie_header(name, value, path, secure, max_age))


def cookie_header(name, value, path, secure, max_age=None):
    """Every cookie of the portal: HttpOnly, SameSite=Lax, Secure over https."""
    cookie = http.cookies.SimpleCookie()
    cookie[name] = value
    morsel = cookie[name]
    morsel["path"] = path
    morsel["httponly"] = True
    morsel["samesite"] = "Lax"
    if secure:
        morsel["secure"] = True
    if max_age is not None:
        morsel["max-age"] = max_age
    return ("Set-Cookie", morsel.OutputString())


class HTTPError(Exception):
    """A handler's way to answer with a localized error page."""

    def __init__(self, status, heading_key, message_key, headers=()):
        super().__init__(status)
        self.status, self.heading_key, self.message_key, self.headers = status, heading_key, message_key, headers


class BodyTooLarge(HTTPError):
    """A body announced larger than the limit, refused before any of it was read."""

    def __init__(self):
        super().__init__(413, "error_too_large_heading", "error_too_large")


class Redirect(Exception):
    """Raised deep inside a handler (require_session) to send the browser elsewhere."""

    def __init__(self, location):
        super().__init__(location)
        self.location = location


class Request:
    def __init__(self, environ, portal):
        self.environ = environ
        self.method = environ["REQUEST_METHOD"].upper()
        self.unsafe_path = environ.get("PATH_INFO", "") or "/"
        try:
            self.query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), max_num_fields=20)
        except ValueError:  # more fields than any portal URL has
            self.query = {"": ["too many fields"]}
        self.cookies = _parse_cookies(environ.get("HTTP_COOKIE", ""))
        self.client_ip = _client_ip(environ, portal.config.trusted_proxy)
        self.form = {}
        # Files of a multipart form: accepted ones (attachments.Upload) and the
        # refused ones (attachments.Problem), and how many the customer picked.
        self.uploads, self.upload_problems, self.files_chosen = [], [], 0
        self.route_label = "-"
        self.handler_name, self.route_args = "", {}  # once routed
        self.session = None
        self.signed_session_id = ""  # from a cookie with a valid signature, live or not
        self.had_session_cookie = SESSION_COOKIE in self.cookies
        untrusted_lang = self.cookies.get(LANG_COOKIE)
        self.lang_from_cookie = untrusted_lang in i18n.LANGUAGES
        self.lang = untrusted_lang if self.lang_from_cookie else i18n.from_accept_language(environ.get("HTTP_ACCEPT_LANGUAGE"))
        # A browser-bound random value; forms carry its HMAC (see Portal.csrf_token).
        self.csrf_seed = self.cookies.get(CSRF_COOKIE) or ""
        self.new_csrf_seed = not re.fullmatch(r"[A-Za-z0-9_-]{43}", self.csrf_seed)
        if self.new_csrf_seed:
            self.csrf_seed = secrets.token_urlsafe(32)

    def arg(self, name):
        values = self.query.get(name)
        return values[0] if values else ""

    def field(self, name):
        values = self.form.get(name)
        return values[0] if values else ""

    def text_field(self, name):
        """A field of free text for Chatwoot: control characters other than tab and
        line feed removed (a NUL breaks Chatwoot's database write)."""
        return _CONTROL_CHARACTERS.sub("", self.field(name))

    def read_body(self, limit):
        """The raw body, or a 413 when it is announced larger than `limit`."""
        length = self.read_body_limit_check(limit)
        return self.environ["wsgi.input"].read(length) if length > 0 else b""

    def read_body_limit_check(self, limit):
        try:
            length = int(self.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HTTPError(400, "error_heading", "error_method") from None
        if length > limit:
            raise BodyTooLarge()
        return length

    def close(self):
        """Drop the temporary files of uploads (sent or not)."""
        for upload in self.uploads:
            upload.file.close()
        self.uploads = []

    def read_form(self, max_files=0, max_file_bytes=0):
        """The form fields; a multipart form's files too, up to the limits given."""
        content_type = self.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            # Whatever files a customer picked, the text they typed must come back:
            # the body is read to its end (waitress caps it), files past the limits
            # are counted and dropped, never kept.
            self.read_body_limit_check(upload_body_limit(max(max_files, 1), max(max_file_bytes, 1)))
            try:
                form = attachments.read_upload_form(self.environ, max_files, max_file_bytes)
            except attachments.FormError as error:
                raise HTTPError(error.status, *(("error_too_large_heading", "error_too_large") if error.status == 413
                                                else ("error_heading", "error_method"))) from None
            self.form, self.uploads, self.upload_problems, self.files_chosen = (
                form.fields, form.uploads, form.problems, form.chosen)
            return
        body = self.read_body(MAX_BODY_BYTES)
        if content_type == "application/x-www-form-urlencoded":
            try:
                text = body.decode("utf-8")
                fields = urllib.parse.parse_qs(text, keep_blank_values=True, max_num_fields=50)
                # Browsers send a textarea's line breaks as CRLF (HTML spec); Chatwoot
                # and the length limits (like the textarea's maxlength) count one.
                self.form = {name: [v.replace("\r\n", "\n") for v in values] for name, values in fields.items()}
            except (UnicodeDecodeError, ValueError):
                raise HTTPError(400, "error_heading", "error_method") from None


def upload_body_limit(max_files, max_file_bytes):
    """The largest multipart body read: room for twice the allowed files (so a
    customer who picked too many still gets the form back with their text) and
    the text fields. waitress reads no more of a larger body than its text (see
    server_options and oversize)."""
    return 2 * max_files * max_file_bytes + MAX_BODY_BYTES


def _parse_cookies(header):
    """name -> value from a Cookie header, tolerant of other applications' cookies.

    SimpleCookie drops the whole header when any cookie on the domain is not to
    its taste (a space, a quote), which would sign customers out because of
    Chatwoot's or another app's cookies. The portal's own values are plain ASCII
    tokens, checked by their signatures. The first of duplicate names wins: the
    browser sends the most specific path (/portal) first, so a cookie planted
    for "/" cannot shadow ours.
    """
    cookies = {}
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        name = name.strip()  # "name = value" is the cookie "name" (RFC 6265 §5.2)
        if sep and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


def _client_ip(environ, trusted_proxy):
    """The client's address; X-Forwarded-For counts only when the proxy itself is trusted.

    nginx appends the address it saw to the header, so its last entry is the one
    the trusted proxy vouches for; anything before it the client could have forged.
    """
    remote = environ.get("REMOTE_ADDR", "")
    forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
    if forwarded and _same_address(remote, trusted_proxy):
        candidate = forwarded.split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            pass
    return remote


def _network_of(address):
    """The rate-limit key of a client: its IPv4 address, or its IPv6 /64.

    One IPv6 customer line usually holds a whole /64; keyed by full address, a
    single client would have 2**64 separate limits.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is the IPv4 client 192.0.2.1
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def _same_address(untrusted_a, b):
    """Compare addresses, not spellings: `::1` is `0:0:0:0:0:0:0:1`."""
    try:
        return ipaddress.ip_address(untrusted_a) == ipaddress.ip_address(b)
    except ValueError:
        return False


# ---------------------------------------------------------------------------
# Routes: (method, pattern, handler name). Patterns match the path below BASE_PATH.
# ---------------------------------------------------------------------------

ROUTES = [
    ("GET", r"/", "signin_page"),
    ("POST", r"/auth/request", "request_link"),
    ("GET", r"/auth/verify", "verify_page"),
    ("POST", r"/auth/verify", "verify"),
    ("POST", r"/auth/code", "verify_code"),
    ("GET", r"/dashboard", "dashboard"),
    ("GET", r"/tickets/new", "new_ticket_page"),
    ("POST", r"/tickets", "create_ticket"),
    ("GET", r"/tickets/(?P<ticket_id>[0-9]{1,10})", "ticket_page"),
    ("GET", r"/tickets/(?P<ticket_id>[0-9]{1,10})/attachments/(?P<attachment_id>[0-9]{1,10})", "attachment"),
    # The same, with the file's name at the end: what a browser saves it as.
    ("GET", r"/tickets/(?P<ticket_id>[0-9]{1,10})/attachments/(?P<attachment_id>[0-9]{1,10})/(?P<name>[^/]{1,255})",
     "attachment"),
    ("POST", r"/tickets/(?P<ticket_id>[0-9]{1,10})/reply", "reply"),
    ("POST", r"/tickets/(?P<ticket_id>[0-9]{1,10})/cancel", "cancel"),
    ("POST", r"/tickets/(?P<ticket_id>[0-9]{1,10})/rating", "rate"),
    ("POST", r"/lang", "set_language"),
    ("POST", r"/logout", "logout"),
    ("GET", r"/healthz", "healthz"),
    ("POST", r"/webhooks/chatwoot", "chatwoot_webhook"),
    ("GET", r"/static/(?P<name>[A-Za-z0-9_.-]+)", "static_file"),
    ("GET", r"/brand/(?P<name>logo\.png|favicon\.png)", "brand_file"),
]
# Handlers that authenticate their caller themselves (a signature, not a browser):
# no session, no form parsing, no CSRF token.
SELF_AUTHENTICATED = {"chatwoot_webhook"}
# Handlers whose multipart forms may carry files (attachments.read_upload_form).
TAKES_FILES = {"create_ticket", "reply"}
# Handlers whose forms come back filled in when the CSRF check fails or the body
# is too large, instead of an error page that loses the text (Portal.posted_form_again).
KEEPS_TEXT = {"create_ticket", "reply", "rate"}
COMPILED_ROUTES = [(method, re.compile(pattern), handler) for method, pattern, handler in ROUTES]


def _route_label(pattern):
    """`/tickets/(?P<ticket_id>...)/reply` -> `/tickets/:ticket_id/reply` for log lines."""
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r":\1", pattern)


# ---------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------

class Portal:
    def __init__(self, config, client=None, mailer=None, clock=time.time):
        self.config = config
        self.signer = Signer(config.session_secret)
        self.client = client or ChatwootClient(config.chatwoot_url, config.chatwoot_api_token,
                                               config.chatwoot_account_id, config.chatwoot_timeout)
        self.mailer = mailer or Mailer(config, self.signer.pseudonym)
        self.clock = clock  # also decides whether a CSAT survey still takes a rating
        # Sessions, sign-in links, limits, drafts and the reply-mail queue: in this
        # process (and its STATE_DIR file), or in Redis when STATE_URL says so.
        self.stores = open_stores(config, self.signer, clock, {"address": SIGNIN_PER_ADDRESS, "ip": SIGNIN_PER_IP},
                                  MESSAGE_MAX_CHARS)
        self.sessions = self.stores.sessions
        self.magic_links = self.stores.magic_links
        self.drafts = self.stores.drafts
        self.limit_by_address = self.stores.limit_by_address
        self.limit_by_ip = self.stores.limit_by_ip
        self.state = self.stores.state
        # Running average of a sign-in mail's cost, which requests for unknown addresses match.
        self._send_seconds = 0.0
        self.cookie_path = config.base_path or "/"
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            # Escape everything but the plain-text mail (an O'Brien is not O&#39;Brien).
            autoescape=jinja2.select_autoescape(disabled_extensions=("txt",), default=True),
            auto_reload=False, undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True,
        )
        self.templates.globals.update(SUBJECT_MAX_CHARS=SUBJECT_MAX_CHARS, MESSAGE_MAX_CHARS=MESSAGE_MAX_CHARS,
                                      ATTACHMENT_MAX_FILES=config.attachment_max_files,
                                      ATTACHMENT_MAX_MB=config.attachment_max_mb,
                                      ATTACHMENT_ACCEPT=attachments.ACCEPT_ATTRIBUTE)
        # Which files each customer may download, learnt from the ticket pages they see.
        self.known_files = attachments.KnownFiles(clock=clock)
        self.templates.filters["agent_markdown"] = agent_markdown
        # Files are read once: a request never touches the disk.
        self.static = _load_files((HERE / "static").glob("*.*"))
        brand = config.brand_assets_dir
        files = _load_files([brand / name for name in BRAND_FILES if (brand / name).is_file()])
        # Either file stands in for the other when a brand folder has only one.
        logo = files.get("logo.png") or files["logo_thumbnail.png"]
        self.brand = {"logo.png": logo, "favicon.png": files.get("logo_thumbnail.png") or logo}
        self.notifier = Notifier(config, self.client, self.mailer, self.state, self.templates, self.signer.pseudonym)

    def start(self):
        """Start the background work: the reply-mail workers, when webhooks are on."""
        if self.notifier.enabled:
            self.notifier.start()
        return self

    def close(self):
        self.notifier.stop()
        self.client.close()
        self.stores.close()

    # -- WSGI entry ---------------------------------------------------------

    def __call__(self, environ, start_response):
        started = time.monotonic()
        request = Request(environ, self)
        try:
            response = self.dispatch(request)
        except Redirect as jump:
            response = redirect(jump.location)
        except HTTPError as error:
            response = self.error_page(request, error.status, error.heading_key, error.message_key, error.headers)
        except StateUnavailable as error:
            response = self.state_unavailable(request, error)
        except Exception:  # the outermost boundary: log it whole, show a plain page
            log.exception("unhandled error in %s %s", request.method, request.route_label)
            response = self.error_page(request, 500, "error_heading", "error_internal")
        finally:
            request.close()
        # A response's own header (a file's sandbox CSP) wins over the page default.
        own = {name for name, _ in response.headers}
        headers = response.headers + [header for header in SECURITY_HEADERS if header[0] not in own]
        if not any(name == "Referrer-Policy" for name, _ in headers):
            headers.append(("Referrer-Policy", "same-origin"))
        if not any(name == "Cache-Control" for name, _ in headers):
            headers.append(("Cache-Control", "no-store"))  # pages carry personal data
        if request.new_csrf_seed and response.headers[0][1].startswith("text/html"):
            # The page's forms carry the HMAC of this new seed (see csrf_token).
            headers.append(cookie_header(CSRF_COOKIE, request.csrf_seed, self.cookie_path, self.config.secure_cookies))
        streamed = not isinstance(response.body, bytes)
        if not streamed:
            headers.append(("Content-Length", str(len(response.body))))
        start_response(f"{response.status} {http.HTTPStatus(response.status).phrase}", headers)
        log.info("request %s %s %s %.1fms", request.method, request.route_label, response.status,
                 (time.monotonic() - started) * 1000)
        if streamed:
            if request.method != "HEAD":
                return response.body  # waitress reads it chunk by chunk, then closes it
            response.body.close()
        return [b"" if request.method == "HEAD" else response.body]

    def dispatch(self, request):
        base = self.config.base_path
        path = request.unsafe_path
        if base and (path == base or not path.startswith(base + "/")):
            if path in ("/", base):
                return redirect(base + "/")
            raise HTTPError(404, "error_not_found_heading", "error_not_found")
        path = path[len(base):]
        method = "GET" if request.method == "HEAD" else request.method
        allowed = []
        for route_method, pattern, handler_name in COMPILED_ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            request.route_label = _route_label(pattern.pattern)
            request.handler_name, request.route_args = handler_name, match.groupdict()
            if "" in request.query:
                raise HTTPError(400, "error_heading", "error_method")
            if handler_name in SELF_AUTHENTICATED:
                return getattr(self, handler_name)(request)
            if method == "POST":
                # The form is read before the session is looked up: should the session
                # store fail, the form still comes back with what was typed.
                try:
                    if handler_name in TAKES_FILES:
                        request.read_form(self.config.attachment_max_files, self.config.attachment_max_bytes)
                    else:
                        request.read_form()
                except BodyTooLarge:
                    if handler_name not in KEEPS_TEXT:
                        raise
                    request.form = oversize.text_fields(request.environ)  # the beginning only
                    request.session = self.current_session(request)
                    return self.posted_form_again(request, handler_name, 413, **match.groupdict())
            request.session = self.current_session(request)
            if method == "POST":
                if not self.csrf_valid(request):
                    log.warning("csrf check failed for POST %s from %s", request.route_label, request.client_ip)
                    if handler_name in KEEPS_TEXT:
                        return self.posted_form_again(request, handler_name, 403, **match.groupdict())
                    raise HTTPError(403, "error_csrf_heading", "error_csrf")
            return getattr(self, handler_name)(request, **match.groupdict())
        if allowed:
            raise HTTPError(405, "error_heading", "error_method", [("Allow", ", ".join(sorted(set(allowed))))])
        raise HTTPError(404, "error_not_found_heading", "error_not_found")

    # -- Cookies, CSRF, sessions -------------------------------------------

    def csrf_token(self, request):
        """HMAC of the browser's random seed cookie and, once signed in, the session id.

        Binding to the session means a seed planted by someone who can set cookies
        for this site is worthless against a signed-in customer. The id comes from
        the signed cookie, not the live session, so a form typed while the session
        timed out is still accepted and answered with the sign-in page and the text
        (kept for after sign-in: signin_with_draft), not a 403.
        """
        return self.signer.signature("csrf", f"{request.csrf_seed}|{request.signed_session_id}")

    def csrf_valid(self, request):
        if request.new_csrf_seed:
            return False  # no cookie: the form did not come from this browser's page
        # Bytes: compare_digest refuses str with non-ASCII characters.
        untrusted_token = request.field("csrf_token").encode("utf-8")
        return hmac.compare_digest(untrusted_token, self.csrf_token(request).encode("ascii"))

    def current_session(self, request):
        session_id = self.signer.unsign("session", request.cookies.get(SESSION_COOKIE))
        request.signed_session_id = session_id or ""
        return self.sessions.get(session_id) if session_id else None

    def address_cookie(self, session_id, email):
        """The signed "last address" of a session: its address, bound to its id."""
        encoded = base64.urlsafe_b64encode(email.encode("utf-8")).decode("ascii").rstrip("=")
        return self.signer.sign("address", f"{encoded}:{session_id}")

    def last_address(self, request):
        """The address of the session whose (signed) cookie this browser sends, live or
        ended, from its "last address" cookie; "" when unknown."""
        value = self.signer.unsign("address", request.cookies.get(ADDRESS_COOKIE)) or ""
        encoded, _, session_id = value.partition(":")
        if not session_id or session_id != request.signed_session_id:
            return ""
        try:
            return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return ""

    def require_session(self, request, back_to=None):
        if request.session is None:
            notice = "session_expired" if request.had_session_cookie else "signin_required"
            next_path = back_to or request.unsafe_path[len(self.config.base_path):]
            raise Redirect(self.url("/?" + urllib.parse.urlencode({"next": next_path, "notice": notice})))
        return request.session

    def url(self, path):
        return self.config.base_path + path

    # -- Rendering ----------------------------------------------------------

    def render(self, request, template, status=200, headers=(), **context):
        lang = request.lang
        session = request.session
        # A HEAD (a link preview, a monitor) must not eat the notice meant for the page.
        head_only = request.method == "HEAD"
        now = self.clock()  # "5 minutes ago" counts from the portal's clock, once per page
        # Where the language switch comes back to: this path, unless the page names
        # itself more precisely (the sign-in confirmation, with its token).
        here = context.pop("here", None) or request.unsafe_path[len(self.config.base_path):] or "/"
        page = self.templates.get_template(template).render(
            lang=lang,
            languages=i18n.LANGUAGES,
            language_names=i18n.LANGUAGE_NAMES,
            t=lambda key, **values: i18n.translate(lang, key, **values),
            when=lambda seconds: i18n.format_time(lang, seconds),
            time_tag=lambda seconds, relative=True: _time_tag(lang, seconds, now if relative else None),
            iso=_iso,
            url=self.url,
            static=lambda name: self.url(f"/static/{name}?v={self.static[name][1]}"),
            logo_url=self.url(f"/brand/logo.png?v={self.brand['logo.png'][1]}"),
            favicon_url=self.url(f"/brand/favicon.png?v={self.brand['favicon.png'][1]}"),
            csrf_token=self.csrf_token(request),
            user=session,
            flash=self.sessions.pop_flash(session) if session and not head_only else "",
            here=here,
            **context,
        )
        return Response(status, page, headers=headers)

    def state_unavailable(self, request, error):
        """Redis (STATE_URL) did not answer: a 503 that loses nothing typed.

        The page is rendered without the session store (the customer shows as
        signed out for this one page); a posted form comes back filled in, to be
        sent again once the store answers. Nothing of the request was done
        before the failure that a resend would do twice: the store is read before
        anything is written to Chatwoot, and a form's once-marker is taken first.
        """
        log.warning("state store unavailable for %s %s: %s", request.method, request.route_label, error)
        request.session = None
        headers = [("Retry-After", "5")]
        try:
            name = request.handler_name
            if request.method == "POST":
                if name in KEEPS_TEXT:
                    response = self.posted_form_again(request, name, 503, **request.route_args)
                    response.headers = list(response.headers) + headers
                    return response
                if name == "request_link":
                    return self.render(request, "signin.html", 503, headers, email=request.field("email")[:EMAIL_MAX_CHARS],
                                       error="error_unavailable_page", next_path=_safe_next(request.field("next")),
                                       notice="")
                if name == "verify_code":
                    return self.render(request, "signin_sent.html", 503, headers,
                                       email=request.field("email").strip().lower()[:EMAIL_MAX_CHARS],
                                       next_path=_safe_next(request.field("next")), error="error_unavailable_page",
                                       minutes=self.config.magic_link_minutes, attempts=MAX_WRONG_CODES)
            retry = request.unsafe_path if request.method == "GET" else ""
            return self.render(request, "error.html", 503, headers, heading_key="error_unavailable_heading",
                               message_key="error_unavailable_page", retry=retry)
        except Exception:  # a broken template must still not show a traceback
            log.exception("state-unavailable page failed")
            return Response(503, "Service unavailable", "text/plain; charset=utf-8", headers)

    def error_page(self, request, status, heading_key, message_key, headers=()):
        try:
            request.session = request.session or self.current_session(request)
            return self.render(request, "error.html", status, headers, heading_key=heading_key,
                               message_key=message_key, retry="")
        except Exception:  # a broken template must still not show a traceback
            log.exception("error page failed")
            return Response(status, "Error", "text/plain; charset=utf-8", headers)

    # -- Sign-in ------------------------------------------------------------

    def signin_page(self, request):
        if request.session:
            return redirect(self.url("/dashboard"))
        notice = request.arg("notice")
        return self.render(request, "signin.html", email=self.last_address(request), error="",
                           next_path=_safe_next(request.arg("next")),
                           notice=notice if notice in NOTICES else "")

    def request_link(self, request):
        untrusted_email = request.field("email")
        next_path = _safe_next(request.field("next"))

        def form_again(status, error):
            return self.render(request, "signin.html", status, email=untrusted_email[:EMAIL_MAX_CHARS],
                               error=error, next_path=next_path, notice="")

        email = untrusted_email.strip().lower()
        if not email:
            return form_again(400, "error_email_required")
        if len(email) > EMAIL_MAX_CHARS or not EMAIL_PATTERN.fullmatch(email):
            return form_again(400, "error_email_invalid")
        pseudonym = self.signer.pseudonym(email)
        client = _network_of(request.client_ip)
        if not self.limit_by_ip.hit(client) or not self.limit_by_address.hit(email):
            log.warning("sign-in rate limit reached email=%s ip=%s", pseudonym, request.client_ip)
            return form_again(429, "error_rate_limited")
        try:
            contact = self.client.find_contact_by_email(email)
        except ChatwootError as error:
            log.warning("contact lookup failed: %s", error)
            return form_again(503, "error_unavailable_page")
        started = time.monotonic()
        try:
            if contact is None:
                # Same SMTP conversation, minus the mail: see Mailer.rehearse.
                self.mailer.rehearse(email)
                # The mail itself (rendering, DATA, the server's queueing) takes longer:
                # wait as long as recent real sends took, so the timing tells nothing.
                time.sleep(max(0.0, min(self._send_seconds, 2.0) - (time.monotonic() - started)))
                log.info("sign-in link not sent: no contact email=%s", pseudonym)
            else:
                sent = self.magic_links.issue_with_code(contact.id, contact.email, contact.name, request.lang,
                                                        next_path, client)
                self.send_link(request.lang, contact, sent.token, sent.code)
                took = time.monotonic() - started
                self._send_seconds = 0.8 * self._send_seconds + 0.2 * took if self._send_seconds else took
                log.info("sign-in link sent email=%s contact=%s", pseudonym, contact.id)
        except MailError as error:
            log.warning("sign-in mail failed email=%s: %s", pseudonym, error)
            return form_again(503, "error_mail_failed")
        # The same page whether or not the address is a contact: no enumeration.
        return self.render_code_form(request, 200, email, next_path, error="")

    def render_code_form(self, request, status, email, next_path, error):
        """The "check your inbox" page, with the form for the mailed code."""
        return self.render(request, "signin_sent.html", status, email=email, next_path=next_path, error=error,
                           minutes=self.config.magic_link_minutes, attempts=MAX_WRONG_CODES)

    def send_link(self, lang, contact, token, code):
        link = self.config.public_url("/auth/verify?" + urllib.parse.urlencode({"token": token}))
        context = dict(
            lang=lang, link=link, name=contact.name, minutes=self.config.magic_link_minutes,
            code=f"{code[:3]} {code[3:]}",  # read aloud or typed, two halves are easier
            t=lambda key, **values: i18n.translate(lang, key, **values),
        )
        text = self.templates.get_template("email_link.txt").render(context)
        html = self.templates.get_template("email_link.html").render(context)
        self.mailer.send(contact.email, i18n.translate(lang, "mail_subject"), text, html)

    def verify_page(self, request):
        # GET never consumes the token: mail scanners prefetch links.
        link = self.magic_links.peek(request.arg("token"))
        if link is None:
            return self.link_invalid(request, request.arg("token"))
        # The language switch posts this back (see set_language), so the page
        # comes back in the other language with its token still unused.
        here = "/auth/verify?" + urllib.parse.urlencode({"token": request.arg("token")})
        return self.render(request, "verify.html", headers=[("Referrer-Policy", "no-referrer")],
                           token=request.arg("token"), email=link.email, here=here)

    def link_invalid(self, request, untrusted_token):
        """Why this link no longer works, and a form for a new one.

        Only a token that was really issued left a record, so only whoever holds
        the link sees its reason and its own address prefilled; any other token
        gets the generic words and an empty field.
        """
        retired = self.magic_links.retired(untrusted_token)
        if request.session and (retired is None or retired.email.lower() == request.session.email.lower()):
            # Whatever happened to the link, this browser is in: nothing to fix.
            return self.render(request, "signed_in_already.html", 200, [("Referrer-Policy", "no-referrer")])
        return self.render(request, "link_invalid.html", 400, [("Referrer-Policy", "no-referrer")],
                           minutes=self.config.magic_link_minutes, attempts=MAX_WRONG_CODES,
                           reason=retired.reason if retired else "",
                           email=retired.email if retired else "",
                           next_path=retired.next_path if retired else "")

    def verify(self, request):
        link = self.magic_links.consume(request.field("token"))
        if link is None:
            return self.link_invalid(request, request.field("token"))
        return self.start_session(request, link, link.next_path)

    def verify_code(self, request):
        """The code from the mail, typed into the browser that asked for it."""
        untrusted_email = request.field("email")
        next_path = _safe_next(request.field("next"))
        email = untrusted_email.strip().lower()[:EMAIL_MAX_CHARS]
        pseudonym = self.signer.pseudonym(email)
        # Each try counts against the client too: one client cannot spread its
        # guesses over many addresses (each address allows MAX_WRONG_CODES).
        if not self.limit_by_ip.hit(_network_of(request.client_ip)):
            log.warning("sign-in rate limit reached email=%s ip=%s", pseudonym, request.client_ip)
            return self.render_code_form(request, 429, email, next_path, error="error_rate_limited")
        link = self.magic_links.redeem_code(email, request.field("code"))
        if link is None:
            # Wrong, expired, used or an unknown address: one answer, no enumeration.
            # Never the code itself in the log.
            log.info("sign-in code refused email=%s", pseudonym)
            return self.render_code_form(request, 400, email, next_path, error="error_code_wrong")
        return self.start_session(request, link, next_path or link.next_path)

    def start_session(self, request, link, next_path):
        """Sign this browser in as the link's contact (by link or by code)."""
        # The limits are there against floods of mail and lookups. Whoever signs in
        # proved to own the inbox: their address and client start afresh, so a
        # customer who signs in often is never locked out by their own visits.
        self.limit_by_address.forget(link.email)
        self.limit_by_ip.forget(link.client)
        if request.session:
            self.sessions.delete(request.session.id)
        # Always a new id: a session id planted before sign-in is worthless after it.
        session = self.sessions.create(link.contact_id, link.email, link.name)
        log.info("signed in contact=%s email=%s", link.contact_id, self.signer.pseudonym(link.email))
        # Mails about this contact's tickets speak the language they use here.
        self.state.remember_language(link.contact_id, request.lang if request.lang_from_cookie else link.lang)
        # What was typed when this browser's last session ended goes back into its form.
        draft = self.drafts.hand_over(request.signed_session_id, session.id, link.email)
        if draft is not None:
            self.sessions.set_flash(session, "draft_restored")
            next_path = draft.path
        response = redirect(self.url(next_path or "/dashboard"))
        response.set_cookie(SESSION_COOKIE, self.signer.sign("session", session.id), self.cookie_path,
                            self.config.secure_cookies)
        response.set_cookie(ADDRESS_COOKIE, self.address_cookie(session.id, link.email), self.cookie_path,
                            self.config.secure_cookies)
        if not request.lang_from_cookie:
            response.set_cookie(LANG_COOKIE, link.lang, self.cookie_path, self.config.secure_cookies,
                                LANG_COOKIE_MAX_AGE)
        return response

    def logout(self, request):
        if request.session:
            self.sessions.delete(request.session.id)
            self.drafts.drop(request.session.id)
        response = redirect(self.url("/?notice=signed_out"))
        response.set_cookie(SESSION_COOKIE, "", self.cookie_path, self.config.secure_cookies, max_age=0)
        response.set_cookie(ADDRESS_COOKIE, "", self.cookie_path, self.config.secure_cookies, max_age=0)
        return response

    def set_language(self, request):
        lang = request.field("lang")
        if lang not in i18n.LANGUAGES:
            raise HTTPError(400, "error_heading", "error_method")
        if request.session:
            self.state.remember_language(request.session.contact_id, lang)
        token = _verify_token(request.field("next"))
        if token:
            # Back to the sign-in confirmation, its token unused: it came in this
            # form's body and leaves only in this Location, with no Referer after it.
            response = redirect(self.url("/auth/verify?" + urllib.parse.urlencode({"token": token})))
            response.headers.append(("Referrer-Policy", "no-referrer"))
        else:
            response = redirect(self.url(_safe_next(request.field("next")) or "/"))
        response.set_cookie(LANG_COOKIE, lang, self.cookie_path, self.config.secure_cookies, LANG_COOKIE_MAX_AGE)
        return response

    # -- Tickets ------------------------------------------------------------

    def dashboard(self, request):
        """One page of the customer's tickets: ?status=open|resolved|all&q=words&page=N."""
        session = self.require_session(request)
        untrusted_status = request.arg("status")
        status = untrusted_status if untrusted_status in STATUS_GROUPS else "open"
        query = " ".join(request.arg("q").split())[:SEARCH_MAX_CHARS]
        page = int(request.arg("page")) if request.arg("page").isdigit() else 1
        page = min(max(page, 1), MAX_PAGE)
        try:
            listing = self.client.ticket_page(session.contact_id, status, query, page)
        except ChatwootNotFound:
            return self.contact_gone(request)
        except ChatwootError as error:
            return self.unavailable(request, error)

        def page_url(number, status=status, query=query):
            # The defaults stay out of the URL: /dashboard is the open tickets' first page.
            fields = {"status": status if status != "open" else "", "q": query, "page": number if number > 1 else ""}
            return self.url("/dashboard") + _query_string(fields)

        if not listing.tickets and page > listing.pages:  # past the end (the list shrank)
            return redirect(page_url(listing.pages))
        return self.render(request, "dashboard.html", listing=listing, group=status, query=query,
                           unread=self.unread(listing.tickets), page_url=page_url)

    def unread(self, tickets):
        """Ids of the tickets with an agent reply newer than the customer's last look.

        The reply comes from Chatwoot's list (its latest public message) or, when a
        private note hides it there, from the webhook; the look from the portal's
        own marker (Chatwoot's update_last_seen would mark agents' messages read).
        A ticket never opened here counts only while it is not closed, so years of
        old tickets do not all show "New reply" at a customer's first visit.
        """
        ids = [ticket.id for ticket in tickets]
        seen, replies = self.state.dashboard_marks(ids)
        return {ticket.id for ticket in tickets
                if max(ticket.last_agent_reply_id, replies.get(ticket.id, 0)) > seen.get(ticket.id, 0)
                and (ticket.id in seen or ticket.status != "resolved")}

    def new_ticket_page(self, request):
        session = self.require_session(request)
        draft = self.drafts.get(session.id, "/tickets/new")  # typed before the last sign-in
        kept = draft.fields if draft else {}
        priority = kept.get("priority", NO_PRIORITY)
        return self.render(request, "ticket_new.html", subject=kept.get("subject", ""), message=kept.get("message", ""),
                           priority=priority if priority in PRIORITY_CHOICES else NO_PRIORITY, errors={},
                           form_id=secrets.token_urlsafe(16))

    def create_ticket(self, request):
        untrusted_subject = request.text_field("subject")
        untrusted_message = request.text_field("message")
        # A form from before priorities existed sends none: that is "none".
        untrusted_priority = request.field("priority") or NO_PRIORITY
        form_id = request.field("form_id")[:64] or secrets.token_urlsafe(16)
        if request.session is None:
            draft = "\n\n".join(part for part in (untrusted_subject, untrusted_message) if part.strip())
            return self.signin_with_draft(request, "/tickets/new", draft, "ticket", dict(
                subject=untrusted_subject, message=untrusted_message, priority=untrusted_priority))
        session = request.session
        self.drafts.drop(session.id)  # sent now, or back in the form below
        priority = untrusted_priority if untrusted_priority in PRIORITY_CHOICES else None

        def form_again(status, errors=None, problem=""):
            return self.render(request, "ticket_new.html", status, subject=untrusted_subject,
                               message=untrusted_message, priority=priority or NO_PRIORITY,
                               errors=errors or {}, problem=problem, form_id=form_id,
                               files_again=request.files_chosen > 0)

        subject, message = untrusted_subject.strip(), untrusted_message.strip()
        errors = {}
        if not subject:
            errors["subject"] = i18n.translate(request.lang, "error_subject_required")
        elif len(subject) > SUBJECT_MAX_CHARS:
            errors["subject"] = i18n.translate(request.lang, "error_subject_too_long", limit=SUBJECT_MAX_CHARS)
        if not message:
            errors["message"] = i18n.translate(request.lang, "error_message_required")
        elif len(message) > MESSAGE_MAX_CHARS:
            errors["message"] = i18n.translate(request.lang, "error_message_too_long", limit=MESSAGE_MAX_CHARS)
        if priority is None:
            errors["priority"] = i18n.translate(request.lang, "error_priority_invalid")
        if request.upload_problems:
            errors["files"] = self.upload_problem_sentences(request)
        if errors:
            return form_again(upload_status(request.upload_problems), errors)
        # A second copy of the same form (double click, resubmit) waits for the
        # first and lands on the same ticket instead of creating another.
        with self.sessions.once(session, f"create:{form_id}") as done:
            # Only the request that makes (or finds) the ticket sets its priority:
            # a duplicate finds done.result and goes straight to the ticket.
            needs_priority = False
            if done.result is None and done.uncertain_since is not None:
                try:  # the last try's answer was lost: did Chatwoot create it anyway?
                    done.result = self.client.find_recent_ticket(
                        session.contact_id, self.config.chatwoot_inbox_id, subject, done.uncertain_since - CLOCK_SLACK_SECONDS)
                except ChatwootError as error:
                    log.warning("create ticket: could not look for the earlier try: %s", error)
                    return form_again(503, problem="error_unavailable")
                needs_priority = done.result is not None  # that try never reached its priority call
            if done.result is None:
                started = time.time()
                try:
                    ticket_id = self.client.create_ticket(session.contact_id, self.config.chatwoot_inbox_id, subject,
                                                          message, request.uploads)
                except ChatwootUnavailable as error:
                    done.uncertain_since = started
                    log.warning("create ticket failed: %s", error)
                    return form_again(503, problem="error_unavailable")
                except ChatwootError as error:
                    log.error("Chatwoot refused a new ticket (check CHATWOOT_INBOX_ID): %s", error)
                    return form_again(502, problem="error_rejected")
                done.result = ticket_id
                self.sessions.set_flash(session, "ticket_created")
                log.info("ticket created ticket=%s contact=%s", ticket_id, session.contact_id)
                needs_priority = True
            if needs_priority and priority != NO_PRIORITY:
                self.set_new_ticket_priority(session, done.result, priority)
        return redirect(self.url(f"/tickets/{done.result}"))

    def set_new_ticket_priority(self, session, ticket_id, priority):
        """The second call of a create (contract §5.1); the ticket exists whatever happens."""
        try:
            self.client.set_priority(ticket_id, priority)
        except ChatwootError as error:
            log.warning("ticket created without its priority ticket=%s priority=%s: %s", ticket_id, priority, error)
            self.sessions.set_flash(session, "ticket_created_priority_failed")

    def ticket_page(self, request, ticket_id):
        session = self.require_session(request)
        ticket_id = int(ticket_id)
        draft = self.drafts.get(session.id, f"/tickets/{ticket_id}")  # typed before the last sign-in
        if draft is not None and draft.form == "reply":
            return self.render_ticket(request, session, ticket_id, reply=draft.fields.get("message", ""))
        if draft is not None and draft.form == "rating":
            return self.render_ticket(request, session, ticket_id, rating=dict(
                value=draft.fields.get("rating", ""), feedback=draft.fields.get("feedback", ""), error="", notice=""))
        return self.render_ticket(request, session, ticket_id)

    def render_ticket(self, request, session, ticket_id, status=200, reply="", error="", rating=None):
        """The ticket page; `reply` and `error`: the reply form as it came back; `rating`:
        the rating form as it came back (dict of value, feedback, error, notice)."""
        try:
            ticket, thread = self.client.get_ticket_with_thread(ticket_id)
        except ChatwootNotFound:
            raise HTTPError(404, "error_ticket_not_found_heading", "error_ticket_not_found") from None
        except ChatwootError as failure:
            if reply:
                return self.reply_form_again(request, ticket_id, reply, failure)
            if rating:
                return self.rating_form_again(request, ticket_id, rating, failure)
            return self.unavailable(request, failure)
        self.check_owner(ticket, session)
        self.known_files.remember(session.contact_id, ticket.id, thread)
        # What the customer reads here needs no mail (see notifications).
        seen, cancelled_at = self.state.ticket_marks(ticket.id)
        self.notifier.ticket_viewed(ticket.id, max((m.id for m in thread), default=0), seen)
        title = ticket.subject or i18n.translate(request.lang, "ticket_number", id=ticket.id)
        # The rating shown is the one in the thread's survey message, never Chatwoot's
        # CSAT record; the form starts from it, so a second rating changes the first.
        survey = ticket.survey
        if rating is None:
            rating = dict(value=str(survey.rating) if survey and survey.rating else "",
                          feedback=survey.feedback if survey else "", error="", notice="")
        rating_open = survey is not None and survey.open_on(self.clock()) and rating["notice"] != "rating_closed"
        # "Cancelled by you" while the ticket stays resolved; open again, the cancel is history.
        if cancelled_at is not None and ticket.status != "resolved":
            self.state.forget_cancelled(ticket.id)
            cancelled_at = None
        return self.render(request, "ticket.html", status, ticket=ticket, title=title, thread=thread,
                           survey=survey, rating=rating, rating_open=rating_open, cancelled_at=cancelled_at,
                           FEEDBACK_MAX_CHARS=FEEDBACK_MAX_CHARS,
                           reply=reply, error=error, form_id=secrets.token_urlsafe(16),
                           files_again=request.files_chosen > 0,
                           human_size=lambda size: attachments.human_size(size, request.lang))

    def reply(self, request, ticket_id):
        ticket_id = int(ticket_id)
        untrusted_message = request.text_field("message")
        if request.session is None:
            return self.signin_with_draft(request, f"/tickets/{ticket_id}", untrusted_message, "reply",
                                          dict(message=untrusted_message))
        session = request.session
        self.drafts.drop(session.id)  # sent now, or back in the form
        message = untrusted_message.strip()
        if request.upload_problems:
            return self.render_ticket(request, session, ticket_id, upload_status(request.upload_problems),
                                      untrusted_message, error=" ".join(self.upload_problem_sentences(request)))
        if not message and not request.uploads:
            return self.render_ticket(request, session, ticket_id, 400, error="error_reply_empty")
        if len(message) > MESSAGE_MAX_CHARS:
            return self.render_ticket(request, session, ticket_id, 400, untrusted_message,
                                      error=i18n.translate(request.lang, "error_message_too_long", limit=MESSAGE_MAX_CHARS))
        form_id = request.field("form_id")[:64] or secrets.token_urlsafe(16)
        with self.sessions.once(session, f"reply:{ticket_id}:{form_id}") as done:
            if done.result is None:
                started = time.time()
                try:
                    ticket = self.client.get_ticket(ticket_id)
                    self.check_owner(ticket, session)
                    if not ticket.accepts_replies:
                        return self.render_ticket(request, session, ticket_id, 409)
                    # The last try's answer was lost: only send if it did not arrive.
                    filenames = [upload.filename for upload in request.uploads]
                    if done.uncertain_since is None or not self.client.has_recent_customer_message(
                            ticket_id, message, done.uncertain_since - CLOCK_SLACK_SECONDS, filenames):
                        self.client.add_customer_message(ticket_id, message, request.uploads)
                except ChatwootNotFound:
                    raise HTTPError(404, "error_ticket_not_found_heading", "error_ticket_not_found") from None
                except ChatwootError as failure:
                    if isinstance(failure, ChatwootUnavailable):
                        done.uncertain_since = done.uncertain_since or started
                    return self.reply_form_again(request, ticket_id, untrusted_message, failure)
                reopened = ticket.status in ("resolved", "snoozed")
                self.sessions.set_flash(session, "reply_sent_reopened" if reopened else "reply_sent")
                done.result = ticket_id
                log.info("reply added ticket=%s contact=%s", ticket_id, session.contact_id)
        return redirect(self.url(f"/tickets/{ticket_id}#latest"))

    def cancel(self, request, ticket_id):
        ticket_id = int(ticket_id)
        session = self.require_session(request)
        try:
            ticket = self.client.get_ticket(ticket_id)
            self.check_owner(ticket, session)
            if ticket.status == "resolved":
                self.sessions.set_flash(session, "ticket_already_resolved")
            else:
                self.client.resolve(ticket_id)
                self.state.remember_cancelled(ticket_id, self.clock())  # Chatwoot cannot tell who it was
                self.sessions.set_flash(session, "ticket_cancelled")
                log.info("ticket cancelled ticket=%s contact=%s", ticket_id, session.contact_id)
        except ChatwootNotFound:
            raise HTTPError(404, "error_ticket_not_found_heading", "error_ticket_not_found") from None
        except ChatwootError as failure:
            return self.unavailable(request, failure)
        return redirect(self.url(f"/tickets/{ticket_id}"))

    def rate(self, request, ticket_id):
        """Answer Chatwoot's CSAT survey of the ticket: `rating` 1-5, optional `feedback`.

        Two calls: the ownership check, whose answer carries the conversation's
        uuid, then the public PUT Chatwoot's own survey page makes (part 2 §6.3).
        Chatwoot answers 200 to any rating, so the portal checks it.
        """
        ticket_id = int(ticket_id)
        untrusted_rating = request.field("rating")
        untrusted_feedback = request.text_field("feedback")
        if request.session is None:
            return self.signin_with_draft(request, f"/tickets/{ticket_id}", untrusted_feedback, "rating",
                                          dict(rating=untrusted_rating[:1], feedback=untrusted_feedback))
        session = request.session
        self.drafts.drop(session.id)  # sent now, or back in the form
        typed = dict(value=untrusted_rating, feedback=untrusted_feedback, error="", notice="")
        feedback = untrusted_feedback.strip()
        if untrusted_rating not in [str(n) for n in CSAT_RATINGS]:
            return self.render_ticket(request, session, ticket_id, 400, rating=dict(typed, error="error_rating_invalid"))
        if len(feedback) > FEEDBACK_MAX_CHARS:
            return self.render_ticket(request, session, ticket_id, 400, rating=dict(typed, error=i18n.translate(
                request.lang, "error_feedback_too_long", limit=FEEDBACK_MAX_CHARS)))
        try:
            ticket = self.client.get_ticket(ticket_id)
        except ChatwootNotFound:
            raise HTTPError(404, "error_ticket_not_found_heading", "error_ticket_not_found") from None
        except ChatwootError as failure:
            return self.rating_form_again(request, ticket_id, typed, failure)
        self.check_owner(ticket, session)
        try:
            self.client.rate(ticket.uuid, int(untrusted_rating), feedback)
        except ChatwootNotFound:  # the conversation has no survey
            return self.render_ticket(request, session, ticket_id, 409, rating=dict(typed, notice="rating_no_survey"))
        except ChatwootRejected as failure:
            if failure.status != 422:
                return self.rating_form_again(request, ticket_id, typed, failure)
            # Chatwoot's 14-day lock, though the portal's clock thought it open.
            return self.render_ticket(request, session, ticket_id, 409, rating=dict(typed, notice="rating_closed"))
        except ChatwootError as failure:
            return self.rating_form_again(request, ticket_id, typed, failure)
        self.sessions.set_flash(session, "rating_saved")
        log.info("rating recorded ticket=%s contact=%s", ticket_id, session.contact_id)
        return redirect(self.url(f"/tickets/{ticket_id}#rating"))

    def upload_problem_sentences(self, request):
        return [i18n.translate(request.lang, problem.key, name=problem.filename,
                               count=self.config.attachment_max_files, mb=self.config.attachment_max_mb)
                for problem in request.upload_problems]

    # -- Files ------------------------------------------------------------------

    def attachment(self, request, ticket_id, attachment_id, name=""):
        """Stream one file of a ticket's public messages, after the ownership check."""
        ticket_id, attachment_id = int(ticket_id), int(attachment_id)
        # Signed out: sign in, then back to the ticket the file is on.
        session = self.require_session(request, back_to=f"/tickets/{ticket_id}")
        found = self.known_files.get(session.contact_id, ticket_id, attachment_id)
        if found is None:  # a link opened without the ticket page: check it all
            try:
                ticket, thread = self.client.get_ticket_with_thread(ticket_id)
            except ChatwootNotFound:
                raise HTTPError(404, "error_ticket_not_found_heading", "error_ticket_not_found") from None
            except ChatwootError as failure:
                return self.unavailable(request, failure)
            self.check_owner(ticket, session)
            self.known_files.remember(session.contact_id, ticket_id, thread)
            found = self.known_files.get(session.contact_id, ticket_id, attachment_id)
        if found is None:  # not on a public message of this ticket
            raise HTTPError(404, "error_file_not_found_heading", "error_file_not_found")
        try:
            content_type, headers, stream = attachments.open_download(
                self.client, found, thumbnail=request.arg("size") == "thumb")
        except ChatwootNotFound:
            log.warning("file %s of ticket %s is missing in Chatwoot's storage", attachment_id, ticket_id)
            raise HTTPError(404, "error_file_not_found_heading", "error_file_not_found") from None
        except ChatwootError as failure:
            return self.unavailable(request, failure)
        return Response(200, stream, content_type, headers)

    def check_owner(self, ticket, session):
        """Someone else's ticket answers exactly like a missing one: 404."""
        if ticket.contact_id != session.contact_id:
            log.warning("ticket %s refused to contact %s (not the owner)", ticket.id, session.contact_id)
            raise HTTPError(404, "error_ticket_not_found_heading", "error_ticket_not_found")

    # -- Failure pages that keep what was typed ------------------------------

    def unavailable(self, request, failure):
        log.warning("Chatwoot unavailable for %s %s: %s", request.method, request.route_label, failure)
        status = _failure_status(failure)
        retry = request.unsafe_path if request.method == "GET" else ""
        return self.render(request, "error.html", status, heading_key="error_unavailable_heading",
                           message_key="error_unavailable_page", retry=retry)

    def reply_form_again(self, request, ticket_id, untrusted_message, failure):
        log.warning("reply failed for ticket %s: %s", ticket_id, failure)
        return self.form_again(request, "reply", _failure_status(failure), ticket_id, reply=untrusted_message)

    def rating_form_again(self, request, ticket_id, rating, failure):
        log.warning("rating failed for ticket %s: %s", ticket_id, failure)
        return self.form_again(request, "rating", _failure_status(failure), ticket_id, rating=rating)

    def form_again(self, request, form, status, ticket_id, reply="", rating=None):
        """The reply or rating form alone, filled in, after a refusal or a failure:
        403 (a failed CSRF check), 413 (too large), 502/503 (Chatwoot refused or is down)."""
        heading, problem = {403: ("error_csrf_heading", "form_reloaded"),
                            413: ("form_too_large_heading", "form_too_large"),
                            502: ("error_unavailable_heading", "error_rejected"),
                            503: ("error_unavailable_heading", "error_unavailable")}[status]
        multipart_body = request.environ.get("CONTENT_TYPE", "").lower().startswith("multipart/")
        return self.render(request, "form_again.html", status, form=form, heading=heading, problem=problem,
                           ticket_id=int(ticket_id), reply=reply,
                           rating=rating or dict(value="", feedback="", error="", notice=""),
                           form_id=request.field("form_id")[:64] or secrets.token_urlsafe(16),
                           files_again=request.files_chosen > 0 or (status == 413 and multipart_body),
                           FEEDBACK_MAX_CHARS=FEEDBACK_MAX_CHARS)

    def signin_with_draft(self, request, next_path, untrusted_draft, form, untrusted_fields):
        """The session ended while the customer typed: ask to sign in, show the text to copy.

        When the ended session's address is known (its signed "last address" cookie),
        the fields are also kept (see drafts) and put back into the form once this
        browser signs in again as that address.
        """
        notice = "session_expired" if request.had_session_cookie else "signin_required"
        email = self.last_address(request)
        kept = self.drafts.keep(request.signed_session_id, email, next_path, form, untrusted_fields)
        return self.render(request, "signin.html", 401, email=email, error="", next_path=next_path,
                           notice=notice, draft=untrusted_draft, draft_kept=kept,
                           draft_minutes=self.drafts.ttl_seconds // 60)

    def posted_form_again(self, request, handler_name, status, ticket_id=None):
        """The form of a KEEPS_TEXT handler, filled in with what was posted, after a
        refusal before the handler ran: a failed CSRF check (403), or a body over the
        limit (413; its text fields read back from its beginning, see oversize).

        It only shows text: nothing goes to Chatwoot, nothing is kept, the text is
        escaped like any other, and with the page's fresh token the customer sends
        it again by pressing the button, or not at all.
        """
        problem = {403: "form_reloaded", 413: "form_too_large", 503: "error_unavailable"}[status]
        form_id = request.field("form_id")[:64] or secrets.token_urlsafe(16)
        multipart_body = request.environ.get("CONTENT_TYPE", "").lower().startswith("multipart/")
        files_again = request.files_chosen > 0 or (status == 413 and multipart_body)
        if handler_name == "create_ticket":
            untrusted_priority = request.field("priority")
            return self.render(request, "ticket_new.html", status, subject=request.text_field("subject"),
                               message=request.text_field("message"),
                               priority=untrusted_priority if untrusted_priority in PRIORITY_CHOICES else NO_PRIORITY,
                               errors={}, problem=problem, form_id=form_id, files_again=files_again)
        rating = dict(value=request.field("rating"), feedback=request.text_field("feedback"), error="", notice="")
        return self.form_again(request, "reply" if handler_name == "reply" else "rating", status, ticket_id,
                               reply=request.text_field("message"), rating=rating)

    def contact_gone(self, request):
        self.sessions.delete(request.session.id)
        return redirect(self.url("/?notice=session_expired"))

    # -- Files and health ---------------------------------------------------

    def healthz(self, request):
        """200 and the queue's figures while the portal can serve; 503 when its
        state store (Redis) does not answer, for nginx and monitors."""
        health = {"status": "ok", "state": self.stores.backend}
        try:
            self.stores.ping()
            if self.notifier.enabled:
                health["notifications"] = self.notifier.health()
        except StateUnavailable as error:
            log.warning("health check: the state store does not answer: %s", error)
            return _json_response(503, {"status": "unavailable", "state": self.stores.backend,
                                        "problem": "the state store (STATE_URL) does not answer"})
        return _json_response(200, health)

    # -- Chatwoot's webhook ---------------------------------------------------

    def chatwoot_webhook(self, request):
        """Validate, de-duplicate, queue; answer at once (Chatwoot waits 5 s at most)."""
        if not self.config.webhook_secret:
            raise HTTPError(404, "error_not_found_heading", "error_not_found")
        raw_body = request.read_body(webhooks.MAX_BODY_BYTES)
        environ = request.environ
        if not webhooks.authentic(self.config.webhook_secret, environ.get("HTTP_X_CHATWOOT_SIGNATURE", ""),
                                  environ.get("HTTP_X_CHATWOOT_TIMESTAMP", ""), raw_body, request.arg("secret"),
                                  time.time()):
            log.warning("webhook refused from %s: no valid signature or URL secret (check WEBHOOK_SECRET)",
                        request.client_ip)
            return _json_response(401, {"error": "not authenticated"})
        try:
            ids, why = webhooks.agent_reply_hint(raw_body, self.config.chatwoot_account_id, self.config.notify_inboxes)
        except (ValueError, RecursionError):
            log.warning("webhook ignored: the body is not a JSON object")
            return _json_response(400, {"error": "not a JSON object"})
        if ids is None:
            return _json_response(200, {"queued": False, "why": why})
        message_id, ticket_id = ids
        try:
            added = self.notifier.accept(message_id, ticket_id)
        except StateUnavailable as error:
            # Chatwoot does not deliver a webhook again: this reply gets no mail.
            log.error("webhook message=%s ticket=%s not queued, the state store does not answer: %s",
                      message_id, ticket_id, error)
            return _json_response(503, {"error": "state store unavailable"})
        log.info("webhook message=%s ticket=%s %s", message_id, ticket_id, "queued" if added else "duplicate")
        return _json_response(200, {"queued": added})

    def static_file(self, request, name):
        return _file_response(self.static, name, request.arg("v"))

    def brand_file(self, request, name):
        return _file_response(self.brand, name, request.arg("v"))


def _query_string(fields):
    """`?a=1&b=2` of the fields that have a value, or ""."""
    kept = {name: value for name, value in fields.items() if value not in ("", None)}
    return "?" + urllib.parse.urlencode(kept) if kept else ""


def _json_response(status, data):
    # Never a page, even in a browser that ignored the type (ASVS 14.4.2).
    return Response(status, json.dumps(data), "application/json",
                    [("Content-Disposition", 'attachment; filename="portal.json"')])


def _failure_status(failure):
    """503 when Chatwoot could not answer (try again soon), 502 when it refused."""
    return 503 if isinstance(failure, ChatwootUnavailable) else 502


def upload_status(problems):
    """413 when a file was too large, else 400 (too many, empty, refused type)."""
    return 413 if any(problem.status == 413 for problem in problems) else 400


def redirect(location):
    return Response(303, b"", "text/plain; charset=utf-8", [("Location", location)])


def _verify_token(untrusted_next):
    """The token of a `next` that is the sign-in confirmation page (`/auth/verify?token=…`), or ""."""
    match = re.fullmatch(r"/auth/verify\?token=([A-Za-z0-9_-]{43})", (untrusted_next or "").strip())
    return match.group(1) if match else ""


def _safe_next(untrusted_path):
    """A path inside the portal to return to after sign-in, or "" for the default.

    Only our own GET pages qualify, so a crafted link cannot bounce a freshly
    signed-in customer to another site (`//evil.example`, `/\\evil`) or to a POST route.
    """
    path = (untrusted_path or "").strip()
    if path in ("/dashboard", "/tickets/new") or re.fullmatch(r"/tickets/[0-9]{1,10}", path):
        return path
    return ""


def _iso(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds or 0)))


def _time_tag(lang, seconds, now=None):
    """A `<time>` element: words ("5 minutes ago") for a recent moment when `now` is
    given, else the date; the date is always in its title.

    portal.js rewrites dates into the reader's own time zone; `data-relative` tells it
    to leave the words alone and localize only the title.
    """
    date = i18n.format_time(lang, seconds)
    words = i18n.relative_time(lang, seconds, now) if now is not None else None
    if words:
        return Markup('<time datetime="{}" title="{}" data-relative>{}</time>').format(_iso(seconds), date, words)
    return Markup('<time datetime="{}" title="{}">{}</time>').format(_iso(seconds), date, date)


def _load_files(paths):
    """name -> (bytes, short content hash, content type), read once at start."""
    files = {}
    for path in paths:
        data = Path(path).read_bytes()
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type == "application/javascript":
            content_type += "; charset=utf-8"
        files[path.name] = (data, hashlib.sha256(data).hexdigest()[:12], content_type)
    return files


def _file_response(files, name, requested_version):
    entry = files.get(name)
    if entry is None:
        raise HTTPError(404, "error_not_found_heading", "error_not_found")
    data, version, content_type = entry
    # A versioned URL never changes content, so browsers may keep it for a year.
    cache = "public, max-age=31536000, immutable" if requested_version == version else "public, max-age=300"
    return Response(200, data, content_type, [("Cache-Control", cache), ("ETag", f'"{version}"')])


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def configure_logging():
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(app, config):
    log.info("portal listening on http://%s:%s%s/ (public URL %s)", config.host, config.port,
             config.base_path, config.public_url("/"))
    if config.state_url:
        log.info("state in Redis at %s, keys under %r (shared with every instance using it)",
                 redacted_url(config.state_url), config.state_prefix)
    else:
        log.info("state in this process, the reply-mail queue in %s", config.state_dir)
    app.start()
    create_server(app, config, host=config.host, port=config.port).run()


def create_server(app, config, **overrides):
    """waitress, bound and listening, as the portal runs it (tests bind it to port 0)."""
    return oversize.create_server(app, **{**server_options(config), **overrides})


def server_options(config):
    """waitress' settings, also used by the tests' servers.

    The portal spends its time waiting on Chatwoot, not computing: more threads
    than cores keep pages flowing while some wait, and the connection limit bounds
    memory. waitress keeps a request body in a temporary file past 512 KB, up to
    the largest body the portal reads; of a longer one it keeps only the typed
    text (see oversize), so every 413 is the portal's own page. (waitress cuts a
    body of max_request_body_size bytes or more, the portal refuses one over its
    limit: hence the + 1.)
    A streamed file stops being read from Chatwoot while 1 MB of it waits for a
    slow client (waitress' default would hold 16 MB of it per download).
    """
    largest_body = upload_body_limit(config.attachment_max_files, config.attachment_max_bytes)
    return dict(threads=16, connection_limit=200, channel_timeout=30,
                max_request_body_size=largest_body + 1,
                outbuf_high_watermark=1024 * 1024, ident="portal", clear_untrusted_proxy_headers=False)


def check(config, test_mail_to=None):
    """Print what is wrong with the configuration and the services; True when all is well.

    `test_mail_to`: also send a real mail there once the SMTP server answers, and
    print its answer (--send-test-mail).
    """
    print("Configuration: ok" + "".join(f"\n  - note: {w}" for w in config.warnings))
    problems = []
    client = ChatwootClient(config.chatwoot_url, config.chatwoot_api_token, config.chatwoot_account_id,
                            config.chatwoot_timeout)
    problems += client.check(config.chatwoot_inbox_id)
    client.close()
    print(("FAIL" if problems else "ok  ") + f"  Chatwoot at {config.chatwoot_url}, account {config.chatwoot_account_id}, inbox {config.chatwoot_inbox_id}")
    mailer = Mailer(config)
    smtp_problems = mailer.check()
    print(("FAIL" if smtp_problems else "ok  ") + f"  SMTP {config.smtp_address}:{config.smtp_port} ({config.smtp_security})")
    problems += smtp_problems
    if test_mail_to and smtp_problems:
        print(f"FAIL  Test mail to {test_mail_to} not sent: the SMTP server must answer first")
    elif test_mail_to:
        try:
            print(f"ok    Test mail to {test_mail_to}: {mailer.send_test_mail(test_mail_to)}")
        except MailError as error:
            print(f"FAIL  Test mail to {test_mail_to}")
            problems.append(f"The test mail was not accepted: {error}")
    if config.state_url:
        state_problem = check_redis(config.state_url, config.state_prefix)
        print(("FAIL" if state_problem else "ok  ") + f"  Redis at {redacted_url(config.state_url)} (sessions, sign-in "
              f"links, reply-mail queue; keys under {config.state_prefix!r})")
    else:
        state_problem = check_writable(config.state_dir)
        print(("FAIL" if state_problem else "ok  ") + f"  State folder {config.state_dir} (reply-mail queue) is writable")
    problems += [state_problem] if state_problem else []
    if config.webhook_secret:
        inboxes = ", ".join(map(str, config.notify_inboxes))
        print(f"ok    Reply mails: WEBHOOK_SECRET is set; agent replies in inbox {inboxes} are mailed "
              f"after {config.notify_delay_seconds} s to {config.public_url('/webhooks/chatwoot')}")
    else:
        print("note  Reply mails are off: WEBHOOK_SECRET is not set, so customers are not told when support "
              "answers (README: \"Mail when support answers\")")
    for problem in problems:
        print(f"  - {problem}")
    return not problems


def demo_environment(environ, fake):
    """Settings for --demo: the fake Chatwoot, a throwaway secret, console mail."""
    seeded = fake.seed_demo()
    settings = dict(environ)
    port = settings.get("PORT") or "3001"
    host = settings.get("HOST") or "127.0.0.1"
    settings.update(
        CHATWOOT_URL=fake.url, CHATWOOT_API_TOKEN=fake.token, CHATWOOT_ACCOUNT_ID=str(fake.account_id),
        CHATWOOT_INBOX_ID=str(seeded["api_inbox_id"]), SMTP_ADDRESS="localhost", SMTP_SECURITY="none",
        SMTP_USERNAME="", SMTP_PASSWORD="", SMTP_FROM="support@example.com",
    )
    settings.setdefault("PORTAL_URL", f"http://{host}:{port}")
    settings.setdefault("SESSION_SECRET", secrets.token_hex(32))
    # Reply mails on: the fake's account webhook posts to this portal, signed.
    settings.setdefault("WEBHOOK_SECRET", secrets.token_urlsafe(18))
    settings.setdefault("NOTIFY_DELAY_SECONDS", "10")
    settings.setdefault("STATE_DIR", tempfile.mkdtemp(prefix="portal-demo-"))
    base = settings.get("BASE_PATH", "/portal").rstrip("/")
    fake.add_webhook(f"http://{host}:{port}{base}/webhooks/chatwoot", secret=settings["WEBHOOK_SECRET"])
    return settings, seeded


def main(argv=None):
    parser = argparse.ArgumentParser(description="Customer portal for Chatwoot")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="validate the configuration, reach Chatwoot and SMTP, then exit")
    mode.add_argument("--demo", action="store_true", help="run on an embedded fake Chatwoot; sign-in links are printed")
    parser.add_argument("--send-test-mail", metavar="ADDRESS",
                        help="with --check: also send a test mail to ADDRESS and show the SMTP server's answer")
    args = parser.parse_args(argv)
    test_mail_to = (args.send_test_mail or "").strip()
    if args.send_test_mail is not None and not args.check:
        parser.error("--send-test-mail works only with --check")
    if args.send_test_mail is not None and (len(test_mail_to) > EMAIL_MAX_CHARS
                                            or not EMAIL_PATTERN.fullmatch(test_mail_to)):
        parser.error(f"--send-test-mail needs one plain e-mail address such as admin@example.com, "
                     f"not {args.send_test_mail!r}")
    configure_logging()
    environ = dict(os.environ)
    mailer = None
    if args.demo:
        from fake_chatwoot import FakeChatwoot

        fake = FakeChatwoot().start()
        environ, seeded = demo_environment(environ, fake)
        mailer = ConsoleMailer(sys.stdout)
    try:
        config = load_config(environ, dotenv_path=None if args.demo else ".env")
    except ConfigError as error:
        print("The portal cannot start; fix these settings (environment or .env):", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        for warning in error.warnings:
            print(f"  - note: {warning}", file=sys.stderr)
        return 2
    if args.check:  # check() prints the warnings; logging them too would show each twice
        return 0 if check(config, test_mail_to) else 1
    for warning in config.warnings:
        log.warning("configuration: %s", warning)
    if args.demo:
        emails = ", ".join(sorted(seeded["contacts"]))
        print(f"\nDemo mode: open {config.public_url('/')} and sign in as one of: {emails}\n"
              "Sign-in links are printed below instead of being mailed.\n"
              f"Answer a ticket as an agent at {fake.demo_url} : the customer's reply mail is printed "
              f"too, {config.notify_delay_seconds} s later (unless they read it in the portal first).\n", flush=True)
    try:
        app = Portal(config, mailer=mailer)
    except StateError as error:
        print(f"The portal cannot start: {error}; set STATE_DIR to a folder it can write", file=sys.stderr)
        return 2
    serve(app, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
