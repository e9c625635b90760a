"""The portal on Redis (STATE_URL): what it does when Redis goes away and comes back,
what `--check` and /healthz say, and what a copy of Redis would give away.

Each test that stops Redis runs its own redis-server, so the shared one (and the
other tests) never see the outage.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from conftest import portal_settings, sign_in, start_portal
from redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent



@pytest.fixture
def on_redis(fake, smtp, clock, private_redis):
    settings = portal_settings(fake, smtp, STATE_URL=private_redis.url, STATE_PREFIX=RedisServer.prefix())
    running = start_portal(settings, clock)
    running.settings = settings
    yield running
    running.close()


def wait_until_healthy(running, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.browser().get(running.url("/healthz")).status == 200:
            return
        time.sleep(0.2)
    raise AssertionError("the portal did not recover within the time")


def assert_friendly_503(page, words):
    assert page.status == 503, page.text
    assert page.header("Retry-After") == "5"
    assert words in page.text
    assert "Traceback" not in page.text and "redis" not in page.text.lower()


def test_with_redis_down_pages_answer_a_localized_503_and_recover_without_a_restart(on_redis, smtp, private_redis):
    browser, _ = sign_in(on_redis, smtp, "jane@example.com")
    assert browser.get(on_redis.url("/dashboard")).status == 200
    private_redis.kill()
    assert_friendly_503(browser.get(on_redis.url("/dashboard")), "Please try again in a moment")
    spanish = on_redis.browser(**{"Accept-Language": "es"})
    spanish.cookies = dict(browser.cookies, portal_lang="es")
    assert_friendly_503(spanish.get(on_redis.url("/tickets/new")), "Vuelve a intentarlo en un momento")
    private_redis.start()
    wait_until_healthy(on_redis)
    # Redis lost everything (no persistence here): the session is gone, the portal works.
    page = browser.get(on_redis.url("/dashboard"))
    assert page.status == 200 and "Sign in" in page.text


def test_with_redis_down_a_new_ticket_form_comes_back_with_its_text(on_redis, smtp, fake, private_redis):
    browser, _ = sign_in(on_redis, smtp, "jane@example.com")
    form = browser.get(on_redis.url("/tickets/new"))
    private_redis.kill()
    page = browser.submit(form, "/tickets", subject="Printer on fire", message="It started at noon & spread.")
    assert_friendly_503(page, "Nothing you typed is lost")
    assert "Printer on fire" in page.text and "It started at noon &amp; spread." in page.text
    assert not [c for c in fake._conversations.values()
                if c.get("additional_attributes", {}).get("mail_subject") == "Printer on fire"]


def test_with_redis_down_a_reply_comes_back_with_its_text(on_redis, smtp, fake, private_redis):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Broken screen")
    browser, _ = sign_in(on_redis, smtp, "jane@example.com")
    page = browser.get(on_redis.url(f"/tickets/{ticket}"))
    before = len(fake.messages_of(ticket))
    private_redis.kill()
    page = browser.submit(page, f"/tickets/{ticket}/reply", message="Still broken after the update")
    assert_friendly_503(page, "Nothing you typed is lost")
    assert "Still broken after the update" in page.text
    assert len(fake.messages_of(ticket)) == before


def test_with_redis_down_the_sign_in_form_keeps_the_address(on_redis, smtp, private_redis):
    browser = on_redis.browser()
    page = browser.get(on_redis.url("/"))
    private_redis.kill()
    page = browser.submit(page, "/auth/request", email="jane@example.com")
    assert_friendly_503(page, "Please try again in a moment")
    assert 'value="jane@example.com"' in page.text
    assert smtp.messages == []


def test_healthz_says_503_while_redis_is_down_and_200_after(on_redis, private_redis):
    health = on_redis.browser().get(on_redis.url("/healthz"))
    assert health.status == 200 and json.loads(health.text)["state"] == "redis"
    private_redis.kill()
    health = on_redis.browser().get(on_redis.url("/healthz"))
    assert health.status == 503 and json.loads(health.text)["status"] == "unavailable"
    private_redis.start()
    wait_until_healthy(on_redis)


def test_the_log_names_the_outage_without_a_traceback_or_the_password(fake, smtp, clock, private_redis, caplog):
    private_redis.kill()
    settings = portal_settings(fake, smtp, STATE_URL=f"redis://:pa55-w0rd-secret@127.0.0.1:{private_redis.port}/0")
    running = start_portal(settings, clock)
    try:
        with caplog.at_level("INFO"):
            browser = running.browser()
            page = browser.get(running.url("/"))  # needs no state: nobody is signed in
            assert page.status == 200
            page = browser.submit(page, "/auth/request", email="jane@example.com")
        assert page.status == 503
    finally:
        running.close()
    text = caplog.text
    assert "state store unavailable" in text
    assert "Traceback" not in text and "pa55-w0rd-secret" not in text


def test_a_copy_of_redis_holds_no_session_id_token_code_or_address_in_clear(on_redis, smtp, private_redis):
    browser, _ = sign_in(on_redis, smtp, "jane@example.com")
    session_id = on_redis.app.signer.unsign("session", browser.cookies["portal_session"])
    # A second, unused mail: its token and code are live in Redis.
    other = on_redis.browser()
    other.submit(other.get(on_redis.url("/")), "/auth/request", email="bob@example.com")
    mail = smtp.messages[-1]
    token = re.search(r"token=([A-Za-z0-9_-]+)", smtp.link_for("bob@example.com")).group(1)
    code = re.search(r"\b(\d{3}) (\d{3})\b", mail.get_body(("plain",)).get_content())
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    dump = []
    for key in client.scan_iter(match=on_redis.settings["STATE_PREFIX"] + "*"):
        dump.append(key)
        dump.append(repr(client.dump(key)))
    client.close()
    everything = "\n".join(dump)
    assert dump, "the portal wrote nothing to Redis"
    for secret in (session_id, token, "".join(code.groups())):
        assert secret not in everything
    assert "jane@example.com" not in "\n".join(dump[0::2]) and "bob@example.com" not in "\n".join(dump[0::2])


def run_check(settings, tmp_path):
    env = dict(settings, PATH="/usr/bin:/bin")
    return subprocess.run([sys.executable, str(ROOT / "portal.py"), "--check"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_check_says_redis_answers(fake, smtp, private_redis, tmp_path):
    result = run_check(portal_settings(fake, smtp, STATE_URL=private_redis.url), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"ok +Redis at redis://127\.0\.0\.1:\d+/0", result.stdout)


def test_check_says_redis_does_not_answer_without_printing_its_password(fake, smtp, private_redis, tmp_path):
    private_redis.kill()
    url = f"redis://:pa55-w0rd-secret@127.0.0.1:{private_redis.port}/0"
    result = run_check(portal_settings(fake, smtp, STATE_URL=url), tmp_path)
    assert result.returncode != 0
    assert "FAIL  Redis at redis://:***@127.0.0.1" in result.stdout
    assert "does not answer" in result.stdout
    assert "pa55-w0rd-secret" not in result.stdout + result.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "redis://", "redis://host:99999/0", "redis://host/zero"])
def test_a_state_url_that_is_not_redis_is_refused_at_start(fake, smtp, tmp_path, url):
    result = run_check(portal_settings(fake, smtp, STATE_URL=url), tmp_path)
    assert result.returncode != 0
    assert "STATE_URL" in result.stdout + result.stderr


def test_start_up_says_where_the_state_lives_without_the_redis_password(fake, smtp, private_redis, tmp_path):
    from redis_server import free_port
    from test_check import start_up_output

    url = f"redis://:pa55-w0rd-secret@127.0.0.1:{private_redis.port}/0"
    settings = portal_settings(fake, smtp, PORT=str(free_port()), STATE_URL=url, STATE_PREFIX="acme:")
    output = start_up_output(settings, tmp_path, "state in")
    assert f"state in Redis at redis://:***@127.0.0.1:{private_redis.port}/0, keys under 'acme:'" in output, output
    assert "pa55-w0rd-secret" not in output
