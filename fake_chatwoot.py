"""A fake of Chatwoot's Application API, served over real HTTP.

It answers the account API calls the portal makes -- contact search and filter,
a contact's conversations, conversation show/create/update/filter, the messages
index and create, toggle_status, toggle_priority and inboxes -- the way Chatwoot
v4.15.1 does, as written down in the team's Chatwoot API contract ``chatwoot-api.md``
(the section numbers in comments refer to it; "part 2" is ``chatwoot-api-features.md``).
Shapes, status codes, error bodies, pagination limits and the odd corners (fuzzy
search, ``PATCH`` ignoring status, ``POST conversations`` ignoring priority, incoming
messages refused outside API inboxes, reopen on customer reply) follow that
document, not convenience.

Of the public API (§12) it answers the CSAT survey endpoints (part 2 §6.2),
``GET`` and ``PUT|PATCH /public/api/v1/csat_survey/{uuid}``: no token, the 14-day
lock, and the raw CSAT record in the answer, agents' review notes included
(``review_csat()`` writes one, ``csat_record()`` reads the record). Every answer
stored is in ``csat_responses``; every public request, and whether it carried a
token, in ``public_requests``.

Two users exist from the start: the token's own user "Customer Portal" (an
administrator, so it sees everything and names the activity lines the API causes,
gotcha 11) and the agent "Sam Agent", the default author of seeded agent replies.

Account webhooks (§9, part 2 §3) send ``message_created``: ``add_webhook()``
registers a URL; every incoming, outgoing (private notes included) or template
message created while the fake is started -- through the API or ``add_message()``
-- is POSTed by a background thread as Chatwoot's payload, signed like v4.12+
(``signed=False``: unsigned, like older servers), with a 5 s timeout, no retry,
only 2xx counting as success. Every attempt lands in ``webhook_deliveries``;
``redeliver()`` sends a duplicate, as Chatwoot sometimes does. ``GET /demo/`` is a
small page where a person plays the agent: its form adds a public reply by
"Sam Agent", which fires the webhooks like a reply typed in Chatwoot's dashboard.

Used by the portal's tests (seed, ``start()``, read ``calls``, ``set_fault``,
``add_webhook``) and by ``--demo`` (``seed_demo()``, ``demo_url``). Standard
library only.

Not faked: webhook events other than ``message_created`` (conversation, contact,
inbox, typing events and ``message_updated``), the API inbox's ``webhook_url`` and
its marking of failed messages, the webhooks REST API, the SSRF filter of v4.14+
(receivers on 127.0.0.1 are fine), rate limiting (§11; use
``set_fault("status", 429)``), agent-role visibility and bots (§1.2), teams, labels,
``sort`` on search, lock-to-single-conversation, greeting/CSAT template messages
(seed a survey with ``add_message(..., "template", content_type="input_csat")``;
it does get Chatwoot's survey link in webhooks), the rest of the public API.
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import hashlib
import hmac
import html
import http.client
import json
import logging
import queue
import re
import secrets
import socket
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote, urlsplit

log = logging.getLogger(__name__)

# ============================================================================
# Enumerations, limits and canned answers (§1.4, §1.5)
# ============================================================================

STATUSES = ("open", "resolved", "pending", "snoozed")  # DB 0..3
PRIORITIES = ("low", "medium", "high", "urgent")  # DB 0..3, or null
MESSAGE_TYPES = ("incoming", "outgoing", "activity", "template")  # DB 0..3, ints in REST
INCOMING, OUTGOING, ACTIVITY, TEMPLATE = range(4)

CONTACT_PAGE_SIZE = 15  # contacts/search and contacts/filter (§2)
CONVERSATION_PAGE_SIZE = 25  # conversations/filter, Kaminari's default (§3)
CONTACT_CONVERSATIONS_LIMIT = 20  # contacts/{id}/conversations in v4.15.1 (§3)
LATEST_PAGE, AFTER_PAGE, BETWEEN_PAGE = 20, 100, 1000  # MessageFinder (§6.1)
MAX_CONTENT_LENGTH = 150_000  # message content validation (§7.1)
MAX_JSONB_STRING = 1500  # JsonbAttributesLengthValidator (§5.1)
HANG_SECONDS = 30.0

JSON_TYPE = "application/json; charset=utf-8"
RECORD_NOT_FOUND = {"error": "Resource could not be found"}
ROUTE_NOT_FOUND = {"status": 404, "error": "Not Found"}  # Rails' routing default
BAD_REQUEST = {"status": 400, "error": "Bad Request"}  # Rails' body/query parse error
# Chatwoot does not rescue bad enum values; Rails' production default answers (§1.4).
INTERNAL_ERROR = {"status": 500, "error": "Internal Server Error"}
NO_TOKEN = {"errors": ["You need to sign in or sign up before continuing."]}
BAD_TOKEN = {"error": "Invalid Access Token"}
INCOMING_ONLY_IN_API = "Incoming messages are only allowed in Api inboxes"
REOPENED_BY_SYSTEM = "System reopened the conversation due to a new incoming message."
# conversations.activity.* in Chatwoot's config/locales/en.yml
STATUS_ACTIVITY = {
    "resolved": "Conversation was marked resolved by {user}",
    "open": "Conversation was reopened by {user}",
    "pending": "Conversation was marked as pending by {user}",
    "snoozed": "Conversation was snoozed by {user}",
}
# errors.custom_filters.* in the same file (§2.2)
FILTER_ERRORS = {
    "attribute": "Invalid attribute key - [{key}]. The key should be one of [{allowed}] "
    "or a custom attribute defined in the account.",
    "operator": "Invalid operator. The allowed operators for {key} are [{allowed}].",
    "value": "Invalid value. The values provided for {key} are invalid",
    "query_operator": 'Query operator must be either "AND" or "OR".',
}
FAULT_KINDS = (None, "status", "garbage", "close", "hang", "slow")

# Webhook::ALLOWED_WEBHOOK_EVENTS in v4.15.1 (§9.1); only message_created is sent.
WEBHOOK_EVENTS = ("conversation_status_changed", "conversation_updated", "conversation_created",
                  "contact_created", "contact_updated", "message_created", "message_updated",
                  "webwidget_triggered", "inbox_created", "inbox_updated",
                  "conversation_typing_on", "conversation_typing_off")
WEBHOOK_SENDABLE = (INCOMING, OUTGOING, TEMPLATE)  # Message#webhook_sendable?: never activity
WEBHOOK_TIMEOUT = 5.0  # the WEBHOOK_TIMEOUT installation setting: open and read (§9.2)
# SecureRandom.base58, which Rails' has_secure_token uses (part 2 §3.1)
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
SECURE_TOKEN_LENGTH = 24
# conversations.survey.response in en.yml: webhooks of non-widget inboxes get the link (part 2 §6.1)
CSAT_SURVEY_RESPONSE = "Please rate this conversation, {link}"
# Public::Api::V1::CsatSurveyController (part 2 §6.2): a rating is taken while
# (today - the survey's date) <= 14 days, in UTC dates; CsatSurveyResponse's rating rule.
CSAT_LOCK_DAYS = 14
CSAT_LOCKED = {"error": "You cannot update the CSAT survey after 14 days"}
CSAT_RATINGS = (1, 2, 3, 4, 5)
HTML_TYPE = "text/html; charset=utf-8"
# The demo page loads nothing from elsewhere and may only post to itself.
DEMO_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class _ApiError(Exception):
    """An answer other than 200, raised from anywhere inside a handler."""

    def __init__(self, status, body):
        super().__init__(status)
        self.status = status
        self.body = body


def _server_error():
    return _ApiError(500, INTERNAL_ERROR)


# ============================================================================
# Small helpers mimicking Ruby/Rails conversions
# ============================================================================


def _iso(ts):
    """ActiveSupport's JSON time: UTC with milliseconds (§1.6); None stays None."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _to_i(value):
    """Ruby's ``to_i``: the leading integer, else 0 ("12abc" -> 12, "x" -> 0)."""
    if isinstance(value, (int, float)):
        return int(value)
    match = re.match(r"\s*([+-]?\d+)", str(value))
    return int(match.group(1)) if match else 0


def _present(value):
    """Rails' ``present?``: not nil, false, blank string or empty collection."""
    if value is None or value is False:
        return False
    if isinstance(value, str):
        return value.strip() != ""
    if isinstance(value, (list, dict)):
        return bool(value)
    return True


def _cast_bool(value):
    """ActiveModel's boolean cast: only these strings are false ("False" is true)."""
    if isinstance(value, bool):
        return value
    if value is None or value == "":
        return False
    if isinstance(value, (int, float)):
        return value != 0
    return str(value) not in {"0", "f", "F", "false", "FALSE", "off", "OFF"}


def _like(pattern, text, case_sensitive=False):
    """SQL ``text LIKE '%pattern%'`` (ILIKE unless case_sensitive).

    Chatwoot wraps ``q`` in ``%...%`` without escaping, so ``%`` and ``_`` typed by
    a user are wildcards (§2.1); PostgreSQL's default escape character is ``\\``.
    """
    if text is None:
        return False
    parts, chars = [], iter(pattern)
    for char in chars:
        if char == "\\":
            parts.append(re.escape(next(chars, "")))
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    flags = re.DOTALL if case_sensitive else re.DOTALL | re.IGNORECASE
    return re.search("".join(parts), str(text), flags) is not None


def _secure_token():
    """Rails' ``has_secure_token``: 24 characters of base58."""
    return "".join(secrets.choice(BASE58) for _ in range(SECURE_TOKEN_LENGTH))


def _normalize_webhook_content(text):
    """``Messages::WebhookContentNormalizer``: the editor's hard breaks (backslash before
    a newline) become plain newlines and trailing newlines go; blank text stays as is."""
    if not _present(text):
        return text
    return re.sub(r"(\r?\n)+\Z", "", re.sub(r"\\\r?\n", "\n", text))


def _file_type(content_type):
    """Attachment ``file_type`` from the declared MIME type (§10)."""
    if content_type in ("image/jpeg", "image/jpg", "image/png", "image/gif", "image/bmp", "image/webp"):
        return "image"
    if content_type in ("video/ogg", "video/mp4", "video/webm", "video/quicktime"):
        return "video"
    if content_type.startswith("audio/"):
        return "audio"
    return "file"


def _rack_assign(params, key, value):
    """Store a form field the way Rack nests it: ``message[content]``, ``attachments[]``."""
    segments = re.split(r"\]?\[", key[:-1] if key.endswith("]") else key)
    node = params
    for index, segment in enumerate(segments[:-1]):
        if segments[index + 1] == "" and index + 2 == len(segments):
            node.setdefault(segment, []).append(value)
            return
        node = node.setdefault(segment, {})
    node[segments[-1]] = value


def _parse_body(content_type, raw):
    """Request params from a JSON, multipart or urlencoded body, like Rails does."""
    if not raw:
        return {}
    mime = content_type.split(";")[0].strip().lower()
    params = {}
    if mime == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        if not message.is_multipart():
            raise _ApiError(400, BAD_REQUEST)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            data = part.get_payload(decode=True) or b""
            if part.get_filename() is None:
                _rack_assign(params, name, data.decode("utf-8", "replace"))
            else:
                upload = {"filename": part.get_filename(), "data": data,
                          "content_type": part.get_content_type()}
                _rack_assign(params, name, upload)
        return params
    if mime == "application/x-www-form-urlencoded":
        for key, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
            _rack_assign(params, key, value)
        return params
    if mime not in ("application/json", ""):
        return {}  # Rails has no parser for other types and ignores the body
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise _ApiError(400, BAD_REQUEST) from None
    # Rails wraps a non-object JSON body in "_json".
    return parsed if isinstance(parsed, dict) else {"_json": parsed}


@dataclass
class _Request:
    args: dict  # captured from the path
    query: dict
    body: dict

    @property
    def params(self):
        # Rails merges both; a body field wins over a query parameter of the same name.
        return {**self.query, **self.body}


# Everything after /api/v1/accounts/{account_id}; first match wins, so the
# literal "search"/"filter" paths come before the ones taking an id.
_ROUTES = [
    ("GET", r"/contacts/search", "contacts_search"),
    ("POST", r"/contacts/filter", "contacts_filter"),
    ("GET", r"/contacts/(?P<contact_id>[^/]+)", "contact_show"),
    ("GET", r"/contacts/(?P<contact_id>[^/]+)/conversations", "contact_conversations"),
    ("POST", r"/contacts/(?P<contact_id>[^/]+)/contact_inboxes", "contact_inbox_create"),
    ("POST", r"/conversations/filter", "conversations_filter"),
    ("POST", r"/conversations", "conversation_create"),
    ("GET", r"/conversations/(?P<display_id>[^/]+)", "conversation_show"),
    ("PATCH", r"/conversations/(?P<display_id>[^/]+)", "conversation_update"),
    ("PUT", r"/conversations/(?P<display_id>[^/]+)", "conversation_update"),
    ("GET", r"/conversations/(?P<display_id>[^/]+)/messages", "messages_index"),
    ("POST", r"/conversations/(?P<display_id>[^/]+)/messages", "message_create"),
    ("POST", r"/conversations/(?P<display_id>[^/]+)/toggle_status", "toggle_status"),
    ("POST", r"/conversations/(?P<display_id>[^/]+)/toggle_priority", "toggle_priority"),
    ("GET", r"/inboxes", "inboxes_index"),
    ("GET", r"/inboxes/(?P<inbox_id>[^/]+)", "inbox_show"),
]
_ROUTES = [(method, re.compile(pattern), name) for method, pattern, name in _ROUTES]
# The public API (§12): whole paths, no token, no account.
_PUBLIC_ROUTES = [
    ("GET", r"/public/api/v1/csat_survey/(?P<uuid>[^/]+)", "csat_survey_show"),
    ("PUT", r"/public/api/v1/csat_survey/(?P<uuid>[^/]+)", "csat_survey_update"),
    ("PATCH", r"/public/api/v1/csat_survey/(?P<uuid>[^/]+)", "csat_survey_update"),
]
_PUBLIC_ROUTES = [(method, re.compile(pattern), name) for method, pattern, name in _PUBLIC_ROUTES]
_API_PREFIX = re.compile(r"/api/v1/accounts/(?P<account>[^/]+)(?P<rest>/.*)")
_BLOB_PATH = re.compile(r"/rails/active_storage/(?P<kind>blobs/redirect|representations/redirect"
                        r"|disk)/(?P<key>[^/]+)/(?:.*/)?(?P<filename>[^/]+)")


# ============================================================================
# The fake
# ============================================================================


class FakeChatwoot:
    """One Chatwoot account behind a real HTTP server on 127.0.0.1.

    Seeding and inspection methods may be called from any thread, before or
    after ``start()``; one lock guards all state. Webhooks go out from one
    delivery thread, which runs from ``start()`` to ``stop()``.
    """

    def __init__(self, token="test-token", account_id=1, clock=time.time, account_name="Acme"):
        self.token = token
        self.account_id = account_id
        self.account_name = account_name
        self.url = None
        self.delay = 0.0
        self.calls = []
        self._clock = clock
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server = None
        self._thread = None
        self._connections = set()
        self._fault = None
        self._counters = {}
        self._users = {}
        self._inboxes = {}
        self._contacts = {}
        self._contact_inboxes = {}
        self._conversations = {}  # display_id -> record
        self._by_contact = {}  # str(contact id) -> its conversation records (the filter's index)
        self._messages = {}  # global message id -> record
        self._threads = {}  # display_id -> its message records, in id order
        self._blobs = {}  # attachment key -> attachment record
        self.blob_requests = []  # every request for a file: {"method", "path", "token"}
        self.public_requests = []  # every public API request: {"method", "path", "token"}
        self._csat_records = {}  # survey message id -> its CsatSurveyResponse row
        # Every CSAT answer the public API stored: {"uuid", "conversation_id",
        # "message_id", "submitted_values"}, in order.
        self.csat_responses = []
        self.webhooks = {}  # webhook id -> {id, url, secret, subscriptions, signed}
        self.webhook_deliveries = []  # one dict per attempt, appended under _deliveries_changed
        self.webhook_timeout = WEBHOOK_TIMEOUT
        self._deliveries_changed = threading.Condition()
        self._outbox = None  # queue of (event, message id, webhook ids) while started
        self._courier = None  # the delivery thread
        self._in_flight = None  # the connection a delivery is waiting on, for stop()
        self.api_user_id = self._add_user("Customer Portal", "portal@chatwoot.test", "administrator")
        self.default_agent_id = self.add_agent("Sam Agent", "sam@acme.test", display_name="Sam")

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._server = server
        # A short poll interval keeps stop() (and so every test's teardown) quick.
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                                        name="fake-chatwoot", daemon=True)
        self._thread.start()
        outbox = queue.Queue()
        self._courier = threading.Thread(target=self._deliver_forever, args=(outbox,),
                                         name="fake-chatwoot-webhooks", daemon=True)
        self._courier.start()
        with self._lock:
            self._outbox = outbox  # from now on new messages are dispatched
        return self

    def stop(self):
        if self._server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in delay, "slow" or "hang"
        self._stop_deliveries()
        self._server.shutdown()
        with self._lock:
            open_connections = list(self._connections)
        # Idle keep-alive connections would otherwise park their threads forever.
        for connection in open_connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # -- seeding -----------------------------------------------------------

    def add_inbox(self, name, channel_type="Channel::Api"):
        with self._lock:
            inbox_id = self._new_id("inbox")
            self._inboxes[inbox_id] = {
                "id": inbox_id, "name": name, "channel_type": channel_type,
                "channel_id": self._new_id(channel_type),
                "identifier": secrets.token_urlsafe(18), "hmac_token": secrets.token_urlsafe(18),
            }
            return inbox_id

    def add_contact(self, name, email, phone_number=None, identifier=None):
        with self._lock:
            email = email.strip().lower() if email else None  # Chatwoot lower-cases before save
            if email and any(c["email"] == email for c in self._contacts.values()):
                raise ValueError(f"email already taken: {email}")  # unique per account
            contact_id = self._new_id("contact")
            self._contacts[contact_id] = {
                "id": contact_id, "name": name, "email": email, "phone_number": phone_number,
                "identifier": identifier, "blocked": False, "additional_attributes": {},
                "custom_attributes": {}, "created_at": self._now(), "last_activity_at": None,
            }
            return contact_id

    def add_agent(self, name, email, display_name=None):
        return self._add_user(name, email, "agent", display_name)

    def add_webhook(self, url, secret=None, subscriptions=("message_created",), signed=True):
        """An account webhook (§9.1); returns its id. The record is ``webhooks[id]``.

        Like Chatwoot, the URL must be http(s) and unique in the account and the
        subscriptions a non-empty list of allowed events. ``secret`` None makes one
        the way ``has_secure_token`` does; ``signed=False`` sends no
        X-Chatwoot-Delivery/Timestamp/Signature headers, like servers before v4.12.
        """
        parts = urlsplit(url)
        try:
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # a port that is not a number
            valid = False
        if not valid:
            raise ValueError(f"webhook url must be http(s) with a host: {url!r}")
        if isinstance(subscriptions, str):
            raise ValueError("subscriptions must be a list of event names, not one string")
        subscriptions = list(subscriptions)
        unknown = sorted(set(subscriptions) - set(WEBHOOK_EVENTS))
        if not subscriptions or unknown:
            raise ValueError(f"invalid subscriptions {unknown or subscriptions!r}")
        with self._lock:
            if any(w["url"] == url for w in self.webhooks.values()):
                raise ValueError(f"webhook url already taken: {url}")  # unique per account
            webhook_id = self._new_id("webhook")
            self.webhooks[webhook_id] = {
                "id": webhook_id, "url": url,
                "secret": _secure_token() if secret is None else secret,
                "subscriptions": subscriptions, "signed": bool(signed)}
            return webhook_id

    def add_conversation(self, contact_id, inbox_id, subject=None, status="open", created_at=None,
                         assignee_id=None, priority=None):
        if status not in STATUSES or (priority is not None and priority not in PRIORITIES):
            raise ValueError(f"bad status or priority: {status!r}, {priority!r}")
        with self._lock:
            contact, inbox = self._contacts[contact_id], self._inboxes[inbox_id]
            attributes = {}
            if inbox["channel_type"] == "Channel::Email":
                attributes["source"] = "email"
            if subject is not None:
                attributes["mail_subject"] = subject
            contact_inbox = self._seed_contact_inbox(contact, inbox)
            conversation = self._create_conversation(
                contact_inbox, attributes, {}, status, assignee_id, created_at)
            conversation["priority"] = priority
            return conversation["display_id"]

    def add_message(self, conversation_id, content, message_type="incoming", private=False,
                    sender=None, created_at=None, content_type="text", attachments=None,
                    content_attributes=None):
        """Append history as-is: unlike the API, a seeded incoming message never reopens.

        Chatwoot's CSAT survey is ``("Please rate the conversation", "template",
        content_type="input_csat", content_attributes={"display_type": "emoji"})``.
        """
        type_code = message_type if isinstance(message_type, int) else MESSAGE_TYPES.index(message_type)
        with self._lock:
            conversation = self._conversations[conversation_id]
            author = self._author(conversation, type_code, sender or self.default_agent_id)
            message = self._create_message(
                conversation, type_code, content, private, author, created_at=created_at,
                content_type=content_type, content_attributes=copy.deepcopy(content_attributes),
                attachments=attachments or [])
            return message["id"]

    def seed_demo(self):
        """Sample account for ``--demo``: two inboxes, four contacts, Jane's tickets."""
        now = self._now()
        day, hour = 86400, 3600
        api = self.add_inbox("Customer Portal", "Channel::Api")
        mail = self.add_inbox("Support email", "Channel::Email")
        contacts = {email: self.add_contact(name, email) for name, email in [
            ("Jane Doe", "jane@example.com"), ("Bob Stone", "bob@example.com"),
            ("Ann Lee", "ann@example.com"), ("Joann Park", "joann@example.com"),
            ("Max Rivera", "max@example.com")]}
        jane, bob, ann = (contacts[e] for e in ("jane@example.com", "bob@example.com", "ann@example.com"))
        sam = self.default_agent_id

        def thread(display_id, start, *lines):
            for offset, kind, text, *private in lines:
                self.add_message(display_id, text, kind, private=bool(private),
                                 created_at=start + offset)

        # Real files for the attachment list, made here from the standard library,
        # the same bytes every run.

        def demo_photo_png(width=480, height=320):
            """A 480x320 RGB PNG: a smoking printer by a window, in flat shapes."""
            rows = []
            for y in range(height):
                if y < 230:  # wall, lighter at the top
                    shade = 40 * y // 230
                    row = bytearray(bytes((205 - shade, 215 - shade, 228 - shade)) * width)
                else:  # wooden floor
                    shade = 30 * (y - 230) // (height - 230)
                    row = bytearray(bytes((150 - shade, 112 - shade, 78 - shade)) * width)
                rows.append(row)

            def span(y, x0, x1, colour):
                x0, x1 = max(x0, 0), min(x1, width)
                if 0 <= y < height and x0 < x1:
                    rows[y][3 * x0:3 * x1] = bytes(colour) * (x1 - x0)

            def box(x0, y0, x1, y1, colour):
                for y in range(y0, y1):
                    span(y, x0, x1, colour)

            def disc(cx, cy, r, colour):
                for y in range(cy - r, cy + r + 1):
                    half = int((r * r - (y - cy) ** 2) ** 0.5)
                    span(y, cx - half, cx + half + 1, colour)

            box(30, 30, 130, 150, (120, 90, 60))  # window frame
            box(38, 38, 122, 142, (170, 210, 245))  # sky
            box(79, 38, 81, 142, (120, 90, 60))
            box(38, 89, 122, 91, (120, 90, 60))
            for cx, cy, r, grey in ((262, 96, 30, 120), (292, 62, 24, 135), (246, 48, 20, 150),
                                    (318, 30, 16, 165)):
                disc(cx, cy, r, (grey, grey, grey + 4))  # smoke
            box(140, 250, 350, 258, (110, 80, 55))  # shadow
            box(200, 118, 300, 150, (248, 248, 244))  # paper
            box(150, 150, 340, 250, (68, 72, 80))  # printer
            box(150, 150, 340, 166, (96, 100, 110))
            box(180, 205, 310, 212, (40, 42, 48))  # output slot
            box(310, 175, 326, 183, (90, 200, 110))  # power light
            for y in range(110, 150):  # flame: widest at the bottom
                half = (y - 110) * 3 // 4
                span(y, 262 - half, 262 + half + 1, (240, 120, 30))
                span(y, 262 - half // 2, 262 + half // 2 + 1, (255, 205, 60))

            def chunk(kind, data):
                checksum = struct.pack(">I", zlib.crc32(kind + data))
                return struct.pack(">I", len(data)) + kind + data + checksum

            raw = b"".join(b"\x00" + bytes(row) for row in rows)  # filter 0 on every row
            header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
            return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                    + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

        def demo_pdf():
            """A one-page A4 PDF with two lines of Helvetica and a correct xref table."""
            text = (b"BT /F1 20 Tf 72 760 Td (Visit confirmation) Tj ET\n"
                    b"BT /F1 12 Tf 72 730 Td"
                    b" (Printer on fire: a technician visits Jane Doe tomorrow at 9:00.) Tj ET")
            objects = [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842]"
                b" /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
                b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
                b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text),
            ]
            out = bytearray(b"%PDF-1.4\n")
            offsets = []
            for number, body in enumerate(objects, 1):
                offsets.append(len(out))
                out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
            xref = len(out)
            out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
            out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
            out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
            out += b"startxref\n%d\n%%%%EOF\n" % xref
            return bytes(out)

        t = now - 2 * day
        fire = self.add_conversation(jane, api, "Printer on fire", "open", t, sam, "high")
        thread(fire, t, (0, "incoming", "My printer is on fire since this morning."),
               (60, "activity", "Sam Agent self-assigned this conversation"),
               (300, "outgoing", "Hi Jane, please unplug it. A technician is on the way."),
               (420, "outgoing", "Customer seems upset, escalate.", True),
               (3 * hour, "incoming", "Unplugged. It is still smoking a bit."))
        self.add_message(fire, "Here is a photo of it.", "incoming", created_at=t + 3 * hour + 120,
                         attachments=[{"filename": "printer.png", "content_type": "image/png",
                                       "data": demo_photo_png(), "width": 480, "height": 320}])
        thread(fire, t, (3 * hour + 600, "outgoing", "The technician arrives **tomorrow at 9**."))
        self.add_message(fire, "Your visit confirmation is attached.", "outgoing",
                         created_at=t + 3 * hour + 660,
                         attachments=[{"filename": "visit-confirmation.pdf",
                                       "content_type": "application/pdf", "data": demo_pdf()}])
        t = now - 5 * day
        invoice = self.add_conversation(jane, api, "Invoice 2024-117 is wrong", "pending", t, sam)
        thread(invoice, t, (0, "incoming", "The invoice lists 12 toner cartridges, we got 2."),
               (2 * hour, "outgoing", "Thanks, I forwarded it to accounting."),
               (2 * hour + 5, "activity", "Conversation was marked as pending by Sam Agent"),
               # The newest message is a private note, so messages[0] of this
               # conversation must never reach the customer (gotcha 6).
               (3 * hour, "outgoing", "Accounting: the delivery note says 12. Check with the driver.",
                True))
        t = now - 20 * day
        password = self.add_conversation(jane, api, "Password reset", "resolved", t, sam, "low")
        thread(password, t, (0, "incoming", "I cannot reset my password."),
               (hour, "outgoing", "I sent you a new reset link."),
               (2 * hour, "incoming", "Worked, thank you!"),
               (2 * hour + 60, "activity", "Conversation was marked resolved by Sam Agent"))
        t = now - 3 * day
        renewal = self.add_conversation(jane, api, "Contract renewal", "snoozed", t)
        self._conversations[renewal]["snoozed_until"] = _iso(now + 7 * day)
        thread(renewal, t, (0, "incoming", "Please remind me about the renewal next week."),
               (600, "activity", "Conversation was snoozed by Sam Agent"))
        t = now - 1 * day
        delivery = self.add_conversation(jane, mail, "Delivery address", "open", t)
        thread(delivery, t, (0, "incoming", "Please ship to our new office, 5 Main St."),
               (hour, "outgoing", "Noted, the next delivery goes to 5 Main St."))
        t = now - 4 * day
        # Long enough that a reader needs more than one page of 20 (§6.3).
        long_thread = self.add_conversation(bob, api, "Network drops every hour", "open", t, sam)
        for n in range(30):
            kind = "incoming" if n % 2 == 0 else "outgoing"
            self.add_message(long_thread, f"Update {n + 1} on the network problem.", kind,
                             created_at=t + n * 1800)
        t = now - 6 * hour
        lamp = self.add_conversation(ann, api, "Lamp flickers", "open", t)
        self.add_message(lamp, "The desk lamp flickers.", "incoming", created_at=t)
        t = now - 2 * day
        # Resolved two days ago, with Chatwoot's satisfaction survey waiting for an answer (§6).
        scanner = self.add_conversation(jane, api, "Scanner driver", "resolved", t, sam)
        thread(scanner, t, (0, "incoming", "Which driver does the scanner need?"),
               (900, "outgoing", "Version 5.2 from our download page; it is installed now."),
               (1000, "activity", "Conversation was marked resolved by Sam Agent"))
        self.add_message(scanner, "Please rate the conversation", "template", created_at=t + 1001,
                         content_type="input_csat", content_attributes={"display_type": "emoji"})
        # A customer with a long history, for the dashboard's pages, filter and search.
        topics = ("Order {} has not arrived", "Invoice {} question", "Return label for order {}",
                  "Password reset #{}", "Delivery address change {}", "Broken part in order {}")
        for n in range(64):
            t = now - (64 - n) * day
            status = "resolved" if n < 50 else ("open", "pending", "snoozed")[n % 3]
            busy = self.add_conversation(contacts["max@example.com"], api, topics[n % len(topics)].format(1000 + n),
                                         status, t, sam, (None, "low", "medium", "high", "urgent")[n % 5])
            self.add_message(busy, "Hello, I have a question about this.", "incoming", created_at=t)
            self.add_message(busy, "Thanks, we are looking into it.", "outgoing", created_at=t + hour)
        return {"api_inbox_id": api, "email_inbox_id": mail, "contacts": contacts}

    # -- inspection and fault injection ------------------------------------

    def reset_calls(self):
        with self._lock:
            del self.calls[:]

    def conversation(self, display_id):
        with self._lock:
            return copy.deepcopy(self._conversations[display_id])

    def messages_of(self, display_id):
        with self._lock:
            return copy.deepcopy(self._threads.get(display_id, []))

    def review_csat(self, conversation_id, notes, reviewer_id=None):
        """An agent's internal review note on the conversation's CSAT record
        (Enterprise, v4.10+), which the public CSAT endpoints hand to anyone with
        the uuid (part 2 §6.2). The customer must have rated first."""
        with self._lock:
            message = self._csat_message_of(self._conversations[conversation_id])
            record = self._csat_records.get(message["id"]) if message else None
            if record is None:
                raise ValueError(f"conversation {conversation_id} has no CSAT answer to review")
            now = float(self._clock())
            record.update(csat_review_notes=notes, review_notes_updated_at=now,
                          review_notes_updated_by_id=reviewer_id or self.default_agent_id, updated_at=now)

    def csat_record(self, conversation_id):
        """A copy of the conversation's CsatSurveyResponse row, or None before a valid rating."""
        with self._lock:
            message = self._csat_message_of(self._conversations[conversation_id])
            return copy.deepcopy(self._csat_records.get(message["id"])) if message else None

    @property
    def demo_url(self):
        """The agent's stand-in page (``GET /demo/``); None until ``start()``."""
        return None if self.url is None else f"{self.url}/demo/"

    def wait_for_deliveries(self, count, timeout=5.0):
        """Block until ``count`` webhook attempts are recorded; returns a copy of them all."""
        with self._deliveries_changed:
            arrived = self._deliveries_changed.wait_for(
                lambda: len(self.webhook_deliveries) >= count, timeout)
            if not arrived:
                raise AssertionError(
                    f"expected at least {count} webhook deliveries within {timeout:g} s, "
                    f"got {len(self.webhook_deliveries)}: {self.webhook_deliveries!r}")
            return [dict(d) for d in self.webhook_deliveries]

    def webhook_body(self, message_id, event="message_created"):
        """The JSON body Chatwoot would deliver for this message now (for load tests
        that post deliveries themselves)."""
        with self._lock:
            return json.dumps(self._message_webhook_data(self._messages[message_id], event)).encode()

    def redeliver(self, message_id, event="message_created"):
        """Send ``event`` for this message again to every subscribed webhook.

        Chatwoot does deliver duplicates (#11901), each with a fresh delivery id;
        the payload is built from the current state. Returns how many webhooks it
        was queued for (0 while stopped, for activity lines, or with no subscriber).
        """
        if event != "message_created":
            raise ValueError(f"only message_created is faked, not {event!r}")
        with self._lock:
            message = self._messages[message_id]
            if message["message_type"] not in WEBHOOK_SENDABLE:
                return 0
            return self._dispatch(event, message_id)

    def set_fault(self, kind, status=None, body=None, count=None, seconds=None):
        """Misbehave on the next API requests (all of them while ``count`` is None).

        kind: None clears; "status" answers ``status`` with ``body`` (dict/list ->
        JSON, str/bytes sent as is); "garbage" answers 200 with a non-JSON body;
        "close" drops the connection unanswered; "hang" waits ``seconds`` (30)
        then drops it; "slow" waits ``seconds`` then answers normally.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if kind == "status" and status is None:
            raise ValueError('set_fault("status") needs a status')
        if kind == "slow" and seconds is None:
            raise ValueError('set_fault("slow") needs seconds')
        with self._lock:
            self._fault = None if kind is None else {
                "kind": kind, "status": status, "body": body, "count": count,
                "seconds": HANG_SECONDS if seconds is None else seconds}

    # -- state changes shared by seeding and the API -------------------------

    def _now(self):
        return int(self._clock())

    def _new_id(self, kind):
        self._counters[kind] = self._counters.get(kind, 0) + 1
        return self._counters[kind]

    def _add_user(self, name, email, role, display_name=None):
        with self._lock:
            user_id = self._new_id("user")
            self._users[user_id] = {"id": user_id, "name": name, "email": email, "role": role,
                                    "available_name": display_name or name}
            return user_id

    def _new_contact_inbox(self, contact, inbox, source_id):
        contact_inbox_id = self._new_id("contact_inbox")
        now = self._clock()
        # The whole row: webhooks send it raw, pubsub_token included (§9.5).
        self._contact_inboxes[contact_inbox_id] = {
            "id": contact_inbox_id, "contact_id": contact["id"], "inbox_id": inbox["id"],
            "source_id": source_id, "created_at": now, "updated_at": now,
            "hmac_verified": False, "pubsub_token": _secure_token()}
        return self._contact_inboxes[contact_inbox_id]

    def _seed_contact_inbox(self, contact, inbox):
        # Seeded history reuses one session per contact and inbox; email sessions
        # are keyed by the address, API sessions by a random UUID.
        for contact_inbox in self._contact_inboxes.values():
            if (contact_inbox["contact_id"], contact_inbox["inbox_id"]) == (contact["id"], inbox["id"]):
                return contact_inbox
        email_inbox = inbox["channel_type"] == "Channel::Email" and contact["email"]
        source_id = contact["email"] if email_inbox else str(uuid.uuid4())
        return self._new_contact_inbox(contact, inbox, source_id)

    def _create_conversation(self, contact_inbox, additional, custom, status, assignee_id,
                             created_at=None):
        created = self._now() if created_at is None else int(created_at)
        display_id = self._new_id("display_id")
        self._conversations[display_id] = {
            "display_id": display_id, "uuid": str(uuid.uuid4()), "account_id": self.account_id,
            "inbox_id": contact_inbox["inbox_id"], "contact_id": contact_inbox["contact_id"],
            "contact_inbox_id": contact_inbox["id"], "status": status, "priority": None,
            "assignee_id": assignee_id, "additional_attributes": additional,
            "custom_attributes": custom, "labels": [], "snoozed_until": None,
            "created_at": created, "updated_at": float(self._clock()), "last_activity_at": created,
            "agent_last_seen_at": None, "assignee_last_seen_at": None,
            "contact_last_seen_at": None, "first_reply_created_at": None, "waiting_since": None,
        }
        self._by_contact.setdefault(str(contact_inbox["contact_id"]), []).append(self._conversations[display_id])
        return self._conversations[display_id]

    def _create_message(self, conversation, type_code, content, private, author, created_at=None,
                        content_type="text", content_attributes=None, source_id=None,
                        attachments=()):
        created = self._now() if created_at is None else int(created_at)
        message_id = self._new_id("message")
        message = {
            "id": message_id, "conversation_id": conversation["display_id"],
            "inbox_id": conversation["inbox_id"], "content": content, "message_type": type_code,
            "private": bool(private), "content_type": content_type,
            "content_attributes": content_attributes or {}, "sender_type": author[0],
            "sender_id": author[1], "status": "sent", "source_id": source_id,
            "created_at": created, "updated_at": float(self._clock()), "attachments": [],
        }
        for upload in attachments:
            message["attachments"].append(self._new_attachment(message_id, upload))
        self._messages[message_id] = message
        self._threads.setdefault(conversation["display_id"], []).append(message)
        # Every message, private notes and activity lines included, bumps activity (§3).
        conversation["last_activity_at"] = created
        conversation["updated_at"] = float(self._clock())
        if type_code == INCOMING:
            self._contacts[conversation["contact_id"]]["last_activity_at"] = created
            if conversation["waiting_since"] is None:
                conversation["waiting_since"] = created
        elif type_code == OUTGOING and author[0] == "User" and not private:
            # The first human reply is remembered and ends the wait (§7.4).
            if conversation["first_reply_created_at"] is None:
                conversation["first_reply_created_at"] = created
            conversation["waiting_since"] = None
        if type_code in WEBHOOK_SENDABLE:
            self._dispatch("message_created", message_id)
        return message

    def _new_attachment(self, message_id, upload):
        filename = upload.get("filename") or "file"
        content_type = upload.get("content_type") or "application/octet-stream"
        data = upload.get("data") or b""
        attachment = {
            "id": self._new_id("attachment"), "message_id": message_id,
            "file_type": upload.get("file_type") or _file_type(content_type),
            "extension": filename.rsplit(".", 1)[1].lower() if "." in filename else None,
            "content_type": content_type, "filename": filename, "data": data,
            "file_size": upload.get("file_size", len(data)),
            "width": upload.get("width"), "height": upload.get("height"),
            "key": secrets.token_urlsafe(24),
        }
        self._blobs[attachment["key"]] = attachment
        return attachment

    def _author(self, conversation, type_code, user_id):
        """(sender_type, sender_id): the contact, a user, or nobody for activity/template."""
        if type_code == INCOMING:
            return "Contact", conversation["contact_id"]
        if type_code == OUTGOING:
            return "User", user_id
        return None, None

    def _add_activity(self, conversation, content):
        # Chatwoot writes these from a background job; the fake writes them at once.
        self._create_message(conversation, ACTIVITY, content, False, (None, None))

    def _set_status(self, conversation, status, activity, snoozed_until=None):
        """Change status; the activity line is written only when it really changed."""
        changed = conversation["status"] != status
        conversation["status"] = status
        conversation["snoozed_until"] = snoozed_until if status == "snoozed" else None
        conversation["updated_at"] = float(self._clock())
        if changed:
            self._add_activity(conversation, activity)

    def _set_priority(self, conversation, priority):
        old = conversation["priority"]
        if old == priority:
            return
        conversation["priority"] = priority
        conversation["updated_at"] = float(self._clock())
        user = self._users[self.api_user_id]["name"]
        if priority is None:
            text = f"{user} removed the priority"
        elif old is None:
            text = f"{user} set the priority to {priority}"
        else:
            text = f"{user} changed the priority from {old} to {priority}"
        self._add_activity(conversation, text)

    # ========================================================================
    # Webhooks (§9.2, §9.3; part 2 §3.4, §3.5): event -> queue -> delivery thread
    # ========================================================================

    def _dispatch(self, event, message_id):
        """Queue ``event`` for the webhooks subscribed now; returns how many.

        Like Chatwoot's listener the delivery thread builds the payload later, from
        the state it finds then; it can only read once the creating request has
        released the lock, which stands in for "after commit".
        """
        with self._lock:
            if self._outbox is None:
                return 0  # not started: nobody is listening
            targets = [w["id"] for w in self.webhooks.values() if event in w["subscriptions"]]
            if targets:
                self._outbox.put((event, message_id, targets))
            return len(targets)

    def _stop_deliveries(self):
        """End the delivery thread: queued events are dropped, one in flight is cut off."""
        with self._lock:
            outbox, self._outbox = self._outbox, None
            in_flight = self._in_flight
        if outbox is None:
            return
        outbox.put(None)
        if in_flight is not None and in_flight.sock is not None:
            try:
                in_flight.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._courier.join()
        self._courier = None

    def _deliver_forever(self, outbox):
        while True:
            job = outbox.get()
            if job is None:
                return
            if self._stopping.is_set():
                continue
            event, message_id, webhook_ids = job
            try:
                with self._lock:
                    targets = [dict(self.webhooks[i]) for i in webhook_ids]
                    payload = self._message_webhook_data(self._messages[message_id], event)
            except Exception:  # outermost boundary of the thread: a bug must not end deliveries
                log.exception("fake Chatwoot could not build %s for message %s", event, message_id)
                continue
            # One payload per dispatch, sent as is to every target (payload.to_json).
            body = json.dumps(payload).encode()
            for webhook in targets:
                if self._stopping.is_set():
                    break
                self._post_webhook(webhook, event, message_id, body)

    def _post_webhook(self, webhook, event, message_id, body):
        """One attempt, never retried; only a 2xx answer counts as success."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        delivery_id = None
        if webhook["signed"]:  # lib/webhooks/trigger.rb#request_headers, v4.12+
            delivery_id = str(uuid.uuid4())  # fresh per target and dispatch
            timestamp = str(self._now())
            digest = hmac.new(webhook["secret"].encode(), f"{timestamp}.".encode() + body,
                              hashlib.sha256).hexdigest()
            headers.update({"X-Chatwoot-Delivery": delivery_id, "X-Chatwoot-Timestamp": timestamp,
                            "X-Chatwoot-Signature": f"sha256={digest}"})
        target = urlsplit(webhook["url"])
        connection_class = (http.client.HTTPSConnection if target.scheme == "https"
                            else http.client.HTTPConnection)
        # One timeout for connecting and for every read, like WEBHOOK_TIMEOUT.
        connection = connection_class(target.hostname, target.port, timeout=self.webhook_timeout)
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        status = error = None
        started = time.monotonic()
        try:
            connection.connect()
            # Registered only once there is a socket that stop() can shut down.
            with self._lock:
                if self._stopping.is_set():
                    raise ConnectionAbortedError("the fake is stopping")
                self._in_flight = connection
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            status = response.status
            if not 200 <= status < 300:
                error = f"HTTP {status} {response.reason}"
        except TimeoutError:
            error = f"timeout: no answer within {self.webhook_timeout:g} s"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            seconds = time.monotonic() - started
            with self._lock:
                self._in_flight = None
            connection.close()
        if error is not None:
            # Chatwoot only logs a failure. No URL here: it may carry a token.
            log.warning("fake Chatwoot: webhook %s, %s for message %s failed: %s",
                        webhook["id"], event, message_id, error)
        with self._deliveries_changed:
            self.webhook_deliveries.append({
                "webhook_id": webhook["id"], "url": webhook["url"], "event": event,
                "message_id": message_id, "delivery_id": delivery_id, "status": status,
                "error": error, "seconds": seconds})
            self._deliveries_changed.notify_all()

    # ========================================================================
    # HTTP plumbing: call log, faults, routing, auth
    # ========================================================================

    def _take_fault(self):
        fault = self._fault
        if fault is not None and fault["count"] is not None:
            fault["count"] -= 1
            if fault["count"] <= 0:
                self._fault = None
        return fault

    def _answer(self, method, target, headers, raw_body):
        """(status, content_type, body, extra_headers) for one request, or None to hang up."""
        parts = urlsplit(target)
        if parts.path == "/demo" or parts.path.startswith("/demo/"):
            return self._serve_demo(method, parts, headers, raw_body)  # not an API call
        token_sent = bool(headers.get("api_access_token") or headers.get("api-access-token"))
        public = parts.path.startswith("/public/api/")  # logged and faulted like the API
        if not public and not parts.path.startswith("/api/"):
            with self._lock:  # storage needs no token; a client that sends one leaks it
                self.blob_requests.append({"method": method, "path": parts.path, "token": token_sent})
            return self._serve_blob(method, parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        with self._lock:
            self.calls.append((method, parts.path, query))
            if public:  # the public API needs no token; a client that sends one leaks it
                self.public_requests.append({"method": method, "path": parts.path, "token": token_sent})
            fault = self._take_fault()
        if self.delay:
            self._stopping.wait(self.delay)
        if fault is not None:
            if fault["kind"] in ("slow", "hang"):
                self._stopping.wait(fault["seconds"])
            if fault["kind"] in ("close", "hang"):
                return None
            if fault["kind"] == "garbage":
                return 200, JSON_TYPE, fault["body"] or b"<html><body>Bad Gateway</body></html>", {}
            if fault["kind"] == "status":
                return _fault_answer(fault["status"], fault["body"])
        with self._lock:
            try:
                route = self._route_public if public else self._route
                status, payload = route(method, parts, query, headers, raw_body)
            except _ApiError as error:
                status, payload = error.status, error.body
            except Exception:  # outermost boundary: a bug in the fake still answers like Rails
                log.exception("fake Chatwoot failed on %s %s", method, parts.path)
                status, payload = 500, INTERNAL_ERROR
            body = b"" if payload is None else json.dumps(payload).encode()
        return status, JSON_TYPE, body, {}

    def _route(self, method, parts, query, headers, raw_body):
        match = _API_PREFIX.fullmatch(parts.path.rstrip("/"))
        handler = None
        for route_method, pattern, name in _ROUTES if match else ():
            found = pattern.fullmatch(match.group("rest"))
            if found and route_method == method:
                handler, args = getattr(self, "_api_" + name), found.groupdict()
                break
        if handler is None:
            raise _ApiError(404, ROUTE_NOT_FOUND)
        self._authenticate(headers)
        if re.search(r"%(?![0-9A-Fa-f]{2})", parts.query):
            raise _ApiError(400, BAD_REQUEST)  # Rack refuses a raw "%" (§2.1)
        body = _parse_body(headers.get("Content-Type", ""), raw_body)
        if str(match.group("account")) != str(self.account_id):
            raise _ApiError(404, RECORD_NOT_FOUND)  # the only account this fake knows
        return 200, handler(_Request({k: unquote(v) for k, v in args.items()}, query, body))

    def _route_public(self, method, parts, query, headers, raw_body):
        """The public API (§12): no token, no account; the path's uuid is the credential."""
        handler = None
        for route_method, pattern, name in _PUBLIC_ROUTES:
            found = pattern.fullmatch(parts.path.rstrip("/"))
            if found and route_method == method:
                handler, args = getattr(self, "_public_" + name), found.groupdict()
                break
        if handler is None:
            raise _ApiError(404, ROUTE_NOT_FOUND)
        body = _parse_body(headers.get("Content-Type", ""), raw_body)
        return 200, handler(_Request({k: unquote(v) for k, v in args.items()}, query, body))

    def _authenticate(self, headers):
        # Rails reads both spellings as HTTP_API_ACCESS_TOKEN (§1.1).
        offered = headers.get("api_access_token") or headers.get("api-access-token")
        if offered is None:
            raise _ApiError(401, NO_TOKEN)
        if not hmac.compare_digest(offered.encode(), self.token.encode()):
            raise _ApiError(401, BAD_TOKEN)

    def _serve_blob(self, method, path):
        """ActiveStorage stand-in: unauthenticated, the redirect leads to the bytes (§10)."""
        found = _BLOB_PATH.fullmatch(path)
        with self._lock:
            attachment = found and self._blobs.get(found.group("key"))
        if method != "GET" or not attachment:
            return 404, JSON_TYPE, json.dumps(ROUTE_NOT_FOUND).encode(), {}
        if found.group("kind") != "disk":
            location = f"/rails/active_storage/disk/{attachment['key']}/{quote(attachment['filename'])}"
            return 302, "text/html; charset=utf-8", b"", {"Location": self.url + location}
        disposition = f"attachment; filename=\"{attachment['filename']}\""
        return 200, attachment["content_type"], attachment["data"], {"Content-Disposition": disposition}

    # ========================================================================
    # Demo page: a person plays the agent in Chatwoot's dashboard
    # ========================================================================

    def _serve_demo(self, method, parts, headers, raw_body):
        """``GET /demo/`` lists conversations; ``POST /demo/reply`` adds an agent reply.

        No token, no call log, no faults: this is the stand-in for an agent's
        browser session, not an API client.
        """
        if parts.path == "/demo" and method == "GET":
            return 301, HTML_TYPE, b"", {"Location": "/demo/"}
        if parts.path == "/demo/" and method == "GET":
            unsafe_replied = dict(parse_qsl(parts.query)).get("replied", "")
            with self._lock:
                known = _to_i(unsafe_replied) in self._conversations
            notice = None
            if known:
                agent = self._users[self.default_agent_id]["name"]
                notice = ("notice", f"{agent} replied to conversation #{_to_i(unsafe_replied)}.")
            return self._demo_answer(200, notice)
        if parts.path == "/demo/reply" and method == "POST":
            try:
                unsafe_form = _parse_body(headers.get("Content-Type", ""), raw_body)
            except _ApiError:
                unsafe_form = {}
            unsafe_id = unsafe_form.get("conversation_id")
            unsafe_content = unsafe_form.get("content")
            conversation_id = _to_i(unsafe_id) if isinstance(unsafe_id, str) else 0
            if not isinstance(unsafe_content, str) or not _present(unsafe_content):
                return self._demo_answer(400, ("error", "A reply needs some text."))
            # Browsers send a textarea's line breaks as CRLF; the dashboard's editor sends LF.
            content = unsafe_content.replace("\r\n", "\n")
            with self._lock:
                if conversation_id not in self._conversations:
                    return self._demo_answer(400, ("error", "No such conversation."))
                self.add_message(conversation_id, content, "outgoing")  # fires the webhooks
            return 303, HTML_TYPE, b"", {"Location": f"/demo/?replied={conversation_id}"}
        return 404, "text/plain; charset=utf-8", b"Not Found\n", {}

    def _demo_answer(self, status, notice):
        with self._lock:
            page = self._demo_page(notice)
        return status, HTML_TYPE, page.encode(), dict(DEMO_PAGE_HEADERS)

    def _demo_page(self, notice):
        esc = html.escape
        agent = self._users[self.default_agent_id]["name"]
        conversations = sorted(self._conversations.values(),
                               key=lambda c: (c["last_activity_at"], c["display_id"]), reverse=True)
        rows = []
        for conversation in conversations:
            display_id = conversation["display_id"]
            subject = conversation["additional_attributes"].get("mail_subject") or ""
            email = self._contacts[conversation["contact_id"]]["email"] or ""
            rows.append(
                f'<tr><td>#{display_id}</td><td>{esc(str(subject))}</td><td>{esc(email)}</td>'
                f'<td>{esc(conversation["status"])}</td><td>'
                f'<form method="post" action="/demo/reply">'
                f'<input type="hidden" name="conversation_id" value="{display_id}">'
                f'<textarea name="content" rows="2" required aria-label="Reply to #{display_id}">'
                f'</textarea> <button type="submit">Send reply</button></form></td></tr>')
        table_rows = "\n".join(rows)
        with self._deliveries_changed:
            deliveries = self.webhook_deliveries[-5:]
        delivered = "".join(
            f'<li>webhook {d["webhook_id"]}, {esc(d["event"])} for message {d["message_id"]}: '
            f'{esc(str(d["status"] if d["error"] is None else d["error"]))}</li>'
            for d in reversed(deliveries)) or "<li>none yet</li>"
        banner = ""
        if notice is not None:
            kind, text = notice
            banner = f'<p class="{esc(kind)}" role="status">{esc(text)}</p>'
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Fake Chatwoot: reply as an agent</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 64em; padding: 0 1em; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ccc; padding: .4em; text-align: left; vertical-align: top; }}
textarea {{ width: 100%; box-sizing: border-box; }}
.notice {{ background: #e6f4ea; padding: .5em; }} .error {{ background: #fde8e8; padding: .5em; }}
</style></head>
<body>
<h1>Fake Chatwoot</h1>
<p>This page stands in for Chatwoot's dashboard: a reply sent here is a public
message by {esc(agent)}, and the account's webhooks
({len(self.webhooks)} registered) are told about it.</p>
{banner}
<table>
<thead><tr><th>Conversation</th><th>Subject</th><th>Contact</th><th>Status</th>
<th>Reply as {esc(agent)}</th></tr></thead>
<tbody>
{table_rows}
</tbody></table>
<h2>Latest webhook deliveries</h2>
<ul>{delivered}</ul>
</body></html>
"""

    # -- lookups -----------------------------------------------------------

    def _find(self, table, raw_id):
        found = table.get(_to_i(raw_id))  # Rails casts "12abc" to 12 and "abc" to 0
        if found is None:
            raise _ApiError(404, RECORD_NOT_FOUND)
        return found

    def _contact_inboxes_of(self, contact_id):
        return [ci for ci in self._contact_inboxes.values() if ci["contact_id"] == contact_id]

    def _messages_in(self, conversation):
        return list(self._threads.get(conversation["display_id"], ()))

    # ========================================================================
    # Renderers (jbuilder partials)
    # ========================================================================

    def _inbox_slim(self, inbox):
        return {"id": inbox["id"], "avatar_url": "", "channel_id": inbox["channel_id"],
                "name": inbox["name"], "channel_type": inbox["channel_type"], "provider": None}

    def _inbox_json(self, inbox):
        out = {**self._inbox_slim(inbox), "greeting_enabled": False, "greeting_message": None,
               "working_hours_enabled": False, "enable_email_collect": True,
               "csat_survey_enabled": False, "enable_auto_assignment": True,
               "out_of_office_message": None, "working_hours": [], "timezone": "UTC",
               "callback_webhook_url": None, "allow_messages_after_resolved": True,
               "lock_to_single_conversation": False, "sender_name_type": "friendly",
               "business_name": None}
        if inbox["channel_type"] == "Channel::Api":
            out.update(hmac_token=inbox["hmac_token"], webhook_url=None,
                       inbox_identifier=inbox["identifier"], additional_attributes={})
        elif inbox["channel_type"] == "Channel::Email":
            out.update(email=f"support-{inbox['id']}@acme.test", forward_to_email=None)
        return out

    def _contact_json(self, contact, with_inboxes=True):
        out = {"additional_attributes": contact["additional_attributes"],
               "availability_status": "offline", "email": contact["email"], "id": contact["id"],
               "name": contact["name"], "phone_number": contact["phone_number"],
               "blocked": contact["blocked"], "identifier": contact["identifier"], "thumbnail": "",
               "custom_attributes": contact["custom_attributes"]}
        if contact["last_activity_at"] is not None:
            out["last_activity_at"] = contact["last_activity_at"]
        out["created_at"] = contact["created_at"]
        if with_inboxes:
            out["contact_inboxes"] = [
                {"source_id": ci["source_id"], "inbox": self._inbox_slim(self._inboxes[ci["inbox_id"]])}
                for ci in self._contact_inboxes_of(contact["id"])]
        return out

    def _contact_push(self, contact):
        return {"additional_attributes": contact["additional_attributes"],
                "custom_attributes": contact["custom_attributes"], "email": contact["email"],
                "id": contact["id"], "identifier": contact["identifier"], "name": contact["name"],
                "phone_number": contact["phone_number"], "thumbnail": "",
                "blocked": contact["blocked"], "type": "contact"}

    def _user_push(self, user):
        return {"id": user["id"], "name": user["name"], "available_name": user["available_name"],
                "avatar_url": "", "type": "user", "availability_status": "online", "thumbnail": ""}

    def _agent_json(self, user):
        return {"id": user["id"], "account_id": self.account_id, "availability_status": "online",
                "auto_offline": True, "confirmed": True, "email": user["email"],
                "provider": "email", "available_name": user["available_name"],
                "name": user["name"], "role": user["role"], "thumbnail": "", "custom_role_id": None}

    def _sender_push(self, message):
        if message["sender_type"] == "Contact":
            return self._contact_push(self._contacts[message["sender_id"]])
        if message["sender_type"] == "User":
            return self._user_push(self._users[message["sender_id"]])
        return None

    def _attachment_json(self, attachment):
        base = self.url or "http://127.0.0.1"
        key, filename = attachment["key"], quote(attachment["filename"])
        thumb = ""
        if attachment["file_type"] == "image":
            thumb = f"{base}/rails/active_storage/representations/redirect/{key}/w250/{filename}"
        return {"id": attachment["id"], "message_id": attachment["message_id"],
                "file_type": attachment["file_type"], "account_id": self.account_id,
                "extension": attachment["extension"], "content_type": attachment["content_type"],
                "data_url": f"{base}/rails/active_storage/blobs/redirect/{key}/{filename}",
                "thumb_url": thumb, "file_size": attachment["file_size"],
                "width": attachment["width"], "height": attachment["height"]}

    def _message_rest(self, message, echo_id=None):
        """``_message.json.jbuilder`` (§6.2): optional keys are left out, not null."""
        out = {"id": message["id"], "content": message["content"], "inbox_id": message["inbox_id"]}
        if echo_id is not None:
            out["echo_id"] = echo_id
        out.update(conversation_id=message["conversation_id"], message_type=message["message_type"],
                   content_type=message["content_type"], status=message["status"],
                   content_attributes=message["content_attributes"],
                   created_at=message["created_at"], private=message["private"],
                   source_id=message["source_id"])
        sender = self._sender_push(message)
        if sender is not None:
            out["sender"] = sender
        if message["attachments"]:
            out["attachments"] = [self._attachment_json(a) for a in message["attachments"]]
        return out

    def _message_push(self, message, conversation):
        """``Message#push_event_data``: every column plus conversation and sender (§4)."""
        out = {key: message[key] for key in (
            "id", "content", "inbox_id", "conversation_id", "message_type", "created_at")}
        out.update(account_id=self.account_id, updated_at=_iso(message["updated_at"]),
                   private=message["private"], status=message["status"],
                   source_id=message["source_id"], content_type=message["content_type"],
                   content_attributes=message["content_attributes"],
                   sender_type=message["sender_type"], sender_id=message["sender_id"],
                   external_source_ids={}, additional_attributes={},
                   processed_message_content=message["content"], sentiment={})
        contact_inbox = self._contact_inboxes[conversation["contact_inbox_id"]]
        out["conversation"] = {"assignee_id": conversation["assignee_id"],
                               "unread_count": self._unread_count(conversation),
                               "last_activity_at": conversation["last_activity_at"],
                               "contact_inbox": {"source_id": contact_inbox["source_id"]}}
        if message["attachments"]:
            out["attachments"] = [self._attachment_json(a) for a in message["attachments"]]
        sender = self._sender_push(message)
        if sender is not None:
            out["sender"] = sender
        return out

    def _account_webhook_data(self):
        return {"id": self.account_id, "name": self.account_name}

    def _contact_webhook_data(self, contact):
        """``Contact#webhook_data``: the account inside, and no ``type`` key."""
        return {"account": self._account_webhook_data(),
                "additional_attributes": contact["additional_attributes"], "avatar": "",
                "custom_attributes": contact["custom_attributes"], "email": contact["email"],
                "id": contact["id"], "identifier": contact["identifier"], "name": contact["name"],
                "phone_number": contact["phone_number"], "thumbnail": "",
                "blocked": contact["blocked"]}

    def _sender_webhook_data(self, message):
        if message["sender_type"] == "Contact":
            return self._contact_webhook_data(self._contacts[message["sender_id"]])
        if message["sender_type"] == "User":
            user = self._users[message["sender_id"]]
            return {"id": user["id"], "name": user["name"], "email": user["email"], "type": "user"}
        return None  # template messages have no sender

    def _contact_inbox_raw(self, contact_inbox):
        """The ContactInbox row as ``as_json`` renders it (§9.5)."""
        return {"id": contact_inbox["id"], "contact_id": contact_inbox["contact_id"],
                "inbox_id": contact_inbox["inbox_id"], "source_id": contact_inbox["source_id"],
                "created_at": _iso(contact_inbox["created_at"]),
                "updated_at": _iso(contact_inbox["updated_at"]),
                "hmac_verified": contact_inbox["hmac_verified"],
                "pubsub_token": contact_inbox["pubsub_token"]}

    def _conversation_webhook_data(self, conversation):
        """``EventDataPresenter#push_data`` plus the account: not the REST object of §4.

        ``messages`` holds the latest public non-activity message (``messages.chat.last``),
        so for a private note it is the public message before it; ``assignee`` and
        ``team`` are null when unset; ``first_reply_created_at`` is an ISO string.
        """
        contact = self._contacts[conversation["contact_id"]]
        contact_inbox = self._contact_inboxes[conversation["contact_inbox_id"]]
        chat = [m for m in self._messages_in(conversation)
                if m["message_type"] != ACTIVITY and not m["private"]]
        assignee = self._users.get(conversation["assignee_id"])

        def as_int(key):
            return conversation[key] or 0

        return {
            "additional_attributes": conversation["additional_attributes"], "can_reply": True,
            "channel": self._inboxes[conversation["inbox_id"]]["channel_type"],
            "contact_inbox": self._contact_inbox_raw(contact_inbox),
            "id": conversation["display_id"], "inbox_id": conversation["inbox_id"],
            "messages": [self._message_push(chat[-1], conversation)] if chat else [],
            "labels": list(conversation["labels"]),
            "meta": {"sender": self._contact_push(contact),
                     "assignee": self._user_push(assignee) if assignee else None,
                     "assignee_type": "User" if assignee else None, "team": None,
                     "hmac_verified": contact_inbox["hmac_verified"]},
            "status": conversation["status"],
            "custom_attributes": conversation["custom_attributes"],
            "snoozed_until": conversation["snoozed_until"],
            "unread_count": self._unread_count(conversation),
            "first_reply_created_at": _iso(conversation["first_reply_created_at"]),
            "priority": conversation["priority"], "waiting_since": as_int("waiting_since"),
            "agent_last_seen_at": as_int("agent_last_seen_at"),
            "contact_last_seen_at": as_int("contact_last_seen_at"),
            "last_activity_at": conversation["last_activity_at"],
            "timestamp": conversation["last_activity_at"],
            "created_at": conversation["created_at"], "updated_at": conversation["updated_at"],
            "account": self._account_webhook_data(),
        }

    def _message_webhook_data(self, message, event):
        """``Message#webhook_data`` merged with the event name (§9.5, part 2 §3.3)."""
        conversation = self._conversations[message["conversation_id"]]
        inbox = self._inboxes[message["inbox_id"]]
        content = message["content"]
        if message["content_type"] == "input_csat" and inbox["channel_type"] != "Channel::WebWidget":
            # MessageContentPresenter#webhook_content; self.url stands in for FRONTEND_URL.
            content = CSAT_SURVEY_RESPONSE.format(
                link=f"{self.url}/survey/responses/{conversation['uuid']}")
        out = {
            "account": self._account_webhook_data(), "additional_attributes": {},
            "content_attributes": message["content_attributes"],
            "content_type": message["content_type"],
            "content": _normalize_webhook_content(content),
            "conversation": self._conversation_webhook_data(conversation),
            "created_at": _iso(message["created_at"]), "id": message["id"],
            "inbox": {"id": inbox["id"], "name": inbox["name"]},
            "message_type": MESSAGE_TYPES[message["message_type"]],  # a string here, unlike REST
            "private": message["private"], "sender": self._sender_webhook_data(message),
            "source_id": message["source_id"],
        }
        if message["attachments"]:
            out["attachments"] = [self._attachment_json(a) for a in message["attachments"]]
        out["event"] = event
        return out

    def _unread_count(self, conversation):
        # Incoming messages the agents have not seen, capped at 10 (§4).
        seen = conversation["agent_last_seen_at"]
        unread = [m for m in self._messages_in(conversation)
                  if m["message_type"] == INCOMING and (seen is None or m["created_at"] > seen)]
        return min(len(unread), 10)

    def _conversation_json(self, conversation):
        """The §4 conversation object: times as ints (0 when unset), float updated_at."""
        contact = self._contacts[conversation["contact_id"]]
        meta = {"sender": self._contact_json(contact, with_inboxes=False),
                "channel": self._inboxes[conversation["inbox_id"]]["channel_type"]}
        if conversation["assignee_id"] is not None:
            meta["assignee"] = self._agent_json(self._users[conversation["assignee_id"]])
            meta["assignee_type"] = "User"
        meta["hmac_verified"] = False
        history = self._messages_in(conversation)  # ascending id, like `.last` in Rails
        visible = [m for m in history if m["message_type"] != ACTIVITY]
        last_non_activity = visible[-1] if visible else None

        def as_int(key):
            return conversation[key] or 0

        return {
            "meta": meta, "id": conversation["display_id"],
            "messages": [self._message_push(history[-1], conversation)] if history else [],
            "account_id": self.account_id, "uuid": conversation["uuid"],
            "additional_attributes": conversation["additional_attributes"],
            "agent_last_seen_at": as_int("agent_last_seen_at"),
            "assignee_last_seen_at": as_int("assignee_last_seen_at"), "can_reply": True,
            "contact_last_seen_at": as_int("contact_last_seen_at"),
            "custom_attributes": conversation["custom_attributes"],
            "inbox_id": conversation["inbox_id"], "labels": list(conversation["labels"]),
            "muted": contact["blocked"], "snoozed_until": conversation["snoozed_until"],
            "status": conversation["status"], "created_at": conversation["created_at"],
            "updated_at": conversation["updated_at"], "timestamp": conversation["last_activity_at"],
            "first_reply_created_at": as_int("first_reply_created_at"),
            "unread_count": self._unread_count(conversation),
            "last_non_activity_message": (self._message_push(last_non_activity, conversation)
                                          if last_non_activity else None),
            "last_activity_at": conversation["last_activity_at"],
            "priority": conversation["priority"], "waiting_since": as_int("waiting_since"),
            "sla_policy_id": None,
        }

    # ========================================================================
    # Filters (§2.2, §3): conditions joined by AND/OR, AND binding tighter
    # ========================================================================

    def _run_filter(self, request, attributes, records):
        """Records matching ``payload``; ``attributes`` maps key -> (operators, test)."""
        conditions = request.params.get("payload")
        if not isinstance(conditions, list) or not conditions:
            raise _ApiError(422, {"error": "param is missing or the value is empty: payload"})
        groups, current = [], []
        for index, condition in enumerate(conditions):
            condition = condition if isinstance(condition, dict) else {}
            key, operator = condition.get("attribute_key"), condition.get("filter_operator")
            values = condition.get("values")
            if key not in attributes:
                raise _ApiError(422, {"error": FILTER_ERRORS["attribute"].format(
                    key=key, allowed=",".join(attributes))})
            operators, test = attributes[key]
            if operator not in operators:
                raise _ApiError(422, {"error": FILTER_ERRORS["operator"].format(
                    key=key, allowed=",".join(operators))})
            if not _present(values):
                raise _ApiError(422, {"error": FILTER_ERRORS["value"].format(key=key)})
            values = values if isinstance(values, list) else [values]
            joiner = str(condition.get("query_operator") or "").upper()
            last = index == len(conditions) - 1
            if joiner and joiner not in ("AND", "OR"):
                raise _ApiError(422, {"error": FILTER_ERRORS["query_operator"]})
            if last == bool(joiner):
                # Chatwoot pastes the joiner after each condition: one after the last
                # or none between two makes broken SQL (§2.2, inferred).
                raise _server_error()
            current.append((test, operator, values))
            if last or joiner == "OR":
                groups.append(current)
                current = []
        return [record for record in records
                if any(all(test(record, operator, values) for test, operator, values in group)
                       for group in groups)]

    def _filter_candidates(self, conditions):
        """The conversations a filter can match: with no OR and a `contact_id
        equal_to`, only that contact's (what Postgres' index does); else all. The
        same answer either way, without a scan of every conversation per call."""
        conditions = conditions if isinstance(conditions, list) else []
        joiners = {str((c or {}).get("query_operator") or "").upper() for c in conditions if isinstance(c, dict)}
        contacts = [c for c in conditions if isinstance(c, dict) and c.get("attribute_key") == "contact_id"
                    and c.get("filter_operator") == "equal_to" and isinstance(c.get("values"), list)]
        if "OR" in joiners or not contacts:
            return list(self._conversations.values())
        return [c for v in {str(v) for v in contacts[0]["values"]} for c in self._by_contact.get(v, ())]

    @staticmethod
    def _text_test(field):
        """A text attribute: equal/contains compare with the first value, case-insensitively."""

        def test(record, operator, values):
            stored, wanted = record[field], str(values[0])
            if stored is None:
                return False  # SQL comparisons with NULL never match
            if operator in ("equal_to", "not_equal_to"):
                return (str(stored).lower() == wanted.lower()) == (operator == "equal_to")
            return _like(wanted, stored) == (operator == "contains")

        return test

    @staticmethod
    def _status_test(record, operator, values):
        """``status`` values map to the enum; ``["all"]`` is every status (part 2 §4.2)."""
        if "all" in [str(v) for v in values]:
            return operator == "equal_to"
        hit = record["status"] in {str(v) for v in values}
        return hit == (operator == "equal_to")

    @staticmethod
    def _in_test(field):
        """A standard attribute: ``IN (values)`` / ``NOT IN (values)``."""

        def test(record, operator, values):
            if record[field] is None:
                return False
            hit = str(record[field]) in {str(v) for v in values}
            return hit == (operator == "equal_to")

        return test

    # ========================================================================
    # API handlers: contacts (§2, §3)
    # ========================================================================

    def _api_contacts_search(self, request):
        params = request.params
        q = str(params.get("q") or "").strip()
        if not q:
            raise _ApiError(422, {"error": "Specify search string with parameter q"})
        matches = [c for c in self._contacts.values()
                   if any(_like(q, c[field]) for field in ("name", "email", "phone_number"))
                   or _like(q, c["identifier"], case_sensitive=True)]
        page = max(_to_i(params.get("page", 1)), 1)
        rows = matches[(page - 1) * CONTACT_PAGE_SIZE:][:CONTACT_PAGE_SIZE + 1]
        with_inboxes = str(params.get("include_contact_inboxes", "true")) != "false"
        shown = rows[:CONTACT_PAGE_SIZE]
        return {
            # count is the page size since v4.11; current_page echoes the raw parameter.
            "meta": {"count": len(shown), "current_page": params.get("page", 1),
                     "has_more": len(rows) > CONTACT_PAGE_SIZE},
            "payload": [self._contact_json(c, with_inboxes) for c in shown],
        }

    def _api_contacts_filter(self, request):
        text_operators = ("equal_to", "not_equal_to", "contains", "does_not_contain")
        attributes = {field: (text_operators, self._text_test(field))
                      for field in ("name", "email", "phone_number", "identifier")}
        # Only "resolved" contacts: those with an email, phone number or identifier.
        resolved = [c for c in self._contacts.values()
                    if c["email"] or c["phone_number"] or c["identifier"]]
        matches = self._run_filter(request, attributes, resolved)
        params = request.params
        page = max(_to_i(params.get("page", 1)), 1)
        shown = matches[(page - 1) * CONTACT_PAGE_SIZE:][:CONTACT_PAGE_SIZE]
        return {"meta": {"count": len(matches), "current_page": params.get("page", 1)},
                "payload": [self._contact_json(c) for c in shown]}

    def _api_contact_show(self, request):
        return {"payload": self._contact_json(self._find(self._contacts, request.args["contact_id"]))}

    def _api_contact_conversations(self, request):
        contact = self._find(self._contacts, request.args["contact_id"])
        mine = [c for c in self._conversations.values() if c["contact_id"] == contact["id"]]
        mine.sort(key=lambda c: (c["last_activity_at"], c["display_id"]), reverse=True)
        return {"payload": [self._conversation_json(c) for c in mine[:CONTACT_CONVERSATIONS_LIMIT]]}

    def _api_contact_inbox_create(self, request):
        contact = self._find(self._contacts, request.args["contact_id"])
        inbox = self._find(self._inboxes, request.params.get("inbox_id"))
        contact_inbox = self._contact_inbox_for(contact, inbox, request.params.get("source_id"))
        return {"source_id": contact_inbox["source_id"], "inbox": self._inbox_slim(inbox)}

    def _contact_inbox_for(self, contact, inbox, source_id):
        """ContactInboxBuilder: reuse (contact, inbox, source_id), else a new session."""
        if not _present(source_id):
            return self._new_contact_inbox(contact, inbox, str(uuid.uuid4()))
        for contact_inbox in self._contact_inboxes.values():
            if contact_inbox["inbox_id"] == inbox["id"] and contact_inbox["source_id"] == str(source_id):
                if contact_inbox["contact_id"] != contact["id"]:
                    raise _ApiError(422, {"error": "source_id should be unique"})
                return contact_inbox
        return self._new_contact_inbox(contact, inbox, str(source_id))

    # ========================================================================
    # API handlers: conversations (§3, §4, §5, §8)
    # ========================================================================

    def _api_conversations_filter(self, request):
        equality = ("equal_to", "not_equal_to")
        attributes = {key: (equality, self._in_test(key))
                      for key in ("status", "contact_id", "inbox_id", "assignee_id", "priority")}
        attributes["status"] = (equality, self._status_test)
        # additional_attributes->>'mail_subject' ILIKE ANY(...): % and _ are wildcards (part 2 §4.4)
        subject_test = self._text_test("mail_subject")
        attributes["mail_subject"] = (("equal_to", "not_equal_to", "contains", "does_not_contain"),
                                      lambda record, operator, values: subject_test(
                                          {"mail_subject": record["additional_attributes"].get("mail_subject")},
                                          operator, [str(v).strip() for v in values]))
        matches = self._run_filter(request, attributes, self._filter_candidates(request.params.get("payload")))
        matches.sort(key=lambda c: (c["last_activity_at"], c["display_id"]), reverse=True)
        page = max(_to_i(request.params.get("page", 1)), 1)
        shown = matches[(page - 1) * CONVERSATION_PAGE_SIZE:][:CONVERSATION_PAGE_SIZE]
        return {"meta": {"mine_count": sum(c["assignee_id"] == self.api_user_id for c in matches),
                         "unassigned_count": sum(c["assignee_id"] is None for c in matches),
                         "all_count": len(matches)},
                "payload": [self._conversation_json(c) for c in shown]}

    def _api_conversation_show(self, request):
        return self._conversation_json(self._find(self._conversations, request.args["display_id"]))

    def _api_conversation_update(self, request):
        # Only priority is permitted; status and everything else are dropped silently (§8.2).
        conversation = self._find(self._conversations, request.args["display_id"])
        if "priority" in request.params:
            self._set_priority(conversation, _priority_value(request.params["priority"]))
        return self._conversation_json(conversation)

    def _api_toggle_priority(self, request):
        conversation = self._find(self._conversations, request.args["display_id"])
        self._set_priority(conversation, _priority_value(request.params.get("priority")))
        return None  # 200 with an empty body

    def _api_toggle_status(self, request):
        conversation = self._find(self._conversations, request.args["display_id"])
        params = request.params
        if _present(params.get("status")):
            status = params["status"]
            if status not in STATUSES:
                raise _server_error()
        else:  # no status: open -> resolved, anything else -> open
            status = "resolved" if conversation["status"] == "open" else "open"
        snoozed_until = None
        if status == "snoozed" and _present(params.get("snoozed_until")):
            # DateTime.strptime(value.to_s, '%s'): whole unix seconds or a crash.
            if not re.fullmatch(r"-?\d+", str(params["snoozed_until"])):
                raise _server_error()
            snoozed_until = _iso(int(params["snoozed_until"]))
        user = self._users[self.api_user_id]["name"]
        self._set_status(conversation, status, STATUS_ACTIVITY[status].format(user=user),
                         snoozed_until)
        return {"meta": {}, "payload": {
            "success": True, "conversation_id": conversation["display_id"],
            "current_status": conversation["status"],
            "snoozed_until": conversation["snoozed_until"]}}

    def _api_conversation_create(self, request):
        params = request.params
        if _present(params.get("inbox_id")) or _present(params.get("contact_id")):
            inbox = self._find(self._inboxes, params.get("inbox_id"))
            contact = self._find(self._contacts, params.get("contact_id"))
            contact_inbox = self._contact_inbox_for(contact, inbox, params.get("source_id"))
        else:  # legacy: an existing session named by source_id alone
            contact_inbox = next((ci for ci in self._contact_inboxes.values()
                                  if _present(params.get("source_id"))
                                  and ci["source_id"] == str(params["source_id"])), None)
            if contact_inbox is None:
                raise _ApiError(404, RECORD_NOT_FOUND)
            inbox = self._inboxes[contact_inbox["inbox_id"]]
            contact = self._contacts[contact_inbox["contact_id"]]
        additional = _jsonb_param(params, "additional_attributes")
        custom = _jsonb_param(params, "custom_attributes")
        status = params.get("status") if _present(params.get("status")) else "open"
        if status not in STATUSES:
            raise _server_error()
        if contact["blocked"]:
            status = "resolved"
        first = params.get("message") if isinstance(params.get("message"), dict) else None
        if first is not None:
            # Validate before saving anything: Chatwoot rolls the whole create back.
            type_code = _message_type_code(first.get("message_type"), _server_error)
            if type_code == INCOMING and inbox["channel_type"] != "Channel::Api":
                raise _server_error()  # this builder error is not rescued here (§5.1)
            if len(str(first.get("content") or "")) > MAX_CONTENT_LENGTH:
                raise _ApiError(422, {"message": "Content is too long (maximum is 150000 characters)",
                                      "attributes": ["content"]})
        # `priority` is deliberately not read: ConversationBuilder ignores it (§5.1).
        assignee = _to_i(params["assignee_id"]) if _present(params.get("assignee_id")) else None
        conversation = self._create_conversation(
            contact_inbox, additional, custom, status,
            assignee if assignee in self._users else None)
        if status == "snoozed" and _present(params.get("snoozed_until")):
            conversation["snoozed_until"] = _iso_or_none(params["snoozed_until"])
        if first is not None:
            self._build_message(conversation, first, type_code)
        return self._conversation_json(conversation)

    # ========================================================================
    # API handlers: messages (§6, §7)
    # ========================================================================

    def _api_messages_index(self, request):
        conversation = self._find(self._conversations, request.args["display_id"])
        params = request.params
        rows = self._messages_in(conversation)
        if _present(params.get("filter_internal_messages")):
            rows = [m for m in rows if not m["private"] and m["message_type"] != ACTIVITY]
        # MessageFinder filters by id but orders by created_at (§6.1).
        rows.sort(key=lambda m: (m["created_at"], m["id"]))
        after, before = params.get("after"), params.get("before")
        if _present(after) and _present(before):
            low, high = _to_i(after), _to_i(before)
            rows = [m for m in rows if low <= m["id"] < high][:BETWEEN_PAGE]  # after inclusive
        elif _present(before):
            rows = [m for m in rows if m["id"] < _to_i(before)][-LATEST_PAGE:]
        elif _present(after):
            rows = [m for m in rows if m["id"] > _to_i(after)][:AFTER_PAGE]
        else:
            rows = rows[-LATEST_PAGE:]
        contact = self._contacts[conversation["contact_id"]]
        meta = {"labels": list(conversation["labels"]),
                "additional_attributes": conversation["additional_attributes"],
                "contact": self._contact_push(contact)}
        if conversation["assignee_id"] is not None:
            meta["assignee"] = self._user_push(self._users[conversation["assignee_id"]])
        meta["agent_last_seen_at"] = _iso(conversation["agent_last_seen_at"])
        meta["assignee_last_seen_at"] = _iso(conversation["assignee_last_seen_at"])
        return {"meta": meta, "payload": [self._message_rest(m) for m in rows]}

    def _api_message_create(self, request):
        conversation = self._find(self._conversations, request.args["display_id"])
        params = request.params

        def unprocessable(text):
            return _ApiError(422, {"error": text})  # messages#create rescues everything (§1.4)

        type_code = _message_type_code(
            params.get("message_type"),
            lambda: unprocessable(f"'{params.get('message_type')}' is not a valid message_type"))
        inbox = self._inboxes[conversation["inbox_id"]]
        if type_code == INCOMING and inbox["channel_type"] != "Channel::Api":
            raise unprocessable(INCOMING_ONLY_IN_API)
        if len(str(params.get("content") or "")) > MAX_CONTENT_LENGTH:
            raise unprocessable("Validation failed: Content is too long (maximum is 150000 characters)")
        message = self._build_message(conversation, params, type_code)
        if type_code == INCOMING and conversation["status"] in ("resolved", "snoozed") \
                and not self._contacts[conversation["contact_id"]]["blocked"]:
            self._set_status(conversation, "open", REOPENED_BY_SYSTEM)  # §7.4; muted ones stay
        return self._message_rest(message, echo_id=params.get("echo_id"))

    def _build_message(self, conversation, params, type_code):
        """Messages::MessageBuilder for POST messages and POST conversations' ``message``."""
        author = self._author(conversation, type_code, self.api_user_id)  # the token's user
        content = params.get("content")
        attributes = params.get("content_attributes")
        if isinstance(attributes, str):  # multipart sends it as a JSON string
            try:
                attributes = json.loads(attributes)
            except ValueError:
                attributes = {}
        uploads = [a for a in params.get("attachments") or [] if isinstance(a, dict)]
        return self._create_message(
            conversation, type_code, None if content is None else str(content),
            _cast_bool(params.get("private")), author,
            content_type=params.get("content_type") or "text",
            content_attributes=attributes if isinstance(attributes, dict) else {},
            source_id=params.get("source_id"), attachments=uploads)

    # ========================================================================
    # API handlers: inboxes
    # ========================================================================

    def _api_inboxes_index(self, request):
        inboxes = sorted(self._inboxes.values(), key=lambda i: i["name"])  # order_by_name
        return {"payload": [self._inbox_json(i) for i in inboxes]}

    def _api_inbox_show(self, request):
        return self._inbox_json(self._find(self._inboxes, request.args["inbox_id"]))

    # ========================================================================
    # Public API handlers: the CSAT survey (part 2 §6.2)
    # ========================================================================

    def _csat_message_of(self, conversation):
        """The conversation's first ``input_csat`` message (``find_by!``), or None."""
        return next((m for m in self._messages_in(conversation) if m["content_type"] == "input_csat"), None)

    def _csat_survey(self, conversation_uuid):
        # PublicController rescues neither lookup: Rails' own JSON 404 (part 2 §9).
        conversation = next((c for c in self._conversations.values() if c["uuid"] == conversation_uuid), None)
        message = self._csat_message_of(conversation) if conversation else None
        if message is None:
            raise _ApiError(404, ROUTE_NOT_FOUND)
        return conversation, message

    def _public_csat_survey_show(self, request):
        return self._csat_survey_json(*self._csat_survey(request.args["uuid"]))

    def _public_csat_survey_update(self, request):
        conversation, message = self._csat_survey(request.args["uuid"])
        today = datetime.fromtimestamp(self._now(), timezone.utc).date()
        if (today - datetime.fromtimestamp(message["created_at"], timezone.utc).date()).days > CSAT_LOCK_DAYS:
            raise _ApiError(422, CSAT_LOCKED)
        params = request.params.get("message")
        if not isinstance(params, dict):
            raise _server_error()  # update!(nil) raises, unrescued
        submitted = _permit_submitted_values(params.get("submitted_values"))
        if submitted is not None:  # message.update!(submitted_values: ...): stored as sent, any rating
            message["content_attributes"] = {**message["content_attributes"], "submitted_values": submitted}
            message["updated_at"] = float(self._clock())
            self.csat_responses.append({"uuid": conversation["uuid"], "conversation_id": conversation["display_id"],
                                        "message_id": message["id"], "submitted_values": copy.deepcopy(submitted)})
        # The answer shows the CSAT record as it was: Chatwoot builds it later, in the
        # message_updated listener, so the first answer has null (part 2 §6.2).
        answer = self._csat_survey_json(conversation, message)
        self._build_csat_record(conversation, message)
        return answer

    def _build_csat_record(self, conversation, message):
        """``CsatSurveys::ResponseBuilder``: the message's one CsatSurveyResponse row.

        A blank rating builds nothing; one outside 1-5 fails validation in the
        background job, so the row keeps what it had while the message keeps it all.
        """
        answer = (message["content_attributes"].get("submitted_values") or {}).get("csat_survey_response")
        answer = answer if isinstance(answer, dict) else {}
        rating = answer.get("rating")
        if not _present(rating):
            return
        rating = None if isinstance(rating, bool) else _to_i(rating)  # the integer column's cast
        if rating not in CSAT_RATINGS:
            return
        now = float(self._clock())
        record = self._csat_records.get(message["id"])
        if record is None:  # the unique index is on message_id: one row, updated after
            record = self._csat_records[message["id"]] = {
                "id": self._new_id("csat_survey_response"), "account_id": self.account_id,
                "conversation_id": conversation["display_id"], "message_id": message["id"],
                "rating": None, "feedback_message": None, "contact_id": conversation["contact_id"],
                "assigned_agent_id": conversation["assignee_id"], "created_at": now, "updated_at": now,
                "csat_review_notes": None, "review_notes_updated_at": None, "review_notes_updated_by_id": None}
        feedback = answer.get("feedback_message")
        record.update(rating=rating, feedback_message=None if feedback is None else str(feedback), updated_at=now)

    def _csat_survey_json(self, conversation, message):
        """``_csat_survey.json.jbuilder``, the raw CSAT record inside (its ``as_json``).

        ``conversation_id`` is Chatwoot's database id; this fake has no separate
        one and gives the display id, as everywhere else. ``content`` stands in for
        the inbox's ``csat_config`` message: the survey message's own text.
        """
        record = self._csat_records.get(message["id"])
        raw = None
        if record is not None:
            raw = {**record, **{key: _iso(record[key])
                                for key in ("created_at", "updated_at", "review_notes_updated_at")}}
        return {"id": message["id"], "csat_survey_response": raw,
                "display_type": message["content_attributes"].get("display_type", "emoji"),
                "content": message["content"], "inbox_avatar_url": "",
                "inbox_name": self._inboxes[conversation["inbox_id"]]["name"], "locale": "en",
                "conversation_id": conversation["display_id"], "created_at": _iso(message["created_at"])}


# ============================================================================
# Parameter conversions used by the handlers
# ============================================================================


def _message_type_code(value, invalid):
    """'incoming'... or 0..3 -> 0..3; blank means outgoing; else raise invalid()."""
    if not _present(value) and value != 0:
        return OUTGOING
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return value
    if value in MESSAGE_TYPES:
        return MESSAGE_TYPES.index(value)
    raise invalid()


def _priority_value(value):
    """Blank clears; a name or 0..3 sets; anything else (even "none") is a 500 (§8.3)."""
    if not _present(value) and value != 0:
        return None
    if value in PRIORITIES:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return PRIORITIES[value]
    raise _server_error()


def _permit_submitted_values(value):
    """``submitted_values`` through the CSAT controller's strong parameters: scalar
    ``name``, ``title``, ``value`` and ``csat_survey_response: {feedback_message,
    rating}``; anything else dropped. None when it is not an object at all."""
    if not isinstance(value, dict):
        return None

    def scalar(item):
        return item is None or isinstance(item, (str, int, float, bool))

    permitted = {key: value[key] for key in ("name", "title", "value") if key in value and scalar(value[key])}
    answer = value.get("csat_survey_response")
    if isinstance(answer, dict):
        permitted["csat_survey_response"] = {key: answer[key] for key in ("feedback_message", "rating")
                                             if key in answer and scalar(answer[key])}
    return permitted


def _jsonb_param(params, name):
    """A jsonb attribute object; long string values fail validation (§5.1)."""
    value = params.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _server_error()
    for key, item in value.items():
        if isinstance(item, str) and len(item) > MAX_JSONB_STRING:
            label = name.replace("_", " ").capitalize()
            raise _ApiError(422, {"message": f"{label} {key} length should be < {MAX_JSONB_STRING}",
                                  "attributes": [name]})
    return value


def _iso_or_none(value):
    """ActiveRecord's lenient time cast: an unparsable string becomes nil."""
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return _iso(parsed.timestamp())


def _fault_answer(status, body):
    if body is None and status == 429:
        # Rack::Attack's answer: plain text, no Retry-After (§11).
        return status, "text/plain", b"Retry later\n", {}
    if body is None:
        body = INTERNAL_ERROR if status == 500 else {"error": HTTPStatus(status).phrase}
    if isinstance(body, (dict, list)):
        return status, JSON_TYPE, json.dumps(body).encode(), {}
    data = body.encode() if isinstance(body, str) else body
    try:
        json.loads(data)
    except ValueError:
        return status, "text/plain; charset=utf-8", data, {}
    return status, JSON_TYPE, data, {}


# ============================================================================
# HTTP server
# ============================================================================


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must never keep the process or stop() waiting
    block_on_close = False
    # socketserver's default backlog is 5: a burst of new connections overflowed
    # it and waited a whole SYN retransmit (1 s). Puma listens with 1024.
    request_queue_size = 1024
    fake: FakeChatwoot


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the portal reuses connections: keep-alive, Content-Length
    server_version = "FakeChatwoot"
    # Headers and body go out in two writes; with Nagle on, the body waits for the
    # client's delayed ACK (40 ms on Linux), which would swamp every measurement.
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        with self.server.fake._lock:
            self.server.fake._connections.add(self.connection)

    def finish(self):
        with self.server.fake._lock:
            self.server.fake._connections.discard(self.connection)
        super().finish()

    def log_message(self, format, *args):
        pass  # keep test output quiet; every API call is in fake.calls

    def do_GET(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400)
            return
        raw_body = self.rfile.read(length) if length > 0 else b""
        answer = self.server.fake._answer(self.command, self.path, self.headers, raw_body)
        if answer is None:  # "close"/"hang" faults: hang up without a word
            self.close_connection = True
            return
        status, content_type, body, extra_headers = answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PATCH = do_PUT = do_DELETE = do_GET
