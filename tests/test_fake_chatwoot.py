"""Tests for the fake Chatwoot: every check goes over a real socket.

The fake stands in for Chatwoot in the portal's tests and demo, so these tests
pin the behaviour the Chatwoot API contract (chatwoot-api.md) describes: shapes, status
codes, the four message pagination modes, the traps the portal must survive, and the
account webhooks (§9) it sends to a real receiver.
"""

import hashlib
import hmac
import http.client
import json
import re
import socket
import threading
import time
import uuid
from collections import namedtuple
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode, urlsplit

import pytest

from fake_chatwoot import FakeChatwoot

TOKEN = "s3cret-token"
ACCOUNT = 7

Reply = namedtuple("Reply", "status headers body raw")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now=1_781_000_000.0):
        self.now = now

    def __call__(self):
        return self.now

    def tick(self, seconds=1):
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def fake(clock):
    server = FakeChatwoot(token=TOKEN, account_id=ACCOUNT, clock=clock).start()
    yield server
    server.stop()


@pytest.fixture
def world(fake):
    """Two inboxes and contacts where one address is a substring of another."""
    ids = {"api": fake.add_inbox("Customer Portal", "Channel::Api"),
           "mail": fake.add_inbox("Support email", "Channel::Email")}
    for key, name, email in [("jane", "Jane Doe", "jane@example.com"),
                             ("ann", "Ann Lee", "ann@example.com"),
                             ("joann", "Joann Park", "joann@example.com")]:
        ids[key] = fake.add_contact(name, email)
    return ids


def api_path(path):
    return path if path.startswith("/") else f"/api/v1/accounts/{ACCOUNT}/{path}"


def call(fake, method, path, body=None, token=TOKEN, headers=None, raw=None, conn=None):
    """One request; a fresh connection unless ``conn`` is given."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(urlsplit(fake.url).hostname, urlsplit(fake.url).port,
                                          timeout=5)
    sent = {} if token is None else {"api_access_token": token}
    if body is not None:
        raw = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    sent.update(headers or {})
    try:
        conn.request(method, api_path(path), body=raw, headers=sent)
        response = conn.getresponse()
        data = response.read()
    finally:
        if own:
            conn.close()
    try:
        decoded = json.loads(data)
    except ValueError:
        decoded = None  # empty, plain text or deliberately broken (fault injection)
    return Reply(response.status, response, decoded, data)


def thread_of(fake, conversation, count, clock):
    """``count`` alternating customer/agent messages; returns their ids, oldest first."""
    ids = []
    for n in range(count):
        clock.tick()
        ids.append(fake.add_message(conversation, f"message {n}",
                                    "incoming" if n % 2 == 0 else "outgoing"))
    return ids


def ids_of(reply):
    return [m["id"] for m in reply.body["payload"]]


# -- authentication and routing -------------------------------------------------


def test_request_without_token_gets_devise_errors_list(fake):
    reply = call(fake, "GET", "inboxes", token=None)
    assert reply.status == 401
    assert reply.body == {"errors": ["You need to sign in or sign up before continuing."]}


def test_request_with_wrong_token_gets_invalid_access_token(fake):
    reply = call(fake, "GET", "inboxes", token="nope")
    assert (reply.status, reply.body) == (401, {"error": "Invalid Access Token"})


def test_hyphenated_token_header_is_accepted(fake):
    reply = call(fake, "GET", "inboxes", token=None, headers={"Api-Access-Token": TOKEN})
    assert reply.status == 200


def test_unknown_account_is_resource_not_found(fake):
    reply = call(fake, "GET", "/api/v1/accounts/999/inboxes")
    assert (reply.status, reply.body) == (404, {"error": "Resource could not be found"})


def test_unknown_route_gets_rails_not_found(fake):
    reply = call(fake, "DELETE", "conversations/1/toggle_status")
    assert (reply.status, reply.body) == (404, {"status": 404, "error": "Not Found"})


def test_invalid_json_body_is_bad_request(fake, world):
    reply = call(fake, "POST", "contacts/filter", raw=b"{not json",
                 headers={"Content-Type": "application/json"})
    assert reply.status == 400


def test_responses_are_utf8_json_with_content_length(fake):
    reply = call(fake, "GET", "inboxes")
    assert reply.headers.getheader("Content-Type") == "application/json; charset=utf-8"
    assert int(reply.headers.getheader("Content-Length")) == len(reply.raw)


def test_connection_is_kept_alive_between_requests(fake):
    conn = http.client.HTTPConnection(urlsplit(fake.url).hostname, urlsplit(fake.url).port, timeout=5)
    try:
        assert call(fake, "GET", "inboxes", conn=conn).status == 200
        first_socket = conn.sock
        assert call(fake, "GET", "inboxes", conn=conn).status == 200
        assert first_socket is not None and conn.sock is first_socket
    finally:
        conn.close()


# -- contacts: fuzzy search versus exact filter -----------------------------------


def test_search_is_a_substring_match_so_ann_also_finds_joann(fake, world):
    reply = call(fake, "GET", "contacts/search?q=ann%40example.com")
    assert reply.status == 200
    assert sorted(c["email"] for c in reply.body["payload"]) == ["ann@example.com", "joann@example.com"]
    assert reply.body["meta"] == {"count": 2, "current_page": 1, "has_more": False}
    assert reply.body["payload"][0]["contact_inboxes"] == []


def test_search_treats_percent_and_underscore_as_wildcards(fake, world):
    assert [c["email"] for c in call(fake, "GET", "contacts/search?q=j%25n%40").body["payload"]] \
        == ["joann@example.com"]
    assert len(call(fake, "GET", "contacts/search?q=_").body["payload"]) == 3


def test_search_with_blank_query_is_422(fake, world):
    reply = call(fake, "GET", "contacts/search?q=++")
    assert (reply.status, reply.body) == (422, {"error": "Specify search string with parameter q"})


def test_search_pages_hold_15_contacts_and_echo_the_page_parameter(fake):
    for n in range(16):
        fake.add_contact(f"User {n}", f"user{n}@example.org")
    first = call(fake, "GET", "contacts/search?q=example.org")
    second = call(fake, "GET", "contacts/search?q=example.org&page=2")
    assert first.body["meta"] == {"count": 15, "current_page": 1, "has_more": True}
    assert second.body["meta"] == {"count": 1, "current_page": "2", "has_more": False}


def test_filter_equal_to_matches_email_exactly_ignoring_case(fake, world):
    body = {"payload": [{"attribute_key": "email", "filter_operator": "equal_to",
                         "values": ["ANN@Example.com"], "query_operator": None}]}
    reply = call(fake, "POST", "contacts/filter", body)
    assert reply.status == 200
    assert [c["email"] for c in reply.body["payload"]] == ["ann@example.com"]
    assert reply.body["meta"] == {"count": 1, "current_page": 1}


def test_filter_contains_and_or_joiner(fake, world):
    body = {"payload": [
        {"attribute_key": "email", "filter_operator": "contains", "values": ["jane"],
         "query_operator": "OR"},
        {"attribute_key": "name", "filter_operator": "equal_to", "values": ["ann lee"]}]}
    reply = call(fake, "POST", "contacts/filter", body)
    assert sorted(c["email"] for c in reply.body["payload"]) == ["ann@example.com", "jane@example.com"]


def test_filter_skips_contacts_without_email_phone_or_identifier(fake, world):
    fake.add_contact("Anonymous Ann", None)
    body = {"payload": [{"attribute_key": "name", "filter_operator": "contains", "values": ["ann"]}]}
    names = [c["name"] for c in call(fake, "POST", "contacts/filter", body).body["payload"]]
    assert "Anonymous Ann" not in names
    assert "Anonymous Ann" in [c["name"] for c in call(fake, "GET", "contacts/search?q=ann").body["payload"]]


@pytest.mark.parametrize("condition, fragment", [
    ({"attribute_key": "shoe_size", "filter_operator": "equal_to", "values": ["1"]}, "Invalid attribute key"),
    ({"attribute_key": "email", "filter_operator": "greater_than", "values": ["1"]}, "Invalid operator"),
    ({"attribute_key": "email", "filter_operator": "equal_to", "values": []}, "Invalid value"),
])
def test_filter_rejects_bad_conditions_with_422(fake, world, condition, fragment):
    reply = call(fake, "POST", "contacts/filter", {"payload": [condition]})
    assert reply.status == 422
    assert fragment in reply.body["error"]


def test_contact_show_lists_contact_inboxes_and_404s_unknown_ids(fake, world):
    fake.add_conversation(world["jane"], world["mail"])
    reply = call(fake, "GET", f"contacts/{world['jane']}")
    assert reply.body["payload"]["contact_inboxes"][0]["source_id"] == "jane@example.com"
    assert reply.body["payload"]["contact_inboxes"][0]["inbox"]["channel_type"] == "Channel::Email"
    assert call(fake, "GET", "contacts/999").status == 404


# -- conversation lists -----------------------------------------------------------


def test_contact_conversations_are_the_20_most_recently_active(fake, world, clock):
    created = []
    for n in range(22):
        clock.tick()
        created.append(fake.add_conversation(world["jane"], world["api"], f"ticket {n}"))
    clock.tick()
    fake.add_message(created[0], "bump the oldest", "incoming")
    reply = call(fake, "GET", f"contacts/{world['jane']}/conversations")
    ids = [c["id"] for c in reply.body["payload"]]
    assert list(reply.body) == ["payload"]
    assert ids == [created[0]] + created[::-1][:19]
    assert call(fake, "GET", "contacts/999/conversations").status == 404


def test_conversations_filter_pages_by_25_with_counts(fake, world, clock):
    for n in range(27):
        clock.tick()
        fake.add_conversation(world["jane"], world["api"], assignee_id=fake.api_user_id if n < 2 else None)
    fake.add_conversation(world["ann"], world["api"])
    body = {"payload": [{"attribute_key": "contact_id", "filter_operator": "equal_to",
                         "values": [world["jane"]], "query_operator": None}]}
    first = call(fake, "POST", "conversations/filter?page=1", body)
    second = call(fake, "POST", "conversations/filter?page=2", body)
    assert first.body["meta"] == {"mine_count": 2, "unassigned_count": 25, "all_count": 27}
    assert len(first.body["payload"]) == 25 and len(second.body["payload"]) == 2
    assert [c["id"] for c in first.body["payload"]][:2] == [27, 26]


# -- the conversation object ----------------------------------------------------


def test_conversation_object_has_the_contract_keys_and_types(fake, world, clock):
    display_id = fake.add_conversation(world["jane"], world["api"], "Printer on fire",
                                       assignee_id=fake.default_agent_id)
    fake.add_message(display_id, "It burns", "incoming")
    reply = call(fake, "GET", f"conversations/{display_id}")
    conversation = reply.body
    assert set(conversation) == {
        "meta", "id", "messages", "account_id", "uuid", "additional_attributes",
        "agent_last_seen_at", "assignee_last_seen_at", "can_reply", "contact_last_seen_at",
        "custom_attributes", "inbox_id", "labels", "muted", "snoozed_until", "status",
        "created_at", "updated_at", "timestamp", "first_reply_created_at", "unread_count",
        "last_non_activity_message", "last_activity_at", "priority", "waiting_since", "sla_policy_id"}
    assert conversation["meta"]["sender"]["id"] == world["jane"]
    assert "contact_inboxes" not in conversation["meta"]["sender"]
    assert conversation["meta"]["channel"] == "Channel::Api"
    assert conversation["meta"]["assignee"]["name"] == "Sam Agent"
    assert conversation["additional_attributes"] == {"mail_subject": "Printer on fire"}
    assert (conversation["status"], conversation["priority"]) == ("open", None)
    assert conversation["agent_last_seen_at"] == 0 and conversation["first_reply_created_at"] == 0
    assert isinstance(conversation["updated_at"], float)
    assert isinstance(conversation["created_at"], int) and conversation["snoozed_until"] is None
    assert conversation["waiting_since"] == int(clock())
    assert conversation["messages"][0]["message_type"] == 0
    assert conversation["messages"][0]["updated_at"].endswith("Z")


def test_conversation_without_assignee_has_no_assignee_key(fake, world):
    display_id = fake.add_conversation(world["jane"], world["api"])
    reply = call(fake, "GET", f"conversations/{display_id}")
    assert "assignee" not in reply.body["meta"]
    assert reply.body["messages"] == [] and reply.body["last_non_activity_message"] is None


def test_embedded_message_is_the_latest_of_any_kind_even_a_private_note(fake, world, clock):
    display_id = fake.add_conversation(world["jane"], world["api"])
    fake.add_message(display_id, "hello", "incoming")
    clock.tick()
    note = fake.add_message(display_id, "internal only", "outgoing", private=True)
    clock.tick()
    activity = fake.add_message(display_id, "Sam Agent self-assigned this conversation", "activity")
    conversation = call(fake, "GET", f"conversations/{display_id}").body
    assert [m["id"] for m in conversation["messages"]] == [activity]
    assert conversation["last_non_activity_message"]["id"] == note
    assert conversation["last_non_activity_message"]["private"] is True


def test_unknown_conversation_is_resource_not_found(fake, world):
    for path in ("conversations/42", "conversations/abc", "conversations/42/messages"):
        reply = call(fake, "GET", path)
        assert (reply.status, reply.body) == (404, {"error": "Resource could not be found"})


# -- messages index: the four pagination modes ------------------------------------


@pytest.fixture
def long_thread(fake, world, clock):
    display_id = fake.add_conversation(world["jane"], world["api"])
    return display_id, thread_of(fake, display_id, 45, clock)


def test_messages_without_parameters_are_the_latest_20_ascending(fake, long_thread):
    display_id, ids = long_thread
    assert ids_of(call(fake, "GET", f"conversations/{display_id}/messages")) == ids[-20:]


def test_messages_before_are_the_20_older_than_that_id(fake, long_thread):
    display_id, ids = long_thread
    reply = call(fake, "GET", f"conversations/{display_id}/messages?before={ids[25]}")
    assert ids_of(reply) == ids[5:25]


def test_messages_after_are_newer_than_that_id_exclusive(fake, long_thread):
    display_id, ids = long_thread
    reply = call(fake, "GET", f"conversations/{display_id}/messages?after={ids[10]}")
    assert ids_of(reply) == ids[11:]


def test_messages_between_include_after_and_exclude_before(fake, long_thread):
    display_id, ids = long_thread
    reply = call(fake, "GET", f"conversations/{display_id}/messages?after={ids[10]}&before={ids[30]}")
    assert ids_of(reply) == ids[10:30]
    everything = call(fake, "GET", f"conversations/{display_id}/messages?after=0&before=2147483647")
    assert ids_of(everything) == ids


def test_messages_after_stop_at_100_and_between_at_1000(fake, world, clock):
    display_id = fake.add_conversation(world["jane"], world["api"])
    ids = thread_of(fake, display_id, 1005, clock)
    assert ids_of(call(fake, "GET", f"conversations/{display_id}/messages?after=0")) == ids[:100]
    between = call(fake, "GET", f"conversations/{display_id}/messages?after=0&before=2147483647")
    assert ids_of(between) == ids[:1000]


def test_filter_internal_messages_drops_notes_and_activity_before_the_limit(fake, world, clock):
    display_id = fake.add_conversation(world["jane"], world["api"])
    public = thread_of(fake, display_id, 25, clock)
    for n in range(5):
        fake.add_message(display_id, f"note {n}", "outgoing", private=True)
        fake.add_message(display_id, f"activity {n}", "activity")
    unfiltered = call(fake, "GET", f"conversations/{display_id}/messages")
    filtered = call(fake, "GET", f"conversations/{display_id}/messages?filter_internal_messages=false")
    assert ids_of(unfiltered)[:10] == public[-10:]  # the other ten are internal
    assert ids_of(filtered) == public[-20:]


def test_message_rest_shape_omits_sender_for_activity_and_absent_attachments(fake, world):
    display_id = fake.add_conversation(world["jane"], world["api"], "Subject",
                                       assignee_id=fake.default_agent_id)
    fake.add_message(display_id, "hi", "incoming")
    fake.add_message(display_id, "Sam Agent self-assigned this conversation", "activity")
    reply = call(fake, "GET", f"conversations/{display_id}/messages")
    incoming, activity = reply.body["payload"]
    assert incoming["sender"]["type"] == "contact" and "attachments" not in incoming
    assert "sender" not in activity and activity["message_type"] == 2
    meta = reply.body["meta"]
    assert meta["contact"]["type"] == "contact" and meta["assignee"]["type"] == "user"
    assert meta["additional_attributes"] == {"mail_subject": "Subject"}
    assert meta["agent_last_seen_at"] is None


# -- creating tickets and replying ---------------------------------------------


def test_create_with_incoming_first_message_and_ignored_priority(fake, world):
    body = {"inbox_id": world["api"], "contact_id": world["jane"], "priority": "urgent",
            "additional_attributes": {"mail_subject": "Printer on fire"},
            "message": {"content": "It burns", "message_type": "incoming"}}
    reply = call(fake, "POST", "conversations", body)
    assert reply.status == 200
    assert reply.body["id"] == 1 and reply.body["priority"] is None
    assert reply.body["messages"][0]["message_type"] == 0
    assert reply.body["messages"][0]["sender"]["id"] == world["jane"]
    assert fake.conversation(1)["additional_attributes"] == {"mail_subject": "Printer on fire"}


def test_create_defaults_the_first_message_to_outgoing_and_opens_a_session_per_call(fake, world):
    body = {"inbox_id": world["api"], "contact_id": world["jane"], "message": {"content": "hi"}}
    first = call(fake, "POST", "conversations", body)
    call(fake, "POST", "conversations", body)
    assert first.body["messages"][0]["message_type"] == 1
    sessions = call(fake, "GET", f"contacts/{world['jane']}").body["payload"]["contact_inboxes"]
    assert len({s["source_id"] for s in sessions}) == 2


def test_create_with_incoming_message_in_email_inbox_fails_without_creating(fake, world):
    body = {"inbox_id": world["mail"], "contact_id": world["jane"],
            "message": {"content": "hi", "message_type": "incoming"}}
    reply = call(fake, "POST", "conversations", body)
    assert (reply.status, reply.body) == (500, {"status": 500, "error": "Internal Server Error"})
    assert call(fake, "GET", f"contacts/{world['jane']}/conversations").body["payload"] == []


def test_create_rejects_unknown_contact_and_overlong_subject(fake, world):
    assert call(fake, "POST", "conversations", {"inbox_id": world["api"], "contact_id": 999}).status == 404
    reply = call(fake, "POST", "conversations", {"inbox_id": world["api"], "contact_id": world["jane"],
                                                 "additional_attributes": {"mail_subject": "x" * 1501}})
    assert reply.status == 422
    assert reply.body == {"message": "Additional attributes mail_subject length should be < 1500",
                          "attributes": ["additional_attributes"]}


def test_create_refuses_a_source_id_owned_by_another_contact(fake, world):
    body = {"inbox_id": world["api"], "contact_id": world["jane"], "source_id": "portal-1"}
    assert call(fake, "POST", "conversations", body).status == 200
    assert call(fake, "POST", "conversations", body).status == 200  # same contact: reused
    reply = call(fake, "POST", "conversations", {**body, "contact_id": world["ann"]})
    assert (reply.status, reply.body) == (422, {"error": "source_id should be unique"})


def test_overlong_reply_is_422_with_the_validation_message(fake, world):
    display_id = fake.add_conversation(world["jane"], world["api"])
    reply = call(fake, "POST", f"conversations/{display_id}/messages", {"content": "x" * 150_001})
    assert reply.status == 422
    assert reply.body == {"error": "Validation failed: Content is too long (maximum is 150000 characters)"}


def test_incoming_reply_in_email_inbox_is_422(fake, world):
    display_id = fake.add_conversation(world["jane"], world["mail"])
    reply = call(fake, "POST", f"conversations/{display_id}/messages",
                 {"content": "hi", "message_type": "incoming"})
    assert (reply.status, reply.body) == (422, {"error": "Incoming messages are only allowed in Api inboxes"})
    assert fake.messages_of(display_id) == []


def test_reply_returns_rest_message_with_echo_id(fake, world):
    display_id = fake.add_conversation(world["jane"], world["api"])
    reply = call(fake, "POST", f"conversations/{display_id}/messages",
                 {"content": "Still burning", "message_type": "incoming", "private": False,
                  "echo_id": "e-1"})
    assert reply.status == 200
    assert reply.body["echo_id"] == "e-1" and reply.body["message_type"] == 0
    assert reply.body["conversation_id"] == display_id and reply.body["content"] == "Still burning"


@pytest.mark.parametrize("status", ["resolved", "snoozed"])
def test_incoming_reply_reopens_and_logs_system_activity(fake, world, status):
    display_id = fake.add_conversation(world["jane"], world["api"], status=status)
    call(fake, "POST", f"conversations/{display_id}/messages", {"content": "again", "message_type": "incoming"})
    assert fake.conversation(display_id)["status"] == "open"
    last = fake.messages_of(display_id)[-1]
    assert (last["message_type"], last["content"]) == (
        2, "System reopened the conversation due to a new incoming message.")


def test_outgoing_reply_does_not_reopen(fake, world):
    display_id = fake.add_conversation(world["jane"], world["api"], status="resolved")
    reply = call(fake, "POST", f"conversations/{display_id}/messages", {"content": "we are on it"})
    assert reply.body["message_type"] == 1 and reply.body["sender"]["name"] == "Customer Portal"
    assert fake.conversation(display_id)["status"] == "resolved"


def test_multipart_reply_with_attachment_serves_it_without_auth(fake, world):
    display_id = fake.add_conversation(world["jane"], world["api"])
    boundary = "XyZ"
    data = b"%PDF-1.4\r\n\x00binary\r\n"
    raw = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\nSee file\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"message_type\"\r\n\r\nincoming\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"attachments[]\"; "
           f"filename=\"invoice.pdf\"\r\nContent-Type: application/pdf\r\n\r\n").encode() + data \
        + f"\r\n--{boundary}--\r\n".encode()
    reply = call(fake, "POST", f"conversations/{display_id}/messages", raw=raw,
                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    attachment = reply.body["attachments"][0]
    assert (reply.body["content"], reply.body["message_type"]) == ("See file", 0)
    assert (attachment["file_type"], attachment["extension"], attachment["file_size"]) == ("file", "pdf", len(data))
    redirect = call(fake, "GET", urlsplit(attachment["data_url"]).path, token=None)
    assert redirect.status == 302
    download = call(fake, "GET", urlsplit(redirect.headers.getheader("Location")).path, token=None)
    assert (download.status, download.raw) == (200, data)
    assert call(fake, "GET", "/rails/active_storage/disk/unknown/invoice.pdf", token=None).status == 404


# -- status and priority --------------------------------------------------------


def test_toggle_status_resolves_and_names_the_token_user(fake, world):
    display_id = fake.add_conversation(world["jane"], world["api"])
    reply = call(fake, "POST", f"conversations/{display_id}/toggle_status", {"status": "resolved"})
    assert reply.body == {"meta": {}, "payload": {"success": True, "conversation_id": display_id,
                                                  "current_status": "resolved", "snoozed_until": None}}
    assert fake.messages_of(display_id)[-1]["content"] == "Conversation was marked resolved by Customer Portal"


def test_toggle_status_without_status_toggles_and_invalid_status_is_500(fake, world):
    display_id = fake.add_conversation(world["jane"], world["api"], status="pending")
    path = f"conversations/{display_id}/toggle_status"
    assert call(fake, "POST", path, {}).body["payload"]["current_status"] == "open"
    assert call(fake, "POST", path, {}).body["payload"]["current_status"] == "resolved"
    reply = call(fake, "POST", path, {"status": "cancelled"})
    assert (reply.status, reply.body) == (500, {"status": 500, "error": "Internal Server Error"})


def test_toggle_status_snoozes_until_unix_seconds(fake, world):
    display_id = fake.add_conversation(world["jane"], world["api"])
    reply = call(fake, "POST", f"conversations/{display_id}/toggle_status",
                 {"status": "snoozed", "snoozed_until": 1781000000})
    assert reply.body["payload"]["snoozed_until"] == "2026-06-09T10:13:20.000Z"


def test_patch_ignores_status_but_applies_priority(fake, world):
    display_id = fake.add_conversation(world["jane"], world["api"])
    reply = call(fake, "PATCH", f"conversations/{display_id}", {"status": "resolved", "priority": "urgent"})
    assert reply.status == 200
    assert (reply.body["status"], reply.body["priority"]) == ("open", "urgent")
    assert call(fake, "PATCH", f"conversations/{display_id}", {"priority": "none"}).status == 500


def test_toggle_priority_answers_empty_and_a_missing_value_clears(fake, world):
    display_id = fake.add_conversation(world["jane"], world["api"])
    path = f"conversations/{display_id}/toggle_priority"
    reply = call(fake, "POST", path, {"priority": "high"})
    assert (reply.status, reply.raw) == (200, b"")
    assert fake.conversation(display_id)["priority"] == "high"
    assert fake.messages_of(display_id)[-1]["content"] == "Customer Portal set the priority to high"
    call(fake, "POST", path, {})
    assert fake.conversation(display_id)["priority"] is None


def test_inboxes_are_listed_and_shown(fake, world):
    listed = call(fake, "GET", "inboxes").body["payload"]
    assert [(i["name"], i["channel_type"]) for i in listed] == [
        ("Customer Portal", "Channel::Api"), ("Support email", "Channel::Email")]
    shown = call(fake, "GET", f"inboxes/{world['api']}").body
    assert {"id", "name", "channel_type", "channel_id", "avatar_url"} <= set(shown)
    assert call(fake, "GET", "inboxes/99").status == 404


# -- the public CSAT survey endpoints (§12; part 2 §6.2) ---------------------------

CSAT_RESPONSE_KEYS = {"id", "csat_survey_response", "display_type", "content", "inbox_avatar_url",
                      "inbox_name", "locale", "conversation_id", "created_at"}


@pytest.fixture
def survey(fake, world):
    """(conversation, survey message id, uuid): Jane's resolved ticket with Chatwoot's survey."""
    display_id = fake.add_conversation(world["jane"], world["api"], "Printer on fire", "resolved",
                                       assignee_id=fake.default_agent_id)
    fake.add_message(display_id, "It burns", "incoming")
    message_id = fake.add_message(display_id, "Please rate the conversation", "template",
                                  content_type="input_csat", content_attributes={"display_type": "star"})
    return display_id, message_id, fake.conversation(display_id)["uuid"]


def csat_path(conversation_uuid):
    return f"/public/api/v1/csat_survey/{conversation_uuid}"


def csat_answer(rating, feedback="Thanks!"):
    return {"message": {"submitted_values": {"csat_survey_response": {"rating": rating, "feedback_message": feedback}}}}


def test_csat_survey_show_needs_no_token_and_has_the_jbuilder_shape(fake, survey, clock):
    display_id, message_id, conversation_uuid = survey
    reply = call(fake, "GET", csat_path(conversation_uuid), token=None)
    assert reply.status == 200
    assert set(reply.body) == CSAT_RESPONSE_KEYS
    assert (reply.body["id"], reply.body["csat_survey_response"], reply.body["display_type"]) == (message_id, None, "star")
    assert (reply.body["content"], reply.body["inbox_name"], reply.body["locale"]) \
        == ("Please rate the conversation", "Customer Portal", "en")
    assert reply.body["conversation_id"] == display_id  # the fake's stand-in for the database id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", reply.body["created_at"])
    assert fake.public_requests == [{"method": "GET", "path": csat_path(conversation_uuid), "token": False}]
    assert fake.calls[-1][:2] == ("GET", csat_path(conversation_uuid))


def test_csat_survey_of_an_unknown_uuid_or_a_conversation_without_survey_is_rails_not_found(fake, survey, world):
    plain = fake.add_conversation(world["jane"], world["api"], "No survey")
    fake.add_message(plain, "Please rate the conversation", "template")  # a template, but not input_csat
    for conversation_uuid in (str(uuid.uuid4()), fake.conversation(plain)["uuid"]):
        for method, body in (("GET", None), ("PUT", csat_answer(5)), ("PATCH", csat_answer(5))):
            reply = call(fake, method, csat_path(conversation_uuid), body, token=None)
            assert (reply.status, reply.body) == (404, {"status": 404, "error": "Not Found"})
    assert fake.csat_responses == []


def test_csat_survey_update_stores_submitted_values_in_the_message_before_any_record(fake, survey):
    display_id, message_id, conversation_uuid = survey
    reply = call(fake, "PUT", csat_path(conversation_uuid), csat_answer(4, "Quick and kind."), token=None)
    assert reply.status == 200 and set(reply.body) == CSAT_RESPONSE_KEYS
    # CsatSurveyResponse is built in a background job: the first answer has none yet.
    assert reply.body["csat_survey_response"] is None
    submitted = {"csat_survey_response": {"rating": 4, "feedback_message": "Quick and kind."}}
    stored = next(m for m in fake.messages_of(display_id) if m["id"] == message_id)
    assert stored["content_attributes"] == {"display_type": "star", "submitted_values": submitted}
    assert fake.csat_responses == [{"uuid": conversation_uuid, "conversation_id": display_id,
                                    "message_id": message_id, "submitted_values": submitted}]
    # The thread shows it as Chatwoot does: in the message's content_attributes.
    listed = call(fake, "GET", f"conversations/{display_id}/messages").body["payload"]
    assert next(m for m in listed if m["id"] == message_id)["content_attributes"]["submitted_values"] == submitted
    record = call(fake, "GET", csat_path(conversation_uuid), token=None).body["csat_survey_response"]
    assert (record["rating"], record["feedback_message"], record["message_id"]) == (4, "Quick and kind.", message_id)


def test_csat_survey_patch_updates_the_one_record_and_answers_it_as_it_was(fake, survey, world):
    display_id, message_id, conversation_uuid = survey
    call(fake, "PUT", csat_path(conversation_uuid), csat_answer(4, "Good."), token=None)
    first = fake.csat_record(display_id)
    reply = call(fake, "PATCH", csat_path(conversation_uuid), csat_answer(2, "Burns again."), token=None)
    assert reply.status == 200
    assert (reply.body["csat_survey_response"]["rating"], reply.body["csat_survey_response"]["id"]) == (4, first["id"])
    record = fake.csat_record(display_id)
    assert (record["id"], record["rating"], record["feedback_message"]) == (first["id"], 2, "Burns again.")
    assert (record["contact_id"], record["assigned_agent_id"], record["conversation_id"]) \
        == (world["jane"], fake.default_agent_id, display_id)
    assert len(fake.csat_responses) == 2


def test_csat_survey_locks_after_14_days_of_utc_dates(fake, survey, clock):
    display_id, message_id, conversation_uuid = survey
    sent = datetime.fromtimestamp(clock.now, timezone.utc)
    midnight_after_day_14 = datetime(sent.year, sent.month, sent.day, tzinfo=timezone.utc) + timedelta(days=15)
    clock.now = midnight_after_day_14.timestamp() - 1  # still the 14th day after
    assert call(fake, "PUT", csat_path(conversation_uuid), csat_answer(3), token=None).status == 200
    clock.now = midnight_after_day_14.timestamp()  # the 15th
    before = fake.messages_of(display_id)
    reply = call(fake, "PUT", csat_path(conversation_uuid), csat_answer(5), token=None)
    assert (reply.status, reply.body) == (422, {"error": "You cannot update the CSAT survey after 14 days"})
    assert fake.messages_of(display_id) == before and len(fake.csat_responses) == 1
    assert call(fake, "GET", csat_path(conversation_uuid), token=None).status == 200  # reading stays open


@pytest.mark.parametrize("rating", [0, 6, "x", None])
def test_csat_rating_chatwoot_would_not_validate_is_stored_in_the_message_but_builds_no_record(fake, survey, rating):
    display_id, message_id, conversation_uuid = survey
    reply = call(fake, "PUT", csat_path(conversation_uuid), csat_answer(rating, "Odd"), token=None)
    assert reply.status == 200  # the PUT only updates the message
    stored = next(m for m in fake.messages_of(display_id) if m["id"] == message_id)
    assert stored["content_attributes"]["submitted_values"]["csat_survey_response"]["rating"] == rating
    assert fake.csat_record(display_id) is None


def test_csat_survey_update_keeps_only_the_permitted_parameters(fake, survey):
    display_id, message_id, conversation_uuid = survey
    body = {"message": {"content": "changed?", "submitted_values": {
        "csat_survey_response": {"rating": 5, "feedback_message": "Yes", "csat_review_notes": "forged"},
        "name": "n", "extra": "dropped", "value": {"nested": "dropped"}}}}
    assert call(fake, "PUT", csat_path(conversation_uuid), body, token=None).status == 200
    stored = next(m for m in fake.messages_of(display_id) if m["id"] == message_id)
    assert stored["content"] == "Please rate the conversation"
    assert stored["content_attributes"]["submitted_values"] == {
        "name": "n", "csat_survey_response": {"rating": 5, "feedback_message": "Yes"}}
    assert fake.csat_record(display_id)["csat_review_notes"] is None
    assert call(fake, "PUT", csat_path(conversation_uuid), {"other": 1}, token=None).status == 500  # update!(nil)


def test_csat_record_leaks_agents_review_notes_and_ids_to_anyone_with_the_uuid(fake, survey, world):
    display_id, message_id, conversation_uuid = survey
    with pytest.raises(ValueError):
        fake.review_csat(display_id, "too early: nothing rated")
    call(fake, "PUT", csat_path(conversation_uuid), csat_answer(1, "Awful"), token=None)
    fake.review_csat(display_id, "Customer is on the churn list")
    record = call(fake, "GET", csat_path(conversation_uuid), token=None).body["csat_survey_response"]
    assert {"id", "account_id", "conversation_id", "message_id", "rating", "feedback_message", "contact_id",
            "assigned_agent_id", "created_at", "updated_at", "csat_review_notes", "review_notes_updated_at",
            "review_notes_updated_by_id"} == set(record)
    assert (record["csat_review_notes"], record["review_notes_updated_by_id"], record["contact_id"]) \
        == ("Customer is on the churn list", fake.default_agent_id, world["jane"])


def test_public_requests_record_a_token_sent_and_obey_faults(fake, survey):
    display_id, message_id, conversation_uuid = survey
    assert call(fake, "GET", csat_path(conversation_uuid)).status == 200  # a token is ignored...
    assert fake.public_requests[-1]["token"] is True  # ...but recorded: a client that sends it leaks it
    assert fake.blob_requests == []
    fake.set_fault("status", 503, count=1)
    assert call(fake, "PUT", csat_path(conversation_uuid), csat_answer(5), token=None).status == 503
    assert fake.csat_responses == []
    assert call(fake, "GET", "/public/api/v1/csat_survey").status == 404  # no such route


# -- fault injection and the call log -------------------------------------------


def test_status_fault_answers_the_given_status_and_body(fake):
    fake.set_fault("status", status=503, body={"error": "maintenance"})
    reply = call(fake, "GET", "inboxes")
    assert (reply.status, reply.body) == (503, {"error": "maintenance"})


def test_status_fault_429_mimics_rack_attack(fake):
    fake.set_fault("status", status=429)
    reply = call(fake, "GET", "contacts/search?q=a")
    assert (reply.status, reply.raw) == (429, b"Retry later\n")
    assert reply.headers.getheader("Retry-After") is None


def test_garbage_fault_answers_200_with_a_body_that_is_not_json(fake):
    fake.set_fault("garbage")
    reply = call(fake, "GET", "inboxes")
    assert reply.status == 200 and reply.raw
    with pytest.raises(ValueError):
        json.loads(reply.raw)


def test_close_fault_drops_the_connection_unanswered(fake):
    fake.set_fault("close")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        call(fake, "GET", "inboxes")


def test_fault_with_count_clears_itself(fake):
    fake.set_fault("status", status=502, count=2)
    statuses = [call(fake, "GET", "inboxes").status for _ in range(3)]
    assert statuses == [502, 502, 200]


def test_fault_none_clears_a_standing_fault(fake):
    fake.set_fault("status", status=500)
    fake.set_fault(None)
    assert call(fake, "GET", "inboxes").status == 200


def test_hang_fault_does_not_block_stop_nor_outlive_it(fake):
    fake.set_fault("hang")
    outcome = []
    threads_before = set(threading.enumerate())

    def hanging_request():
        try:
            call(fake, "GET", "inboxes")
        except (http.client.HTTPException, OSError) as error:
            outcome.append(error)

    worker = threading.Thread(target=hanging_request)
    worker.start()
    time.sleep(0.2)
    handlers = set(threading.enumerate()) - threads_before - {worker}
    started = time.monotonic()
    fake.stop()
    worker.join(5)
    assert time.monotonic() - started < 3
    assert outcome and not worker.is_alive()
    for handler in handlers:  # the server's handler thread woke up and ended too
        handler.join(3)
        assert not handler.is_alive()


def test_delay_and_slow_fault_postpone_the_answer(fake):
    fake.delay = 0.2
    started = time.monotonic()
    assert call(fake, "GET", "inboxes").status == 200
    assert time.monotonic() - started >= 0.2
    fake.delay = 0
    fake.set_fault("slow", seconds=0.2, count=1)
    started = time.monotonic()
    assert call(fake, "GET", "inboxes").status == 200
    assert time.monotonic() - started >= 0.2


def test_call_log_records_method_path_and_query(fake, world):
    fake.reset_calls()
    call(fake, "GET", "contacts/search?q=ann&page=2")
    call(fake, "POST", "contacts/filter", {"payload": []})
    call(fake, "GET", "inboxes", token=None)
    assert fake.calls == [
        ("GET", f"/api/v1/accounts/{ACCOUNT}/contacts/search", {"q": "ann", "page": "2"}),
        ("POST", f"/api/v1/accounts/{ACCOUNT}/contacts/filter", {}),
        ("GET", f"/api/v1/accounts/{ACCOUNT}/inboxes", {}),
    ]
    fake.reset_calls()
    assert fake.calls == []


# -- demo data ----------------------------------------------------------------


def test_seed_demo_gives_jane_tickets_in_every_status_and_both_inboxes(fake):
    seeded = fake.seed_demo()
    jane = seeded["contacts"]["jane@example.com"]
    assert {"jane@example.com", "bob@example.com", "ann@example.com", "joann@example.com"} <= set(seeded["contacts"])
    tickets = call(fake, "GET", f"contacts/{jane}/conversations").body["payload"]
    assert {t["status"] for t in tickets} == {"open", "pending", "resolved", "snoozed"}
    assert {t["inbox_id"] for t in tickets} == {seeded["api_inbox_id"], seeded["email_inbox_id"]}
    messages = [m for t in tickets for m in fake.messages_of(t["id"])]
    assert any(m["private"] for m in messages) and any(m["message_type"] == 2 for m in messages)
    assert any(m["message_type"] == 1 and not m["private"] for m in messages)


def test_seed_demo_printer_thread_has_a_png_photo_and_a_pdf_served_from_blob_urls(fake):
    jane = fake.seed_demo()["contacts"]["jane@example.com"]
    fire = next(t for t in call(fake, "GET", f"contacts/{jane}/conversations").body["payload"]
                if t["additional_attributes"].get("mail_subject") == "Printer on fire")
    assert fire["priority"] == "high"
    messages = call(fake, "GET", f"conversations/{fire['id']}/messages").body["payload"]
    files = {a["content_type"]: a for m in messages for a in m.get("attachments", [])}
    assert set(files) == {"image/png", "application/pdf"}
    assert (files["image/png"]["file_type"], files["image/png"]["width"], files["image/png"]["height"]) \
        == ("image", 480, 320)
    for content_type, signature in (("image/png", b"\x89PNG\r\n\x1a\n"), ("application/pdf", b"%PDF-")):
        redirect = call(fake, "GET", urlsplit(files[content_type]["data_url"]).path, token=None)
        assert redirect.status == 302
        download = call(fake, "GET", urlsplit(redirect.headers.getheader("Location")).path, token=None)
        assert (download.status, download.headers.getheader("Content-Type")) == (200, content_type)
        assert download.raw.startswith(signature)
        assert len(download.raw) == files[content_type]["file_size"]
    assert download.raw.rstrip().endswith(b"%%EOF")


# -- webhooks (§9; part 2 §3) -----------------------------------------------------

Received = namedtuple("Received", "path headers body")
BASE58_TOKEN = re.compile(r"[1-9A-HJ-NP-Za-km-z]{24}")
SIGNING_HEADERS = ("X-Chatwoot-Delivery", "X-Chatwoot-Timestamp", "X-Chatwoot-Signature")


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every request, then answers ``status``
    after ``delay`` seconds."""

    def __init__(self):
        self.requests = []
        self.status = 200
        self.delay = 0
        self.release = threading.Event()  # set at teardown: cuts a delay short
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append(Received(self.path, self.headers, raw))
                receiver.release.wait(receiver.delay)
                try:
                    self.send_response(receiver.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the fake gave up waiting

            def log_message(self, format, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def payloads(self):
        return [json.loads(request.body) for request in self.requests]

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    endpoint = Receiver()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def ticket(fake, world):
    """Jane's conversation in the API inbox, assigned to Sam, opened before any webhook."""
    display_id = fake.add_conversation(world["jane"], world["api"], "Printer on fire",
                                       assignee_id=fake.default_agent_id)
    fake.add_message(display_id, "It burns", "incoming")
    return display_id


def test_webhook_is_signed_over_the_timestamp_and_the_raw_body(fake, ticket, receiver, clock):
    secret = "Xy7kP2mQ9rT4vW8zA3bC5dE6"
    webhook_id = fake.add_webhook(receiver.url + "/hooks/chatwoot", secret=secret)
    clock.tick(30)
    message_id = fake.add_message(ticket, "We replaced the toner.", "outgoing")
    [delivery] = fake.wait_for_deliveries(1)
    [request] = receiver.requests
    assert request.path == "/hooks/chatwoot"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    timestamp = request.headers["X-Chatwoot-Timestamp"]
    assert timestamp == str(int(clock()))
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request.body,
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Chatwoot-Signature"], f"sha256={expected}")
    assert uuid.UUID(request.headers["X-Chatwoot-Delivery"]).version == 4
    assert request.body == json.dumps(json.loads(request.body)).encode()  # json.dumps, as is
    assert delivery == {
        "webhook_id": webhook_id, "url": receiver.url + "/hooks/chatwoot",
        "event": "message_created", "message_id": message_id,
        "delivery_id": request.headers["X-Chatwoot-Delivery"], "status": 200, "error": None,
        "seconds": delivery["seconds"]}


def test_generated_secret_is_24_characters_of_base58(fake, receiver):
    first = fake.add_webhook(receiver.url + "/one")
    second = fake.add_webhook(receiver.url + "/two")
    assert fake.webhooks[first]["subscriptions"] == ["message_created"]
    assert fake.webhooks[first]["signed"] is True
    assert BASE58_TOKEN.fullmatch(fake.webhooks[first]["secret"])
    assert fake.webhooks[first]["secret"] != fake.webhooks[second]["secret"]


def test_unsigned_webhook_sends_none_of_the_signing_headers(fake, ticket, receiver):
    fake.add_webhook(receiver.url, signed=False)
    fake.add_message(ticket, "Hello from an old Chatwoot", "outgoing")
    [delivery] = fake.wait_for_deliveries(1)
    [request] = receiver.requests
    assert [name for name in SIGNING_HEADERS if name in request.headers] == []
    assert request.headers["Content-Type"] == "application/json"
    assert (delivery["status"], delivery["delivery_id"]) == (200, None)


def test_private_note_is_delivered_with_private_true_beside_the_last_public_message(
        fake, ticket, receiver):
    public_id = fake.messages_of(ticket)[-1]["id"]
    fake.add_webhook(receiver.url)
    note = fake.add_message(ticket, "Customer seems upset, escalate.", "outgoing", private=True)
    fake.wait_for_deliveries(1)
    [payload] = receiver.payloads()
    assert (payload["id"], payload["private"], payload["message_type"]) == (note, True, "outgoing")
    assert [m["id"] for m in payload["conversation"]["messages"]] == [public_id]


def test_activity_message_is_not_delivered(fake, ticket, receiver):
    fake.add_webhook(receiver.url)
    assert call(fake, "POST", f"conversations/{ticket}/toggle_status", {"status": "pending"}).status == 200
    fake.add_message(ticket, "Sam Agent self-assigned this conversation", "activity")
    reply = fake.add_message(ticket, "On it.", "outgoing")
    assert [m["message_type"] for m in fake.messages_of(ticket)][-3:] == [2, 2, 1]
    # One delivery thread works in order: an activity line would have come first.
    assert [d["message_id"] for d in fake.wait_for_deliveries(1)] == [reply]
    assert [p["id"] for p in receiver.payloads()] == [reply]


def test_only_webhooks_subscribed_to_message_created_get_it(fake, ticket, receiver):
    status_only = fake.add_webhook(receiver.url + "/status",
                                   subscriptions=["conversation_status_changed"])
    messages = fake.add_webhook(receiver.url + "/messages",
                                subscriptions=["conversation_created", "message_created"])
    fake.add_message(ticket, "Reply", "outgoing")
    deliveries = fake.wait_for_deliveries(1)
    # status_only was registered first, so it would have been served first.
    assert status_only not in {d["webhook_id"] for d in deliveries}
    assert deliveries[0]["webhook_id"] == messages
    assert [r.path for r in receiver.requests] == ["/messages"]


def test_redeliver_sends_the_same_message_again_with_a_new_delivery_id(fake, ticket, receiver):
    fake.add_webhook(receiver.url)
    message_id = fake.add_message(ticket, "Fixed.", "outgoing")
    fake.wait_for_deliveries(1)
    assert call(fake, "POST", f"conversations/{ticket}/toggle_status", {"status": "resolved"}).status == 200
    assert fake.redeliver(message_id) == 1
    first, second = fake.wait_for_deliveries(2)
    assert first["message_id"] == second["message_id"] == message_id
    assert first["delivery_id"] != second["delivery_id"]
    assert [r.headers["X-Chatwoot-Delivery"] for r in receiver.requests] == [
        first["delivery_id"], second["delivery_id"]]
    payloads = receiver.payloads()
    assert [p["id"] for p in payloads] == [message_id, message_id]
    # Built from the state at delivery time, like Chatwoot's listener.
    assert [p["conversation"]["status"] for p in payloads] == ["open", "resolved"]


def test_message_created_payload_has_the_contract_shape(fake, world, ticket, receiver):
    fake.add_webhook(receiver.url)
    message_id = fake.add_message(ticket, "Hi Jane, we replaced the toner.", "outgoing")
    fake.wait_for_deliveries(1)
    [payload] = receiver.payloads()
    assert set(payload) == {
        "account", "additional_attributes", "content_attributes", "content_type", "content",
        "conversation", "created_at", "id", "inbox", "message_type", "private", "sender",
        "source_id", "event"}
    assert (payload["id"], payload["event"], payload["private"]) == (message_id, "message_created", False)
    assert payload["message_type"] == "outgoing"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", payload["created_at"])
    assert payload["account"] == {"id": ACCOUNT, "name": "Acme"}
    assert payload["inbox"] == {"id": world["api"], "name": "Customer Portal"}
    assert payload["sender"] == {"id": fake.default_agent_id, "name": "Sam Agent",
                                 "email": "sam@acme.test", "type": "user"}
    conversation = payload["conversation"]
    assert set(conversation) == {
        "additional_attributes", "can_reply", "channel", "contact_inbox", "id", "inbox_id",
        "messages", "labels", "meta", "status", "custom_attributes", "snoozed_until",
        "unread_count", "first_reply_created_at", "priority", "waiting_since",
        "agent_last_seen_at", "contact_last_seen_at", "last_activity_at", "timestamp",
        "created_at", "updated_at", "account"}
    assert (conversation["id"], conversation["inbox_id"]) == (ticket, world["api"])
    assert conversation["channel"] == "Channel::Api"
    assert conversation["additional_attributes"] == {"mail_subject": "Printer on fire"}
    assert [m["id"] for m in conversation["messages"]] == [message_id]
    assert conversation["messages"][0]["message_type"] == 1
    assert conversation["messages"][0]["sender"]["available_name"] == "Sam"  # push shape
    assert conversation["first_reply_created_at"].endswith("Z")
    assert isinstance(conversation["updated_at"], float) and conversation["waiting_since"] == 0
    assert conversation["account"] == {"id": ACCOUNT, "name": "Acme"}
    assert set(conversation["contact_inbox"]) == {
        "id", "contact_id", "inbox_id", "source_id", "created_at", "updated_at",
        "hmac_verified", "pubsub_token"}
    assert BASE58_TOKEN.fullmatch(conversation["contact_inbox"]["pubsub_token"])
    meta = conversation["meta"]
    assert set(meta) == {"sender", "assignee", "assignee_type", "team", "hmac_verified"}
    assert (meta["sender"]["email"], meta["sender"]["type"]) == ("jane@example.com", "contact")
    assert (meta["assignee"]["name"], meta["assignee_type"], meta["team"]) == ("Sam Agent", "User", None)


def test_unassigned_conversation_has_null_assignee_in_webhooks(fake, world, receiver):
    display_id = fake.add_conversation(world["ann"], world["api"])
    fake.add_webhook(receiver.url)
    fake.add_message(display_id, "Hello?", "incoming")
    fake.wait_for_deliveries(1)
    meta = receiver.payloads()[0]["conversation"]["meta"]
    assert (meta["assignee"], meta["assignee_type"], meta["team"]) == (None, None, None)


def test_content_is_normalised_for_webhooks(fake, ticket, receiver):
    fake.add_webhook(receiver.url)
    message_id = fake.add_message(ticket, "Hi Jane,\\\nthe toner is in.\n\n", "outgoing")
    fake.wait_for_deliveries(1)
    assert receiver.payloads()[0]["content"] == "Hi Jane,\nthe toner is in."
    assert fake.messages_of(ticket)[-1]["id"] == message_id
    assert fake.messages_of(ticket)[-1]["content"] == "Hi Jane,\\\nthe toner is in.\n\n"


def test_template_message_has_null_sender(fake, ticket, receiver):
    fake.add_webhook(receiver.url)
    fake.add_message(ticket, "We are away until Monday.", "template")
    fake.wait_for_deliveries(1)
    [payload] = receiver.payloads()
    assert (payload["message_type"], payload["sender"]) == ("template", None)


def test_incoming_message_through_the_api_has_the_contact_as_sender_without_type(
        fake, world, ticket, receiver):
    fake.add_webhook(receiver.url)
    created = call(fake, "POST", f"conversations/{ticket}/messages",
                   {"content": "Still smoking", "message_type": "incoming"})
    assert created.status == 200
    fake.wait_for_deliveries(1)
    [payload] = receiver.payloads()
    assert (payload["id"], payload["message_type"]) == (created.body["id"], "incoming")
    assert payload["sender"] == {
        "account": {"id": ACCOUNT, "name": "Acme"}, "additional_attributes": {}, "avatar": "",
        "custom_attributes": {}, "email": "jane@example.com", "id": world["jane"],
        "identifier": None, "name": "Jane Doe", "phone_number": None, "thumbnail": "",
        "blocked": False}


def test_conversation_created_with_a_message_through_the_api_is_delivered(fake, world, receiver):
    fake.add_webhook(receiver.url)
    created = call(fake, "POST", "conversations", {
        "inbox_id": world["api"], "contact_id": world["joann"],
        "message": {"content": "My screen is blank", "message_type": "incoming"}})
    assert created.status == 200
    [delivery] = fake.wait_for_deliveries(1)
    [payload] = receiver.payloads()
    assert delivery["message_id"] == payload["id"] == created.body["messages"][0]["id"]
    assert payload["conversation"]["id"] == created.body["id"]


def test_attachments_are_in_the_payload_as_the_rest_attachment_json(fake, ticket, receiver):
    fake.add_webhook(receiver.url)
    fake.add_message(ticket, "See the photo", "outgoing", attachments=[
        {"filename": "toner.png", "content_type": "image/png", "data": b"\x89PNG"}])
    fake.wait_for_deliveries(1)
    [payload] = receiver.payloads()
    rest = call(fake, "GET", f"conversations/{ticket}/messages").body["payload"][-1]
    assert payload["attachments"] == rest["attachments"]
    assert payload["attachments"][0]["file_type"] == "image"


def test_webhook_added_later_gets_no_message_created_before_it(fake, ticket, receiver):
    first = fake.add_webhook(receiver.url + "/first")
    receiver.delay = 5
    busy = fake.add_message(ticket, "Keeps the delivery thread busy", "outgoing")
    deadline = time.monotonic() + 3
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    earlier = fake.add_message(ticket, "Sent before the second webhook", "outgoing")
    second = fake.add_webhook(receiver.url + "/second")
    receiver.release.set()  # answer now
    later = fake.add_message(ticket, "Sent after it", "outgoing")
    deliveries = fake.wait_for_deliveries(4)
    assert [(d["webhook_id"], d["message_id"]) for d in deliveries] == [
        (first, busy), (first, earlier), (first, later), (second, later)]
    assert [r.path for r in receiver.requests] == ["/first"] * 3 + ["/second"]


def test_payload_shows_the_state_when_the_delivery_thread_builds_it(fake, ticket, receiver):
    fake.add_webhook(receiver.url)
    receiver.delay = 5
    fake.add_message(ticket, "Keeps the delivery thread busy", "outgoing")
    deadline = time.monotonic() + 3
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    queued = fake.add_message(ticket, "Resolving this now", "outgoing")
    assert call(fake, "POST", f"conversations/{ticket}/toggle_status", {"status": "resolved"}).status == 200
    receiver.release.set()
    fake.wait_for_deliveries(2)
    payload = receiver.payloads()[1]
    # §9.2: built when the listener runs, so the status is already the later one.
    assert (payload["id"], payload["conversation"]["status"]) == (queued, "resolved")


def test_messages_added_while_stopped_are_not_delivered(clock, receiver):
    fake = FakeChatwoot(token=TOKEN, account_id=ACCOUNT, clock=clock)
    contact = fake.add_contact("Jane Doe", "jane@example.com")
    display_id = fake.add_conversation(contact, fake.add_inbox("Customer Portal"))
    fake.add_webhook(receiver.url)
    fake.add_message(display_id, "before start", "outgoing")
    fake.start()
    try:
        running = fake.add_message(display_id, "while running", "outgoing")
        fake.wait_for_deliveries(1)
        fake.stop()
        fake.add_message(display_id, "after stop", "outgoing")
        fake.start()
        restarted = fake.add_message(display_id, "after restart", "outgoing")
        deliveries = fake.wait_for_deliveries(2)
    finally:
        fake.stop()
    assert [d["message_id"] for d in deliveries] == [running, restarted]
    assert [p["content"] for p in receiver.payloads()] == ["while running", "after restart"]


def test_slow_receiver_times_out_after_5_seconds_and_does_not_hold_up_new_messages(
        fake, ticket, receiver):
    receiver.delay = 6
    fake.add_webhook(receiver.url)
    started = time.monotonic()
    message_id = fake.add_message(ticket, "Anyone there?", "outgoing")
    assert time.monotonic() - started < 0.5
    while not receiver.requests and time.monotonic() - started < 3:
        time.sleep(0.01)
    assert receiver.requests  # the delivery is under way and waiting...
    started = time.monotonic()
    reply = call(fake, "POST", f"conversations/{ticket}/messages", {"content": "Hello?"})
    assert reply.status == 200 and time.monotonic() - started < 0.5  # ...yet the API answers
    first = fake.wait_for_deliveries(1, timeout=10)[0]
    assert first["message_id"] == message_id and first["status"] is None
    assert first["error"].startswith("timeout")
    assert 4.5 <= first["seconds"] < 5.9


def test_error_answer_is_recorded_and_not_retried(fake, ticket, receiver):
    fake.add_webhook(receiver.url)
    receiver.status = 500
    failed = fake.add_message(ticket, "First", "outgoing")
    [delivery] = fake.wait_for_deliveries(1)
    assert (delivery["status"], delivery["error"]) == (500, "HTTP 500 Internal Server Error")
    receiver.status = 204
    fine = fake.add_message(ticket, "Second", "outgoing")
    deliveries = fake.wait_for_deliveries(2)
    assert [(d["message_id"], d["status"], d["error"]) for d in deliveries] == [
        (failed, 500, "HTTP 500 Internal Server Error"), (fine, 204, None)]
    assert [p["id"] for p in receiver.payloads()] == [failed, fine]  # no second try


def test_refused_connection_is_recorded_as_an_error(fake, ticket):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    fake.add_webhook(f"http://127.0.0.1:{port}/hook")
    fake.add_message(ticket, "Hello?", "outgoing")
    [delivery] = fake.wait_for_deliveries(1)
    assert delivery["status"] is None and delivery["error"].startswith("ConnectionRefusedError")


def test_stop_cuts_off_a_delivery_in_flight(fake, ticket, receiver):
    receiver.delay = 6
    fake.add_webhook(receiver.url)
    fake.add_message(ticket, "Anyone there?", "outgoing")
    deadline = time.monotonic() + 3
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert receiver.requests
    courier = [t for t in threading.enumerate() if t.name == "fake-chatwoot-webhooks"]
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2
    assert courier and not any(t.is_alive() for t in courier)


def test_wait_for_deliveries_fails_with_what_arrived(fake):
    with pytest.raises(AssertionError, match="expected at least 1 webhook deliveries within 0.1 s, got 0"):
        fake.wait_for_deliveries(1, timeout=0.1)


def test_add_webhook_refuses_what_chatwoot_refuses(fake, receiver):
    fake.add_webhook(receiver.url)
    for url, subscriptions in [(receiver.url, ["message_created"]),  # url unique per account
                               (receiver.url + "/x", ["message_sent"]),
                               (receiver.url + "/y", []),
                               ("ftp://127.0.0.1/hook", ["message_created"])]:
        with pytest.raises(ValueError):
            fake.add_webhook(url, subscriptions=subscriptions)
    with pytest.raises(ValueError):
        fake.redeliver(1, event="conversation_updated")


# -- the demo page: an agent's stand-in ------------------------------------------


def post_form(fake, path, fields):
    return call(fake, "POST", path, token=None, raw=urlencode(fields).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"})


def test_demo_reply_adds_a_public_agent_message_and_fires_webhooks(fake, ticket, receiver):
    fake.add_webhook(receiver.url)
    fake.reset_calls()
    page = call(fake, "GET", fake.demo_url.removeprefix(fake.url), token=None)
    assert page.status == 200
    assert page.headers.getheader("Content-Type") == "text/html; charset=utf-8"
    text = page.raw.decode()
    assert "Printer on fire" in text and "jane@example.com" in text
    assert 'action="/demo/reply"' in text and f'name="conversation_id" value="{ticket}"' in text
    answer = post_form(fake, "/demo/reply", {"conversation_id": ticket,
                                             "content": "Your printer is fixed."})
    assert answer.status == 303
    assert answer.headers.getheader("Location") == f"/demo/?replied={ticket}"
    last = fake.messages_of(ticket)[-1]
    assert (last["content"], last["message_type"], last["private"]) == ("Your printer is fixed.", 1, False)
    assert (last["sender_type"], last["sender_id"]) == ("User", fake.default_agent_id)
    [delivery] = fake.wait_for_deliveries(1)
    assert delivery["message_id"] == last["id"]
    assert receiver.payloads()[0]["sender"]["name"] == "Sam Agent"
    confirmation = call(fake, "GET", answer.headers.getheader("Location"), token=None)
    assert f"Sam Agent replied to conversation #{ticket}." in confirmation.raw.decode()
    assert fake.calls == []  # not an API call


def test_demo_page_escapes_html_in_subjects(fake, world):
    fake.add_conversation(world["jane"], world["api"], '<script>alert("x")</script>')
    page = call(fake, "GET", "/demo/", token=None)
    assert page.status == 200
    assert "<script>" not in page.raw.decode()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page.raw.decode()
    assert "default-src 'none'" in page.headers.getheader("Content-Security-Policy")


def test_demo_reply_without_text_or_to_an_unknown_conversation_is_refused(fake, ticket):
    before = fake.messages_of(ticket)
    assert post_form(fake, "/demo/reply", {"conversation_id": ticket, "content": "  "}).status == 400
    assert post_form(fake, "/demo/reply", {"conversation_id": 999, "content": "Hi"}).status == 400
    assert fake.messages_of(ticket) == before
