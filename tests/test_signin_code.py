"""Sign-in on another device: the mail's 6-digit code, and pages that say why a link died.

The mail carries a code beside the link; typed into the "check your e-mail" page,
it signs in the browser that asked. End to end through real sockets (the mailed
code is read from the real SMTP server), then the store's code logic on its own.
"""

import dataclasses
import hashlib
import html
import logging
import re
import urllib.parse

import pytest

import security
from conftest import SECRET, sign_in
from conftest import both_backends  # noqa: F401  (every test here runs on memory and on Redis)
from portal import SIGNIN_PER_ADDRESS, SIGNIN_PER_IP
from security import (
    EXPIRED,
    MAX_WRONG_CODES,
    RETIRED_LINK_SECONDS,
    USED,
    MagicLinkStore,
    Signer,
    normalize_code,
)

JANE = "jane@example.com"
BOB = "bob@example.com"
SESSION = "portal_session"
MAGIC_LINK_MINUTES = 15
TTL = MAGIC_LINK_MINUTES * 60
# The code line of a mail in either language: "...: 123 456".
MAILED_CODE = re.compile(r": ([0-9]{3}) ([0-9]{3})\r?$", re.MULTILINE)
WRONG_CODE_WORDS = "That code does not work"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def request_mail(portal, address, browser=None, query=""):
    """Ask for a sign-in mail; returns (browser, the "check your e-mail" page)."""
    browser = browser or portal.browser()
    page = browser.get(portal.url("/" + query))
    return browser, browser.submit(page, "/auth/request", email=address)


def code_for(smtp, address):
    """The six digits of the newest mail's code to `address`, read from its plain text."""
    for message in reversed(smtp.messages):
        if message["To"] == address:
            match = MAILED_CODE.search(message.get_body(("plain",)).get_content())
            assert match, "the mail has no code"
            return match.group(1) + match.group(2)
    raise AssertionError(f"no mail to {address}")


def a_wrong_code(code):
    return f"{(int(code) + 1) % 10 ** 6:06d}"


def other_csrf(browser, portal):
    """A CSRF token of this (other) browser's own sign-in page."""
    return browser.get(portal.url("/")).form("/auth/request").fields["csrf_token"]


def local(link):
    return urllib.parse.urlsplit(link)._replace(scheme="", netloc="").geturl()


def is_signed_in(portal, browser):
    page = browser.get(portal.url("/dashboard"))
    return page.status == 200 and page.url.endswith("/portal/dashboard")


def without_csrf(text):
    return re.sub(r'name="csrf_token" value="[^"]*"', "", text)


def html_lang(page):
    match = re.search(r"<html[^>]*\blang=\"([^\"]*)\"", page.text)
    return match.group(1) if match else None


@pytest.fixture
def jane_ticket(fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, subject="Printer jam")
    fake.add_message(ticket, "The printer jams.")
    return ticket


# ---------------------------------------------------------------------------
# The mail and the page
# ---------------------------------------------------------------------------

def test_both_parts_of_the_mail_show_the_same_six_digit_code(portal, smtp):
    request_mail(portal, JANE)
    message = smtp.messages[0]
    text = message.get_body(("plain",)).get_content()
    markup = html.unescape(message.get_body(("html",)).get_content())
    code = code_for(smtp, JANE)
    assert re.fullmatch(r"[0-9]{6}", code)
    assert f"Or enter this code on the sign-in page: {code[:3]} {code[3:]}" in text
    assert "Or enter this code on the sign-in page:" in markup
    assert f">{code[:3]} {code[3:]}</p>" in markup
    assert "without the link or the code" in text


def test_every_mail_carries_its_own_code(portal, smtp):
    codes = set()
    for _ in range(4):
        request_mail(portal, JANE)
        codes.add(code_for(smtp, JANE))
    assert len(codes) >= 3  # four draws from a million: a repeat is a broken generator


def test_the_check_your_email_page_has_a_labelled_numeric_one_time_code_field(portal, smtp):
    _, page = request_mail(portal, JANE)
    form = page.form("/auth/code")
    assert form.method == "POST"
    assert form.fields["email"] == JANE and form.fields["csrf_token"] and "code" in form.fields
    field = re.search(r"<input[^>]*name=\"code\"[^>]*>", page.text).group(0)
    assert 'inputmode="numeric"' in field
    assert 'autocomplete="one-time-code"' in field
    pattern = re.search(r'pattern="([^"]*)"', field).group(1)
    for typed in ("123456", "123 456", "123-456"):
        assert re.fullmatch(html.unescape(pattern), typed), typed
    assert not re.fullmatch(html.unescape(pattern), "12345")
    assert re.search(r'<label for="code">Code from the e-mail</label>', page.text)
    assert 'id="code"' in field
    assert f"After {MAX_WRONG_CODES} wrong codes, the code and the link stop working" in page


# ---------------------------------------------------------------------------
# Signing in with the code
# ---------------------------------------------------------------------------

def test_the_code_signs_in_the_browser_that_asked(portal, smtp):
    browser, page = request_mail(portal, JANE)
    answer = browser.submit(page, "/auth/code", code=code_for(smtp, JANE), follow=False)
    assert answer.status == 303
    assert answer.header("Location") == "/portal/dashboard"
    assert SESSION in browser.cookies
    page = browser.get(answer.header("Location"))
    assert page.url.endswith("/portal/dashboard") and f"Signed in as {JANE}" in page
    assert not is_signed_in(portal, portal.browser())


def test_the_code_lands_on_the_page_the_customer_came_for(portal, smtp, jane_ticket):
    browser = portal.browser()
    page = browser.get(portal.url(f"/tickets/{jane_ticket}"))  # signed out: to sign-in with next
    page = browser.submit(page, "/auth/request", email=JANE)
    assert page.form("/auth/code").fields["next"] == f"/tickets/{jane_ticket}"
    answer = browser.submit(page, "/auth/code", code=code_for(smtp, JANE), follow=False)
    assert answer.header("Location") == f"/portal/tickets/{jane_ticket}"
    assert "Printer jam" in browser.get(answer.header("Location"))


@pytest.mark.parametrize("hostile", ["//evil.example", "https://evil.example", "/logout", "/\\evil.example"])
def test_a_hostile_next_in_the_code_form_lands_on_the_dashboard(portal, smtp, hostile):
    browser, page = request_mail(portal, JANE)
    answer = browser.submit(page, "/auth/code", code=code_for(smtp, JANE), next=hostile, follow=False)
    assert answer.status == 303
    assert answer.header("Location") == "/portal/dashboard"


def test_a_planted_session_is_replaced_when_signing_in_with_a_code(portal, smtp):
    bob, dashboard = sign_in(portal, smtp, BOB)
    old = bob.cookies[SESSION]
    # Signed in, the sign-in page jumps to the dashboard: post its request directly.
    page = bob.post(portal.url("/auth/request"), {"csrf_token": dashboard.form("/logout").fields["csrf_token"],
                                                  "email": JANE})
    bob.submit(page, "/auth/code", code=code_for(smtp, JANE))
    assert bob.cookies[SESSION] != old
    assert f"Signed in as {JANE}" in bob.get(portal.url("/dashboard"))
    replay = portal.browser()
    replay.cookies[SESSION] = old
    assert not is_signed_in(portal, replay)


def test_the_code_sets_the_language_like_the_link_does(portal, smtp, fake):
    browser = portal.browser(**{"Accept-Language": "es"})  # no language chosen yet
    _, page = request_mail(portal, JANE, browser)
    answer = browser.submit(page, "/auth/code", code=code_for(smtp, JANE), follow=False)
    assert answer.status == 303
    assert browser.cookies.get("portal_lang") == "es"  # kept for the next visit
    assert portal.app.state.language_of(fake.jane) == "es"  # and for the reply mails


@pytest.mark.parametrize("typed", ["{a} {b}", "{a}-{b}", " {a}{b} ", "{a} - {b}", "{a}\u2013{b}"])
def test_spaces_or_a_dash_typed_into_the_code_are_accepted(portal, smtp, typed):
    browser, page = request_mail(portal, JANE)
    code = code_for(smtp, JANE)
    page = browser.submit(page, "/auth/code", code=typed.format(a=code[:3], b=code[3:]))
    assert page.url.endswith("/portal/dashboard"), page.text


def test_a_code_works_only_for_the_address_it_was_mailed_to(portal, smtp):
    jane, jane_page = request_mail(portal, JANE)
    bob, bob_page = request_mail(portal, BOB)
    page = jane.submit(jane_page, "/auth/code", code=code_for(smtp, BOB))
    assert page.status == 400 and WRONG_CODE_WORDS in page
    page = bob.submit(bob_page, "/auth/code", email=JANE, code=code_for(smtp, BOB))
    assert page.status == 400 and WRONG_CODE_WORDS in page
    assert not is_signed_in(portal, jane) and not is_signed_in(portal, bob)
    page = bob.submit(bob_page, "/auth/code", code=code_for(smtp, BOB))  # the control
    assert f"Signed in as {BOB}" in page


def test_a_wrong_code_gets_400_the_words_and_the_form_again_with_the_address(portal, smtp):
    browser, page = request_mail(portal, JANE)
    page = browser.submit(page, "/auth/code", code=a_wrong_code(code_for(smtp, JANE)))
    assert page.status == 400
    assert WRONG_CODE_WORDS in page
    assert f"After {MAX_WRONG_CODES} wrong codes, the code and the link stop working: then ask for a new e-mail" in page
    assert page.form("/auth/code").fields["email"] == JANE
    assert SESSION not in browser.cookies
    page = browser.submit(page, "/auth/code", code=code_for(smtp, JANE))  # the kept form still works
    assert page.url.endswith("/portal/dashboard")


def test_four_wrong_codes_still_leave_the_right_one_working(portal, smtp):
    browser, page = request_mail(portal, JANE)
    code = code_for(smtp, JANE)
    for _ in range(MAX_WRONG_CODES - 1):
        page = browser.submit(page, "/auth/code", code=a_wrong_code(code))
        assert page.status == 400
    page = browser.submit(page, "/auth/code", code=code)
    assert page.url.endswith("/portal/dashboard")


def test_five_wrong_codes_retire_the_code_and_the_link(portal, smtp):
    browser, page = request_mail(portal, JANE)
    code, link = code_for(smtp, JANE), local(smtp.link_for(JANE))
    for _ in range(MAX_WRONG_CODES):
        page = browser.submit(page, "/auth/code", code=a_wrong_code(code))
        assert page.status == 400
    page = browser.submit(page, "/auth/code", code=code)
    assert page.status == 400 and WRONG_CODE_WORDS in page
    other = portal.browser()
    page = other.get(link)
    assert page.status == 400
    assert f"This link was cancelled because a wrong code was typed {MAX_WRONG_CODES} times" in page
    assert page.form("/auth/request").fields["email"] == JANE
    assert not is_signed_in(portal, browser) and not is_signed_in(portal, other)


def test_after_five_wrong_codes_a_new_mail_works_again(portal, smtp):
    browser, page = request_mail(portal, JANE)
    for _ in range(MAX_WRONG_CODES):
        page = browser.submit(page, "/auth/code", code=a_wrong_code(code_for(smtp, JANE)))
    _, page = request_mail(portal, JANE, browser)
    code = code_for(smtp, JANE)
    for _ in range(MAX_WRONG_CODES - 1):  # the count started afresh with the new mail
        assert browser.submit(page, "/auth/code", code=a_wrong_code(code)).status == 400
    page = browser.submit(page, "/auth/code", code=code)
    assert page.url.endswith("/portal/dashboard")


def test_wrong_codes_for_one_address_do_not_retire_another_addresss_code(portal, smtp):
    jane, jane_page = request_mail(portal, JANE)
    bob, bob_page = request_mail(portal, BOB)
    for _ in range(MAX_WRONG_CODES):
        jane.submit(jane_page, "/auth/code", code=a_wrong_code(code_for(smtp, JANE)))
    page = bob.submit(bob_page, "/auth/code", code=code_for(smtp, BOB))
    assert page.url.endswith("/portal/dashboard")


def test_wrong_unknown_expired_and_used_codes_get_the_very_same_answer(portal, smtp, clock):
    answers = {}
    browser, page = request_mail(portal, JANE)
    answers["wrong"] = browser.submit(page, "/auth/code", code=a_wrong_code(code_for(smtp, JANE)))
    browser, page = request_mail(portal, "nobody@example.org")
    answers["unknown address"] = browser.submit(page, "/auth/code", code="123456")
    browser, page = request_mail(portal, BOB)
    code = code_for(smtp, BOB)
    browser.submit(page, "/auth/code", code=code)
    other = portal.browser()
    answers["used"] = other.post(portal.url("/auth/code"), {**page.form("/auth/code").fields,
                                                            "csrf_token": other_csrf(other, portal), "code": code})
    browser, page = request_mail(portal, "ann@example.com")
    clock.advance(TTL + 1)
    answers["expired"] = browser.submit(page, "/auth/code", code=code_for(smtp, "ann@example.com"))
    addresses = re.compile(r"(jane|nobody|bob|ann)@example\.(com|org)")
    seen = {name: (page.status, addresses.sub("ADDRESS", without_csrf(page.text))) for name, page in answers.items()}
    assert seen["wrong"][0] == 400 and WRONG_CODE_WORDS in seen["wrong"][1]
    assert all(answer == seen["wrong"] for answer in seen.values()), [n for n, a in seen.items() if a != seen["wrong"]]


# ---------------------------------------------------------------------------
# One mail, one use: the link and the code retire each other
# ---------------------------------------------------------------------------

def test_a_used_link_makes_the_code_fail(portal, smtp):
    browser, page = request_mail(portal, JANE)
    phone = portal.browser()
    phone.submit(phone.get(local(smtp.link_for(JANE))), "/auth/verify")
    assert is_signed_in(portal, phone)
    answer = browser.submit(page, "/auth/code", code=code_for(smtp, JANE))
    assert answer.status == 400 and WRONG_CODE_WORDS in answer
    assert not is_signed_in(portal, browser)


def test_a_used_code_makes_the_link_page_say_it_was_already_used(portal, smtp):
    browser, page = request_mail(portal, JANE)
    browser.submit(page, "/auth/code", code=code_for(smtp, JANE))
    phone = portal.browser()
    page = phone.get(local(smtp.link_for(JANE)))
    assert page.status == 400
    assert "This link was already used: each link works once" in page
    assert not page.forms or not any(f.action.endswith("/auth/verify") for f in page.forms)
    assert not is_signed_in(portal, phone)


def test_a_code_works_once(portal, smtp):
    browser, page = request_mail(portal, JANE)
    code = code_for(smtp, JANE)
    browser.submit(page, "/auth/code", code=code)
    other = portal.browser()
    _, other_page = request_mail(portal, "nobody@example.org", other)  # any page with the form
    answer = other.submit(other_page, "/auth/code", email=JANE, code=code)
    assert answer.status == 400 and WRONG_CODE_WORDS in answer
    assert not is_signed_in(portal, other)


def test_signing_in_with_a_code_retires_the_older_mails_too(portal, smtp):
    browser, _ = request_mail(portal, JANE)
    first_code, first_link = code_for(smtp, JANE), local(smtp.link_for(JANE))
    _, page = request_mail(portal, JANE, browser)
    browser.submit(page, "/auth/code", code=code_for(smtp, JANE))
    assert is_signed_in(portal, browser)
    other = portal.browser()
    assert "This link was already used" in other.get(first_link)
    _, other_page = request_mail(portal, "nobody@example.org", other)
    assert other.submit(other_page, "/auth/code", email=JANE, code=first_code).status == 400


def test_an_expired_code_fails_and_one_half_a_minute_before_works(portal, smtp, clock):
    bob, bob_page = request_mail(portal, BOB)
    browser, page = request_mail(portal, JANE)
    clock.advance(TTL - 30)
    # (Jane's try makes the store sweep; the next sweep is a minute away.)
    assert browser.submit(page, "/auth/code", code=code_for(smtp, JANE)).url.endswith("/portal/dashboard")
    clock.advance(31)  # Bob's code expired a second ago, and no sweep has removed it
    answer = bob.submit(bob_page, "/auth/code", code=code_for(smtp, BOB))
    assert answer.status == 400 and WRONG_CODE_WORDS in answer
    assert not is_signed_in(portal, bob)


def test_signing_in_with_a_code_starts_the_address_limit_afresh(portal, smtp):
    browser = portal.browser()
    for _ in range(SIGNIN_PER_ADDRESS[0]):
        _, page = request_mail(portal, JANE, browser)
        assert page.status == 200
    browser.submit(page, "/auth/code", code=code_for(smtp, JANE))
    assert is_signed_in(portal, browser)
    _, page = request_mail(portal, JANE)
    assert page.status == 200


def test_one_client_cannot_spread_code_guesses_over_many_addresses(portal, smtp):
    browser, page = request_mail(portal, "nobody@example.org")
    statuses = [browser.submit(page, "/auth/code", email=f"person{n}@example.org", code="123456").status
                for n in range(SIGNIN_PER_IP[0])]
    assert statuses[:-1] == [400] * (SIGNIN_PER_IP[0] - 1)
    assert statuses[-1] == 429  # the sign-in request counted too


# ---------------------------------------------------------------------------
# CSRF and logs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("forgery", ["missing", "wrong", "from another browser", "without the csrf cookie"])
def test_the_code_form_needs_its_csrf_token(portal, smtp, forgery):
    browser, page = request_mail(portal, JANE)
    fields = dict(page.form("/auth/code").fields, code=code_for(smtp, JANE))
    sender = browser
    if forgery == "missing":
        del fields["csrf_token"]
    elif forgery == "wrong":
        fields["csrf_token"] = fields["csrf_token"][:-1] + ("A" if fields["csrf_token"][-1] != "A" else "B")
    elif forgery == "from another browser":
        fields["csrf_token"] = other_csrf(portal.browser(), portal)
    else:
        sender = portal.browser()
    answer = sender.post(portal.url("/auth/code"), fields, follow=False)
    assert answer.status == 403
    assert "This form has expired" in answer
    assert SESSION not in sender.cookies
    # Nothing was used up, nothing counted: the real form still signs in.
    page = browser.submit(page, "/auth/code", code=code_for(smtp, JANE))
    assert page.url.endswith("/portal/dashboard")


def test_the_code_never_reaches_the_logs(portal, smtp, caplog):
    caplog.set_level(logging.DEBUG)
    browser, page = request_mail(portal, JANE)
    code = code_for(smtp, JANE)
    other = portal.browser()
    _, other_page = request_mail(portal, BOB, other)
    other.submit(other_page, "/auth/code", email=BOB, code=f"{code[:3]} {code[3:]}")  # a code, wrongly placed
    browser.submit(page, "/auth/code", code=f"{code[:3]}-{code[3:]}")
    assert is_signed_in(portal, browser)
    # The portal's own loggers and its HTTP server's (the test's SMTP server logs what it receives).
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("portal", "waitress"))
    assert f"sign-in code refused email={Signer(SECRET).pseudonym(BOB)}" in text  # the refusal is logged...
    for spelling in (code, f"{code[:3]} {code[3:]}", f"{code[:3]}-{code[3:]}"):
        assert spelling not in text, spelling  # ...never the code
    assert JANE not in text and BOB not in text


# ---------------------------------------------------------------------------
# A dead link's page says why, and offers a new link
# ---------------------------------------------------------------------------

def test_the_expired_link_page_says_so_and_offers_a_new_link_to_its_address(portal, smtp, clock):
    request_mail(portal, JANE)
    link = local(smtp.link_for(JANE))
    clock.advance(TTL + 1)
    page = portal.browser().get(link)
    assert page.status == 400
    assert f"This link has expired: links work for {MAGIC_LINK_MINUTES} minutes" in page
    assert "already used" not in page
    assert page.form("/auth/request").fields["email"] == JANE
    # Still so once the store has swept the link away (any request sweeps).
    clock.advance(120)
    request_mail(portal, BOB)
    page = portal.browser().get(link)
    assert f"This link has expired: links work for {MAGIC_LINK_MINUTES} minutes" in page
    assert page.form("/auth/request").fields["email"] == JANE


def test_an_expired_link_posted_from_its_open_page_says_expired(portal, smtp, clock):
    browser, _ = request_mail(portal, JANE)
    confirm = browser.get(local(smtp.link_for(JANE)))
    clock.advance(TTL + 1)
    page = browser.submit(confirm, "/auth/verify")
    assert page.status == 400 and "This link has expired" in page
    assert page.form("/auth/request").fields["email"] == JANE


def test_the_used_link_page_says_so_with_the_address_and_next_kept(portal, smtp, jane_ticket):
    browser = portal.browser()
    page = browser.get(portal.url(f"/tickets/{jane_ticket}"))
    browser.submit(page, "/auth/request", email=JANE)
    link = local(smtp.link_for(JANE))
    browser.submit(browser.get(link), "/auth/verify")
    page = portal.browser().get(link)
    assert page.status == 400
    assert page.header("Referrer-Policy") == "no-referrer"
    assert "This link was already used: each link works once" in page
    assert "has expired" not in page
    form = page.form("/auth/request")
    assert (form.fields["email"], form.fields["next"]) == (JANE, f"/tickets/{jane_ticket}")


@pytest.mark.parametrize("token", ["A" * 43, "garbled", ""])
def test_a_garbled_token_gets_the_generic_page_with_an_empty_address(portal, smtp, token):
    request_mail(portal, JANE)  # a real link exists, and is not this one
    page = portal.browser().get(portal.url("/auth/verify?" + urllib.parse.urlencode({"token": token})))
    assert page.status == 400
    assert f"Links work once and expire after {MAGIC_LINK_MINUTES} minutes" in page
    assert "has expired" not in page and "already used" not in page and "cancelled" not in page
    form = page.form("/auth/request")
    assert (form.fields["email"], form.fields["next"]) == ("", "")
    assert JANE not in page


def test_the_resend_form_mails_a_new_link_that_lands_on_the_kept_page(portal, smtp, jane_ticket):
    browser = portal.browser()
    page = browser.get(portal.url(f"/tickets/{jane_ticket}"))
    browser.submit(page, "/auth/request", email=JANE)
    link = local(smtp.link_for(JANE))
    browser.submit(browser.get(link), "/auth/verify")
    phone = portal.browser()
    page = phone.submit(phone.get(link), "/auth/request")
    assert page.status == 200 and "Check your e-mail" in page
    assert len([m for m in smtp.messages if m["To"] == JANE]) == 2
    assert local(smtp.link_for(JANE)) != link
    answer = phone.submit(page, "/auth/code", code=code_for(smtp, JANE), follow=False)
    assert answer.header("Location") == f"/portal/tickets/{jane_ticket}"


# ---------------------------------------------------------------------------
# Spanish
# ---------------------------------------------------------------------------

def test_the_code_the_mail_and_the_dead_link_pages_speak_spanish(portal, smtp, clock):
    browser = portal.browser()
    browser.submit(browser.get(portal.url("/")), "/lang", lang="es")
    _, page = request_mail(portal, JANE, browser)
    assert "Código del correo" in page and "Entrar con el código" in page
    text = smtp.messages[-1].get_body(("plain",)).get_content()
    assert "Or enter this code" not in text
    spanish = re.search(r"O escribe este código en la página de acceso: ([0-9]{3}) ([0-9]{3})", text)
    assert spanish, text
    assert "nadie puede entrar sin el enlace o el código" in text
    markup = smtp.messages[-1].get_body(("html",)).get_content()
    assert "O escribe este código en la página de acceso:" in html.unescape(markup)
    wrong = browser.submit(page, "/auth/code", code="000000" if spanish.group(1) != "000" else "999999")
    assert wrong.status == 400 and "Ese código no funciona" in wrong and html_lang(wrong) == "es"
    link = local(smtp.link_for(JANE))
    clock.advance(TTL + 1)
    expired = browser.get(link)
    assert "Este enlace ha caducado: los enlaces funcionan durante 15 minutos" in expired
    assert "Enviarme un enlace nuevo" in expired
    _, page = request_mail(portal, JANE, browser)
    browser.submit(page, "/auth/code", code=code_for(smtp, JANE))
    used = portal.browser(**{"Accept-Language": "es"}).get(local(smtp.link_for(JANE)))
    assert "Este enlace ya se ha usado: cada enlace funciona una sola vez" in used



# ---------------------------------------------------------------------------
# security.MagicLinkStore: the code logic on its own
# ---------------------------------------------------------------------------

def issue(store, contact_id=17, email=JANE, next_path=""):
    return store.issue_with_code(contact_id, email, "Jane", "en", next_path)


@pytest.mark.parametrize("typed, expected", [
    ("123456", "123456"), ("123 456", "123456"), ("123-456", "123456"), (" 123 - 456 ", "123456"),
    ("123\u2013456", "123456"), ("012345", "012345"), ("12345", ""), ("1234567", ""), ("12a456", ""),
    ("\u0661\u0662\u0663\u0664\u0665\u0666", ""), ("", ""), (None, ""), ("1" * 100, ""),
])
def test_a_typed_code_is_read_as_six_ascii_digits_or_nothing(typed, expected):
    assert normalize_code(typed) == expected


def test_a_code_is_six_digits_drawn_from_secrets_with_leading_zeros_kept(clock, monkeypatch):
    draws = []

    def randbelow(limit):
        draws.append(limit)
        return 42

    monkeypatch.setattr(security.secrets, "randbelow", randbelow)
    store = MagicLinkStore(TTL, clock)
    assert issue(store).code == "000042"
    assert draws == [10 ** 6]


def test_the_store_keeps_the_code_only_as_a_keyed_hash(clock, monkeypatch):
    monkeypatch.setattr(security.secrets, "randbelow", lambda limit: 424242)
    one = MagicLinkStore(TTL, clock, Signer(SECRET))
    again = MagicLinkStore(TTL, clock, Signer(SECRET))
    other_key = MagicLinkStore(TTL, clock, Signer("another-secret-" + "x" * 40))
    digests = []
    for store in (one, again, other_key):
        sent = issue(store)
        assert sent.code == "424242"
        digests.append(store.peek(sent.token).code_digest)
        held = [text for text in _strings_reachable_from(store) if not re.fullmatch(r"[0-9a-f]{64}", text)]
        assert JANE in held  # the scan reaches the stored links
        assert not [text for text in held if "424242" in text]
    assert digests[0] == digests[1] != digests[2]  # keyed with the portal's secret
    plain = {hashlib.sha256(value.encode()).hexdigest() for value in ("424242", f"{JANE}|424242", f"424242{JANE}")}
    assert not plain & set(digests)


def test_a_code_redeems_its_link_for_its_address_only(clock):
    store = MagicLinkStore(TTL, clock)
    jane = issue(store)
    bob = issue(store, 18, BOB)
    assert store.redeem_code(BOB, jane.code) is None
    assert store.redeem_code("JANE@Example.com ", f"{jane.code[:3]} {jane.code[3:]}").contact_id == 17
    assert store.redeem_code(JANE, jane.code) is None  # used
    assert store.consume(jane.token) is None
    assert store.redeem_code(BOB, bob.code).contact_id == 18


def test_wrong_codes_for_addresses_without_links_leave_nothing_behind(clock):
    store = MagicLinkStore(TTL, clock)
    issue(store)
    for n in range(2000):
        assert store.redeem_code(f"stranger{n}@example.org", "123456") is None
    assert not [text for text in _strings_reachable_from(store) if "stranger" in text]


def test_a_count_of_wrong_codes_ends_with_its_links(clock):
    store = MagicLinkStore(TTL, clock)
    old = issue(store)
    for _ in range(MAX_WRONG_CODES - 1):
        store.redeem_code(JANE, a_wrong_code(old.code))
    clock.advance(TTL + security.SWEEP_INTERVAL_SECONDS + 1)
    fresh = issue(store)  # sweeps the expired link, and its count with it
    for _ in range(MAX_WRONG_CODES - 1):
        store.redeem_code(JANE, a_wrong_code(fresh.code))
    assert store.redeem_code(JANE, fresh.code) is not None


def test_an_expired_code_is_refused_even_before_the_store_sweeps(clock):
    store = MagicLinkStore(TTL, clock)
    sent = issue(store)
    clock.advance(TTL - 1)
    store.redeem_code(BOB, "123456")  # a sweep now: the next is a minute away
    clock.advance(2)
    assert store.redeem_code(JANE, sent.code) is None


def test_the_retired_record_says_why_and_for_whom(clock):
    store = MagicLinkStore(TTL, clock)
    used, expired, ann_first = issue(store, next_path="/tickets/7"), issue(store, 18, BOB), issue(store, 19, "ann@example.com")
    store.consume(used.token)
    clock.advance(TTL - 1)
    valid_now = issue(store, 19, "ann@example.com")
    clock.advance(2)
    record = store.retired(used.token)
    assert (record.reason, record.email, record.next_path) == (USED, JANE, "/tickets/7")
    assert store.retired(expired.token).reason == EXPIRED  # not swept yet
    assert store.retired(valid_now.token) is None  # still valid: nothing to explain
    clock.advance(security.SWEEP_INTERVAL_SECONDS + 1)
    issue(store, 20, "joann@example.com")  # sweeps
    assert (store.retired(expired.token).reason, store.retired(expired.token).email) == (EXPIRED, BOB)
    assert store.retired(ann_first.token).reason == EXPIRED
    assert store.retired("A" * 43) is None and store.retired("") is None and store.retired(None) is None


def test_the_retired_record_forgets_after_a_day_and_is_capped(clock, monkeypatch):
    store = MagicLinkStore(TTL, clock)
    sent = issue(store)
    store.consume(sent.token)
    clock.advance(RETIRED_LINK_SECONDS + security.SWEEP_INTERVAL_SECONDS + 1)
    issue(store, 18, BOB)  # sweeps
    assert store.retired(sent.token) is None
    monkeypatch.setattr(security, "MAX_RETIRED_LINKS", 3)
    tokens = []
    for n in range(5):
        tokens.append(issue(store, 100 + n, f"person{n}@example.org").token)
        store.consume(tokens[-1])
    assert [store.retired(token) is not None for token in tokens] == [False, False, True, True, True]


def _strings_reachable_from(root):
    """Every str/bytes held anywhere inside an object graph (dicts, sequences, attributes)."""
    seen, stack, found = set(), [root], []
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, (str, bytes)):
            found.append(item if isinstance(item, str) else item.decode("latin-1"))
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
        elif hasattr(item, "__dict__"):
            stack.extend(vars(item).values())
    return found


def test_new_mails_do_not_buy_endless_guesses_twenty_wrong_codes_a_day_stop_the_codes(clock):
    store = MagicLinkStore(TTL, clock)
    for _ in range(security.WRONG_CODES_PER_DAY):  # a fresh mail whenever the last was locked
        if not len(store):
            store.issue_with_code(17, "jane@example.com", "Jane", "en", "")
        assert store.redeem_code("jane@example.com", "000000") is None
    sent = store.issue_with_code(17, "jane@example.com", "Jane", "en", "")
    assert store.redeem_code("jane@example.com", sent.code) is None  # codes are off for today
    assert store.consume(sent.token) is not None  # the link in the mail still works
    clock.advance(86400 + 1)
    sent = store.issue_with_code(17, "jane@example.com", "Jane", "en", "")
    assert store.redeem_code("jane@example.com", sent.code) is not None  # a new day
