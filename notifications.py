"""Mail customers when support answers: the queue's worker threads and the mail they send.

    webhook (webhooks.py) --accept()--> the queue (storage) --worker--> Chatwoot (re-read) --> SMTP

`accept` only queues the message id (the queue ignores a message id it already has,
so a duplicate delivery is mailed once) and wakes a worker, so the webhook answers at once whatever SMTP or
Chatwoot do. A worker takes a ticket once its first queued message is
NOTIFY_DELAY_SECONDS old, re-reads the conversation and the messages from Chatwoot,
and mails the conversation's contact as Chatwoot records it one mail quoting every
queued reply that is still a public message written by an agent. A reply the customer
already saw in the portal is not mailed (`ticket_viewed`).

Several portal processes share one queue on Redis: a worker claims a due ticket
(`claim_ticket`), which leases it to its process until `release_ticket`, so one
process mails it. A process that dies mid-mail leaves its lease to run out, and
another process then mails the ticket, whose replies are still queued.

Failures: Chatwoot or SMTP down, slow or answering 4xx to our login -> tried again
with growing pauses for up to GIVE_UP_SECONDS; a 5xx refusal of the mail itself is
logged and dropped. A row is marked sent only after SMTP accepted the mail, so a crash
in between sends it again after the restart: once too often, never zero times.
"""

import logging
import threading
import time
import urllib.parse

import i18n
from chatwoot_client import ChatwootError, ChatwootNotFound
from mailer import MailError
from storage import StateUnavailable

log = logging.getLogger("portal.notify")

# Several tickets are mailed at once: a slow SMTP server holds one worker per mail.
WORKERS = 4
# Pauses between tries grow from RETRY_BASE_SECONDS, doubling up to RETRY_MAX_SECONDS.
RETRY_BASE_SECONDS = 30
RETRY_MAX_SECONDS = 30 * 60
# A reply still not mailed after two days is stale news: it is dropped with an error line.
GIVE_UP_SECONDS = 2 * 86400
# A reply longer than this is cut in the mail, with a pointer to the portal.
EXCERPT_CHARS = 1500
# An idle worker looks at the queue at least this often (a clock change, a missed wake).
IDLE_WAKE_SECONDS = 30
# A due ticket held by another process (its lease) is looked at again this often.
HELD_WAKE_SECONDS = 1.0
# A worker whose state store (Redis) does not answer looks again after this pause.
STATE_RETRY_SECONDS = 5


class Notifier:
    def __init__(self, config, client, mailer, state, templates, pseudonym=lambda address: "?",
                 clock=time.time, retry_base=RETRY_BASE_SECONDS):
        self._config = config
        self._client = client
        self._mailer = mailer
        self._state = state
        self._templates = templates
        self._pseudonym = pseudonym
        self._clock = clock
        self.retry_base = retry_base
        self._wake = threading.Condition()
        self._busy = set()  # tickets a worker is mailing now
        self._stopping = False
        self._threads = []

    @property
    def enabled(self):
        return bool(self._config.webhook_secret)

    # -- what the web side calls ---------------------------------------------

    def accept(self, message_id, ticket_id):
        """Queue an agent reply; False when this message was queued before."""
        added = self._state.enqueue(message_id, ticket_id, self._clock() + self._config.notify_delay_seconds)
        if added:
            with self._wake:
                self._wake.notify()
        return added

    def ticket_viewed(self, ticket_id, newest_message_id, seen):
        """The owner has the ticket on screen, up to this message: no mail for what they
        read, and no "new reply" mark on the dashboard (the marker is kept either way).
        `seen`: the ticket's seen marker as the page read it (`ticket_marks`)."""
        if not newest_message_id:
            return
        if newest_message_id > seen:
            self._state.mark_seen(ticket_id, newest_message_id)
            if self._state.cancel_seen(ticket_id, newest_message_id):
                log.info("reply mail cancelled ticket=%s (read in the portal)", ticket_id)

    def health(self):
        queued, oldest = self._state.queue_stats(self._clock())
        return {"queued": queued, "oldest_seconds": None if oldest is None else round(oldest, 1)}

    # -- worker threads ----------------------------------------------------------

    def start(self):
        for number in range(WORKERS):
            thread = threading.Thread(target=self._work, name=f"notify-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout=5):
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def _work(self):
        while True:
            with self._wake:
                if self._stopping:
                    return
                try:
                    ticket_id = self._claim()
                    if ticket_id is None:
                        self._wake.wait(self._idle_wait())
                        continue
                except StateUnavailable as error:
                    log.warning("reply mail queue unreachable, looking again in %ss: %s", STATE_RETRY_SECONDS, error)
                    self._wake.wait(STATE_RETRY_SECONDS)
                    continue
            try:
                self._deliver(ticket_id)
            except StateUnavailable as error:
                # Whatever was not marked done is still queued and is mailed once the store answers.
                log.warning("reply mail for ticket %s waits for the state store: %s", ticket_id, error)
            except Exception:  # a worker must outlive any one mail
                log.exception("reply mail for ticket %s failed unexpectedly", ticket_id)
                self._retry(ticket_id, self._state.queued_for(ticket_id), "unexpected error")
            finally:
                self._release(ticket_id)

    def _claim(self):
        """A due ticket no worker of any process holds (caller holds self._wake).

        The store leases it to this process (on Redis until `release_ticket`, or until
        the lease runs out if this process dies); `_busy` keeps this process's other
        workers off it meanwhile."""
        ticket_id = self._state.claim_ticket(self._clock(), exclude=self._busy)
        if ticket_id is not None:
            self._busy.add(ticket_id)
        return ticket_id

    def _release(self, ticket_id):
        try:
            self._state.release_ticket(ticket_id)
        except StateUnavailable as error:
            log.warning("ticket %s stays leased until its lease runs out: %s", ticket_id, error)
        with self._wake:
            self._busy.discard(ticket_id)
            self._wake.notify()  # the ticket may have more replies due

    def _idle_wait(self):
        next_due = self._state.next_due_at()
        if next_due is None:
            return IDLE_WAKE_SECONDS
        wait = next_due - self._clock()
        if wait <= 0:
            # Due, yet not ours to claim: another worker or process holds it. A worker
            # here wakes us when it is done; another process's lease is looked at again.
            return HELD_WAKE_SECONDS
        return min(IDLE_WAKE_SECONDS, max(0.05, wait))

    # -- one mail -------------------------------------------------------------------

    def _deliver(self, ticket_id):
        queued = self._state.queued_for(ticket_id)
        if not queued:
            return
        message_ids = [row[0] for row in queued]
        try:
            ticket, recipient, replies = self._client.reply_notice(ticket_id, message_ids)
        except ChatwootNotFound:
            return self._finish(ticket_id, message_ids, "skipped", "the conversation is gone")
        except ChatwootError as error:
            return self._retry(ticket_id, queued, f"Chatwoot: {error}")
        if ticket.inbox_id not in self._config.notify_inboxes:
            return self._finish(ticket_id, message_ids, "skipped", f"inbox {ticket.inbox_id} is not in NOTIFY_INBOXES")
        if recipient.blocked:
            return self._finish(ticket_id, message_ids, "skipped", "the contact is blocked")
        if "@" not in recipient.email:
            return self._finish(ticket_id, message_ids, "skipped", "the contact has no e-mail address")
        seen = self._state.seen_message_id(ticket_id)
        if any(reply.id <= seen for reply in replies):
            self._state.finish([r.id for r in replies if r.id <= seen], "cancelled")
        replies = [reply for reply in replies if reply.id > seen]
        if not replies:
            return self._finish(ticket_id, message_ids, "skipped", "no public agent reply left to mail")
        lang = i18n.choose(self._state.language_of(recipient.contact_id))
        subject, text, html, headers = self._compose(lang, ticket, recipient, replies)
        try:
            self._mailer.send(recipient.email, subject, text, html, headers)
        except MailError as error:
            if error.permanent:
                return self._finish(ticket_id, message_ids, "failed", f"the SMTP server refused it for good: {error}",
                                    level=logging.ERROR)
            return self._retry(ticket_id, queued, f"SMTP: {error}")
        mailed = {reply.id for reply in replies}
        self._state.finish(sorted(mailed), "sent")
        self._state.finish([m for m in message_ids if m not in mailed], "skipped")
        log.info("reply mail sent ticket=%s messages=%s to=%s lang=%s", ticket_id, len(mailed),
                 self._pseudonym(recipient.email), lang)

    def _finish(self, ticket_id, message_ids, state, why, level=logging.INFO):
        self._state.finish(message_ids, state)
        log.log(level, "reply mail %s ticket=%s messages=%s: %s", state, ticket_id, len(message_ids), why)

    def _retry(self, ticket_id, queued, why):
        if not queued:
            return
        now = self._clock()
        oldest = min(row[1] for row in queued)
        attempts = max(row[2] for row in queued)
        if now - oldest > GIVE_UP_SECONDS:
            return self._finish(ticket_id, [row[0] for row in queued], "failed",
                                f"still failing after {attempts + 1} tries over two days ({why})", level=logging.ERROR)
        pause = min(self.retry_base * 2 ** attempts, RETRY_MAX_SECONDS)
        self._state.retry_later([row[0] for row in queued], now + pause)
        log.warning("reply mail postponed ticket=%s try=%s next in %ss: %s", ticket_id, attempts + 1, round(pause), why)

    def _compose(self, lang, ticket, recipient, replies):
        def t(key, **values):
            return i18n.translate(lang, key, **values)

        title = ticket.subject or t("ticket_number", id=ticket.id)
        quoted = []
        for reply in replies:
            cut = len(reply.content) > EXCERPT_CHARS
            content = reply.content[:EXCERPT_CHARS].rsplit(" ", 1)[0] + " …" if cut else reply.content
            quoted.append({"sender": reply.sender_name or t("support_team"), "content": content, "cut": cut,
                           "when": i18n.format_time(lang, reply.created_at)})
        context = dict(lang=lang, t=t, name=recipient.name, title=title, replies=quoted,
                       link=self._config.public_url(f"/tickets/{ticket.id}"))
        text = self._templates.get_template("email_reply.txt").render(context)
        html = self._templates.get_template("email_reply.html").render(context)
        # One made-up id per ticket that every notification replies to: mail
        # clients thread the notifications of a ticket together.
        host = urllib.parse.urlsplit(self._config.portal_url).hostname or "portal.invalid"
        thread_id = f"<ticket-{ticket.id}.account-{self._config.chatwoot_account_id}@{host}>"
        headers = [("In-Reply-To", thread_id), ("References", thread_id)]
        return t("reply_mail_subject", title=title, id=ticket.id), text, html, headers
