"""Unit tests of the pure parts: signing, stores, i18n, configuration, helpers, JSON mapping.

Nothing here starts the portal. Time moves through the `clock` fixture, never by
sleeping. The only sockets are the deliberately broken "Chatwoots" at the end,
which prove that no `urllib`/`http.client`/`socket` error escapes the client.
"""

import dataclasses
import datetime
import re
import socket
import string
import threading
import time
from pathlib import Path

import pytest

import i18n
from chatwoot_client import (
    STATUSES,
    ChatwootClient,
    ChatwootNotFound,
    ChatwootRejected,
    ChatwootUnavailable,
    _decode,
    _public_messages,
    _ticket,
)
from config import ConfigError, load_config, read_dotenv
from portal import COMPILED_ROUTES, ROUTES, Portal, Response, _client_ip, _route_label, _safe_next
from security import MAX_FORMS_PER_SESSION, DoneOnce, MagicLinkStore, RateLimiter, SessionStore, Signer

ROOT = Path(__file__).resolve().parent.parent
SECRET = "unit-secret-0123456789abcdef0123456789abcdef"
OTHER_SECRET = "unit-other-secret-fedcba9876543210fedcba98765"


# ---------------------------------------------------------------------------
# security.Signer
# ---------------------------------------------------------------------------

def test_a_signed_value_unsigns_to_itself_for_the_same_purpose():
    signer = Signer(SECRET)
    assert signer.unsign("session", signer.sign("session", "abc123")) == "abc123"


def test_a_signed_value_containing_dots_unsigns_whole():
    signer = Signer(SECRET)
    assert signer.unsign("session", signer.sign("session", "a.b.c")) == "a.b.c"


def test_a_tampered_value_is_refused():
    signer = Signer(SECRET)
    value, _, signature = signer.sign("session", "abc123").rpartition(".")
    assert signer.unsign("session", f"abc124.{signature}") is None


def test_a_tampered_signature_is_refused():
    signer = Signer(SECRET)
    value, _, signature = signer.sign("session", "abc123").rpartition(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert signer.unsign("session", f"{value}.{flipped}") is None


@pytest.mark.parametrize("garbage", [None, "", "no-dot-at-all", ".onlysignature", "value."])
def test_garbage_instead_of_a_signed_value_is_refused(garbage):
    assert Signer(SECRET).unsign("session", garbage) is None


def test_a_value_signed_for_one_purpose_is_refused_for_another():
    signer = Signer(SECRET)
    signed = signer.sign("session", "abc123")
    assert signer.unsign("csrf", signed) is None


def test_signers_with_different_secrets_do_not_accept_each_others_values():
    signed = Signer(OTHER_SECRET).sign("session", "abc123")
    assert Signer(SECRET).unsign("session", signed) is None


def test_the_pseudonym_of_an_address_is_stable_and_case_insensitive():
    assert Signer(SECRET).pseudonym("Jane@Example.com") == Signer(SECRET).pseudonym("jane@example.com")


def test_the_pseudonym_does_not_contain_the_address_or_its_parts():
    pseudonym = Signer(SECRET).pseudonym("jane.doe@example.com")
    assert pseudonym and "jane" not in pseudonym.lower() and "example" not in pseudonym.lower()
    assert "@" not in pseudonym


def test_the_pseudonym_depends_on_the_secret_and_the_address():
    assert Signer(SECRET).pseudonym("jane@example.com") != Signer(OTHER_SECRET).pseudonym("jane@example.com")
    assert Signer(SECRET).pseudonym("jane@example.com") != Signer(SECRET).pseudonym("bob@example.com")


# ---------------------------------------------------------------------------
# security.SessionStore
# ---------------------------------------------------------------------------

IDLE = 30 * 60


def test_activity_keeps_a_session_alive_past_the_idle_period(clock):
    store = SessionStore(IDLE, clock)
    session = store.create(17, "jane@example.com", "Jane")
    for _ in range(4):
        clock.advance(IDLE - 60)
        assert store.get(session.id) is session
    # Nearly four idle periods have passed in total; activity kept it alive.


def test_idleness_beyond_the_idle_period_ends_a_session(clock):
    store = SessionStore(IDLE, clock)
    session = store.create(17, "jane@example.com", "Jane")
    clock.advance(IDLE + 1)
    assert store.get(session.id) is None


def test_a_deleted_session_is_gone(clock):
    store = SessionStore(IDLE, clock)
    session = store.create(17, "jane@example.com", "Jane")
    store.delete(session.id)
    assert store.get(session.id) is None


def test_an_unknown_session_id_is_no_session(clock):
    store = SessionStore(IDLE, clock)
    store.create(17, "jane@example.com", "Jane")
    assert store.get("not-a-session-id") is None
    assert store.get(None) is None


def test_a_sweep_removes_expired_sessions_nobody_asks_for(clock):
    store = SessionStore(IDLE, clock)
    for number in range(5):
        store.create(number, f"user{number}@example.com", "")
    assert len(store) == 5
    clock.advance(IDLE + 120)
    store.create(99, "late@example.com", "Late")
    assert len(store) == 1


def test_session_ids_are_long_random_and_url_safe(clock):
    store = SessionStore(IDLE, clock)
    ids = [store.create(1, "jane@example.com", "Jane").id for _ in range(200)]
    assert len(set(ids)) == len(ids)
    for session_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", session_id), session_id


def test_the_same_form_id_gets_the_same_done_once(clock):
    store = SessionStore(IDLE, clock)
    session = store.create(17, "jane@example.com", "Jane")
    first = store.done_once(session, "form-a")
    assert store.done_once(session, "form-a") is first
    assert store.done_once(session, "form-b") is not first


def test_the_forms_remembered_per_session_are_capped(clock):
    store = SessionStore(IDLE, clock)
    session = store.create(17, "jane@example.com", "Jane")
    for number in range(MAX_FORMS_PER_SESSION * 4):
        store.done_once(session, f"form-{number}")
    assert len(session.forms) <= MAX_FORMS_PER_SESSION
    newest = f"form-{MAX_FORMS_PER_SESSION * 4 - 1}"
    assert store.done_once(session, newest) is session.forms[newest]


def test_a_finished_form_is_kept_as_its_result_alone_and_still_answers_a_duplicate(clock):
    store = SessionStore(IDLE, clock)
    session = store.create(17, "jane@example.com", "Jane")
    with store.once(session, "create:a") as done:
        done.result = 42
    assert session.forms["create:a"] == 42  # no lock, no object: a few bytes per form
    with store.once(session, "create:a") as again:
        assert again.result == 42
    with store.once(session, "create:b") as failed:
        failed.uncertain_since = 1.0  # not finished: kept whole, for the next try
    assert isinstance(session.forms["create:b"], DoneOnce)


def test_a_duplicate_waiting_while_the_first_finishes_sees_its_result(clock):
    store = SessionStore(IDLE, clock)
    session = store.create(17, "jane@example.com", "Jane")
    seen, waiting = [], threading.Event()

    def duplicate():
        waiting.set()
        with store.once(session, "reply:a") as done:
            seen.append(done.result)

    with store.once(session, "reply:a") as first:
        thread = threading.Thread(target=duplicate)
        thread.start()
        waiting.wait(5)
        time.sleep(0.05)  # the duplicate is now blocked on the form's lock
        first.result = 7
    thread.join(5)
    assert seen == [7]


def test_a_flash_is_shown_once(clock):
    store = SessionStore(IDLE, clock)
    session = store.create(17, "jane@example.com", "Jane")
    session.flash = "ticket_created"
    assert store.pop_flash(session) == "ticket_created"
    assert store.pop_flash(session) == ""


# ---------------------------------------------------------------------------
# security.MagicLinkStore
# ---------------------------------------------------------------------------

TTL = 15 * 60


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
        elif isinstance(item, (list, tuple, set, frozenset)) or type(item).__name__ == "deque":
            stack.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
        elif hasattr(item, "__dict__"):
            stack.extend(vars(item).values())
    return found


def test_a_sign_in_token_carries_32_random_bytes_url_safe(clock):
    store = MagicLinkStore(TTL, clock)
    tokens = {store.issue(17, "jane@example.com", "Jane", "en", "") for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", token), token


def test_the_link_store_keeps_only_a_hash_of_the_token(clock):
    store = MagicLinkStore(TTL, clock)
    token = store.issue(17, "jane@example.com", "Jane", "en", "/dashboard")
    assert len(store) == 1
    held = _strings_reachable_from(store)
    assert "jane@example.com" in held  # the scan does reach the stored links
    assert not [text for text in held if token in text]


def test_peeking_at_a_link_does_not_use_it_up(clock):
    store = MagicLinkStore(TTL, clock)
    token = store.issue(17, "jane@example.com", "Jane", "es", "/tickets/42")
    assert store.peek(token) is not None
    assert store.peek(token) is not None
    link = store.consume(token)
    assert (link.contact_id, link.email, link.lang, link.next_path) == (17, "jane@example.com", "es", "/tickets/42")


def test_a_link_can_be_consumed_only_once(clock):
    store = MagicLinkStore(TTL, clock)
    token = store.issue(17, "jane@example.com", "Jane", "en", "")
    assert store.consume(token) is not None
    assert store.consume(token) is None
    assert store.peek(token) is None


def test_a_link_still_works_just_before_its_ttl(clock):
    store = MagicLinkStore(TTL, clock)
    token = store.issue(17, "jane@example.com", "Jane", "en", "")
    clock.advance(TTL - 1)
    assert store.consume(token) is not None


def test_a_link_expires_after_its_ttl(clock):
    store = MagicLinkStore(TTL, clock)
    token = store.issue(17, "jane@example.com", "Jane", "en", "")
    clock.advance(TTL + 1)
    assert store.peek(token) is None
    assert store.consume(token) is None


@pytest.mark.parametrize("untrusted", [None, "", "x" * 43])
def test_an_unknown_or_missing_token_is_no_link(clock, untrusted):
    store = MagicLinkStore(TTL, clock)
    store.issue(17, "jane@example.com", "Jane", "en", "")
    assert store.peek(untrusted) is None
    assert store.consume(untrusted) is None


# ---------------------------------------------------------------------------
# security.RateLimiter
# ---------------------------------------------------------------------------

def test_the_rate_limiter_allows_the_limit_and_refuses_the_next_hit(clock):
    limiter = RateLimiter(3, 60, clock=clock)
    assert [limiter.hit("jane") for _ in range(4)] == [True, True, True, False]


def test_the_rate_limit_window_slides_with_the_clock(clock):
    limiter = RateLimiter(3, 60, clock=clock)
    limiter.hit("jane")          # t=0
    clock.advance(30)
    limiter.hit("jane")          # t=30
    clock.advance(10)
    limiter.hit("jane")          # t=40
    assert limiter.hit("jane") is False
    clock.advance(21)            # t=61: only the t=0 hit has left the window
    assert limiter.hit("jane") is True
    assert limiter.hit("jane") is False


def test_rate_limits_of_distinct_keys_are_independent(clock):
    limiter = RateLimiter(2, 60, clock=clock)
    limiter.hit("jane")
    limiter.hit("jane")
    assert limiter.hit("jane") is False
    assert limiter.hit("bob") is True


def test_the_rate_limiter_memory_stays_bounded_under_a_flood_of_keys(clock):
    limiter = RateLimiter(5, 15 * 60, clock=clock)
    for number in range(20_000):
        limiter.hit(f"flood-{number}@example.com")
    assert 0 < len(limiter) <= limiter.max_keys
    assert limiter.max_keys < 20_000
    # Still limiting after the flood.
    assert [limiter.hit("after") for _ in range(6)][-1] is False


# ---------------------------------------------------------------------------
# i18n
# ---------------------------------------------------------------------------

def _placeholders(text):
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_every_message_has_both_languages_non_empty():
    for key, texts in i18n.MESSAGES.items():
        assert len(texts) == len(i18n.LANGUAGES), key
        assert all(isinstance(text, str) and text.strip() for text in texts), key


def test_every_message_has_the_same_placeholders_in_english_and_spanish():
    for key, (english, spanish) in i18n.MESSAGES.items():
        assert _placeholders(english) == _placeholders(spanish), key


def test_every_message_formats_with_its_own_placeholders_in_both_languages():
    for key, (english, _) in i18n.MESSAGES.items():
        values = {name: "X" for name in _placeholders(english)}
        for lang in i18n.LANGUAGES:
            assert i18n.translate(lang, key, **values) if values else i18n.translate(lang, key)


TEMPLATE_KEY = re.compile(r"""\bt\(\s*["'](\w+)["']\s*[,)]""")
TEMPLATE_KEY_PREFIX = re.compile(r"""\bt\(\s*["'](\w+)["']\s*[+~]""")


def _template_texts():
    folder = ROOT / "templates"
    files = sorted(folder.glob("*.html")) + sorted(folder.glob("*.txt"))
    assert files
    return {path.name: path.read_text(encoding="utf-8") for path in files}


def test_every_key_the_templates_translate_exists():
    used = {(name, key) for name, text in _template_texts().items() for key in TEMPLATE_KEY.findall(text)}
    assert len(used) > 30  # the scan does find the templates' keys
    missing = sorted((name, key) for name, key in used if key not in i18n.MESSAGES and key not in i18n.PLURALS)
    assert not missing


def test_every_status_a_template_builds_a_key_for_exists():
    prefixes = {prefix for text in _template_texts().values() for prefix in TEMPLATE_KEY_PREFIX.findall(text)}
    assert "status_" in prefixes
    missing = sorted(prefix + status for prefix in prefixes for status in STATUSES
                     if prefix + status not in i18n.MESSAGES)
    assert not missing


def _portal_keys():
    """String literals portal.py hands to the templates or to translate as message keys."""
    source = (ROOT / "portal.py").read_text(encoding="utf-8")
    keys = set(re.findall(r'"(error_\w+)"', source))
    for pair in re.findall(r'HTTPError\(\s*\d+\s*,\s*"(\w+)"\s*,\s*"(\w+)"', source):
        keys.update(pair)
    keys.update(re.findall(r'translate\(\s*[\w.]+\s*,\s*"(\w+)"', source))
    keys.update(re.findall(r'form_again\(\s*\d+\s*,\s*"(\w+)"', source))
    keys.update(re.findall(r'[?&]notice=(\w+)', source))
    for rest in re.findall(r'set_flash\([^,]+,\s*(.+)', source):
        keys.update(re.findall(r'"(\w+)"', rest))
    for rest in re.findall(r'\b(?:flash|notice|problem|heading_key|message_key|error)\s*=\s*(.+)', source):
        rest = re.sub(r'\.(?:arg|field|get)\("\w+"\)', "", rest)  # names of request fields, not keys
        keys.update(re.findall(r'"(\w+)"', rest))
    for inside in re.findall(r'NOTICES\s*=\s*\(([^)]*)\)', source):
        keys.update(re.findall(r'"(\w+)"', inside))
    return keys


def test_every_message_key_portal_py_names_exists():
    keys = _portal_keys()
    # The scan finds flash messages, notices, error pages and form errors.
    assert {"ticket_created", "reply_sent", "reply_sent_reopened", "ticket_cancelled",
            "signed_out", "session_expired", "error_not_found", "error_csrf",
            "error_rate_limited", "ticket_number"} <= keys
    assert sorted(key for key in keys if key not in i18n.MESSAGES and key not in i18n.PLURALS) == []


@pytest.mark.parametrize("lang, expected", [("en", "en"), ("es", "es"), ("fr", "en"), ("", "en"), (None, "en")])
def test_choose_keeps_supported_languages_and_falls_back_to_english(lang, expected):
    assert i18n.choose(lang) == expected


@pytest.mark.parametrize("header, expected", [
    ("es-ES,es;q=0.9,en;q=0.8", "es"),
    ("en-GB,en;q=0.9,es;q=0.5", "en"),
    ("fr-FR, de;q=0.8, ES;q=0.5", "es"),
    ("fr-FR, de;q=0.8", "en"),
    ("", "en"),
    (None, "en"),
])
def test_the_accept_language_header_picks_the_first_supported_language(header, expected):
    assert i18n.from_accept_language(header) == expected


def test_translate_falls_back_to_english_for_an_unknown_language():
    assert i18n.translate("fr", "sign_out") == i18n.MESSAGES["sign_out"][0]
    assert i18n.translate("es", "ticket_number", id=7) == "Ticket n.º 7"


@pytest.mark.parametrize("month, english, spanish", [(1, "Jan", "ene"), (4, "Apr", "abr"), (8, "Aug", "ago"), (12, "Dec", "dic")])
def test_times_are_written_with_localized_month_names(month, english, spanish):
    when = datetime.datetime(2026, month, 5, 14, 3, tzinfo=datetime.timezone.utc).timestamp()
    assert i18n.format_time("en", when) == f"5 {english} 2026, 14:03 UTC"
    assert i18n.format_time("es", when) == f"5 {spanish} 2026, 14:03 UTC"


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------

TOKEN_VALUE = "cw-token-do-not-print-9f8e7d6c"
SMTP_PASSWORD_VALUE = "smtp-pass-do-not-print-5a4b3c"


def valid_settings(**overrides):
    settings = {
        "PORTAL_URL": "https://support.example.com",
        "CHATWOOT_URL": "http://chatwoot.internal:3000",
        "CHATWOOT_API_TOKEN": TOKEN_VALUE,
        "CHATWOOT_INBOX_ID": "4",
        "SESSION_SECRET": SECRET,
        "SMTP_ADDRESS": "smtp.example.com",
        "SMTP_USERNAME": "support@example.com",
        "SMTP_PASSWORD": SMTP_PASSWORD_VALUE,
    }
    settings.update(overrides)
    return settings


def problems_of(settings, **kwargs):
    with pytest.raises(ConfigError) as caught:
        load_config(settings, dotenv_path=kwargs.get("dotenv_path"))
    return caught.value.problems


def test_a_valid_configuration_loads_with_its_defaults():
    config = load_config(valid_settings(), dotenv_path=None)
    assert config.port == 3001 and config.base_path == "/portal"
    assert config.chatwoot_inbox_id == 4 and config.chatwoot_account_id == 1
    assert config.smtp_from == "support@example.com" and config.smtp_security == "starttls"
    assert config.public_url("/auth/verify") == "https://support.example.com/portal/auth/verify"
    assert config.secure_cookies is True


def test_every_missing_required_setting_is_reported_in_one_error():
    problems = problems_of({})
    for name in ("PORTAL_URL", "CHATWOOT_API_TOKEN", "CHATWOOT_INBOX_ID", "SESSION_SECRET", "SMTP_ADDRESS"):
        assert any(problem.startswith(name + " ") for problem in problems), (name, problems)


def _only_problem(settings, **kwargs):
    problems = problems_of(settings, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


@pytest.mark.parametrize("port", ["abc", "0", "70000", "30.5"])
def test_a_bad_port_is_reported_naming_port(port):
    assert re.match(r"PORT\b", _only_problem(valid_settings(PORT=port)))


def test_a_bad_smtp_security_is_reported_naming_it():
    assert "SMTP_SECURITY" in _only_problem(valid_settings(SMTP_SECURITY="tls"))


def test_a_short_session_secret_is_reported_without_its_value():
    short = "short-secret-123"[:15]  # one under the minimum
    problem = _only_problem(valid_settings(SESSION_SECRET=short))
    assert "SESSION_SECRET" in problem and short not in problem


def test_a_shortish_session_secret_starts_with_a_warning_without_its_value():
    shortish = "shortish-secret-value-012345678"  # 31 characters
    config = load_config(valid_settings(SESSION_SECRET=shortish), dotenv_path=None)
    assert any("SESSION_SECRET" in w for w in config.warnings)
    assert not any(shortish in w for w in config.warnings)


def test_without_smtp_from_mail_comes_from_no_reply_at_the_portal_host():
    settings = valid_settings(SMTP_USERNAME="relay-user", SMTP_PASSWORD="x")
    config = load_config(settings, dotenv_path=None)
    assert config.smtp_from == "no-reply@support.example.com"
    assert any("SMTP_FROM" in w for w in config.warnings)


def test_an_smtp_from_that_is_not_an_address_is_reported():
    assert "SMTP_FROM" in _only_problem(valid_settings(SMTP_FROM="support"))


def test_a_portal_url_with_a_path_is_reported_naming_it():
    assert "PORTAL_URL" in _only_problem(valid_settings(PORTAL_URL="https://support.example.com/portal"))


def test_a_portal_url_that_is_not_http_is_reported_naming_it():
    problem = _only_problem(valid_settings(PORTAL_URL="support.example.com"))
    assert "PORTAL_URL" in problem and "http" in problem


def test_a_trusted_proxy_that_is_not_an_ip_address_is_reported_naming_it():
    assert "TRUSTED_PROXY" in _only_problem(valid_settings(TRUSTED_PROXY="proxy.internal"))


def test_a_brand_folder_without_either_logo_is_reported_naming_the_setting(tmp_path):
    problem = _only_problem(valid_settings(BRAND_ASSETS_DIR=str(tmp_path)))
    assert "BRAND_ASSETS_DIR" in problem
    assert "logo.png" in problem and "logo_thumbnail.png" in problem


def test_a_brand_folder_with_one_logo_uses_it_for_both_with_a_warning(tmp_path):
    (tmp_path / "logo.png").write_bytes(b"\x89PNG only logo")
    config = load_config(valid_settings(BRAND_ASSETS_DIR=str(tmp_path)), dotenv_path=None)
    assert any("logo_thumbnail.png" in w for w in config.warnings)


def test_several_problems_are_reported_together():
    problems = problems_of(valid_settings(PORT="x", SMTP_SECURITY="tls", TRUSTED_PROXY="nope"))
    assert len(problems) == 3


def test_the_environment_wins_over_the_dotenv_file(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=4000\nSMTP_ADDRESS=mail.from-dotenv.test\n", encoding="utf-8")
    settings = valid_settings(PORT="5000")
    del settings["SMTP_ADDRESS"]
    config = load_config(settings, dotenv_path=str(dotenv))
    assert config.port == 5000
    assert config.smtp_address == "mail.from-dotenv.test"


def test_a_missing_dotenv_file_is_no_error(tmp_path):
    config = load_config(valid_settings(), dotenv_path=str(tmp_path / "absent.env"))
    assert config.port == 3001


def test_the_dotenv_parser_handles_comments_quotes_and_export(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# a comment\n"
        "\n"
        "   # an indented comment\n"
        "export PORT=4001\n"
        'SMTP_FROM="Support Team <support@example.com>"\n'
        "SMTP_USERNAME='user@example.com'\n"
        "SMTP_PASSWORD=pa$$w0rd\\with#hash\n"
        "  HOST = 0.0.0.0  \n",
        encoding="utf-8",
    )
    assert read_dotenv(dotenv) == {
        "PORT": "4001",
        "SMTP_FROM": "Support Team <support@example.com>",
        "SMTP_USERNAME": "user@example.com",
        "SMTP_PASSWORD": "pa$$w0rd\\with#hash",
        "HOST": "0.0.0.0",
    }


def test_a_malformed_dotenv_line_is_reported_by_number_not_by_content(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=4001\nthis-line-is-a-pasted-secret\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        read_dotenv(dotenv)
    assert ":2:" in str(caught.value)
    assert "this-line-is-a-pasted-secret" not in str(caught.value)


def test_secret_values_never_appear_in_the_error_text():
    short_secret = "tooshort-but-secret-123"
    settings = valid_settings(SESSION_SECRET=short_secret, PORT="x", PORTAL_URL="ftp://x", SMTP_SECURITY="tls",
                              TRUSTED_PROXY="nope", CHATWOOT_INBOX_ID="four")
    with pytest.raises(ConfigError) as caught:
        load_config(settings, dotenv_path=None)
    text = str(caught.value) + "\n".join(caught.value.problems) + repr(caught.value)
    assert len(caught.value.problems) >= 5
    for secret in (short_secret, TOKEN_VALUE, SMTP_PASSWORD_VALUE):
        assert secret not in text


def test_secret_values_never_appear_in_the_config_repr():
    config = load_config(valid_settings(), dotenv_path=None)
    text = repr(config) + str(config)
    assert "smtp.example.com" in text  # the repr does show ordinary settings
    for secret in (SECRET, TOKEN_VALUE, SMTP_PASSWORD_VALUE):
        assert secret not in text


def test_host_stays_as_set_when_smtp_from_defaults_to_the_portal_host():
    settings = valid_settings(HOST="0.0.0.0", SMTP_USERNAME="relay-user", SMTP_PASSWORD="x")
    config = load_config(settings, dotenv_path=None)
    assert config.host == "0.0.0.0" and config.smtp_from == "no-reply@support.example.com"


@pytest.mark.parametrize("typo, meant", [("SMTP_ADDRES", "SMTP_ADDRESS"), ("CHATWOT_URL", "CHATWOOT_URL"),
                                         ("SMTP_PASS", "SMTP_PASSWORD"), ("smtp_port", "SMTP_PORT")])
def test_a_misspelt_name_in_dotenv_is_a_warning_naming_the_closest_setting(tmp_path, typo, meant):
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"{typo}=value\n", encoding="utf-8")
    config = load_config(valid_settings(), dotenv_path=str(dotenv))
    assert [w for w in config.warnings if typo in w] == [
        f"{typo} in .env is not a setting of the portal and is ignored; did you mean {meant}?"]


def test_a_misspelt_name_in_the_environment_is_a_warning_when_it_has_a_portal_prefix():
    config = load_config(valid_settings(SMTP_SECURTY="ssl"), dotenv_path=None)
    assert any("SMTP_SECURTY in the environment" in w and "SMTP_SECURITY?" in w for w in config.warnings)


def test_other_programs_environment_variables_are_no_warning():
    # SESSION_MANAGER is set by desktop sessions; CHATWOT_URL lacks a portal prefix.
    settings = valid_settings(SESSION_MANAGER="local/host:@/tmp/.ICE-unix/1", CHATWOT_URL="x", PATH="/usr/bin",
                              SMTP_ENABLE_STARTTLS_AUTO="true")
    assert load_config(settings, dotenv_path=None).warnings == ()


def test_a_name_in_both_dotenv_and_the_environment_is_flagged_once(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("SMTP_ADDRES=a\n", encoding="utf-8")
    config = load_config(valid_settings(SMTP_ADDRES="b"), dotenv_path=str(dotenv))
    assert len([w for w in config.warnings if "SMTP_ADDRES " in w]) == 1


def test_a_misspelt_name_comes_with_the_problems_when_the_configuration_is_broken(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("SMTP_ADDRES=smtp.example.com\n", encoding="utf-8")
    settings = valid_settings()
    del settings["SMTP_ADDRESS"]
    with pytest.raises(ConfigError) as caught:
        load_config(settings, dotenv_path=str(dotenv))
    assert any(problem.startswith("SMTP_ADDRESS is required") for problem in caught.value.problems)
    assert any("did you mean SMTP_ADDRESS?" in warning for warning in caught.value.warnings)


def test_an_smtp_password_sent_unencrypted_to_another_host_is_a_warning_without_the_password():
    config = load_config(valid_settings(SMTP_SECURITY="none"), dotenv_path=None)
    [warning] = [w for w in config.warnings if "unencrypted" in w]
    assert "SMTP_SECURITY is none" in warning and "smtp.example.com" in warning
    assert SMTP_PASSWORD_VALUE not in warning


@pytest.mark.parametrize("settings", [dict(SMTP_SECURITY="none", SMTP_ADDRESS="localhost"),
                                      dict(SMTP_SECURITY="none", SMTP_ADDRESS="127.0.0.1"),
                                      dict(SMTP_SECURITY="none", SMTP_ADDRESS="::1"),
                                      dict(SMTP_SECURITY="none", SMTP_USERNAME="", SMTP_PASSWORD=""),
                                      dict(SMTP_SECURITY="starttls"), dict(SMTP_SECURITY="ssl")],
                         ids=["localhost", "127.0.0.1", "::1", "no login", "starttls", "ssl"])
def test_no_unencrypted_password_warning_for_a_local_relay_no_login_or_tls(settings):
    config = load_config(valid_settings(**settings), dotenv_path=None)
    assert not [w for w in config.warnings if "unencrypted" in w]


# ---------------------------------------------------------------------------
# portal.py: pure helpers, cookies and the route table
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/dashboard", "/tickets/new", "/tickets/42"])
def test_safe_next_keeps_the_portals_own_pages(path):
    assert _safe_next(path) == path


@pytest.mark.parametrize("path", [
    "//evil.example", "//evil.example/dashboard", "/\\evil", "\\\\evil.example", "http://x",
    "https://evil.example/dashboard", "/logout", "/tickets/1/cancel", "/tickets/1/reply",
    "/auth/verify", "/tickets/abc", "/dashboard/../logout", "/tickets/1\r\nLocation: //evil", "", None,
])
def test_safe_next_refuses_anything_else(path):
    assert _safe_next(path) == ""


def _environ(remote, forwarded=None):
    environ = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded
    return environ


def test_the_client_ip_is_the_last_forwarded_entry_when_the_trusted_proxy_sends_it():
    environ = _environ("127.0.0.1", "10.9.9.9, 203.0.113.7")
    assert _client_ip(environ, "127.0.0.1") == "203.0.113.7"


def test_forwarded_for_from_an_untrusted_peer_is_ignored():
    environ = _environ("198.51.100.9", "203.0.113.7")
    assert _client_ip(environ, "127.0.0.1") == "198.51.100.9"


def test_a_forwarded_entry_that_is_not_an_address_is_ignored():
    environ = _environ("127.0.0.1", "203.0.113.7, not-an-ip")
    assert _client_ip(environ, "127.0.0.1") == "127.0.0.1"


def test_without_forwarded_for_the_client_ip_is_the_peer():
    assert _client_ip(_environ("192.0.2.5"), "127.0.0.1") == "192.0.2.5"


def test_every_route_names_a_handler_that_exists_on_portal():
    assert ROUTES
    for method, pattern, handler in ROUTES:
        assert method in ("GET", "POST"), (method, pattern)
        assert callable(getattr(Portal, handler, None)), handler


def _match(method, path):
    for route_method, pattern, handler in COMPILED_ROUTES:
        match = pattern.fullmatch(path)
        if match and route_method == method:
            return handler, match.groupdict()
    return None


@pytest.mark.parametrize("method, path, handler, args", [
    ("GET", "/", "signin_page", {}),
    ("POST", "/auth/request", "request_link", {}),
    ("GET", "/tickets/new", "new_ticket_page", {}),
    ("GET", "/tickets/42", "ticket_page", {"ticket_id": "42"}),
    ("POST", "/tickets/42/reply", "reply", {"ticket_id": "42"}),
    ("POST", "/tickets/42/cancel", "cancel", {"ticket_id": "42"}),
    ("GET", "/brand/favicon.png", "brand_file", {"name": "favicon.png"}),
])
def test_the_router_sends_each_path_to_its_handler(method, path, handler, args):
    assert _match(method, path) == (handler, args)


@pytest.mark.parametrize("method, path", [
    ("GET", "/tickets/abc"), ("GET", "/tickets/12345678901"), ("GET", "/tickets/-1"),
    ("GET", "/static/../config.py"), ("GET", "/brand/secrets.env"), ("GET", "/tickets/42/cancel"),
    ("GET", "/dashboard/"),
])
def test_the_router_matches_nothing_for_foreign_paths(method, path):
    assert _match(method, path) is None


def test_route_labels_in_logs_name_parameters_not_values():
    assert _route_label(r"/tickets/(?P<ticket_id>[0-9]{1,10})/reply") == "/tickets/:ticket_id/reply"


def test_a_cookie_is_httponly_samesite_lax_and_secure_when_asked():
    response = Response()
    response.set_cookie("portal_session", "abc.def", "/portal", secure=True)
    header = dict(response.headers)["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Secure" in header
    assert "Path=/portal" in header


def test_a_cookie_is_not_marked_secure_for_a_plain_http_portal():
    response = Response()
    response.set_cookie("portal_session", "abc.def", "/portal", secure=False)
    header = dict(response.headers)["Set-Cookie"]
    assert "HttpOnly" in header and "Secure" not in header


# ---------------------------------------------------------------------------
# chatwoot_client.py: Chatwoot JSON -> portal records
# ---------------------------------------------------------------------------

def _raw_message(id, message_type=1, content="Hello", private=False, **extra):
    message = {"id": id, "message_type": message_type, "content": content, "private": private,
               "created_at": 1781946000 + id, "sender": {"name": "Sam Agent", "available_name": "Sam"}}
    message.update(extra)
    return message


@pytest.mark.parametrize("private", [True, "true", 1, "yes", "false", [], {}])
def test_a_message_that_is_not_plainly_public_is_dropped(private):
    messages = _public_messages([_raw_message(1, private=private, content="internal"), _raw_message(2)])
    assert [m.id for m in messages] == [2]


def test_activity_messages_are_dropped_even_when_public():
    messages = _public_messages([_raw_message(1, message_type=2, content="Jane resolved it"), _raw_message(2)])
    assert [m.id for m in messages] == [2]


def test_template_messages_are_kept_as_agent_messages():
    [message] = _public_messages([_raw_message(3, message_type=3, content="We are away")])
    assert message.content == "We are away" and message.from_customer is False


def test_incoming_messages_are_from_the_customer_and_outgoing_are_not():
    incoming, outgoing = _public_messages([_raw_message(1, message_type=0), _raw_message(2, message_type=1)])
    assert incoming.from_customer is True
    assert outgoing.from_customer is False
    assert outgoing.sender_name == "Sam"


def test_the_editors_backslash_newline_hard_breaks_become_plain_line_breaks():
    [message] = _public_messages([_raw_message(1, content="line one\\\nline two\\\nline three")])
    assert message.content == "line one\nline two\nline three"


def test_blank_messages_without_attachments_are_dropped():
    assert _public_messages([_raw_message(1, content=""), _raw_message(2, content=None), "junk"]) == []


def test_a_successful_json_answer_is_decoded():
    assert _decode(200, b'{"payload": [1, 2]}') == {"payload": [1, 2]}


@pytest.mark.parametrize("raw", [b"<html>Maintenance</html>", b"{not json", b"\xff\xfe"])
def test_a_successful_answer_that_is_not_json_means_unavailable(raw):
    with pytest.raises(ChatwootUnavailable):
        _decode(200, raw)


def test_a_404_means_not_found_with_chatwoots_message():
    with pytest.raises(ChatwootNotFound) as caught:
        _decode(404, b'{"error":"Resource could not be found"}')
    assert caught.value.status == 404 and caught.value.message == "Resource could not be found"


@pytest.mark.parametrize("status, body, message", [
    (401, b'{"error":"Invalid Access Token"}', "Invalid Access Token"),
    (401, b'{"errors":["You need to sign in or sign up before continuing."]}',
     "You need to sign in or sign up before continuing."),
    (422, b'{"message":"Inbox must exist","attributes":["inbox"]}', "Inbox must exist"),
    (422, b'{"error":"param is missing or the value is empty: content"}',
     "param is missing or the value is empty: content"),
])
def test_a_refusal_carries_chatwoots_message_from_any_error_shape(status, body, message):
    with pytest.raises(ChatwootRejected) as caught:
        _decode(status, body)
    assert type(caught.value) is ChatwootRejected
    assert caught.value.status == status and message in caught.value.message


@pytest.mark.parametrize("status, body", [
    (429, b"Retry later\n"), (500, b'{"status":500,"error":"Internal Server Error"}'),
    (502, b"<html>Bad Gateway</html>"), (503, b""),
])
def test_throttling_and_server_errors_mean_unavailable(status, body):
    with pytest.raises(ChatwootUnavailable):
        _decode(status, body)


def _raw_conversation(**changes):
    conversation = {
        "id": 42, "status": "pending", "created_at": 1781000000, "last_activity_at": 1781946300,
        "additional_attributes": {"mail_subject": "  Printer on fire  "},
        "meta": {"sender": {"id": 17, "name": "Jane Doe"}, "channel": "Channel::Api"},
    }
    conversation.update(changes)
    return conversation


def test_a_conversation_becomes_a_ticket_owned_by_its_sender():
    ticket = _ticket(_raw_conversation())
    assert (ticket.id, ticket.contact_id, ticket.subject, ticket.status) == (42, 17, "Printer on fire", "pending")
    assert ticket.last_activity_at == 1781946300 and ticket.accepts_replies is True


def test_a_ticket_from_an_email_inbox_does_not_accept_replies():
    ticket = _ticket(_raw_conversation(meta={"sender": {"id": 17}, "channel": "Channel::Email"}))
    assert ticket.accepts_replies is False


def test_a_ticket_without_a_mail_subject_has_an_empty_subject():
    assert _ticket(_raw_conversation(additional_attributes={})).subject == ""
    assert _ticket(_raw_conversation(additional_attributes=None)).subject == ""


@pytest.mark.parametrize("status", ["archived", None, 1, ""])
def test_an_unknown_status_falls_back_to_a_known_one(status):
    ticket = _ticket(_raw_conversation(status=status))
    assert ticket.status in STATUSES


@pytest.mark.parametrize("item", [
    None, "junk", {"id": 42},
    {"id": 42, "meta": {}}, {"id": 42, "meta": {"sender": None}}, {"id": "x", "meta": {"sender": {"id": 17}}},
])
def test_a_conversation_without_a_readable_owner_is_no_ticket(item):
    assert _ticket(item) is None


# ---------------------------------------------------------------------------
# chatwoot_client.py: no socket or http.client error escapes
# ---------------------------------------------------------------------------

CLIENT_CALLS = {
    "find_contact_by_email": lambda c: c.find_contact_by_email("jane@example.com"),
    "ticket_page": lambda c: c.ticket_page(17),
    "get_ticket": lambda c: c.get_ticket(42),
    "get_ticket_with_thread": lambda c: c.get_ticket_with_thread(42),
    "create_ticket": lambda c: c.create_ticket(17, 4, "Subject", "Message"),
    "add_customer_message": lambda c: c.add_customer_message(42, "Hello"),
    "resolve": lambda c: c.resolve(42),
}


@pytest.fixture
def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("call", sorted(CLIENT_CALLS))
def test_a_chatwoot_that_is_down_means_unavailable(closed_port, call):
    client = ChatwootClient(f"http://127.0.0.1:{closed_port}", "token", 1, timeout=2)
    try:
        with pytest.raises(ChatwootUnavailable):
            CLIENT_CALLS[call](client)
    finally:
        client.close()


class RawServer:
    """A TCP server that answers every connection with `behaviour(connection)`."""

    def __init__(self, behaviour):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.behaviour = behaviour
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                try:
                    connection.recv(65536)
                    self.behaviour(connection)
                except OSError:
                    pass

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture
def raw_server():
    servers = []

    def start(behaviour):
        servers.append(RawServer(behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize("reply", [
    b"THIS IS NOT HTTP\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"payload\": [",  # cut short
    b"",  # hangs up without a word
])
def test_a_chatwoot_answering_garbage_means_unavailable(raw_server, reply):
    server = raw_server(lambda connection: connection.sendall(reply))
    client = ChatwootClient(f"http://127.0.0.1:{server.port}", "token", 1, timeout=2)
    try:
        with pytest.raises(ChatwootUnavailable):
            client.get_ticket(42)
    finally:
        client.close()


def test_a_chatwoot_that_never_answers_means_unavailable_after_the_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # connections wait in the backlog; nobody ever reads them
    client = ChatwootClient(f"http://127.0.0.1:{listener.getsockname()[1]}", "token", 1, timeout=0.3)
    try:
        with pytest.raises(ChatwootUnavailable):
            client.get_ticket(42)
    finally:
        client.close()
        listener.close()


def test_message_types_given_as_names_are_read_like_numbers():
    raw = [{"id": 1, "content": "hi", "message_type": "incoming", "private": False, "created_at": 1},
           {"id": 2, "content": "note", "message_type": "activity", "private": False, "created_at": 2},
           {"id": 3, "content": "reply", "message_type": "outgoing", "private": False, "created_at": 3}]
    messages = _public_messages(raw)
    assert [(m.content, m.from_customer) for m in messages] == [("hi", True), ("reply", False)]


def test_a_status_given_as_its_database_number_is_read_as_its_name():
    item = {"id": 5, "meta": {"sender": {"id": 1}}, "status": 1}
    assert _ticket(item).status == "resolved"


def test_signing_in_retires_the_contacts_other_links_but_not_other_contacts_links(clock):
    store = MagicLinkStore(ttl_seconds=900, clock=clock)
    first = store.issue(1, "jane@example.com", "Jane", "en", "")
    second = store.issue(1, "jane@example.com", "Jane", "en", "")
    bobs = store.issue(2, "bob@example.com", "Bob", "en", "")
    assert store.consume(second) is not None
    assert store.peek(first) is None
    assert store.peek(bobs) is not None
