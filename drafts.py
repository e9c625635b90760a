"""Drafts: what a customer typed when their session had ended, kept until they
sign in again on the same browser, then put back into the form.

The key is the id of the session that ended. It reaches the portal only inside
the signed session cookie the browser still sends, so a draft cannot be planted
in or read from another browser, and a browser keeps at most one. The owner is
the address from the signed "last address" cookie bound to that same session
(portal.Portal.last_address); after sign-in the draft moves to the new session
only if the new session is for that same address, and it never moves without one.

Bounded: at most MAX_DRAFTS (oldest dropped first), each value cut to the form's
own limit, every draft gone after `ttl_seconds` (the portal gives the time to ask
for a sign-in link plus the link's own lifetime). The text lives in memory only:
never in a URL, a cookie or a log line.
"""

import dataclasses
import threading
import time

SWEEP_INTERVAL_SECONDS = 60
# Drafts are made only by browsers with a once-valid session cookie (sessions
# come from rate-limited sign-in mail); the cap bounds memory if that ever fails.
MAX_DRAFTS = 1000


@dataclasses.dataclass(frozen=True)
class Draft:
    path: str  # the page whose form it fills: /tickets/new or /tickets/<id>
    form: str  # "ticket", "reply" or "rating"
    fields: dict  # field name -> text, as typed
    email: str  # whose it is
    expires: float


class DraftStore:
    def __init__(self, ttl_seconds, clock=time.time, max_chars=10_000):
        self.ttl_seconds = ttl_seconds
        self.max_chars = max_chars  # per field: no form takes more
        self._clock = clock
        self._drafts = {}  # session id -> Draft, oldest first
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def keep(self, session_id, email, path, form, fields):
        """Keep `fields` for the ended session `session_id` of `email` (replacing its last draft)."""
        if not session_id or not email:
            return False
        draft = Draft(path, form, {name: value[:self.max_chars] for name, value in fields.items()},
                      email.lower(), self._clock() + self.ttl_seconds)
        with self._lock:
            self._sweep_if_due()
            self._drafts.pop(session_id, None)
            while len(self._drafts) >= MAX_DRAFTS:
                del self._drafts[next(iter(self._drafts))]
            self._drafts[session_id] = draft
        return True

    def hand_over(self, old_session_id, new_session_id, email):
        """Move the ended session's draft to the new session of the same address: the Draft, or None."""
        with self._lock:
            draft = self._drafts.pop(old_session_id, None) if old_session_id else None
            if draft is None or draft.expires < self._clock() or draft.email != email.lower():
                return None
            draft = dataclasses.replace(draft, expires=self._clock() + self.ttl_seconds)
            self._drafts[new_session_id] = draft
            return draft

    def get(self, session_id, path):
        """The live session's draft for the form on `path`, or None; it stays until dropped or expired."""
        with self._lock:
            draft = self._drafts.get(session_id)
        if draft is None or draft.path != path or draft.expires < self._clock():
            return None
        return draft

    def drop(self, session_id):
        with self._lock:
            self._drafts.pop(session_id, None)

    def __len__(self):
        with self._lock:
            return len(self._drafts)

    def _sweep_if_due(self):
        """Drop expired drafts, at most once per SWEEP_INTERVAL_SECONDS (caller holds the lock)."""
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL_SECONDS
        for session_id in [key for key, draft in self._drafts.items() if draft.expires < now]:
            del self._drafts[session_id]
