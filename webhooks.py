"""Chatwoot's account webhook: is a delivery authentic, and does it hint at an agent reply?

Chatwoot 4.12+ signs every delivery (contract §9.3, part 2 §3.4):

    X-Chatwoot-Timestamp: <unix seconds>
    X-Chatwoot-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

A delivery is authentic when that signature verifies with WEBHOOK_SECRET and the
timestamp is within MAX_CLOCK_SKEW_SECONDS of now, or, for Chatwoot versions that
do not sign, when the URL carries `?secret=<WEBHOOK_SECRET>`. Both comparisons are
constant-time; nothing here logs the secret or the signature.

An authentic payload is still only a hint: `notifications` re-reads the conversation
and the message from Chatwoot before it mails anyone. What this module decides from
the payload is only what need *not* be queued (other events, customers' messages,
private notes, other inboxes), so the queue holds agent replies and nothing else.
"""

import hashlib
import hmac
import json

MAX_BODY_BYTES = 1024 * 1024
MAX_CLOCK_SKEW_SECONDS = 300
SIGNATURE_PREFIX = "sha256="


def authentic(secret, untrusted_signature, untrusted_timestamp, raw_body, untrusted_url_secret, now):
    """True when the delivery is signed with `secret` recently, or names it in its URL."""
    key = secret.encode("utf-8")
    if untrusted_url_secret and hmac.compare_digest(untrusted_url_secret.encode("utf-8"), key):
        return True
    if not untrusted_signature or not untrusted_timestamp:
        return False
    try:
        timestamp = int(untrusted_timestamp)
    except ValueError:
        return False
    if abs(now - timestamp) > MAX_CLOCK_SKEW_SECONDS:
        return False
    # The signature covers the timestamp header as sent, so verify against those bytes.
    expected = hmac.new(key, untrusted_timestamp.encode("utf-8") + b"." + raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(untrusted_signature.strip().encode("utf-8"),
                               (SIGNATURE_PREFIX + expected).encode("ascii"))


def agent_reply_hint(raw_body, account_id, inboxes):
    """(message id, conversation id) when the payload may be an agent's public reply
    in one of `inboxes`; otherwise (None, reason) with a short reason for the log.

    Raises ValueError when the body is not a JSON object.
    """
    payload = json.loads(raw_body)
    if not isinstance(payload, dict):
        raise ValueError("not a JSON object")
    event = payload.get("event")
    if event != "message_created":
        return None, f"event {str(event)[:40]}"
    # A string in webhooks ("outgoing"), an int in REST answers (1): accept both.
    if payload.get("message_type") not in ("outgoing", 1):
        return None, "not an outgoing message"
    if payload.get("private") is not False:
        return None, "private note"
    sender = payload.get("sender")
    # Users are {..., type: "user"}; bots and Captain say otherwise, templates have none.
    if not isinstance(sender, dict) or sender.get("type", "user") != "user":
        return None, "not written by an agent"
    account = payload.get("account")
    if isinstance(account, dict) and _int(account.get("id")) not in (None, account_id):
        return None, "another account"
    conversation = payload.get("conversation")
    conversation = conversation if isinstance(conversation, dict) else {}
    inbox_id = _int(conversation.get("inbox_id"))
    if inbox_id is None:
        inbox = payload.get("inbox")
        inbox_id = _int(inbox.get("id")) if isinstance(inbox, dict) else None
    if inbox_id not in inboxes:
        return None, "inbox not notified"
    message_id, conversation_id = _int(payload.get("id")), _int(conversation.get("id"))
    if not message_id or not conversation_id:
        return None, "no message or conversation id"
    return (message_id, conversation_id), ""


def _int(value):
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
