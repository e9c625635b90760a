"""Fixtures: a fake Chatwoot, a real SMTP server and the portal, each on a real socket."""

import asyncio
import email
import email.policy
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from waitress import wasyncore
from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser import Browser  # noqa: E402
from config import load_config  # noqa: E402
from fake_chatwoot import FakeChatwoot  # noqa: E402
from portal import Portal, create_server  # noqa: E402

BASE = "/portal"
SECRET = "test-secret-0123456789abcdef0123456789abcdef"


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, start=1_800_000_000.0):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class MailCatcher:
    """aiosmtpd handler keeping every message; `fail_with` makes it refuse mail."""

    def __init__(self):
        self.messages = []
        self.fail_with = None
        self.delay = 0.0  # seconds before answering DATA: a slow mail server

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with:
            return self.fail_with
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def wait_for(self, count, timeout=10.0):
        """Block until `count` messages arrived; they are returned."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} mails within {timeout}s, got {len(self.messages)}")
            time.sleep(0.02)
        return self.messages[:count]

    def stop(self):
        """The mail server goes down: connections are refused."""
        self.controller.stop()

    def restart(self):
        """The mail server comes back on the same port."""
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def link_for(self, address):
        """The sign-in link of the newest mail to `address`."""
        for message in reversed(self.messages):
            if message["To"] == address:
                text = message.get_body(("plain",)).get_content()
                return re.search(r"https?://\S+/auth/verify\?token=[\w-]+", text).group(0)
        raise AssertionError(f"no mail to {address}; mailed: {[m['To'] for m in self.messages]}")


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server for the whole run (tests keep apart by STATE_PREFIX)."""
    require_tools("redis-server")
    from redis_server import RedisServer
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def private_redis():
    """A redis-server for one test alone, which it may stop and start again (outages)."""
    require_tools("redis-server")
    from redis_server import RedisServer
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def state_backend():
    """Where the portal keeps its state: "memory" unless a module asks for both
    (see `both_backends`)."""
    return "memory"


@pytest.fixture
def state_settings(request, state_backend):
    """STATE_URL and STATE_PREFIX for the backend under test: a fresh prefix per test on Redis."""
    if state_backend == "memory":
        return {}
    server = request.getfixturevalue("redis_server")
    return {"STATE_URL": server.url, "STATE_PREFIX": server.prefix()}


@pytest.fixture(name="state_backend", params=["memory", "redis"])
def both_backends(request):
    """A module that imports this (`from conftest import both_backends`) runs each
    of its tests on memory and on Redis."""
    return request.param


@pytest.fixture
def fake(state_settings):
    server = FakeChatwoot(token="test-token").start()
    # Every portal test has this fixture; portal_settings takes the backend from it.
    server.state_settings = state_settings
    server.api_inbox = server.add_inbox("Customer Portal", "Channel::Api")
    server.email_inbox = server.add_inbox("Support email", "Channel::Email")
    server.jane = server.add_contact("Jane Doe", "jane@example.com")
    server.bob = server.add_contact("Bob Stone", "bob@example.com")
    server.ann = server.add_contact("Ann Lee", "ann@example.com")
    server.joann = server.add_contact("Joann Park", "joann@example.com")
    yield server
    server.stop()


@pytest.fixture
def smtp():
    catcher = MailCatcher()
    # aiosmtpd's Controller connects to its own port to confirm start-up, so it
    # needs a concrete port rather than 0.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        catcher.port = probe.getsockname()[1]
    controller = Controller(catcher, hostname="127.0.0.1", port=catcher.port)
    controller.start()
    catcher.controller = controller
    yield catcher
    if catcher.controller._thread is not None:  # a test may have stopped it already
        catcher.controller.stop()


def portal_settings(fake, smtp, **overrides):
    settings = {
        "PORT": "3001",
        "BASE_PATH": BASE,
        "PORTAL_URL": "http://portal.test",
        "CHATWOOT_URL": fake.url,
        "CHATWOOT_API_TOKEN": fake.token,
        "CHATWOOT_ACCOUNT_ID": str(fake.account_id),
        "CHATWOOT_INBOX_ID": str(fake.api_inbox),
        "CHATWOOT_TIMEOUT": "1",
        "SESSION_SECRET": SECRET,
        "SMTP_ADDRESS": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SMTP_SECURITY": "none",
        "SMTP_FROM": "support@example.com",
        # Each portal its own state file: no queued mail leaks into another test.
        "STATE_DIR": tempfile.mkdtemp(prefix="portal-state-"),
        **getattr(fake, "state_settings", {}),
    }
    settings.update(overrides)
    return settings


class RunningPortal:
    """waitress on a free port, its event loop in a thread that stops cleanly.

    `server.run()` never returns, and closing its sockets under it makes the loop
    thread fail; instead the loop runs in short turns and checks a flag.
    """

    def __init__(self, app, server):
        self.app, self.server = app, server
        self.port = server.effective_port
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stopping.is_set():
            wasyncore.loop(timeout=0.05, map=self.server._map, count=1)

    def close(self):
        self._stopping.set()
        self._thread.join(timeout=5)
        self.server.close()
        self.server.task_dispatcher.shutdown()
        self.app.close()

    def browser(self, **headers):
        return Browser("127.0.0.1", self.port, headers)

    def url(self, path):
        return BASE + path


def start_portal(settings, clock):
    config = load_config(settings, dotenv_path=None)
    app = Portal(config, clock=clock).start()
    # As portal.serve() does: X-Forwarded-For reaches the portal, which alone
    # decides whether to believe it (TRUSTED_PROXY).
    server = create_server(app, config, host="127.0.0.1", port=0, threads=4)
    return RunningPortal(app, server)


@pytest.fixture
def portal(fake, smtp, clock):
    running = start_portal(portal_settings(fake, smtp), clock)
    yield running
    running.close()


def sign_in(portal, smtp, address, browser=None):
    """The whole magic-link journey; returns the signed-in browser and its dashboard page."""
    browser = browser or portal.browser()
    page = browser.get(portal.url("/"))
    page = browser.submit(page, "/auth/request", email=address)
    assert page.status == 200, page.text
    link = smtp.link_for(address)
    page = browser.get(link.replace("http://portal.test", ""))
    assert page.status == 200, page.text
    page = browser.submit(page, "/auth/verify")
    return browser, page


def require_tools(*names):
    """Skip a test whose system tool (chromium, nginx, ...) is missing.

    `make test` installs them when it can; CI sets REQUIRE_SYSTEM_TOOLS=1 so a
    missing tool fails the run instead of silently skipping what it proves.
    """
    import os
    import shutil

    # Debian keeps nginx in /usr/sbin, which is not on every user's PATH.
    search = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    missing = [name for name in names if shutil.which(name, path=search) is None]
    if missing:
        message = f"missing system tools: {', '.join(missing)} (apt-get install them)"
        if os.environ.get("REQUIRE_SYSTEM_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
