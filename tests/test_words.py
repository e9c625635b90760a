"""Words a customer reads: statuses in their terms, times as people say them, counts
with the right plural, and 404 pages that say what is missing.

End to end like tests/test_tickets.py: the portal on a real socket against the fake
Chatwoot; relative times count from the portal's FakeClock (`clock`), which starts at
NOW = 2027-01-15 08:00:00 UTC. One test runs static/portal.js in node against a
page's real markup, to check it leaves the words alone.
"""

import html
import html.parser
import http.client
import json
import re
import shutil
import string
import subprocess
from pathlib import Path

import pytest

import conftest
import i18n
from conftest import require_tools, sign_in

ROOT = Path(__file__).resolve().parent.parent
JANE = "jane@example.com"
NOW = 1_800_000_000  # the FakeClock's start: Fri 15 Jan 2027, 08:00:00 UTC
MINUTE, HOUR, DAY = 60, 3600, 86400


@pytest.fixture
def jane(portal, smtp):
    browser, page = sign_in(portal, smtp, JANE)
    assert page.status == 200, page.text
    return browser


def later(portal, smtp, clock, browser, seconds):
    """Time passes; past the session's idle limit, so sign in again in the same browser."""
    clock.advance(seconds)
    sign_in(portal, smtp, JANE, browser)


def spanish(browser, portal):
    page = browser.get(portal.url("/dashboard"))
    csrf = next(f.fields["csrf_token"] for f in page.forms if "csrf_token" in f.fields)
    browser.post(portal.url("/lang"), {"csrf_token": csrf, "lang": "es", "next": "/dashboard"})


# ---------------------------------------------------------------------------
# Reading pages: elements, not template spelling
# ---------------------------------------------------------------------------

class _Elements(html.parser.HTMLParser):
    """Every element with its attributes and its text (nested text included)."""

    VOID = {"br", "img", "input", "link", "meta", "hr", "source"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found, self.open = [], []

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.found.append(element)
        if tag not in self.VOID:
            self.open.append(element)

    def handle_endtag(self, tag):
        while self.open and self.open.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        for element in self.open:
            element["text"] += data


def elements(page, tag=None, cls=None):
    parser = _Elements()
    parser.feed(page.text)
    return [e for e in parser.found if (tag is None or e["tag"] == tag)
            and (cls is None or cls in (e["attrs"].get("class") or "").split())]


def badges(page):
    """[(classes, title, words)] of the status badges (not priority badges), in page order."""
    return [(e["attrs"]["class"], e["attrs"].get("title"), " ".join(e["text"].split()))
            for e in elements(page, "span", "badge") if "badge-priority" not in e["attrs"]["class"]]


class _Part:
    """A piece of a page's markup, readable by the helpers above."""

    def __init__(self, text):
        self.text = text


def dashboard_badges(page):
    """{ticket id: badge words} of the dashboard's rows."""
    found = {}
    for row in re.finditer(r'<li class="ticket-item[^"]*">.*?</li>', page.text, re.S):
        ticket_id = int(re.search(r'/tickets/(\d+)', row.group(0)).group(1))
        found[ticket_id] = badges(_Part(row.group(0)))[0][2]
    return found


def row_of(page, ticket_id):
    """The visible words of one dashboard row."""
    for row in re.finditer(r'<li class="ticket-item[^"]*">.*?</li>', page.text, re.S):
        if re.search(rf'/tickets/{ticket_id}\b', row.group(0)):
            return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", row.group(0))).split())
    raise AssertionError(f"no row for ticket {ticket_id}")


def message_times(page):
    """[(words shown, title)] of the thread's message times, oldest first."""
    thread = re.search(r'<ol class="thread">.*?</ol>', page.text, re.S).group(0)
    return [(t["text"], t["attrs"].get("title")) for t in elements(_Part(thread), "time")]


def snooze(fake, ticket, until):
    """Snooze through Chatwoot's own API (toggle_status takes unix seconds; contract §8)."""
    connection = http.client.HTTPConnection(fake.url.split("//")[1], timeout=5)
    connection.request("POST", f"/api/v1/accounts/{fake.account_id}/conversations/{ticket}/toggle_status",
                       json.dumps({"status": "snoozed", "snoozed_until": until}),
                       {"Content-Type": "application/json", "api_access_token": fake.token})
    answer = connection.getresponse()
    assert answer.status == 200, answer.read()
    connection.close()


# ---------------------------------------------------------------------------
# Statuses in the customer's words (issue point 2)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("lang, expected", [
    ("en", {"open": "We're on it", "pending": "We're on it", "snoozed": "On hold", "resolved": "Closed"}),
    ("es", {"open": "Estamos en ello", "pending": "Estamos en ello", "snoozed": "En espera", "resolved": "Cerrado"}),
])
def test_each_status_says_what_it_means_and_keeps_chatwoots_word_in_the_title_and_class(
        portal, fake, jane, lang, expected):
    ids = {status: fake.add_conversation(fake.jane, fake.api_inbox, f"A {status} ticket", status=status)
           for status in expected}
    if lang == "es":
        spanish(jane, portal)
    page = jane.get(portal.url("/dashboard?status=all"))
    assert dashboard_badges(page) == {ids[status]: words for status, words in expected.items()}
    chatwoot_word = {"en": "Chatwoot status: {}", "es": "Estado en Chatwoot: {}"}[lang]
    for status, ticket in ids.items():
        (classes, title, words), = badges(jane.get(portal.url(f"/tickets/{ticket}")))
        assert (classes, title, words) == (f"badge badge-{status}", chatwoot_word.format(status), expected[status])
    assert not {"Pending", "Snoozed", "Pendiente", "Pospuesto"} & set(re.findall(r">([^<]+)<", page.text))


@pytest.mark.parametrize("status", ["open", "pending"])
def test_a_ticket_the_agent_answered_last_says_waiting_for_your_reply_once(portal, fake, jane, status):
    waiting = fake.add_conversation(fake.jane, fake.api_inbox, "Which model?", status=status)
    fake.add_message(waiting, "It smokes.")
    fake.add_message(waiting, "Which model is it?", "outgoing")
    ours = fake.add_conversation(fake.jane, fake.api_inbox, "Our turn", status=status)
    fake.add_message(ours, "Still smoking.")
    page = jane.get(portal.url("/dashboard"))
    assert dashboard_badges(page) == {waiting: "Waiting for your reply", ours: "We're on it"}
    assert row_of(page, waiting).count("Waiting for your reply") == 1  # the badge says it; no second label
    (classes, title, words), = badges(jane.get(portal.url(f"/tickets/{waiting}")))
    assert (classes, title, words) == (f"badge badge-{status} badge-waiting", f"Chatwoot status: {status}", "Waiting for your reply")
    fake.add_message(waiting, "A P-100.")  # the customer answered: our turn again
    assert dashboard_badges(jane.get(portal.url("/dashboard")))[waiting] == "We're on it"


def test_a_snoozed_ticket_says_until_when_in_both_languages(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Renewal next week")
    snooze(fake, ticket, NOW + 3 * DAY + 90 * MINUTE)  # Mon 18 Jan 2027, 09:30 UTC
    assert fake.conversation(ticket)["snoozed_until"] == "2027-01-18T09:30:00.000Z"
    dashboard = jane.get(portal.url("/dashboard"))
    assert dashboard_badges(dashboard)[ticket] == "On hold until 18 Jan 2027, 09:30 UTC"
    (classes, title, words), = badges(jane.get(portal.url(f"/tickets/{ticket}")))
    assert (classes, title, words) == ("badge badge-snoozed", "Chatwoot status: snoozed",
                                       "On hold until 18 Jan 2027, 09:30 UTC")
    # A <time>, so portal.js shows it in the reader's own zone like every other date.
    snoozed = [t for t in elements(dashboard, "time") if t["attrs"]["datetime"] == "2027-01-18T09:30:00Z"]
    assert [t["text"] for t in snoozed] == ["18 Jan 2027, 09:30 UTC"]
    spanish(jane, portal)
    assert badges(jane.get(portal.url(f"/tickets/{ticket}")))[0][2] == "En espera hasta el 18 ene 2027, 09:30 UTC"


@pytest.mark.parametrize("unreadable", [None, "", "next tuesday", "2027-13-45T99:00:00Z", 1800259200])
def test_a_snooze_without_a_readable_date_says_on_hold(portal, fake, jane, unreadable):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Later", status="snoozed")
    with fake._lock:  # what no API call can write: Chatwoot's JSON as a broken proxy might pass it on
        fake._conversations[ticket]["snoozed_until"] = unreadable
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert page.status == 200
    assert badges(page)[0][2] == "On hold"


def test_a_ticket_the_customer_cancelled_says_so_with_the_date_while_it_stays_closed(portal, smtp, fake, jane, clock):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Never mind")
    fake.add_message(ticket, "The printer works again.")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    page = jane.submit(page, f"/tickets/{ticket}/cancel")
    assert fake.conversation(ticket)["status"] == "resolved"
    assert badges(page)[0][2] == "Closed"
    said = [e["text"] for e in elements(page, "li", "thread-event")]
    assert said == ["Cancelled by you on 15 Jan 2027, 08:00 UTC"]
    later(portal, smtp, clock, jane, 2 * DAY)  # still the day it was cancelled, not "now"
    spanish(jane, portal)
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert [e["text"] for e in elements(page, "li", "thread-event")] == ["Cancelado por ti el 15 ene 2027, 08:00 UTC"]
    # Reopened by a reply, then closed by an agent: no longer the customer's cancel.
    page = jane.submit(page, f"/tickets/{ticket}/reply", message="It broke again.")
    assert fake.conversation(ticket)["status"] == "open"
    assert not elements(page, "li", "thread-event")
    with fake._lock:
        fake._set_status(fake._conversations[ticket], "resolved", "Conversation was marked resolved by Sam")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert badges(page)[0][2] == "Cerrado"
    assert not elements(page, "li", "thread-event")
    assert "Cancelado por ti" not in page.text


def test_a_ticket_an_agent_resolved_never_says_cancelled_by_you(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Done by us", status="resolved")
    fake.add_message(ticket, "Conversation was marked resolved by Sam Agent", "activity")
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert badges(page)[0][2] == "Closed"
    assert "Cancelled by you" not in page.text


# ---------------------------------------------------------------------------
# Times people read (issue point 3)
# ---------------------------------------------------------------------------

THREAD_AGES = [8 * DAY, 3 * DAY, 30 * HOUR, 2 * HOUR, HOUR, 5 * MINUTE, MINUTE, 20]


@pytest.mark.parametrize("lang, expected", [
    ("en", ["7 Jan 2027, 08:00 UTC", "3 days ago", "yesterday", "2 hours ago", "1 hour ago",
            "5 minutes ago", "1 minute ago", "just now"]),
    ("es", ["7 ene 2027, 08:00 UTC", "hace 3 días", "ayer", "hace 2 horas", "hace 1 hora",
            "hace 5 minutos", "hace 1 minuto", "ahora mismo"]),
])
def test_thread_times_read_as_words_for_a_week_then_as_dates_with_the_date_in_the_title(
        portal, fake, jane, lang, expected):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Times", created_at=NOW - 8 * DAY)
    for n, age in enumerate(THREAD_AGES):
        fake.add_message(ticket, f"Message {n}", created_at=NOW - age)
    if lang == "es":
        spanish(jane, portal)
    shown = message_times(jane.get(portal.url(f"/tickets/{ticket}")))
    assert [words for words, _ in shown] == expected
    assert [title for _, title in shown] == [i18n.format_time(lang, NOW - age) for age in THREAD_AGES]


def test_times_count_from_the_portals_clock_when_the_page_is_made(portal, smtp, fake, jane, clock):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Clocked", created_at=NOW)
    fake.add_message(ticket, "Hello", created_at=NOW)
    assert "Last activity just now" in row_of(jane.get(portal.url("/dashboard")), ticket)
    clock.advance(5 * MINUTE)
    assert "Last activity 5 minutes ago" in row_of(jane.get(portal.url("/dashboard")), ticket)
    later(portal, smtp, clock, jane, DAY)
    assert "Last activity yesterday" in row_of(jane.get(portal.url("/dashboard")), ticket)
    spanish(jane, portal)
    assert "Última actividad ayer" in row_of(jane.get(portal.url("/dashboard")), ticket)
    later(portal, smtp, clock, jane, 7 * DAY)
    assert "Última actividad 15 ene 2027, 08:00 UTC" in row_of(jane.get(portal.url("/dashboard")), ticket)


def test_the_opening_date_stays_a_date(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Opened", created_at=NOW - 5 * MINUTE)
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    opened = [e for e in elements(page, "p", "muted") if "Opened" in e["text"]]
    assert [" ".join(e["text"].split()) for e in opened] == [f"Ticket #{ticket} · Opened 15 Jan 2027, 07:55 UTC"]


PORTAL_JS_RUNNER = """
const fs = require("fs");
const input = JSON.parse(fs.readFileSync(0, "utf8"));
const times = input.times.map((t) => ({
  attrs: t.attrs, title: t.attrs.title || "", textContent: t.text,
  getAttribute(name) { return name in this.attrs ? this.attrs[name] : null; },
  hasAttribute(name) { return name in this.attrs; },
}));
globalThis.document = { documentElement: { lang: input.lang },
                        querySelectorAll: (selector) => (selector === "time[datetime]" ? times : []) };
globalThis.window = { addEventListener() {} };
new Function(fs.readFileSync(process.argv[1], "utf8"))();
console.log(JSON.stringify(times.map((t) => ({ text: t.textContent, title: t.title }))));
"""


def test_portal_js_keeps_the_words_and_shows_dates_in_the_readers_zone(portal, fake, jane):
    require_tools("node")
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Script", created_at=NOW - 9 * DAY)
    fake.add_message(ticket, "Old", created_at=NOW - 9 * DAY)
    fake.add_message(ticket, "New", created_at=NOW - 5 * MINUTE)
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    times = [{"attrs": t["attrs"], "text": t["text"]} for t in elements(page, "time")]
    assert [t["text"] for t in times] == ["6 Jan 2027, 08:00 UTC", "6 Jan 2027, 08:00 UTC", "5 minutes ago"]
    ran = subprocess.run([shutil.which("node"), "-e", PORTAL_JS_RUNNER, str(ROOT / "static" / "portal.js")],
                         input=json.dumps({"lang": "en", "times": times}), capture_output=True, text=True,
                         timeout=30, env={"TZ": "America/New_York", "PATH": "/usr/bin:/bin"})
    assert ran.returncode == 0, ran.stderr
    opened, old, recent = json.loads(ran.stdout)
    assert recent["text"] == "5 minutes ago"  # the words stay
    assert "UTC" not in recent["title"] and "2027" in recent["title"]  # their date, in the reader's zone
    assert "UTC" not in old["text"] and "2027" in old["text"] and old["text"] != "6 Jan 2027, 08:00 UTC"
    assert old["title"] == "6 Jan 2027, 08:00 UTC"


# ---------------------------------------------------------------------------
# Counts with the right plural (issue point 3)
# ---------------------------------------------------------------------------

COUNT_PLACEHOLDERS = {"count", "minutes", "attempts", "limit"}


def _placeholders(text):
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_counted_message_has_a_singular_and_a_plural_in_both_languages():
    assert i18n.PLURALS
    for key, (count_name, *forms) in i18n.PLURALS.items():
        assert key not in i18n.MESSAGES, key
        assert len(forms) == len(i18n.LANGUAGES), key
        names = {frozenset(_placeholders(text)) for pair in forms for text in pair}
        assert len(names) == 1, key  # all four forms take the same values
        names = set(names.pop())
        assert count_name in names, key
        values = {name: "X" for name in names - {count_name}}
        for lang, (one, other) in zip(i18n.LANGUAGES, forms):
            assert one != other, (key, lang)
            assert i18n.translate(lang, key, **values, **{count_name: 1}) == one.format(**values, **{count_name: 1})
            assert i18n.translate(lang, key, **values, **{count_name: 7}) == other.format(**values, **{count_name: 7})


def test_no_plain_message_puts_a_count_in_a_sentence():
    counted = {key for key, texts in i18n.MESSAGES.items()
               if any(_placeholders(text) & COUNT_PLACEHOLDERS for text in texts)}
    assert counted == set()


@pytest.mark.parametrize("lang, count, expected", [
    ("en", 1, "1 minute ago"), ("en", 2, "2 minutes ago"), ("en", 0, "0 minutes ago"),
    ("es", 1, "hace 1 minuto"), ("es", 2, "hace 2 minutos"), ("fr", 1, "1 minute ago"),
])
def test_translate_plural_picks_cldrs_one_or_other(lang, count, expected):
    assert i18n.translate_plural(lang, "time_minutes_ago", count) == expected


@pytest.fixture
def one_of_everything(fake, smtp, clock):
    running = conftest.start_portal(
        conftest.portal_settings(fake, smtp, MAGIC_LINK_MINUTES="1", ATTACHMENT_MAX_FILES="1"), clock)
    yield running
    running.close()


def test_a_one_minute_link_and_a_one_file_limit_are_singular_on_pages_and_in_the_mail(one_of_everything, smtp):
    portal = one_of_everything
    browser = portal.browser()
    page = browser.submit(browser.get(portal.url("/")), "/auth/request", email=JANE)
    assert "It works once and expires in 1 minute." in page
    assert "1 minutes" not in page.text
    mail = smtp.messages[-1]
    text = mail.get_body(("plain",)).get_content()
    assert "expires in 1 minute." in text and "1 minutes" not in text
    assert "expires in 1 minute." in html.unescape(mail.get_body(("html",)).get_content())
    browser, _ = sign_in(portal, smtp, JANE, browser)
    page = browser.get(portal.url("/tickets/new"))
    assert "Up to 1 file of " in html.unescape(page.text) and "1 files" not in page.text
    spanish(browser, portal)
    page = browser.get(portal.url("/tickets/new"))
    assert "Hasta 1 archivo de " in html.unescape(page.text) and "1 archivos" not in page.text


def test_the_default_fifteen_minutes_and_five_codes_stay_plural(portal, smtp):
    browser = portal.browser(**{"Accept-Language": "es"})
    page = browser.submit(browser.get(portal.url("/")), "/auth/request", email=JANE)
    text = html.unescape(page.text)
    assert "caduca en 15 minutos." in text and "Tras 5 códigos incorrectos" in text


# ---------------------------------------------------------------------------
# 404 pages that say what is missing (issue point 8)
# ---------------------------------------------------------------------------

def h1_and_words(page):
    main = re.search(r"<main\b.*?</main>", page.text, re.S).group(0)
    h1 = re.search(r"<h1>(.*?)</h1>", main, re.S).group(1)
    return html.unescape(h1), html.unescape(re.sub(r"<[^>]+>", " ", main))


@pytest.mark.parametrize("signed_in", [False, True])
def test_an_unknown_address_says_there_is_no_page_there(portal, smtp, signed_in):
    browser = sign_in(portal, smtp, JANE)[0] if signed_in else portal.browser()
    page = browser.get(portal.url("/nope"))
    assert page.status == 404
    heading, words = h1_and_words(page)
    assert heading == "Page not found"
    assert "There is no page at this address." in words
    assert "may not exist" not in words and "another account" not in words  # no guess about a ticket


def test_a_missing_ticket_says_the_ticket_does_not_exist_in_both_languages(portal, fake, jane):
    page = jane.get(portal.url("/tickets/999999"))
    assert page.status == 404
    heading, words = h1_and_words(page)
    assert heading == "Ticket not found"
    assert "This ticket does not exist or belongs to another account." in words
    assert "There is no page at this address" not in words
    spanish(jane, portal)
    page = jane.get(portal.url("/tickets/999999"))
    heading, words = h1_and_words(page)
    assert heading == "Ticket no encontrado"
    assert "Este ticket no existe o pertenece a otra cuenta." in words
    heading, words = h1_and_words(jane.get(portal.url("/nope")))
    assert heading == "Página no encontrada"
    assert "No hay ninguna página en esta dirección." in words


def test_someone_elses_ticket_reads_like_a_missing_one(portal, fake, jane):
    bobs = fake.add_conversation(fake.bob, fake.api_inbox, "Bob's")
    page = jane.get(portal.url(f"/tickets/{bobs}"))
    assert page.status == 404
    assert h1_and_words(page)[0] == "Ticket not found"


def test_a_missing_file_on_ones_own_ticket_says_the_file_is_missing(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Files")
    fake.add_message(ticket, "Hello")
    page = jane.get(portal.url(f"/tickets/{ticket}/attachments/424242/photo.png"))
    assert page.status == 404
    heading, words = h1_and_words(page)
    assert heading == "File not found"
    assert "This file does not exist or is not attached to this ticket." in words


def test_days_count_by_the_utc_dates_shown_beside_them_not_by_48_hour_blocks():
    now = 1_800_000_000  # 15 Jan 2027, 08:00 UTC
    assert i18n.relative_time("en", now - 25 * HOUR, now) == "yesterday"  # 14 Jan, 07:00
    assert i18n.relative_time("en", now - 47 * HOUR, now) == "2 days ago"  # 13 Jan, 09:00
    assert i18n.relative_time("es", now - 47 * HOUR, now) == "hace 2 días"
