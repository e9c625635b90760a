"""Sign-in, magic links, sessions and language, end to end through real sockets.

Issue points 1 (sign-in), 2 (sessions) and 7 (English and Spanish). Every test
drives the portal the way a browser does: it reads the mailed link from the real
SMTP server, posts the page's own forms and keeps cookies.
"""

import html
import http.cookies
import re
import urllib.parse

import pytest

import conftest
from conftest import both_backends  # noqa: F401  (every test here runs on memory and on Redis)
import i18n
from conftest import SECRET, sign_in
from portal import SIGNIN_PER_ADDRESS, SIGNIN_PER_IP
from security import Signer

LINK = re.compile(r"http://portal\.test/portal/auth/verify\?token=([A-Za-z0-9_-]+)")
SESSION = "portal_session"
IDLE_MINUTES = 30
MAGIC_LINK_MINUTES = 15


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def request_link(portal, address, browser=None, **fields):
    """Open the sign-in page and ask for a link; returns (browser, answer page)."""
    browser = browser or portal.browser()
    page = browser.get(portal.url("/"))
    return browser, browser.submit(page, "/auth/request", email=address, **fields)


def local(link):
    """The mailed absolute link as a path the test browser can open."""
    return urllib.parse.urlsplit(link)._replace(scheme="", netloc="").geturl()


def mails_to(smtp, address):
    return [m for m in smtp.messages if m["To"] == address]


def choose_language(portal, browser, lang):
    page = browser.get(portal.url("/"))
    return browser.submit(page, "/lang", lang=lang)


def set_cookies(page, name):
    """Parsed Set-Cookie morsels called `name` in one response."""
    found = []
    for value in page.headers_named("Set-Cookie"):
        cookie = http.cookies.SimpleCookie()
        cookie.load(value)
        if name in cookie:
            found.append(cookie[name])
    return found


def html_lang(page):
    match = re.search(r"<html[^>]*\blang=\"([^\"]*)\"", page.text)
    return match.group(1) if match else None


def visible_text(page):
    return html.unescape(re.sub(r"<[^>]+>", " ", page.text))


def english_leftovers(page):
    """English UI strings on a page that should be entirely Spanish."""
    text = visible_text(page)
    return [en for en, es in i18n.MESSAGES.values()
            if en != es and "{" not in en and len(en) >= 5 and en in text]


def is_signed_in(portal, browser):
    page = browser.get(portal.url("/dashboard"))
    return page.status == 200 and page.url.endswith("/portal/dashboard")


@pytest.fixture
def https_portal(fake, smtp, clock):
    running = conftest.start_portal(
        conftest.portal_settings(fake, smtp, PORTAL_URL="https://x.test"), clock)
    yield running
    running.close()


def start_behind_proxy(settings, clock):
    """The portal as nginx reaches it: X-Forwarded-For arrives from 127.0.0.1."""
    return conftest.start_portal(settings, clock)


@pytest.fixture
def proxied_portal(fake, smtp, clock):
    """Behind nginx on this host: TRUSTED_PROXY is 127.0.0.1, the test's own address."""
    running = start_behind_proxy(conftest.portal_settings(fake, smtp), clock)
    yield running
    running.close()


@pytest.fixture
def jane_ticket(fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, subject="Impresora rota")
    fake.add_message(ticket, "La impresora no imprime.")
    return ticket


# ---------------------------------------------------------------------------
# 1. Asking for a link
# ---------------------------------------------------------------------------

def test_a_known_address_gets_exactly_one_mail_with_a_text_and_an_html_part(portal, smtp):
    _, page = request_link(portal, "jane@example.com")
    assert page.status == 200
    assert len(smtp.messages) == 1
    message = smtp.messages[0]
    assert message["To"] == "jane@example.com"
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)) is not None
    assert message.get_body(("html",)) is not None


def test_both_parts_of_the_mail_carry_the_public_link_with_a_32_byte_token(portal, smtp):
    request_link(portal, "jane@example.com")
    message = smtp.messages[0]
    text = message.get_body(("plain",)).get_content()
    markup = message.get_body(("html",)).get_content()
    text_tokens = LINK.findall(text)
    html_tokens = LINK.findall(html.unescape(markup))
    assert text_tokens and html_tokens
    assert set(text_tokens) == set(html_tokens)
    assert f'href="http://portal.test/portal/auth/verify?token={text_tokens[0]}"' in markup
    assert len(text_tokens[0]) == 43  # 32 random bytes, base64url without padding


def test_every_request_mails_a_different_token(portal, smtp):
    browser, _ = request_link(portal, "jane@example.com")
    request_link(portal, "jane@example.com", browser)
    tokens = [LINK.search(m.get_body(("plain",)).get_content()).group(1) for m in smtp.messages]
    assert len(tokens) == 2 and tokens[0] != tokens[1]


def test_the_address_is_matched_case_insensitively_ignoring_surrounding_spaces(portal, smtp):
    browser, page = request_link(portal, "JANE@Example.COM ")
    assert page.status == 200
    assert [m["To"] for m in smtp.messages] == ["jane@example.com"]
    page = browser.get(local(smtp.link_for("jane@example.com")))
    page = browser.submit(page, "/auth/verify")
    assert page.url.endswith("/portal/dashboard")
    assert "jane@example.com" in page


def test_ann_signs_in_as_ann_and_never_as_joann(portal, smtp, fake):
    fake.add_conversation(fake.ann, fake.api_inbox, subject="Ann printer")
    fake.add_conversation(fake.joann, fake.api_inbox, subject="Joann private matter")
    browser, page = sign_in(portal, smtp, "ann@example.com")
    assert [m["To"] for m in smtp.messages] == ["ann@example.com"]
    assert "Signed in as ann@example.com" in page
    assert "Ann printer" in page
    assert "Joann private matter" not in page
    assert "joann" not in page.text.lower()


@pytest.mark.parametrize("fragment", ["nn@example.com", "ob@example.com", "ane@example.com"])
def test_a_fragment_of_a_contact_address_gets_no_mail(portal, smtp, fragment):
    _, page = request_link(portal, fragment)
    assert page.status == 200
    assert smtp.messages == []


def test_a_near_miss_returned_by_chatwoot_is_never_taken(portal, smtp, fake):
    near_miss = {"meta": {"count": 1, "current_page": 1},
                 "payload": [{"id": fake.joann, "name": "Joann Park", "email": "joann@example.com"}]}
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    fake.set_fault("status", status=200, body=near_miss, count=1)
    page = browser.submit(page, "/auth/request", email="ann@example.com")
    assert page.status == 200
    assert smtp.messages == []


def test_the_contact_is_looked_up_with_contacts_filter_and_never_with_search(portal, smtp, fake):
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    fake.reset_calls()
    browser.submit(page, "/auth/request", email="bob@example.com")
    paths = [(method, path) for method, path, _ in fake.calls]
    assert ("POST", f"/api/v1/accounts/{fake.account_id}/contacts/filter") in paths
    assert not any(path.endswith("/contacts/search") for _, path in paths)
    assert len(smtp.messages) == 1


def test_an_unknown_address_gets_no_mail(portal, smtp):
    _, page = request_link(portal, "nobody@example.org")
    assert page.status == 200
    assert smtp.messages == []


def test_known_and_unknown_addresses_get_the_very_same_page(portal, smtp):
    browser = portal.browser()
    _, known = request_link(portal, "jane@example.com", browser)
    _, unknown = request_link(portal, "nobody@example.org", browser)
    assert known.status == unknown.status == 200
    assert "jane@example.com" in known and "nobody@example.org" in unknown
    assert known.text.replace("jane@example.com", "ADDRESS") == unknown.text.replace("nobody@example.org", "ADDRESS")
    assert len(smtp.messages) == 1


@pytest.mark.parametrize("address", [
    "jane@example.com\r\nBcc: victim@example.net",
    "jane@example.com\r\nX-Injected:yes",
    "jane@example.com\nx",
    "jane@exa\rmple.com",
    "jane\r\n@example.com",
])
def test_an_address_with_cr_or_lf_is_refused_without_asking_chatwoot(portal, smtp, fake, address):
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    fake.reset_calls()
    page = browser.submit(page, "/auth/request", email=address)
    assert page.status == 400
    assert "That does not look like an e-mail address" in page
    assert fake.calls == []
    assert smtp.messages == []


@pytest.mark.parametrize("address", [
    "jane", "jane@", "@example.com", "jane@example", "jane doe@example.com",
    "jane@@example.com", "jane@example.c", "a" * 250 + "@example.com",
])
def test_an_address_with_invalid_syntax_is_refused_without_asking_chatwoot(portal, smtp, fake, address):
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    fake.reset_calls()
    page = browser.submit(page, "/auth/request", email=address)
    assert page.status == 400
    assert "That does not look like an e-mail address" in page
    assert page.form("/auth/request").fields["csrf_token"]  # the form is offered again
    assert fake.calls == []
    assert smtp.messages == []


def test_an_empty_address_asks_for_one(portal, smtp, fake):
    fake.reset_calls()
    _, page = request_link(portal, "   ")
    assert page.status == 400
    assert "Please enter your e-mail address." in page
    assert not any(path.endswith("/contacts/filter") for _, path, _ in fake.calls)


def test_the_refusal_of_an_invalid_address_is_in_spanish_when_the_ui_is(portal, smtp):
    browser = portal.browser()
    choose_language(portal, browser, "es")
    _, page = request_link(portal, "jane@example.com\r\nBcc: x@example.net", browser)
    assert page.status == 400
    assert "Eso no parece una dirección de correo" in page
    assert "does not look like" not in page


# ---------------------------------------------------------------------------
# 1. Rate limits
# ---------------------------------------------------------------------------

def test_requests_beyond_the_per_address_limit_get_429_and_no_mail(portal, smtp):
    limit = SIGNIN_PER_ADDRESS[0]
    browser = portal.browser()
    for _ in range(limit):
        _, page = request_link(portal, "jane@example.com", browser)
        assert page.status == 200
    _, page = request_link(portal, "jane@example.com", browser)
    assert page.status == 429
    assert "Too many sign-in requests" in page
    assert len(mails_to(smtp, "jane@example.com")) == limit


def test_the_per_address_limit_ignores_the_spelling_of_the_address(portal, smtp):
    limit = SIGNIN_PER_ADDRESS[0]
    spellings = ["jane@example.com", "JANE@example.com", " Jane@Example.Com", "jane@EXAMPLE.com"]
    for number in range(limit):
        request_link(portal, spellings[number % len(spellings)])
    _, page = request_link(portal, "JaNe@ExAmPlE.cOm")
    assert page.status == 429
    assert len(smtp.messages) == limit


def test_the_rate_limited_page_keeps_the_typed_address_and_speaks_spanish(portal, smtp):
    browser = portal.browser()
    choose_language(portal, browser, "es")
    for _ in range(SIGNIN_PER_ADDRESS[0]):
        request_link(portal, "Jane@Example.com", browser)
    _, page = request_link(portal, "Jane@Example.com", browser)
    assert page.status == 429
    assert "Demasiadas solicitudes de acceso" in page
    assert page.form("/auth/request").fields["email"] == "Jane@Example.com"


def test_one_address_at_its_limit_does_not_block_another(portal, smtp):
    browser = portal.browser()
    for _ in range(SIGNIN_PER_ADDRESS[0] + 1):
        request_link(portal, "jane@example.com", browser)
    _, page = request_link(portal, "bob@example.com", browser)
    assert page.status == 200
    assert len(mails_to(smtp, "bob@example.com")) == 1


def test_the_per_address_limit_lifts_when_its_window_has_passed(portal, smtp, clock):
    limit, window = SIGNIN_PER_ADDRESS
    for _ in range(limit + 1):
        request_link(portal, "jane@example.com")
    clock.advance(window + 1)
    _, page = request_link(portal, "jane@example.com")
    assert page.status == 200
    assert len(smtp.messages) == limit + 1


def test_one_client_ip_is_limited_across_many_addresses(portal, smtp):
    browser = portal.browser()
    for number in range(SIGNIN_PER_IP[0]):
        _, page = request_link(portal, f"stranger{number}@example.org", browser)
        assert page.status == 200
    _, page = request_link(portal, "jane@example.com", browser)
    assert page.status == 429
    assert "Too many sign-in requests" in page
    assert page.form("/auth/request").fields["email"] == "jane@example.com"
    assert smtp.messages == []


def test_another_client_behind_the_trusted_proxy_is_not_limited_by_the_first(proxied_portal, smtp):
    first = proxied_portal.browser(**{"X-Forwarded-For": "203.0.113.10"})
    for number in range(SIGNIN_PER_IP[0]):
        request_link(proxied_portal, f"stranger{number}@example.org", first)
    _, page = request_link(proxied_portal, "jane@example.com", first)
    assert page.status == 429
    second = proxied_portal.browser(**{"X-Forwarded-For": "203.0.113.20"})
    _, page = request_link(proxied_portal, "jane@example.com", second)
    assert page.status == 200
    assert len(smtp.messages) == 1


def test_a_forged_forwarded_for_header_from_an_untrusted_peer_does_not_escape_the_ip_limit(fake, smtp, clock):
    running = start_behind_proxy(conftest.portal_settings(fake, smtp, TRUSTED_PROXY="192.0.2.1"), clock)
    try:
        for number in range(SIGNIN_PER_IP[0]):
            request_link(running, f"stranger{number}@example.org",
                         running.browser(**{"X-Forwarded-For": f"198.51.100.{number}"}))
        _, page = request_link(running, "jane@example.com",
                               running.browser(**{"X-Forwarded-For": "198.51.100.250"}))
        assert page.status == 429
        assert smtp.messages == []
    finally:
        running.close()


def test_the_mail_is_in_spanish_when_the_ui_is_spanish(portal, smtp):
    browser = portal.browser()
    choose_language(portal, browser, "es")
    _, page = request_link(portal, "jane@example.com", browser)
    assert "Revisa tu correo" in page
    message = smtp.messages[0]
    assert message["Subject"] == "Tu enlace de acceso"
    text = message.get_body(("plain",)).get_content()
    markup = message.get_body(("html",)).get_content()
    assert "Hola, Jane Doe:" in text and "Usa este enlace" in text
    assert "Use this link" not in text
    assert 'lang="es"' in markup and "Entrar al portal de soporte" in markup


def test_the_mail_is_in_english_by_default(portal, smtp):
    request_link(portal, "jane@example.com")
    message = smtp.messages[0]
    assert message["Subject"] == "Your sign-in link"
    assert "Hello Jane Doe," in message.get_body(("plain",)).get_content()


def test_a_signed_in_customer_opening_the_sign_in_page_goes_to_the_dashboard(portal, smtp):
    browser, _ = sign_in(portal, smtp, "jane@example.com")
    page = browser.get(portal.url("/"))
    assert page.url.endswith("/portal/dashboard")


# ---------------------------------------------------------------------------
# 1. Following the link
# ---------------------------------------------------------------------------

def test_opening_the_link_shows_a_confirmation_page_sent_with_no_referrer(portal, smtp):
    browser, _ = request_link(portal, "jane@example.com")
    page = browser.get(local(smtp.link_for("jane@example.com")))
    assert page.status == 200
    assert page.header("Referrer-Policy") == "no-referrer"
    assert "Press the button to finish signing in as jane@example.com" in page
    assert page.form("/auth/verify").fields["token"]
    assert SESSION not in browser.cookies


def test_the_confirmation_page_does_not_weaken_no_referrer_with_a_meta_tag(portal, smtp):
    # A <meta name="referrer"> overrides the header in browsers; with "same-origin"
    # the page's own style, script and logo requests would carry the token in Referer.
    browser, _ = request_link(portal, "jane@example.com")
    page = browser.get(local(smtp.link_for("jane@example.com")))
    metas = re.findall(r"<meta[^>]*name=\"referrer\"[^>]*content=\"([^\"]*)\"", page.text)
    assert all(content == "no-referrer" for content in metas), metas


def test_opening_the_link_twice_does_not_use_it_up(portal, smtp):
    browser, _ = request_link(portal, "jane@example.com")
    link = local(smtp.link_for("jane@example.com"))
    first = browser.get(link)
    second = portal.browser().get(link)  # a mail scanner prefetching it
    assert first.status == second.status == 200
    page = browser.get(link)
    page = browser.submit(page, "/auth/verify")
    assert page.url.endswith("/portal/dashboard")
    assert "Signed in as jane@example.com" in page


def test_posting_the_link_signs_in_once_and_a_second_post_is_refused(portal, smtp):
    browser, _ = request_link(portal, "jane@example.com")
    confirm = browser.get(local(smtp.link_for("jane@example.com")))
    page = browser.submit(confirm, "/auth/verify")
    assert page.status == 200 and page.url.endswith("/portal/dashboard")
    other = portal.browser()
    csrf = other.get(portal.url("/")).form("/lang").fields["csrf_token"]
    again = other.post(portal.url("/auth/verify"),
                       {"csrf_token": csrf, "token": confirm.form("/auth/verify").fields["token"]})
    assert again.status == 400
    assert "This sign-in link no longer works" in again
    assert SESSION not in other.cookies


def test_a_used_link_is_refused_in_the_chosen_language(portal, smtp):
    browser = portal.browser()
    choose_language(portal, browser, "es")
    request_link(portal, "jane@example.com", browser)
    link = local(smtp.link_for("jane@example.com"))
    # A second device opened the same link; the first one uses it up.
    other = portal.browser()
    choose_language(portal, other, "es")
    other_confirm = other.get(link)
    browser.submit(browser.get(link), "/auth/verify")
    again = other.submit(other_confirm, "/auth/verify")
    assert again.status == 400
    assert again.header("Referrer-Policy") == "no-referrer"
    assert "Este enlace de acceso ya no funciona" in again
    assert html_lang(again) == "es"


def test_a_used_link_opened_again_shows_the_invalid_link_page(portal, smtp):
    browser, _ = sign_in(portal, smtp, "jane@example.com")
    page = portal.browser().get(local(smtp.link_for("jane@example.com")))
    assert page.status == 400
    assert "This sign-in link no longer works" in page


def test_an_expired_link_is_refused(portal, smtp, clock):
    browser, _ = request_link(portal, "jane@example.com")
    clock.advance(MAGIC_LINK_MINUTES * 60 + 1)
    page = browser.get(local(smtp.link_for("jane@example.com")))
    assert page.status == 400
    assert "This sign-in link no longer works" in page
    assert f"This link has expired: links work for {MAGIC_LINK_MINUTES} minutes" in page
    assert not page.forms or not any(f.action.endswith("/auth/verify") for f in page.forms)


def test_a_link_that_expires_while_its_confirmation_page_is_open_is_refused(portal, smtp, clock):
    browser, _ = request_link(portal, "jane@example.com")
    confirm = browser.get(local(smtp.link_for("jane@example.com")))
    assert confirm.status == 200
    clock.advance(MAGIC_LINK_MINUTES * 60 + 1)
    page = browser.submit(confirm, "/auth/verify")
    assert page.status == 400
    assert "This sign-in link no longer works" in page
    assert SESSION not in browser.cookies


def test_a_link_still_works_a_minute_before_it_expires(portal, smtp, clock):
    browser, _ = request_link(portal, "jane@example.com")
    clock.advance((MAGIC_LINK_MINUTES - 1) * 60)
    page = browser.submit(browser.get(local(smtp.link_for("jane@example.com"))), "/auth/verify")
    assert page.url.endswith("/portal/dashboard")


def test_a_made_up_token_shows_the_invalid_link_page(portal):
    browser = portal.browser()
    page = browser.get(portal.url("/auth/verify?token=" + "A" * 43))
    assert page.status == 400
    assert page.header("Referrer-Policy") == "no-referrer"
    assert "This sign-in link no longer works" in page
    page = browser.get(portal.url("/auth/verify"))
    assert page.status == 400


def test_a_planted_session_cookie_is_replaced_at_sign_in(portal, smtp):
    browser = portal.browser()
    browser.cookies[SESSION] = "attacker-chosen-id.forged-signature"
    browser, _ = sign_in(portal, smtp, "jane@example.com", browser)
    assert browser.cookies[SESSION] != "attacker-chosen-id.forged-signature"
    assert "attacker-chosen-id" not in browser.cookies[SESSION]
    assert is_signed_in(portal, browser)


def test_signing_in_again_gives_a_new_session_and_ends_the_old_one(portal, smtp):
    browser, _ = sign_in(portal, smtp, "jane@example.com")
    old = browser.cookies[SESSION]
    request_link(portal, "bob@example.com")  # asked for on another device
    confirm = browser.get(local(smtp.link_for("bob@example.com")))
    answer = browser.submit(confirm, "/auth/verify", follow=False)
    assert answer.status == 303
    new = browser.cookies[SESSION]
    assert new != old
    assert "Signed in as bob@example.com" in browser.get(portal.url("/dashboard"))
    replay = portal.browser()
    replay.cookies[SESSION] = old
    assert not is_signed_in(portal, replay)


def test_a_signed_out_visit_to_a_ticket_signs_in_and_lands_on_that_ticket(portal, smtp, jane_ticket):
    browser = portal.browser()
    jump = browser.get(portal.url(f"/tickets/{jane_ticket}"), follow=False)
    assert jump.status == 303
    location = urllib.parse.urlsplit(jump.header("Location"))
    assert location.path == "/portal/"
    assert urllib.parse.parse_qs(location.query)["next"] == [f"/tickets/{jane_ticket}"]
    page = browser.get(jump.header("Location"))
    assert "Please sign in to continue." in page
    assert page.form("/auth/request").fields["next"] == f"/tickets/{jane_ticket}"
    browser.submit(page, "/auth/request", email="jane@example.com")
    confirm = browser.get(local(smtp.link_for("jane@example.com")))
    answer = browser.submit(confirm, "/auth/verify", follow=False)
    assert answer.header("Location") == f"/portal/tickets/{jane_ticket}"
    page = browser.get(answer.header("Location"))
    assert page.status == 200 and "Impresora rota" in page


@pytest.mark.parametrize("hostile", [
    "//evil.example", "https://evil.example", "/\\evil.example", "http:/evil.example",
    "/tickets/1/../../../../evil", "javascript:alert(1)", "/logout", "/tickets/1/cancel",
])
def test_a_hostile_next_lands_on_the_dashboard(portal, smtp, hostile):
    browser = portal.browser()
    page = browser.get(portal.url("/?" + urllib.parse.urlencode({"next": hostile})))
    assert hostile not in page.form("/auth/request").fields["next"]
    browser.submit(page, "/auth/request", email="jane@example.com", next=hostile)  # forced, too
    confirm = browser.get(local(smtp.link_for("jane@example.com")))
    answer = browser.submit(confirm, "/auth/verify", follow=False)
    assert answer.status == 303
    assert answer.header("Location") == "/portal/dashboard"


# ---------------------------------------------------------------------------
# 2. Sessions
# ---------------------------------------------------------------------------

def test_the_session_cookie_is_httponly_lax_scoped_to_the_portal_and_not_secure_over_http(portal, smtp):
    browser, _ = request_link(portal, "jane@example.com")
    confirm = browser.get(local(smtp.link_for("jane@example.com")))
    answer = browser.submit(confirm, "/auth/verify", follow=False)
    (cookie,) = set_cookies(answer, SESSION)
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/portal"
    assert not cookie["secure"]


def test_the_session_cookie_value_is_a_signed_random_id(portal, smtp):
    first, _ = sign_in(portal, smtp, "jane@example.com")
    second, _ = sign_in(portal, smtp, "jane@example.com")
    one, two = first.cookies[SESSION], second.cookies[SESSION]
    assert one != two
    for value in (one, two):
        session_id, _, signature = value.rpartition(".")
        assert len(session_id) >= 32 and signature
        assert "jane" not in value.lower()


def test_every_cookie_is_secure_when_the_portal_url_is_https(https_portal, smtp):
    browser = https_portal.browser()
    page = browser.get(https_portal.url("/"))
    cookies = set_cookies(page, "portal_csrf")
    page = browser.submit(page, "/lang", lang="es")
    page = browser.submit(page, "/lang", lang="en", follow=False)
    cookies += set_cookies(page, "portal_lang")
    page = browser.get(https_portal.url("/"))
    browser.submit(page, "/auth/request", email="jane@example.com")
    link = smtp.link_for("jane@example.com")
    assert link.startswith("https://x.test/portal/auth/verify?token=")
    confirm = browser.get(local(link))
    answer = browser.submit(confirm, "/auth/verify", follow=False)
    cookies += set_cookies(answer, SESSION)
    assert {c.key for c in cookies} == {"portal_csrf", "portal_lang", SESSION}
    for cookie in cookies:
        assert cookie["secure"] is True, cookie.OutputString()
        assert cookie["httponly"] is True and cookie["samesite"] == "Lax" and cookie["path"] == "/portal"
    assert browser.get(https_portal.url("/dashboard")).url.endswith("/portal/dashboard")


def test_an_active_customer_stays_signed_in_for_two_hours(portal, smtp, clock):
    browser, _ = sign_in(portal, smtp, "jane@example.com")
    for _ in range(6):
        clock.advance(20 * 60)
        page = browser.get(portal.url("/dashboard"))
        assert page.url.endswith("/portal/dashboard"), page.url
        assert "Signed in as jane@example.com" in page


def test_thirty_one_idle_minutes_end_the_session_with_a_notice(portal, smtp, clock):
    browser, _ = sign_in(portal, smtp, "jane@example.com")
    clock.advance(29 * 60)
    assert is_signed_in(portal, browser)
    clock.advance((IDLE_MINUTES + 1) * 60)
    page = browser.get(portal.url("/dashboard"))
    assert page.status == 200
    assert urllib.parse.urlsplit(page.url).path == "/portal/"
    assert "Your session has ended. Please sign in again." in page
    assert page.form("/auth/request").fields["next"] == "/dashboard"


def test_an_ended_session_does_not_come_back_when_used_again(portal, smtp, clock):
    browser, _ = sign_in(portal, smtp, "jane@example.com")
    clock.advance((IDLE_MINUTES + 1) * 60)
    assert not is_signed_in(portal, browser)
    clock.advance(-(IDLE_MINUTES + 1) * 60)  # even if the clock went back
    assert not is_signed_in(portal, browser)


def _tamper(value):
    session_id, _, signature = value.rpartition(".")
    flipped = ("B" if signature[-1] != "B" else "C")
    return [
        value[:-1] + flipped,
        session_id + "." + signature[:-2],
        session_id,
        "x" + value,
        session_id[:-1] + ("a" if session_id[-1] != "a" else "b") + "." + signature,
        "." + signature,
        "garbage",
        '"\\x00;,=',
    ]


@pytest.mark.parametrize("variant", range(8))
def test_a_tampered_session_cookie_simply_means_signed_out(portal, smtp, variant):
    browser, _ = sign_in(portal, smtp, "jane@example.com")
    forged = portal.browser()
    forged.cookies[SESSION] = _tamper(browser.cookies[SESSION])[variant]
    page = forged.get(portal.url("/dashboard"))
    assert page.status == 200
    assert urllib.parse.urlsplit(page.url).path == "/portal/"
    assert page.form("/auth/request")
    assert "jane@example.com" not in page
    assert forged.get(portal.url("/")).status == 200


def test_a_session_cookie_signed_with_another_secret_means_signed_out(portal, smtp):
    browser, _ = sign_in(portal, smtp, "jane@example.com")
    session_id = browser.cookies[SESSION].rpartition(".")[0]
    assert Signer(SECRET).sign("session", session_id) == browser.cookies[SESSION]  # the real scheme
    forged = portal.browser()
    forged.cookies[SESSION] = Signer("another-secret-" + "x" * 40).sign("session", session_id)
    assert not is_signed_in(portal, forged)
    forged.cookies[SESSION] = Signer(SECRET).sign("csrf", session_id)  # right key, wrong purpose
    assert not is_signed_in(portal, forged)


def test_logout_ends_the_session_on_the_server(portal, smtp):
    browser, page = sign_in(portal, smtp, "jane@example.com")
    old = browser.cookies[SESSION]
    answer = browser.submit(page, "/logout", follow=False)
    assert answer.status == 303
    (cleared,) = set_cookies(answer, SESSION)
    assert cleared.value == "" and cleared["max-age"] == "0"
    page = browser.get(answer.header("Location"))
    assert "You have signed out." in page
    assert not is_signed_in(portal, browser)
    replay = portal.browser()
    replay.cookies[SESSION] = old
    page = replay.get(portal.url("/dashboard"))
    assert urllib.parse.urlsplit(page.url).path == "/portal/"
    assert "jane@example.com" not in page


# ---------------------------------------------------------------------------
# 7. Language
# ---------------------------------------------------------------------------

def test_pages_are_in_english_by_default(portal):
    page = portal.browser().get(portal.url("/"))
    assert html_lang(page) == "en"
    assert "Sign in to see your tickets" in page
    assert "Inicia sesión" not in page


def test_choosing_spanish_switches_every_page_and_the_html_lang(portal, smtp, jane_ticket):
    browser, page = sign_in(portal, smtp, "jane@example.com")
    answer = browser.submit(page, "/lang", lang="es", follow=False)
    assert answer.status == 303
    pages = {
        "dashboard": (browser.get(answer.header("Location")), "Mis tickets"),
        "ticket": (browser.get(portal.url(f"/tickets/{jane_ticket}")), "Todos los tickets"),
        "new ticket": (browser.get(portal.url("/tickets/new")), "Abrir un ticket nuevo"),
        "404": (browser.get(portal.url("/no-such-page")), "Página no encontrada"),
    }
    browser.submit(pages["dashboard"][0], "/logout")
    pages["sign-in"] = (browser.get(portal.url("/")), "Inicia sesión para ver tus tickets")
    for name, (page, spanish) in pages.items():
        assert html_lang(page) == "es", name
        assert spanish in page, name
        assert english_leftovers(page) == [], (name, english_leftovers(page))


def test_the_language_switch_returns_to_the_same_page(portal, smtp, jane_ticket):
    browser, _ = sign_in(portal, smtp, "jane@example.com")
    page = browser.get(portal.url(f"/tickets/{jane_ticket}"))
    page = browser.submit(page, "/lang", lang="es")
    assert page.url.endswith(f"/portal/tickets/{jane_ticket}")
    assert "Todos los tickets" in page


def test_the_language_choice_survives_sign_in(portal, smtp):
    browser = portal.browser()
    choose_language(portal, browser, "es")
    browser, page = sign_in(portal, smtp, "jane@example.com", browser)
    assert page.url.endswith("/portal/dashboard")
    assert html_lang(page) == "es"
    assert "Mis tickets" in page


def test_a_link_asked_for_in_spanish_signs_in_in_spanish_on_another_device(portal, smtp):
    desktop = portal.browser()
    choose_language(portal, desktop, "es")
    request_link(portal, "jane@example.com", desktop)
    phone = portal.browser()
    page = phone.submit(phone.get(local(smtp.link_for("jane@example.com"))), "/auth/verify")
    assert page.url.endswith("/portal/dashboard")
    assert html_lang(page) == "es"


def test_switching_back_to_english_works(portal):
    browser = portal.browser()
    page = choose_language(portal, browser, "es")
    assert html_lang(page) == "es"
    page = browser.submit(page, "/lang", lang="en")
    assert html_lang(page) == "en"
    assert "Sign in to see your tickets" in page


@pytest.mark.parametrize("value", ["fr", "", "ES", "es-ES", "en\r\nSet-Cookie: x=y"])
def test_an_invalid_language_is_refused_with_400(portal, value):
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    answer = browser.submit(page, "/lang", lang=value, follow=False)
    assert answer.status == 400
    assert set_cookies(answer, "portal_lang") == []
    assert html_lang(browser.get(portal.url("/"))) == "en"


@pytest.mark.parametrize("header", ["es", "es-ES,es;q=0.9,en;q=0.8", "fr-FR, es;q=0.5"])
def test_accept_language_picks_spanish_when_there_is_no_cookie(portal, header):
    page = portal.browser(**{"Accept-Language": header}).get(portal.url("/"))
    assert html_lang(page) == "es"
    assert "Inicia sesión para ver tus tickets" in page


def test_accept_language_for_an_unsupported_language_falls_back_to_english(portal):
    page = portal.browser(**{"Accept-Language": "de-DE,fr;q=0.8"}).get(portal.url("/"))
    assert html_lang(page) == "en"


def test_the_chosen_language_wins_over_accept_language(portal):
    browser = portal.browser(**{"Accept-Language": "es"})
    page = choose_language(portal, browser, "en")
    assert html_lang(page) == "en"
    assert html_lang(browser.get(portal.url("/auth/verify?token=x"))) == "en"


def test_even_an_always_active_session_ends_twelve_hours_after_sign_in(portal, smtp, clock):
    browser, _ = sign_in(portal, smtp, "jane@example.com")
    for _ in range(35):  # a request every 20 minutes for 11 h 40 min
        clock.advance(20 * 60)
        assert is_signed_in(portal, browser)
    clock.advance(21 * 60)
    assert not is_signed_in(portal, browser)
