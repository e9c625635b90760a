"""The only module that talks to Chatwoot: its Application API, per ../shared contract,
and one call of its public API (the CSAT answer, sent without the token).

Calls go over a small pool of keep-alive `http.client` connections with a timeout,
so a slow Chatwoot costs a page a few seconds at most, never a hung thread. Every
failure becomes one of three errors, and no `urllib`/`http.client` error escapes:

    ChatwootError
    +-- ChatwootUnavailable   down, slow, 5xx, 429, or an answer that is not JSON
    +-- ChatwootRejected      a 4xx answer (bad token, validation); `.status`
        +-- ChatwootNotFound  404: no such contact or conversation

Chatwoot's JSON is turned into small `Ticket`, `Message` and `Survey` records here,
and only public content crosses that line: private notes and activity messages are
dropped, and of a CSAT survey only its date, rating and comment are kept.
"""

import concurrent.futures
import dataclasses
import datetime
import http.client
import json
import logging
import queue
import re
import secrets
import select
import socket
import ssl
import threading
import time
import urllib.parse

log = logging.getLogger("portal.chatwoot")

# Chatwoot answers 20 messages for a bare index call; `after`+`before` widens a
# page to 1000 (contract §6.1). messages.id is a 32-bit serial, so this bound
# includes every message.
MESSAGE_PAGE_SIZE = 1000
AFTER_PAGE_SIZE = 100  # `after` alone: up to 100 newer messages
MAX_MESSAGE_ID = 2147483647
# A thread longer than this (20,000 messages) is not a support ticket any more;
# the cap keeps one page view from reading without end.
MAX_THREAD_PAGES = 20
# `conversations/filter` answers 25 a page (Kaminari's default, part 2 §4.2); the
# dashboard shows Chatwoot's pages as they are.
PAGE_SIZE = 25
# The dashboard's status filter: "open" is everything still being worked on.
STATUS_GROUPS = {"open": ("open", "pending", "snoozed"), "resolved": ("resolved",), "all": ("all",)}

# A file download follows at most this many redirects (Chatwoot -> storage).
MAX_FILE_REDIRECTS = 3
# A file missing just after its message was made may still be uploading to storage.
FILE_RETRY_SECONDS = 0.5
FILE_CHUNK_BYTES = 64 * 1024

# Idle keep-alive connections older than this are closed instead of reused:
# Chatwoot's server (Puma) and proxies drop idle connections after some seconds,
# and a request sent on a connection the server is closing can fail.
MAX_IDLE_SECONDS = 15
# Idle connections kept: up to two calls in flight for each of waitress' 16 threads.
POOL_SIZE = 32
# Threads that run a page's Chatwoot calls side by side (started as needed).
EXECUTOR_THREADS = 16
# The largest JSON answer read (a page of 1000 messages is a few MB): a bigger one
# is refused unread, never held whole, whatever Chatwoot or a proxy sends.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024

STATUSES = ("open", "pending", "resolved", "snoozed")
# Chatwoot's priority enum (part 2 §2); no priority is null in its JSON, "" here.
# "none" is not among them: Chatwoot answers 500 to it (contract §8.3).
PRIORITIES = ("low", "medium", "high", "urgent")
API_CHANNEL = "Channel::Api"
INCOMING, OUTGOING, ACTIVITY, TEMPLATE = 0, 1, 2, 3
MESSAGE_TYPE_BY_NAME = {"incoming": INCOMING, "outgoing": OUTGOING, "activity": ACTIVITY, "template": TEMPLATE}
STATUS_BY_NUMBER = {0: "open", 1: "resolved", 2: "pending", 3: "snoozed"}
# Chatwoot's CSAT survey (part 2 §6.2): the rating it accepts, and the days after
# the survey's date (UTC) during which it takes or changes one; a 422 after that.
CSAT_RATINGS = (1, 2, 3, 4, 5)
CSAT_OPEN_DAYS = 14


class ChatwootError(Exception):
    """Anything that went wrong talking to Chatwoot."""


class ChatwootUnavailable(ChatwootError):
    """Chatwoot could not answer usefully now (down, slow, overloaded, garbled)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status  # the HTTP status, when there was an answer


class ChatwootRejected(ChatwootError):
    """Chatwoot refused the request (4xx)."""

    def __init__(self, status, message):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ChatwootNotFound(ChatwootRejected):
    """The contact or conversation does not exist."""


class _FilterIgnoresContact(Exception):
    """conversations/filter answered with other contacts' conversations."""


@dataclasses.dataclass(frozen=True)
class Contact:
    id: int
    email: str
    name: str


@dataclasses.dataclass(frozen=True)
class Ticket:
    id: int
    contact_id: int
    subject: str  # "" when Chatwoot has no subject; see Portal for the fallback
    status: str
    created_at: int
    last_activity_at: int
    channel: str
    inbox_id: int = 0
    priority: str = ""  # one of PRIORITIES, or "" for none
    # An agent answered after the customer's last message and the ticket is not
    # closed: it waits on the customer (Chatwoot's waiting_since is cleared by the
    # first human reply, and set again by the customer's next message).
    waiting_on_customer: bool = False
    # When a snoozed ticket wakes up (unix seconds); 0 without a date: snoozed
    # until the customer's next message, or an answer we could not read.
    snoozed_until: int = 0
    # The newest public agent reply the list shows (0: none seen in this answer).
    last_agent_reply_id: int = 0
    # The conversation's uuid: the public API's only credential (part 2 §6.2), so
    # never shown, linked or logged; "" when Chatwoot sent none.
    uuid: str = dataclasses.field(default="", repr=False)
    # Chatwoot's CSAT survey in the thread (a Survey), set by get_ticket_with_thread;
    # None without one, and on tickets read without their thread.
    survey: "Survey | None" = None

    @property
    def accepts_replies(self):
        """Chatwoot takes customer messages only in API inboxes (contract §7).

        A conversation that does not name its channel gets the reply form: the
        worst case is Chatwoot's own 422, which the portal shows as a refusal.
        """
        return self.channel in (API_CHANNEL, "")


@dataclasses.dataclass(frozen=True)
class TicketPage:
    tickets: list
    counts: dict  # STATUS_GROUPS name -> tickets in it (with the same search)
    page: int
    pages: int


@dataclasses.dataclass(frozen=True)
class Attachment:
    """A file on a public message: only its id and description leave this module's
    callers' hands; `data_url` and `thumb_url` are Chatwoot's capability URLs, never shown."""
    id: int
    filename: str
    content_type: str
    file_type: str  # image, audio, video or file
    size: int
    data_url: str = dataclasses.field(repr=False)
    thumb_url: str = dataclasses.field(default="", repr=False)

    @property
    def is_image(self):
        return self.file_type == "image"


@dataclasses.dataclass(frozen=True)
class Message:
    id: int
    from_customer: bool
    sender_name: str
    content: str
    created_at: int
    attachments: tuple = ()
    by_agent: bool = False  # a public reply written by a person (not a bot, not a template)


@dataclasses.dataclass(frozen=True)
class Survey:
    """Chatwoot's CSAT survey in a conversation (part 2 §6): its public `input_csat`
    message, and the answer recorded in it (`submitted_values`). Only the rating
    and the comment are read: nothing of Chatwoot's CSAT record ever gets here."""
    message_id: int
    sent_at: int  # the survey message's created_at
    rating: int = 0  # 1-5; 0 before the customer answered
    feedback: str = ""

    def open_on(self, now):
        """Chatwoot still takes an answer at unix time `now`: it refuses once
        `(today - sent date) > 14`, comparing UTC dates (CSAT_OPEN_DAYS)."""
        sent = datetime.datetime.fromtimestamp(self.sent_at, datetime.timezone.utc).date()
        today = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()
        return (today - sent).days <= CSAT_OPEN_DAYS


@dataclasses.dataclass(frozen=True)
class Recipient:
    """A conversation's contact as Chatwoot records it: who a reply mail goes to."""
    contact_id: int
    email: str
    name: str
    blocked: bool


class ChatwootClient:
    def __init__(self, base_url, token, account_id, timeout=5.0):
        parts = urllib.parse.urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._api = parts.path.rstrip("/") + "/api/v1"
        self._prefix = self._api + f"/accounts/{account_id}"
        self._public = parts.path.rstrip("/") + "/public/api/v1"  # no token (contract §12)
        self._account_id = int(account_id)
        self._token = token
        self.timeout = timeout
        self._idle = queue.LifoQueue(maxsize=POOL_SIZE)
        self._ssl = ssl.create_default_context() if self._https else None
        # The second call of a ticket page runs here, beside the request thread.
        # One worker per waitress thread (16): pages never queue behind each other.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=EXECUTOR_THREADS, thread_name_prefix="chatwoot")
        # After a 404/422 from conversations/filter (Chatwoot before 4.14.2),
        # don't ask again on every dashboard.
        self._filter_unsupported = False
        self._first_message_cache = _BoundedCache(10_000)
        self._token_header = "Api-Access-Token"  # contract §1.1: survives proxies
        self._token_headers_tried = set()
        self._lock = threading.Lock()

    # -- Contacts -----------------------------------------------------------

    def find_contact_by_email(self, email):
        """The contact whose address is exactly `email` (already lower-case), or None.

        Uses the exact `contacts/filter`, never the fuzzy search (contract §2.3),
        and still compares the returned address: a near-miss never signs anyone in.
        """
        body = {"payload": [{"attribute_key": "email", "filter_operator": "equal_to",
                             "values": [email], "query_operator": None}]}
        data = self._call("POST", "/contacts/filter", body=body, idempotent=True)
        matches = [c for c in _list(data, "payload")
                   if isinstance(c, dict) and str(c.get("email") or "").lower() == email]
        if len(matches) != 1:
            return None
        contact = matches[0]
        if contact.get("blocked") is True:
            # Blocked in Chatwoot: its tickets are closed on arrival and replies
            # never reopen them. Treated as unknown, like any non-customer.
            return None
        contact_id = _int(contact.get("id"))
        if contact_id <= 0:
            raise ChatwootUnavailable("unexpected answer: a contact without an id")
        return Contact(contact_id, email, str(contact.get("name") or ""))

    # -- Tickets ------------------------------------------------------------

    def ticket_page(self, contact_id, status="open", query="", page=1):
        """One dashboard page (a TicketPage): the contact's tickets in a STATUS_GROUPS
        group whose subject contains `query`, PAGE_SIZE a page, newest activity first.

        Chatwoot does the filtering, paging and counting (`conversations/filter` on
        `contact_id`, 4.14.2+, contract part 2 §4.2). Two calls run at once: the page
        itself, and the count of the other status group, which together give the
        count of every group. Chatwoot's `q` search is never used: it matches
        private notes. Older Chatwoot refuses or ignores `contact_id`: then the
        contact's latest conversations are filtered here, and the log says why.
        """
        if not self._filter_unsupported:
            try:
                return self._filtered_page(int(contact_id), status, query, page)
            except ChatwootError as error:
                if not isinstance(error, ChatwootRejected) and error.status != 500:
                    raise  # down or slow: the page says so, the filter is not to blame
                if error.status in (401, 403):
                    raise  # the token was refused, not the filter: no fallback for good
                self._filter_unsupported = True
                log.warning("conversations/filter on contact_id failed (%s): Chatwoot is older than 4.14.2? "
                            "Showing each contact's latest conversations only, filtered by the portal", error)
            except _FilterIgnoresContact:
                self._filter_unsupported = True
                log.warning("conversations/filter ignored contact_id (Chatwoot older than 4.14.2?): showing each "
                            "contact's latest conversations only, filtered by the portal")
        return self._latest_page(int(contact_id), status, query, page)

    def _filtered_page(self, contact_id, status, query, page):
        other = "open" if status != "open" else "resolved"
        counted = self._executor.submit(self._filter, contact_id, other, query, 1)
        try:
            tickets, total = self._filter(contact_id, status, query, page)
        except BaseException:
            counted.cancel()
            raise
        _, other_total = counted.result()
        if status == "open":
            counts = {"open": total, "resolved": other_total, "all": total + other_total}
        elif status == "resolved":
            counts = {"open": other_total, "resolved": total, "all": total + other_total}
        else:
            counts = {"open": other_total, "resolved": max(total - other_total, 0), "all": total}
        return TicketPage(self._with_subjects(tickets), counts, page, max(1, -(-total // PAGE_SIZE)))

    def _filter(self, contact_id, status, query, page):
        """([Ticket], all_count) of one `conversations/filter` page."""
        conditions = [("contact_id", "equal_to", [contact_id]),
                      ("status", "equal_to", list(STATUS_GROUPS[status]))]
        if query:
            conditions.append(("mail_subject", "contains", [_ilike_literal(query)]))
        body = {"payload": [{"attribute_key": key, "filter_operator": operator, "values": values,
                             "query_operator": "AND" if n < len(conditions) - 1 else None}
                            for n, (key, operator, values) in enumerate(conditions)]}
        data = self._call("POST", "/conversations/filter", query={"page": page}, body=body, idempotent=True)
        items = _list(data, "payload")
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        tickets = [ticket for ticket in map(_ticket, items) if ticket is not None]
        # Trust nothing but each conversation's own contact: a filter that dropped
        # the unknown key would list everyone's tickets.
        if any(ticket.contact_id != contact_id for ticket in tickets):
            raise _FilterIgnoresContact()
        total = meta.get("all_count")
        return tickets, total if isinstance(total, int) and total >= 0 else len(tickets)

    def _latest_page(self, contact_id, status, query, page):
        """The fallback: the contact's latest conversations (20 at most), filtered here."""
        data = self._call("GET", f"/contacts/{int(contact_id)}/conversations")
        tickets = [t for t in map(_ticket, _list(data, "payload")) if t is not None and t.contact_id == contact_id]
        tickets = self._with_subjects(sorted(tickets, key=lambda t: (t.last_activity_at, t.id), reverse=True))
        wanted = query.casefold()
        tickets = [t for t in tickets if wanted in t.subject.casefold()]
        groups = {name: [t for t in tickets if name == "all" or t.status in STATUS_GROUPS[name]]
                  for name in STATUS_GROUPS}
        chosen = groups[status]
        pages = max(1, -(-len(chosen) // PAGE_SIZE))
        shown = chosen[(page - 1) * PAGE_SIZE:][:PAGE_SIZE]
        return TicketPage(shown, {name: len(group) for name, group in groups.items()}, page, pages)

    def _with_subjects(self, tickets):
        """Give subject-less tickets an excerpt of their first public message.

        The list call carries only the latest message, so the first one is read
        once per such ticket (concurrently) and remembered: it never changes.
        Tickets made by the portal or by e-mail have a subject and cost nothing.
        """
        missing = [t for t in tickets if not t.subject and self._first_message_cache.get(t.id) is None]
        if missing:
            futures = {t.id: self._executor.submit(self._first_public_text, t.id) for t in missing}
            for ticket_id, future in futures.items():
                try:
                    self._first_message_cache.put(ticket_id, future.result())
                except ChatwootError:
                    pass  # the dashboard still shows "Ticket #id"
        return [t if t.subject else dataclasses.replace(t, subject=self._first_message_cache.get(t.id) or "")
                for t in tickets]

    def _first_public_text(self, conversation_id):
        data = self._call("GET", f"/conversations/{int(conversation_id)}/messages",
                          query={"after": 0, "filter_internal_messages": "true"})
        for message in _public_messages(_list(data, "payload")):
            if message.content.strip():
                return _excerpt(message.content)
        return ""

    def get_ticket(self, conversation_id):
        """The conversation, or ChatwootNotFound."""
        return _require_ticket(self._call("GET", f"/conversations/{int(conversation_id)}"))

    def get_ticket_with_thread(self, conversation_id):
        """(Ticket, [Message]) with both calls issued at once.

        The thread is fetched before ownership is known but only returned, by the
        caller's check, after `Ticket.contact_id` proves it is the customer's.
        """
        thread = self._executor.submit(self._thread_and_survey, conversation_id)
        try:
            ticket = self.get_ticket(conversation_id)
        except BaseException:
            thread.cancel()
            raise
        messages, survey = thread.result()
        ticket = dataclasses.replace(ticket, survey=survey)
        if not ticket.subject:  # as on the dashboard: an excerpt of the first message
            first = next((m.content for m in messages if m.content.strip()), "")
            ticket = dataclasses.replace(ticket, subject=_excerpt(first))
        return ticket, messages

    def thread(self, conversation_id):
        """Every public message, oldest first, reading as many pages as it takes."""
        return self._thread_and_survey(conversation_id)[0]

    def _thread_and_survey(self, conversation_id):
        """([Message], Survey or None): the survey is not a message of the thread."""
        messages, surveys, after = [], [], 0
        for _ in range(MAX_THREAD_PAGES):
            data = self._call("GET", f"/conversations/{int(conversation_id)}/messages",
                              query={"after": after, "before": MAX_MESSAGE_ID,
                                     "filter_internal_messages": "true"})
            page = _list(data, "payload")
            messages.extend(_public_messages(page))
            surveys.extend(filter(None, map(_survey, page)))
            ids = [m.get("id") for m in page if isinstance(m, dict) and isinstance(m.get("id"), int)]
            if len(page) < MESSAGE_PAGE_SIZE or not ids:
                break
            after = max(ids) + 1  # `after` is inclusive when `before` is given
        else:
            log.warning("conversation %s has more than %d messages; showing the first ones",
                        conversation_id, MAX_THREAD_PAGES * MESSAGE_PAGE_SIZE)
        messages.sort(key=lambda m: (m.created_at, m.id))
        # Chatwoot sends one survey per conversation, and answers for the first it finds.
        return messages, min(surveys, key=lambda s: s.message_id, default=None)

    def create_ticket(self, contact_id, inbox_id, subject, content, uploads=()):
        """The id of a new conversation whose first message is the customer's own (incoming).

        Files go in the same call (`message[attachments][]`, contract part 2 §1.1),
        as multipart/form-data streamed from their temporary files.
        """
        if uploads:
            fields = [("inbox_id", str(int(inbox_id))), ("contact_id", str(int(contact_id))),
                      ("additional_attributes[mail_subject]", subject), ("message[content]", content),
                      ("message[message_type]", "incoming")]
            data = self._call("POST", "/conversations", form=_Multipart(fields, "message[attachments][]", uploads))
        else:
            body = {
                "inbox_id": int(inbox_id),
                "contact_id": int(contact_id),
                "additional_attributes": {"mail_subject": subject},
                "message": {"content": content, "message_type": "incoming"},
            }
            data = self._call("POST", "/conversations", body=body)
        try:
            return int(data["id"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise ChatwootUnavailable("unexpected answer: no conversation id") from None

    def set_priority(self, conversation_id, priority):
        """Give a conversation one of PRIORITIES.

        `POST conversations` ignores `priority` (contract §5.1), so it is set by a
        second call. `toggle_priority` exists since Chatwoot 2.17 (PATCH only since
        3.7) and answers 200 with an empty body. Setting the same value again changes
        nothing in Chatwoot, so a dropped keep-alive connection may be retried.
        """
        if priority not in PRIORITIES:
            raise ValueError(f"not a Chatwoot priority: {priority!r}")
        self._call("POST", f"/conversations/{int(conversation_id)}/toggle_priority",
                   body={"priority": priority}, idempotent=True)

    def add_customer_message(self, conversation_id, content, uploads=()):
        """The customer's reply; files go in the same call (`attachments[]`)."""
        path = f"/conversations/{int(conversation_id)}/messages"
        if uploads:
            fields = [("content", content), ("message_type", "incoming"), ("private", "false")]
            self._call("POST", path, form=_Multipart(fields, "attachments[]", uploads))
        else:
            self._call("POST", path, body={"content": content, "message_type": "incoming", "private": False})

    # -- Reply mails ----------------------------------------------------------

    def reply_notice(self, conversation_id, message_ids):
        """(Ticket, Recipient, [Message]) for a reply mail, read afresh (a webhook is a hint).

        The conversation names its contact as Chatwoot records it; the messages
        are those of `message_ids` that are public replies written by an agent.
        Both calls run at once.
        """
        wanted = {int(m) for m in message_ids}
        messages = self._executor.submit(self._messages_from, conversation_id, min(wanted) - 1, max(wanted))
        try:
            data = self._call("GET", f"/conversations/{int(conversation_id)}")
        except BaseException:
            messages.cancel()
            raise
        ticket = _require_ticket(data)
        sender = data["meta"]["sender"]
        recipient = Recipient(ticket.contact_id, str(sender.get("email") or "").strip(),
                              str(sender.get("name") or ""), sender.get("blocked") is True or data.get("muted") is True)
        replies = [m for m in messages.result() if m.id in wanted and m.by_agent]
        return ticket, recipient, replies

    def _messages_from(self, conversation_id, after, last_id):
        """Public messages with `after` < id <= `last_id`, 100 a page (contract §6.1)."""
        messages = []
        for _ in range(MAX_THREAD_PAGES):
            data = self._call("GET", f"/conversations/{int(conversation_id)}/messages",
                              query={"after": after, "filter_internal_messages": "true"})
            page = _list(data, "payload")
            messages.extend(_public_messages(page))
            ids = [m.get("id") for m in page if isinstance(m, dict) and isinstance(m.get("id"), int)]
            if len(page) < AFTER_PAGE_SIZE or not ids or max(ids) >= last_id:
                break
            after = max(ids)
        return messages

    # -- Did a write whose answer was lost happen? ----------------------------
    # Chatwoot has no idempotency key (contract §5.2), so after a timeout the
    # portal looks for the result before it writes again.

    def find_recent_ticket(self, contact_id, inbox_id, subject, since):
        """The id of this contact's ticket with this subject created since `since`, or None."""
        data = self._call("GET", f"/contacts/{int(contact_id)}/conversations")
        for item in _list(data, "payload"):
            ticket = _ticket(item)
            if (ticket and ticket.contact_id == contact_id and _int(item.get("inbox_id")) == int(inbox_id)
                    and ticket.subject == subject and ticket.created_at >= since):
                return ticket.id
        return None

    def has_recent_customer_message(self, conversation_id, content, since, filenames=()):
        """True when the customer's message `content` (with files of these names)
        reached the thread since `since`."""
        data = self._call("GET", f"/conversations/{int(conversation_id)}/messages",
                          query={"filter_internal_messages": "true"})  # the latest 20
        wanted = content.replace("\\\n", "\n").strip("\n")
        return any(m.from_customer and m.content == wanted and m.created_at >= since
                   and sorted(a.filename for a in m.attachments) == sorted(filenames)
                   for m in _public_messages(_list(data, "payload")))

    def resolve(self, conversation_id):
        """Resolve through toggle_status: a PATCH of `status` is silently ignored (§8)."""
        self._call("POST", f"/conversations/{int(conversation_id)}/toggle_status",
                   body={"status": "resolved"})

    # -- CSAT -----------------------------------------------------------------

    def rate(self, conversation_uuid, rating, feedback):
        """Record the customer's answer to the conversation's CSAT survey.

        The same call Chatwoot's own survey page makes (part 2 §6.2): the public
        `PUT csat_survey/{uuid}`, with no token (the uuid is its credential). The
        caller has checked ownership. Chatwoot answers 200 to any rating, so only
        CSAT_RATINGS are sent. ChatwootNotFound: the conversation has no survey;
        ChatwootRejected 422: the survey is locked (CSAT_OPEN_DAYS). The answer is
        dropped unread: it is Chatwoot's raw CSAT record, agents' internal review
        notes and database ids included; the rating shows from the thread (Survey).
        """
        if rating not in CSAT_RATINGS:
            raise ValueError(f"not a CSAT rating: {rating!r}")
        if not re.fullmatch(r"[0-9A-Fa-f-]{8,64}", conversation_uuid or ""):
            raise ChatwootUnavailable("unexpected answer: the conversation has no uuid")
        body = {"message": {"submitted_values": {"csat_survey_response": {
            "rating": rating, "feedback_message": feedback}}}}
        # The same values again change nothing: a dropped keep-alive connection may be retried.
        self._call("PUT", f"/csat_survey/{conversation_uuid}", body=body, idempotent=True, public=True)

    # -- Health -------------------------------------------------------------

    def check(self, inbox_id):
        """Problems reaching the account and inbox, as plain sentences (empty: fine)."""
        try:
            self.find_contact_by_email("portal-check@invalid.invalid")
        except ChatwootRejected as error:
            if error.status == 401:
                return [f"Chatwoot refused the API token or account ({error.message}); "
                        "use an administrator's access token and the right CHATWOOT_ACCOUNT_ID"]
            # nginx answers plain HTTP on its TLS port with 400 "The plain HTTP request
            # was sent to HTTPS port".
            if error.status == 400 and not self._https and self._speaks_tls():
                return [self._wrong_scheme()]
            return [f"Chatwoot rejected a contact lookup: {error}"]
        except ChatwootUnavailable as error:
            # https:// to a plain port fails in the handshake (WRONG_VERSION_NUMBER); http://
            # to a TLS port gets a closed connection or garbage. Either way, ask the port
            # in the other scheme, unless it timed out: that says nothing about the scheme,
            # and a second try would double the wait. (`raise ... from None` hides the
            # cause from tracebacks but keeps it as __context__.)
            if not isinstance(error.__context__, TimeoutError) and (
                    self._speaks_plain_http() if self._https else self._speaks_tls()):
                return [self._wrong_scheme()]
            return [f"Chatwoot is not reachable at the configured CHATWOOT_URL: {error}"]
        try:
            inbox = self._call("GET", f"/inboxes/{int(inbox_id)}")
        except ChatwootNotFound:
            return [f"CHATWOOT_INBOX_ID {inbox_id} does not exist in this account"]
        except ChatwootError as error:
            return [f"Could not read inbox {inbox_id}: {error}"]
        channel = inbox.get("channel_type") if isinstance(inbox, dict) else None
        if channel and channel != API_CHANNEL:
            return [f"Inbox {inbox_id} is a {channel} inbox; new tickets need an API-type inbox"]
        return self._check_role()

    def _wrong_scheme(self):
        """CHATWOOT_URL's scheme is the other one than the server speaks: the URL to use."""
        wrong, right = ("https", "http") if self._https else ("http", "https")
        speaks = "plain HTTP" if right == "http" else "HTTPS (TLS)"
        host = f"[{self._host}]" if ":" in self._host else self._host
        url = f"{right}://{host}:{self._port}{self._api[: -len('/api/v1')]}"
        return f"CHATWOOT_URL starts with {wrong}://, but this server speaks {speaks}: use {url}"

    def _speaks_plain_http(self):
        """Whether CHATWOOT_URL's host and port answer a plain HTTP request."""
        try:
            with socket.create_connection((self._host, self._port), timeout=self.timeout) as probe:
                probe.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
                return probe.makefile("rb").readline(64).startswith(b"HTTP/")
        except OSError:
            return False

    def _speaks_tls(self):
        """Whether CHATWOOT_URL's host and port complete a TLS handshake.

        The certificate is not checked: this only asks which scheme the port speaks,
        and sends nothing over it. Calls over https:// verify it as always.
        """
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with socket.create_connection((self._host, self._port), timeout=self.timeout) as raw:
                with context.wrap_socket(raw, server_hostname=self._host):
                    return True
        except OSError:
            return False

    def _check_role(self):
        """An agent's token silently misses inboxes it is not a member of (contract §1.2)."""
        try:
            profile = self._call("GET", "/profile", account=False)
        except ChatwootError:
            return []  # the other checks passed; the role cannot be read here
        accounts = profile.get("accounts") if isinstance(profile, dict) else None
        for entry in accounts if isinstance(accounts, list) else ():
            if isinstance(entry, dict) and entry.get("id") == self._account_id:
                role = entry.get("role")
                if role and role != "administrator":
                    return [f"CHATWOOT_API_TOKEN belongs to a user with the {role} role; use an "
                            "administrator's token, or customers miss tickets of inboxes that user is not in"]
        return []

    # -- Files ------------------------------------------------------------------

    def open_file(self, data_url):
        """A FileStream of one of Chatwoot's files (an attachment's data_url or thumb_url).

        The URL's origin is replaced by CHATWOOT_URL's: Chatwoot builds it from its
        FRONTEND_URL, which the portal may not reach (the signed path does not
        depend on the host). No token is sent: file URLs need none, and the
        redirect leads to storage (another host, for S3), which must never see it.
        Redirects are followed (MAX_FILE_REDIRECTS); a file missing just after its
        message was created (the upload still in flight, contract part 2 §1.4) is
        asked for once more.
        """
        parts = urllib.parse.urlsplit(str(data_url or ""))
        if parts.scheme not in ("http", "https") or not parts.path.startswith("/"):
            raise ChatwootNotFound(404, "not a file URL")
        base = self._api[: -len("/api/v1")]
        path = parts.path if parts.path.startswith(base + "/") else base + parts.path
        url = urllib.parse.urlunsplit(("https" if self._https else "http", f"{self._host}:{self._port}",
                                       path, parts.query, ""))
        for attempt in (1, 2):
            try:
                return self._follow(url)
            except ChatwootNotFound:
                if attempt == 2:
                    raise
                time.sleep(FILE_RETRY_SECONDS)

    def _follow(self, url):
        started = time.monotonic()
        status = "error"
        try:
            for _ in range(MAX_FILE_REDIRECTS + 1):
                target = urllib.parse.urlsplit(url)
                if target.scheme not in ("http", "https") or not target.hostname:
                    raise ChatwootUnavailable(f"file redirect to a {target.scheme or 'relative'} URL")
                if target.scheme == "https":
                    connection = http.client.HTTPSConnection(target.hostname, target.port or 443,
                                                             timeout=self.timeout, context=ssl.create_default_context())
                else:
                    connection = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=self.timeout)
                try:
                    connection.request("GET", target.path + (f"?{target.query}" if target.query else ""),
                                       headers={"Accept": "*/*"})
                    _ack_promptly(connection.sock)
                    response = connection.getresponse()
                except (OSError, http.client.HTTPException) as error:
                    connection.close()
                    status = "timeout" if isinstance(error, TimeoutError) else "unreachable"
                    raise ChatwootUnavailable(f"file: {type(error).__name__}: {error}") from None
                status = response.status
                if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                    url = urllib.parse.urljoin(url, response.getheader("Location"))
                    connection.close()
                    continue
                if response.status == 200:
                    return FileStream(connection, response)
                connection.close()
                if response.status == 404:
                    raise ChatwootNotFound(404, "file not found in Chatwoot's storage")
                raise ChatwootUnavailable(f"file: HTTP {response.status}", response.status)
            raise ChatwootUnavailable("file: too many redirects")
        finally:
            log.info("chatwoot file GET %s %.1fms", status, (time.monotonic() - started) * 1000)

    def close(self):
        self._executor.shutdown(wait=False, cancel_futures=True)
        while True:
            try:
                self._idle.get_nowait()[0].close()
            except queue.Empty:
                return

    # -- HTTP ---------------------------------------------------------------

    def _call(self, method, path, query=None, body=None, idempotent=None, account=True, form=None,
              public=False):
        """JSON from one API call, or a ChatwootError. `form`: a _Multipart body instead of JSON.
        `public`: a call of the public API (`/public/api/v1`), which is sent no token.

        A read that fails on a reused keep-alive connection is retried once on a
        fresh one (the server may have closed it while it sat idle). Writes are
        never retried: Chatwoot has no idempotency key, a retry could double a
        message.
        """
        idempotent = method == "GET" if idempotent is None else idempotent
        url = (self._public if public else self._prefix if account else self._api) + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        payload = json.dumps(body).encode("utf-8") if body is not None else None
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if form is not None:
            headers.update({"Content-Type": form.content_type, "Content-Length": str(form.length)})
        started = time.monotonic()
        status = "error"
        try:
            for attempt in (1, 2):
                connection, reused = self._connection(fresh=attempt == 2)
                token_header = self._token_header
                # The public API needs no token and must never see it: the admin
                # token has no business in its logs or in a proxy's in front of it.
                sent = headers if public else {**headers, token_header: self._token}
                try:
                    connection.request(method, url, body=form.chunks() if form is not None else payload,
                                       headers=sent)
                    _ack_promptly(connection.sock)
                    response = connection.getresponse()
                    raw = _read_bounded(response)
                except (OSError, http.client.HTTPException) as error:
                    connection.close()
                    if reused and idempotent and attempt == 1 and not isinstance(error, TimeoutError):
                        continue
                    status = "timeout" if isinstance(error, TimeoutError) else "unreachable"
                    raise ChatwootUnavailable(f"{type(error).__name__}: {error}") from None
                status = response.status
                if raw is None:  # larger than any answer the portal asks for: left unread
                    connection.close()
                    raise ChatwootUnavailable(f"HTTP {status} answer larger than {MAX_RESPONSE_BYTES} bytes")
                if response.will_close:
                    connection.close()
                else:
                    self._release(connection)
                if (not public and attempt == 1 and _token_not_seen(response.status, raw)
                        and self._switch_token_header(token_header)):
                    continue  # nothing happened on Chatwoot's side: safe even for a write
                return _decode(response.status, raw, public)
        finally:
            log.info("chatwoot %s %s %s %.1fms", method, _route_of(("/public" if public else "") + path), status,
                     (time.monotonic() - started) * 1000)

    def _switch_token_header(self, tried):
        """Chatwoot answered as if no token was sent: try the header's other spelling.

        Rails reads `api_access_token` and `Api-Access-Token` alike, but a proxy
        may drop names with underscores (nginx's default) and some servers match
        only the documented `api_access_token`. The one that works is kept.
        """
        other = "api_access_token" if tried == "Api-Access-Token" else "Api-Access-Token"
        with self._lock:
            if self._token_header != tried:
                return True  # another request switched meanwhile: retry with that one
            if other in self._token_headers_tried:
                return False  # neither spelling is seen: the token is really missing
            self._token_headers_tried.add(tried)
            self._token_header = other
        log.warning("Chatwoot did not see the %s header; using %s instead", tried, other)
        return True

    def _connection(self, fresh=False):
        while not fresh:
            try:
                connection, idle_since = self._idle.get_nowait()
            except queue.Empty:
                break
            if time.monotonic() - idle_since < MAX_IDLE_SECONDS and not _dropped(connection.sock):
                return connection, True
            connection.close()
        if self._https:
            connection = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=self._ssl)
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        return connection, False

    def _release(self, connection):
        try:
            self._idle.put_nowait((connection, time.monotonic()))
        except queue.Full:
            connection.close()


# ---------------------------------------------------------------------------
# Chatwoot JSON -> portal records
# ---------------------------------------------------------------------------

def _decode(status, raw, public=False):
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):  # not JSON, or nested past Python's limit
        data = None
    if 200 <= status < 300:
        if data is None:
            raise ChatwootUnavailable(f"HTTP {status} with a body that is not JSON")
        return data
    if status == 429 or status >= 500:
        raise ChatwootUnavailable(f"HTTP {status}", status)
    if 300 <= status < 400:
        raise ChatwootUnavailable(f"HTTP {status} redirect: check the scheme and path of CHATWOOT_URL")
    message = _error_message(data) or f"HTTP {status}"
    if status == 404:
        # Chatwoot's "Resource could not be found" is JSON with just an error. A 404
        # page from a proxy (HTML) or Rails' routing ({"status":404,...}) means the
        # URL is wrong or Chatwoot is half-deployed, not that the ticket is gone.
        if isinstance(data, dict) and "error" in data and "status" not in data:
            raise ChatwootNotFound(status, message)
        # The public controllers leave a missing record to Rails, whose JSON 404 is
        # that routing shape (contract §12): there it means "no such record".
        if public and isinstance(data, dict) and "error" in data:
            raise ChatwootNotFound(status, message)
        raise ChatwootUnavailable(f"HTTP 404 from something that is not the Chatwoot API: {message}")
    raise ChatwootRejected(status, message)


def _read_bounded(response):
    """The body of an API answer, or None when it is over MAX_RESPONSE_BYTES."""
    if response.length is not None:
        # Announced: too large is refused unread; otherwise read() checks it all came.
        return None if response.length > MAX_RESPONSE_BYTES else response.read()
    raw = response.read(MAX_RESPONSE_BYTES + 1)  # chunked or unannounced: read up to the cap
    return None if len(raw) > MAX_RESPONSE_BYTES else raw


def _token_not_seen(status, raw):
    """Chatwoot's answer when no token header arrived at all (contract §1.4)."""
    return status == 401 and b'"errors"' in raw and b"sign in" in raw


def _error_message(data):
    """Chatwoot's errors come in three shapes (contract §1.4).

    The text ends up in log lines, so it is cut short and kept on one line: an
    error that echoes input must not be able to forge log lines.
    """
    if not isinstance(data, dict):
        return ""
    if isinstance(data.get("error"), str):
        text = data["error"]
    elif isinstance(data.get("errors"), list):
        text = "; ".join(str(e) for e in data["errors"])
    elif isinstance(data.get("message"), str):
        text = data["message"]
    else:
        return ""
    return " ".join(text.split())[:200]


def _list(data, key):
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise ChatwootUnavailable(f"unexpected answer: no '{key}' list")
    return value


def _require_ticket(data):
    ticket = _ticket(data)
    if ticket is None:
        raise ChatwootUnavailable("unexpected answer: not a conversation")
    return ticket


def _ticket(item):
    if not isinstance(item, dict):
        return None
    try:
        conversation_id = int(item["id"])
        contact_id = int(item["meta"]["sender"]["id"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    attributes = item.get("additional_attributes") or {}
    subject = attributes.get("mail_subject") if isinstance(attributes, dict) else None
    status = item.get("status")
    # Always a string in Chatwoot's JSON; the database integers are accepted too.
    status = STATUS_BY_NUMBER.get(status, status) if isinstance(status, int) else status
    status = status if status in STATUSES else "open"
    priority = item.get("priority")
    return Ticket(
        id=conversation_id,
        contact_id=contact_id,
        subject=str(subject or "").strip(),
        status=status,
        created_at=_int(item.get("created_at")),
        # Chatwoot's own "last activity", as its lists are ordered by it (notes and
        # assignments move it too; see the README's note on what that reveals).
        last_activity_at=_int(item.get("last_activity_at")) or _int(item.get("created_at")),
        channel=str((item.get("meta") or {}).get("channel") or ""),
        inbox_id=_int(item.get("inbox_id")),
        priority=priority if priority in PRIORITIES else "",  # null or anything unknown: none
        waiting_on_customer=status in ("open", "pending") and not item.get("waiting_since")
        and bool(item.get("first_reply_created_at")),
        last_agent_reply_id=max((_int(m.get("id")) for m in (item.get("last_non_activity_message"),
                                                             *_items(item.get("messages")))
                                 if _is_agent_reply(m)), default=0),
        uuid=item["uuid"] if isinstance(item.get("uuid"), str) else "",
        snoozed_until=_iso_seconds(item.get("snoozed_until")) if status == "snoozed" else 0,
    )


def _iso_seconds(value):
    """Unix seconds of Chatwoot's ISO time ("2026-06-09T10:13:20.000Z", contract §4), else 0."""
    if not isinstance(value, str):
        return 0
    try:
        moment = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return 0
    if moment.tzinfo is None:  # Rails writes UTC
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp())


def _is_agent_reply(raw):
    """A public message a person on the support team wrote (REST or push shape)."""
    if not isinstance(raw, dict) or raw.get("private") is not False:
        return False
    if _message_type(raw) != OUTGOING:
        return False
    sender = raw.get("sender") if isinstance(raw.get("sender"), dict) else {}
    return sender.get("type") == "user" or raw.get("sender_type") == "User"


def _public_messages(raw_messages):
    """Messages a customer may see: never private notes, activity lines or blanks."""
    messages = []
    for raw in raw_messages:
        # Anything not plainly public (true, "true", 1...) counts as a private note.
        if not isinstance(raw, dict) or raw.get("private") not in (False, None):
            continue
        # An int in REST answers, a string in webhooks (contract §1.5): accept both.
        message_type = _message_type(raw)
        if message_type not in (INCOMING, OUTGOING, TEMPLATE) or raw.get("content_type") == "input_csat":
            continue  # activity lines are internal; a CSAT survey shows as a Survey (_survey)
        content = raw.get("content")
        content = content if isinstance(content, str) else ""
        # The dashboard editor writes a hard line break as backslash + newline.
        content = content.replace("\\\n", "\n").strip("\n")
        attachments = tuple(filter(None, map(_attachment, _items(raw.get("attachments")))))
        if not content and not attachments:
            continue
        sender = raw.get("sender") if isinstance(raw.get("sender"), dict) else {}
        # REST says sender.type "user"; the push shape says sender_type "User". A reply
        # the agent deleted ("This message was deleted") is no reply to mail about.
        attributes = raw.get("content_attributes") if isinstance(raw.get("content_attributes"), dict) else {}
        by_agent = (message_type == OUTGOING and (sender.get("type") == "user" or raw.get("sender_type") == "User")
                    and attributes.get("deleted") is not True)
        messages.append(Message(
            id=_int(raw.get("id")),
            from_customer=message_type == INCOMING,
            sender_name=str(sender.get("available_name") or sender.get("name") or ""),
            content=content,
            created_at=_int(raw.get("created_at")),
            attachments=attachments,
            by_agent=by_agent,
        ))
    return messages


def _survey(raw):
    """The Survey of a public `input_csat` message (part 2 §6.1), or None.

    The answer is the one Chatwoot stored in the message
    (`content_attributes.submitted_values.csat_survey_response`), never its CSAT
    record; one whose rating is outside CSAT_RATINGS (Chatwoot keeps anything, and
    then builds no record) counts as no answer at all.
    """
    if not isinstance(raw, dict) or raw.get("private") not in (False, None) \
            or raw.get("content_type") != "input_csat":
        return None
    if _message_type(raw) == ACTIVITY:
        return None
    answer = raw.get("content_attributes")
    for key in ("submitted_values", "csat_survey_response"):
        answer = answer.get(key) if isinstance(answer, dict) else None
    answer = answer if isinstance(answer, dict) else {}
    rating = answer.get("rating")
    # A JSON number, or digits if something wrote it as a form would.
    rating = _int(rating) if isinstance(rating, (int, str)) and not isinstance(rating, bool) else 0
    feedback = answer.get("feedback_message")
    if rating not in CSAT_RATINGS:
        rating, feedback = 0, ""
    return Survey(message_id=_int(raw.get("id")), sent_at=_int(raw.get("created_at")), rating=rating,
                  feedback=feedback.strip() if isinstance(feedback, str) else "")


FILE_TYPES = ("image", "audio", "video", "file")


def _attachment(raw):
    """An uploaded file of a message, or None (locations, contact cards, odd shapes)."""
    if not isinstance(raw, dict) or raw.get("file_type") not in FILE_TYPES:
        return None
    attachment_id, data_url = _int(raw.get("id")), raw.get("data_url")
    if not attachment_id or not isinstance(data_url, str) or not data_url:
        return None
    try:
        name = urllib.parse.unquote(urllib.parse.urlsplit(data_url).path.rsplit("/", 1)[-1])
    except ValueError:  # "http://[bad": no name to take from it
        name = ""
    name = name.replace("/", "_").replace("\\", "_")[:255]
    thumb_url = raw.get("thumb_url")
    return Attachment(id=attachment_id, filename=name or f"file-{attachment_id}",
                      content_type=str(raw.get("content_type") or ""), file_type=raw["file_type"],
                      size=_int(raw.get("file_size")), data_url=data_url,
                      thumb_url=thumb_url if isinstance(thumb_url, str) else "")


class _Multipart:
    """A multipart/form-data body streamed from the uploads' files, its length known
    up front (no chunked encoding: not every proxy in front of Chatwoot takes it).
    `chunks()` may be called again: a retry with the other token header resends it."""

    def __init__(self, fields, file_field, uploads):
        boundary = "portal-" + secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self._pieces = []
        for name, value in fields:
            self._pieces.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                                .encode("utf-8") + value.encode("utf-8") + b"\r\n")
        for upload in uploads:
            # The name is plain already (attachments.safe_filename); quote marks are
            # percent-encoded as browsers do.
            filename = upload.filename.replace('"', "%22")
            self._pieces.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                                f'filename="{filename}"\r\nContent-Type: {upload.content_type}\r\n\r\n'
                                .encode("utf-8"))
            self._pieces.append(upload)
            self._pieces.append(b"\r\n")
        self._pieces.append(f"--{boundary}--\r\n".encode("ascii"))
        self.length = sum(len(p) if isinstance(p, bytes) else p.size for p in self._pieces)

    def chunks(self):
        for piece in self._pieces:
            if isinstance(piece, bytes):
                yield piece
            else:
                yield from piece.chunks()


class FileStream:
    """One of Chatwoot's files as it arrives: iterate for chunks, then close()."""

    def __init__(self, connection, response):
        self._connection, self._response = connection, response
        self.content_type = response.getheader("Content-Type") or ""
        length = response.getheader("Content-Length")
        self.length = int(length) if length and length.isdigit() else None

    def __iter__(self):
        try:
            while chunk := self._response.read(FILE_CHUNK_BYTES):
                yield chunk
        except (OSError, http.client.HTTPException) as error:
            # Headers are sent already: all that is left is to cut the answer short.
            log.warning("file download broke off: %s", error)
        finally:
            self.close()

    def close(self):
        self._connection.close()


def _ilike_literal(text):
    """`text` for Chatwoot's `contains` (ILIKE '%…%'): its wildcards and escape taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _excerpt(text, limit=80):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's 1e999
        return 0


def _message_type(raw):
    """A message's type as INCOMING... (from an int or a name); None for anything else."""
    value = raw.get("message_type")
    return MESSAGE_TYPE_BY_NAME.get(value, value) if isinstance(value, (str, int)) else None


def _items(value):
    """A JSON list, or () for anything else (null, a number, an object)."""
    return value if isinstance(value, list) else ()


def _dropped(sock):
    """True when an idle keep-alive connection was closed by the other side.

    An idle connection has nothing to read; if it is readable, the server sent
    its FIN (it restarted, or timed the connection out). Writes are never retried,
    so they must not start on such a connection.
    """
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _ack_promptly(sock):
    """Acknowledge the answer's first packet at once (Linux TCP_QUICKACK).

    Servers that write headers and body separately with Nagle's algorithm on
    (Python's http.server, some proxies) hold the body until the headers are
    acknowledged, and Linux delays that acknowledgement by up to 40 ms: a 40 ms
    stall on every call. Quick-ack mode must be set again after each request.
    """
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass


def _route_of(path):
    """`/conversations/42/messages` -> `/conversations/:id/messages`, for log lines.

    Any part that is not a plain word becomes `:id` too: a conversation's uuid
    (public CSAT calls) is a credential and stays out of the log.
    """
    return "/".join(part if re.fullmatch(r"[a-z_]*", part) else ":id" for part in path.split("/"))


class _BoundedCache:
    """A thread-safe dict that forgets its oldest entries past `size`."""

    def __init__(self, size):
        self._size = size
        self._items = {}
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            return self._items.get(key)

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.pop(next(iter(self._items)))
