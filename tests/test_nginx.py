"""The real nginx in front of the portal and Chatwoot, configured by nginx.conf.example.

The Debian nginx runs as the current user with everything it
writes (pid, logs, temporary files) under the test's tmp_path. The test takes the
example's server blocks and changes only what a test machine needs: upstreams point
at the test portal and the fake Chatwoot, listen ports are free ports on 127.0.0.1,
and the TLS server speaks plain HTTP (its `ssl`/`http2` listen parameters and
`ssl_*` lines go; there is no certificate here). Every other line stays as
shipped: HSTS, the body limit, the forwarded headers, `underscores_in_headers`,
`/cable`. The http-to-https redirect server moves to a second free port.

Clients connect from distinct loopback addresses (all of 127.0.0.0/8 is local on
Linux) to show that the portal's per-IP limits see the address nginx forwards.
"""

import grp
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest

from browser import Browser, Page
from conftest import portal_settings, require_tools, start_portal
from fake_chatwoot import NO_TOKEN
from portal import MAX_BODY_BYTES, SECURITY_HEADERS, SIGNIN_PER_IP

EXAMPLE = Path(__file__).resolve().parent.parent / "nginx.conf.example"
HSTS = "max-age=31536000; includeSubDomains"
LIMIT = SIGNIN_PER_IP[0]


# ---------------------------------------------------------------------------
# The example, rewritten for a test machine
# ---------------------------------------------------------------------------

def free_ports(count):
    """Distinct free TCP ports on 127.0.0.1 (all held open at once, then released)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def server_blocks(text):
    """(start, end) of every top-level `server { ... }` block, braces matched."""
    blocks = []
    for match in re.finditer(r"(?m)^server\s*\{", text):
        depth, position = 0, match.end() - 1
        while True:
            if text[position] == "{":
                depth += 1
            elif text[position] == "}":
                depth -= 1
                if depth == 0:
                    break
            position += 1
        blocks.append((match.start(), position + 1))
    return blocks


def point_upstream(text, name, port):
    rewritten, count = re.subn(rf"(upstream\s+{name}\s*\{{\s*server\s+)[^;\s]+", rf"\g<1>127.0.0.1:{port}", text)
    assert count == 1, f"nginx.conf.example has no single `upstream {name} {{ server ...; }}`"
    return rewritten


def rewrite_server(block, port, plain_http=True):
    """One server block on 127.0.0.1:port; IPv6 listens dropped; with plain_http also TLS."""
    lines = []
    for line in block.splitlines():
        words = line.split()
        if words[:1] == ["listen"]:
            if "[::]" in words[1]:
                continue
            parameters = [] if plain_http else [w.rstrip(";") for w in words[2:]]
            line = re.sub(r"listen\s.*", f"listen {' '.join([f'127.0.0.1:{port}', *parameters])};", line)
        elif plain_http and words[:1] and words[0].startswith("ssl_"):
            continue
        lines.append(line)
    return "\n".join(lines)


def site_config(portal_port, chatwoot_port, port, redirect_port, certificate=None):
    """The example with upstreams and ports rewritten; plain HTTP unless a certificate is given."""
    text = EXAMPLE.read_text()
    text = point_upstream(text, "chatwoot", chatwoot_port)
    text = point_upstream(text, "chatwoot_portal", portal_port)
    pieces, last = [], 0
    kinds = []
    for start, end in server_blocks(text):
        block = text[start:end]
        if re.search(r"return\s+301\s+https://", block):
            kinds.append("redirect")
            block = rewrite_server(block, redirect_port)
        else:
            assert re.search(r"listen\s+443\s", block), f"unexpected server block:\n{block}"
            kinds.append("main")
            if certificate is None:
                block = rewrite_server(block, port)
            else:
                block = rewrite_server(block, port, plain_http=False)
                block = re.sub(r"(ssl_certificate\s+)[^;]+", rf"\g<1>{certificate[0]}", block)
                block = re.sub(r"(ssl_certificate_key\s+)[^;]+", rf"\g<1>{certificate[1]}", block)
        pieces += [text[last:start], block]
        last = end
    pieces.append(text[last:])
    assert sorted(kinds) == ["main", "redirect"], kinds
    return "".join(pieces)


def main_config(directory, site):
    """A whole nginx.conf around the site: every file nginx writes is in `directory`."""
    user = ""
    if os.geteuid() == 0:
        # Workers would otherwise drop to nobody and could not write request
        # bodies into the test's private temporary directory.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    paths = "\n".join(f"    {kind}_temp_path {directory / kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (
        f"{user}worker_processes 1;\n"
        f"pid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} info;\n"
        "events { worker_connections 128; }\n"
        "http {\n"
        f"    access_log {directory / 'access.log'};\n"
        f"{paths}\n"
        f"{site}\n"
        "}\n"
    )


class Nginx:
    """The Debian nginx in the foreground, its master in its own process group."""

    def __init__(self, binary, directory, config_text):
        self.binary, self.directory = binary, directory
        self.config = directory / "nginx.conf"
        self.config.write_text(config_text)
        self.process = None

    def command(self, *extra):
        # -e (nginx 1.19.5+) keeps even start-up errors out of the compiled-in log path.
        version = subprocess.run([self.binary, "-v"], capture_output=True, text=True, timeout=30).stderr
        found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", version)
        early_log = []
        if found and tuple(map(int, found.groups())) >= (1, 19, 5):
            early_log = ["-e", str(self.directory / "error.log")]
        return [self.binary, "-p", f"{self.directory}/", *early_log, "-c", str(self.config),
                "-g", "daemon off;", *extra]

    def test_config(self):
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)

    def start(self, port):
        with open(self.directory / "stderr.log", "wb") as stderr:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"nginx exited ({self.process.returncode}):\n{self.errors()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"nginx did not listen on {port}:\n{self.errors()}") from None
                time.sleep(0.02)

    def errors(self):
        logs = [self.directory / "stderr.log", self.directory / "error.log"]
        return "".join(log.read_text() for log in logs if log.exists())

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: fast shutdown, the master reaps its worker
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own group: master and worker
            self.process.wait(timeout=10)


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------

def send(port, method, path, source="127.0.0.1", body=None, headers=None):
    """One request from a chosen loopback source address; returns a browser Page."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Page(response.status, response.getheaders(), response.read(), f"http://127.0.0.1:{port}{path}")
    finally:
        connection.close()


def csrf_pass(port):
    """A CSRF cookie and its form token; neither is bound to the client address."""
    browser = Browser("127.0.0.1", port)
    page = browser.get("/portal/")
    assert page.status == 200, page.text
    return browser.cookies["portal_csrf"], page.form("/auth/request").fields["csrf_token"]


def form_body(fields, size=None):
    """A urlencoded body; with `size`, padded by an ignored field to exactly that many bytes."""
    body = urllib.parse.urlencode(fields)
    if size is not None:
        body += "&pad="
        body += "a" * (size - len(body))
        assert len(body) == size
    return body.encode()


def ask_for_link(port, source, address, csrf, forwarded_for=None, size=None):
    cookie, token = csrf
    headers = {"Cookie": f"portal_csrf={cookie}", "Content-Type": "application/x-www-form-urlencoded"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    body = form_body({"csrf_token": token, "email": address}, size)
    return send(port, "POST", "/portal/auth/request", source, body, headers)


def exhaust_ip_limit(port, source, csrf, forwarded_for=lambda number: None):
    for number in range(LIMIT):
        page = ask_for_link(port, source, f"stranger{number}@example.org", csrf, forwarded_for(number))
        assert page.status == 200, (number, page.status, page.text)


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------

@pytest.fixture
def nginx_binary(monkeypatch):
    # Debian installs nginx in /usr/sbin, which is not on an ordinary user's PATH.
    monkeypatch.setenv("PATH", os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    require_tools("nginx")
    return shutil.which("nginx")


@pytest.fixture
def front(nginx_binary, fake, smtp, clock, tmp_path):
    """nginx (the example) on a free port, in front of the portal and the fake Chatwoot."""
    port, redirect_port = free_ports(2)
    # Links in the mail point at nginx, as PORTAL_URL does in production.
    portal = start_portal(portal_settings(fake, smtp, PORTAL_URL=f"http://127.0.0.1:{port}"), clock)
    nginx = None
    try:
        chatwoot_port = urllib.parse.urlsplit(fake.url).port
        site = site_config(portal.port, chatwoot_port, port, redirect_port)
        nginx = Nginx(nginx_binary, tmp_path, main_config(tmp_path, site))
        nginx.start(port)
        yield SimpleNamespace(port=port, redirect_port=redirect_port, portal=portal, nginx=nginx,
                              browser=lambda: Browser("127.0.0.1", port))
    finally:
        if nginx is not None:
            nginx.stop()
        portal.close()


# ---------------------------------------------------------------------------
# The configuration itself
# ---------------------------------------------------------------------------

def test_nginx_accepts_the_example_rewritten_for_plain_http(nginx_binary, tmp_path):
    port, redirect_port, portal_port, chatwoot_port = free_ports(4)
    site = site_config(portal_port, chatwoot_port, port, redirect_port)
    directives = [line.split() for line in site.splitlines() if line.strip()]
    assert [d for d in directives if d[0] == "listen"] == [
        ["listen", f"127.0.0.1:{redirect_port};"], ["listen", f"127.0.0.1:{port};"]]
    assert not [d for d in directives if d[0].startswith("ssl_")]
    assert "Strict-Transport-Security" in site and "location /cable" in site
    result = Nginx(nginx_binary, tmp_path, main_config(tmp_path, site)).test_config()
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr, result.stderr


def test_nginx_accepts_the_example_with_its_tls_server_and_a_throwaway_certificate(nginx_binary, tmp_path):
    require_tools("openssl")  # for a throwaway certificate
    certificate, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(certificate), "-days", "2",
                    "-subj", "/CN=support.example.com"], check=True, capture_output=True, timeout=60)
    port, redirect_port, portal_port, chatwoot_port = free_ports(4)
    site = site_config(portal_port, chatwoot_port, port, redirect_port, certificate=(certificate, key))
    assert f"listen 127.0.0.1:{port} ssl http2;" in site
    result = Nginx(nginx_binary, tmp_path, main_config(tmp_path, site)).test_config()
    # nginx 1.25.1+ warns that `listen ... http2` is deprecated; 1.22 knows no other spelling.
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_the_http_server_redirects_every_request_to_https_on_the_same_host(front):
    page = send(front.redirect_port, "GET", "/portal/tickets/7?x=1", headers={"Host": "support.example.com"})
    assert page.status == 301
    assert page.header("Location") == "https://support.example.com/portal/tickets/7?x=1"


# ---------------------------------------------------------------------------
# The portal through nginx
# ---------------------------------------------------------------------------

def test_slash_portal_without_the_slash_is_redirected_to_the_portal(front):
    page = front.browser().get("/portal", follow=False)
    assert page.status == 301
    assert urllib.parse.urlsplit(page.header("Location")).path == "/portal/"
    page = front.browser().get("/portal")
    assert page.status == 200 and page.form("/auth/request")


def test_the_whole_journey_through_nginx_sign_in_create_reply_cancel(front, smtp, fake):
    browser = front.browser()
    page = browser.get("/portal")
    page = browser.submit(page, "/auth/request", email="jane@example.com")
    assert page.status == 200, page.text
    link = smtp.link_for("jane@example.com")
    assert link.startswith(f"http://127.0.0.1:{front.port}/portal/auth/verify?token="), link
    page = browser.get(link)
    assert page.status == 200, page.text
    page = browser.submit(page, "/auth/verify")
    assert page.status == 200 and page.url.endswith("/portal/dashboard"), page.text

    page = browser.get("/portal/tickets/new")
    page = browser.submit(page, "/tickets", subject="Printer on fire", message="It smokes.")
    assert page.status == 200, page.text
    ticket_id = int(page.url.rsplit("/", 1)[1])
    page = browser.submit(page, f"/tickets/{ticket_id}/reply", message="Still burning")
    assert page.status == 200 and "Still burning" in page, page.text
    page = browser.submit(page, f"/tickets/{ticket_id}/cancel")
    assert page.status == 200, page.text

    conversation = fake.conversation(ticket_id)
    assert conversation["contact_id"] == fake.jane
    assert conversation["additional_attributes"]["mail_subject"] == "Printer on fire"
    assert conversation["status"] == "resolved"
    contents = [m["content"] for m in fake.messages_of(ticket_id) if not m["private"]]
    assert "It smokes." in contents and "Still burning" in contents
    writes = [(method, path.rsplit("/", 1)[-1]) for method, path, _ in fake.calls if method != "GET"]
    assert ("POST", "conversations") in writes
    assert ("POST", "messages") in writes
    assert ("POST", "toggle_status") in writes


def test_files_go_up_and_come_back_through_nginx(front, smtp, fake):
    browser = front.browser()
    page = browser.submit(browser.get("/portal"), "/auth/request", email="jane@example.com")
    page = browser.submit(browser.get(smtp.link_for("jane@example.com")), "/auth/verify")
    data = b"%PDF-1.7\n" + bytes(range(256)) * (8 * 1024 * 1024 // 256)  # 8 MB: far over the 256 KiB of forms
    page = browser.submit(browser.get("/portal/tickets/new"), "/tickets", subject="Manual", message="Attached.",
                          files=[("files", "manual.pdf", data)])
    assert page.status == 200, page.text
    ticket_id = int(page.url.rsplit("/", 1)[1])
    page = browser.submit(page, f"/tickets/{ticket_id}/reply", message="And a photo.",
                          files=[("files", "photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 5000)])
    assert page.status == 200, page.text
    stored = [a for m in fake.messages_of(ticket_id) for a in m["attachments"]]
    assert [a["filename"] for a in stored] == ["manual.pdf", "photo.png"]
    link = re.search(r'href="(/portal/tickets/\d+/attachments/\d+/manual\.pdf)"', page.text).group(1)
    download = browser.get(link)
    assert download.status == 200 and download.body == data
    assert download.header("Content-Security-Policy") == "sandbox; default-src 'none'"


def test_chatwoots_signed_webhook_reaches_the_portal_through_nginx_and_stays_out_of_the_log(
        nginx_binary, fake, smtp, clock, tmp_path):
    port, redirect_port = free_ports(2)
    secret = "whsec-through-nginx-0123456789"
    portal = start_portal(portal_settings(fake, smtp, PORTAL_URL=f"http://127.0.0.1:{port}", WEBHOOK_SECRET=secret,
                                          NOTIFY_DELAY_SECONDS="0"), clock)
    nginx = Nginx(nginx_binary, tmp_path, main_config(tmp_path, site_config(
        portal.port, urllib.parse.urlsplit(fake.url).port, port, redirect_port)))
    try:
        nginx.start(port)
        ticket = fake.add_conversation(fake.jane, fake.api_inbox, subject="Through nginx")
        fake.add_webhook(f"http://127.0.0.1:{port}/portal/webhooks/chatwoot?secret={secret}", signed=False)
        fake.add_message(ticket, "Answer via nginx " + "long " * 60_000, "outgoing")  # over 256 KiB
        [delivery] = fake.wait_for_deliveries(1)
        assert delivery["status"] == 200, delivery
        [mail] = smtp.wait_for(1)
        assert "Through nginx" in mail["Subject"]
        assert secret not in (tmp_path / "access.log").read_text()
    finally:
        nginx.stop()
        portal.close()


def test_sign_in_tokens_stay_out_of_the_nginx_access_log(front, smtp, tmp_path):
    browser = front.browser()
    browser.submit(browser.get("/portal/"), "/auth/request", email="jane@example.com")
    link = smtp.link_for("jane@example.com")
    token = link.rsplit("=", 1)[1]
    page = browser.submit(browser.get(link), "/auth/verify")
    assert page.url.endswith("/portal/dashboard")
    log = (tmp_path / "access.log").read_text()
    assert "/portal/dashboard" in log  # the log works...
    assert token not in log and "/auth/verify" not in log  # ...and has no sign-in link


@pytest.mark.parametrize("path", ["/portal/", "/portal/no-such-page", "/portal/static/no-such-file.css"])
def test_portal_answers_through_nginx_carry_hsts_and_the_portals_own_security_headers(front, path):
    page = front.browser().get(path)
    assert page.headers_named("Strict-Transport-Security") == [HSTS]
    for name, value in SECURITY_HEADERS:
        assert page.headers_named(name) == [value], name
    assert page.header("Referrer-Policy") == "same-origin"
    assert page.header("Cache-Control") == "no-store"
    assert "portal_csrf=" in " ".join(page.headers_named("Set-Cookie"))


def test_nginx_s_own_redirect_to_the_portal_carries_hsts(front):
    page = front.browser().get("/portal", follow=False)
    assert page.headers_named("Strict-Transport-Security") == [HSTS]


def test_nginx_s_own_answers_name_no_version(front):
    page = front.browser().get("/portal", follow=False)
    assert page.header("Server") == "nginx"  # not nginx/1.22.1


def test_a_form_of_exactly_the_portals_body_limit_reaches_the_portal(front):
    csrf = csrf_pass(front.port)
    page = ask_for_link(front.port, "127.0.0.1", "someone@example.org", csrf, size=MAX_BODY_BYTES)
    assert page.status == 200, page.text
    assert page.header("Content-Security-Policy")  # the portal answered, not nginx


def test_nginx_refuses_a_body_one_byte_over_the_portals_limit_with_413(front):
    csrf = csrf_pass(front.port)
    page = ask_for_link(front.port, "127.0.0.1", "someone@example.org", csrf, size=MAX_BODY_BYTES + 1)
    assert page.status == 413
    assert "nginx" in page.text and page.header("Content-Security-Policy") is None, page.text


# ---------------------------------------------------------------------------
# Chatwoot under /
# ---------------------------------------------------------------------------

def test_everything_outside_portal_goes_to_chatwoot_which_asks_for_its_token(front):
    page = send(front.port, "GET", "/api/v1/accounts/1/contacts/search?q=jane")
    assert page.status == 401
    assert json.loads(page.body) == NO_TOKEN
    assert page.headers_named("Strict-Transport-Security") == [HSTS]


def test_chatwoots_api_access_token_header_keeps_its_underscore_through_nginx(front, fake):
    page = send(front.port, "GET", "/api/v1/accounts/1/contacts/search?q=jane",
                headers={"api_access_token": fake.token})
    assert page.status == 200, page.text
    assert "jane@example.com" in [contact["email"] for contact in json.loads(page.body)["payload"]]


# ---------------------------------------------------------------------------
# Rate limits see the real client address
# ---------------------------------------------------------------------------

def test_the_sign_in_limit_counts_the_client_address_nginx_forwards(front):
    csrf = csrf_pass(front.port)
    exhaust_ip_limit(front.port, "127.0.0.5", csrf)
    assert ask_for_link(front.port, "127.0.0.5", "late@example.org", csrf).status == 429
    # nginx itself reaches the portal from 127.0.0.1 for both; only the forwarded address differs.
    assert ask_for_link(front.port, "127.0.0.6", "late@example.org", csrf).status == 200


def test_a_client_forging_x_forwarded_for_to_nginx_cannot_dodge_its_own_limit(front):
    csrf = csrf_pass(front.port)
    exhaust_ip_limit(front.port, "127.0.0.5", csrf, forwarded_for=lambda number: f"198.51.100.{number}")
    page = ask_for_link(front.port, "127.0.0.5", "late@example.org", csrf, forwarded_for="198.51.100.250")
    assert page.status == 429
    assert ask_for_link(front.port, "127.0.0.6", "late@example.org", csrf,
                        forwarded_for="127.0.0.5").status == 200


def test_reached_directly_from_an_untrusted_address_a_forged_x_forwarded_for_is_ignored(fake, smtp, clock):
    portal = start_portal(portal_settings(fake, smtp, TRUSTED_PROXY="127.0.0.9"), clock)
    try:
        csrf = csrf_pass(portal.port)
        exhaust_ip_limit(portal.port, "127.0.0.7", csrf, forwarded_for=lambda number: f"198.51.100.{number}")
        page = ask_for_link(portal.port, "127.0.0.7", "late@example.org", csrf, forwarded_for="198.51.100.250")
        assert page.status == 429
        # The same header from the trusted proxy's address is believed.
        page = ask_for_link(portal.port, "127.0.0.9", "late@example.org", csrf, forwarded_for="198.51.100.250")
        assert page.status == 200
    finally:
        portal.close()
