"""`python portal.py --check` and start-up refusal, run as a real process.

The SMTP servers are real aiosmtpd ones, each set up the way a misconfigured
portal meets it: plain, TLS from the first byte, STARTTLS, with or without AUTH.
"""

import os
import smtplib
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from config import load_config
from conftest import MailCatcher, portal_settings, require_tools
import mailer

ROOT = Path(__file__).resolve().parent.parent


def run_portal(args, settings, cwd):
    env = {key: value for key, value in os.environ.items() if key not in settings}
    env.update(settings)
    return subprocess.run([sys.executable, str(ROOT / "portal.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_check_passes_when_chatwoot_and_smtp_answer(fake, smtp, tmp_path):
    result = run_portal(["--check"], portal_settings(fake, smtp), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout


def test_check_names_a_wrong_api_token(fake, smtp, tmp_path):
    result = run_portal(["--check"], portal_settings(fake, smtp, CHATWOOT_API_TOKEN="wrong"), tmp_path)
    assert result.returncode == 1
    assert "API token" in result.stdout
    assert "wrong" not in result.stdout  # the token itself is never printed


def test_check_says_the_inbox_is_not_an_api_inbox(fake, smtp, tmp_path):
    result = run_portal(["--check"], portal_settings(fake, smtp, CHATWOOT_INBOX_ID=str(fake.email_inbox)), tmp_path)
    assert result.returncode == 1
    assert "API-type inbox" in result.stdout


def test_check_says_the_inbox_does_not_exist(fake, smtp, tmp_path):
    result = run_portal(["--check"], portal_settings(fake, smtp, CHATWOOT_INBOX_ID="999"), tmp_path)
    assert result.returncode == 1
    assert "999 does not exist" in result.stdout


def test_check_says_chatwoot_is_unreachable(fake, smtp, tmp_path):
    settings = portal_settings(fake, smtp)
    fake.stop()
    result = run_portal(["--check"], settings, tmp_path)
    assert result.returncode == 1
    assert "not reachable" in result.stdout


def test_check_says_smtp_is_unreachable(fake, smtp, tmp_path):
    settings = portal_settings(fake, smtp)
    smtp.controller.stop()
    result = run_portal(["--check"], settings, tmp_path)
    assert result.returncode == 1
    assert f"Could not reach the SMTP server 127.0.0.1:{smtp.port}: connection refused" in result.stdout


def test_start_refuses_a_broken_configuration_and_lists_every_problem(tmp_path):
    result = run_portal([], {"PORT": "abc", "SESSION_SECRET": "short"}, tmp_path)
    assert result.returncode == 2
    for name in ("PORT", "SESSION_SECRET", "PORTAL_URL", "CHATWOOT_API_TOKEN", "CHATWOOT_INBOX_ID", "SMTP_ADDRESS"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_are_read_from_a_dotenv_file_in_the_working_directory(fake, smtp, tmp_path):
    settings = portal_settings(fake, smtp)
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    result = run_portal(["--check"], {}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------
# SMTP: what exactly went wrong, and the likely fix
# ---------------------------------------------------------------------------

def free_port():
    # aiosmtpd's Controller connects to its own port to confirm start-up: no port 0.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_server():
    """Starts aiosmtpd servers with the options a test gives (TLS, AUTH); stops them after."""
    controllers = []

    def start(catcher_class=MailCatcher, **options):
        catcher = catcher_class()
        catcher.port = free_port()
        catcher.controller = Controller(catcher, hostname="127.0.0.1", port=catcher.port, **options)
        catcher.controller.start()
        controllers.append(catcher.controller)
        return catcher

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A throwaway self-signed certificate for 127.0.0.1: (certificate, key)."""
    require_tools("openssl")
    folder = tmp_path_factory.mktemp("tls")
    certificate, key = folder / "certificate.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(certificate), "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return certificate, key


def server_context(certificate):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def accepting_only(username, password):
    """An aiosmtpd authenticator that accepts one login; anything else gets 535."""
    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == username.encode() and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False)
    return authenticator


def test_check_says_the_smtp_server_does_not_offer_starttls_and_names_the_fix(fake, smtp, tmp_path):
    result = run_portal(["--check"], portal_settings(fake, smtp, SMTP_SECURITY="starttls"), tmp_path)
    assert result.returncode == 1
    assert f"Reached the SMTP server 127.0.0.1:{smtp.port}, but it does not offer STARTTLS" in result.stdout
    assert "port 465 with SMTP_SECURITY=ssl" in result.stdout and "587 with SMTP_SECURITY=starttls" in result.stdout
    assert "could not reach" not in result.stdout.lower()


def test_check_says_the_smtp_server_does_not_offer_auth_for_the_username(fake, smtp, tmp_path):
    settings = portal_settings(fake, smtp, SMTP_USERNAME="support@example.com", SMTP_PASSWORD="secret-pass-0815")
    result = run_portal(["--check"], settings, tmp_path)
    assert result.returncode == 1
    assert "but it does not offer AUTH" in result.stdout
    assert "could not reach" not in result.stdout.lower()


def test_check_says_the_smtp_server_refused_the_login_without_printing_the_password(fake, smtp_server, tmp_path):
    server = smtp_server(authenticator=accepting_only("support@example.com", "right-pass-0815"),
                         auth_require_tls=False)
    settings = portal_settings(fake, server, SMTP_USERNAME="support@example.com", SMTP_PASSWORD="wrong-pass-4711")
    result = run_portal(["--check"], settings, tmp_path)
    assert result.returncode == 1
    assert "but it refused the login (535" in result.stdout
    assert "SMTP_PASSWORD" in result.stdout and "wrong-pass-4711" not in result.stdout


def test_check_says_a_plain_smtp_port_does_not_speak_tls_from_the_first_byte(fake, smtp, tmp_path):
    result = run_portal(["--check"], portal_settings(fake, smtp, SMTP_SECURITY="ssl"), tmp_path)
    assert result.returncode == 1
    assert "it speaks plain SMTP on that port" in result.stdout
    assert "SMTP_SECURITY=starttls" in result.stdout


def test_check_says_the_smtp_host_name_does_not_resolve(fake, smtp, tmp_path):
    result = run_portal(["--check"], portal_settings(fake, smtp, SMTP_ADDRESS="smtp.invalid"), tmp_path)
    assert result.returncode == 1
    assert f"Could not reach the SMTP server smtp.invalid:{smtp.port}: the name smtp.invalid does not resolve" \
        in result.stdout


def test_check_says_a_connection_that_times_out_could_not_reach_the_server(fake, smtp, monkeypatch):
    def black_hole(*args, **kwargs):
        raise TimeoutError("timed out")
    monkeypatch.setattr(smtplib.SMTP, "_get_socket", black_hole)  # a firewall dropping the SYN
    config = load_config(portal_settings(fake, smtp), dotenv_path=None)
    assert mailer.Mailer(config).check() == [
        f"Could not reach the SMTP server 127.0.0.1:{smtp.port}: no answer within 10 s "
        "(a firewall, or the wrong address or port)"]


def test_check_says_a_port_expecting_tls_from_the_first_byte_sent_no_greeting(fake, smtp_server, certificate,
                                                                             monkeypatch):
    monkeypatch.setattr(mailer, "SMTP_TIMEOUT_SECONDS", 1)  # both sides wait for the other: don't wait 10 s
    server = smtp_server(ssl_context=server_context(certificate))
    config = load_config(portal_settings(fake, server, SMTP_SECURITY="starttls"), dotenv_path=None)
    [problem] = mailer.Mailer(config).check()
    assert problem.startswith(f"Reached the SMTP server 127.0.0.1:{server.port}, but it sent no SMTP greeting")
    assert "set SMTP_SECURITY=ssl" in problem


def test_check_passes_over_starttls_with_a_login(fake, smtp_server, certificate, tmp_path):
    server = smtp_server(tls_context=server_context(certificate), require_starttls=True,
                         authenticator=accepting_only("support@example.com", "right-pass-0815"))
    settings = portal_settings(fake, server, SMTP_SECURITY="starttls", SMTP_USERNAME="support@example.com",
                               SMTP_PASSWORD="right-pass-0815", SSL_CERT_FILE=str(certificate[0]))
    result = run_portal(["--check"], settings, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok    SMTP 127.0.0.1:{server.port} (starttls)" in result.stdout


def test_check_says_the_smtp_certificate_is_not_trusted(fake, smtp_server, certificate, tmp_path):
    server = smtp_server(tls_context=server_context(certificate), require_starttls=True)
    result = run_portal(["--check"], portal_settings(fake, server, SMTP_SECURITY="starttls"), tmp_path)
    assert result.returncode == 1
    assert "but its certificate is not trusted" in result.stdout


# ---------------------------------------------------------------------------
# Chatwoot addressed with the wrong scheme
# ---------------------------------------------------------------------------

class HttpsOnly(socketserver.ThreadingTCPServer):
    """A port that speaks only HTTPS, like nginx's `listen 443 ssl`.

    A plain HTTP request gets nginx's 400 ("The plain HTTP request was sent to HTTPS
    port") when `answers_plain`, else the connection closed, as most TLS servers do.
    """

    daemon_threads = True

    def __init__(self, context, answers_plain):
        super().__init__(("127.0.0.1", 0), HttpsOnlyHandler)
        self.context, self.answers_plain = context, answers_plain
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class HttpsOnlyHandler(socketserver.BaseRequestHandler):
    def handle(self):
        if self.request.recv(1, socket.MSG_PEEK) == b"\x16":  # a TLS handshake record
            try:
                with self.server.context.wrap_socket(self.request, server_side=True):
                    pass
            except OSError:
                pass
        elif self.server.answers_plain:
            self.request.recv(65536)
            body = b"<html><body><center>The plain HTTP request was sent to HTTPS port</center></body></html>"
            self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture(params=["closes the connection", "answers 400"])
def https_only(request, certificate):
    server = HttpsOnly(server_context(certificate), answers_plain=request.param == "answers 400")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_check_says_chatwoot_speaks_plain_http_when_addressed_as_https(fake, smtp, tmp_path):
    https_url = fake.url.replace("http://", "https://")
    result = run_portal(["--check"], portal_settings(fake, smtp, CHATWOOT_URL=https_url), tmp_path)
    assert result.returncode == 1
    assert f"CHATWOOT_URL starts with https://, but this server speaks plain HTTP: use {fake.url}" in result.stdout


def test_check_says_an_https_port_speaks_https_when_addressed_as_http(fake, smtp, https_only, tmp_path):
    result = run_portal(["--check"], portal_settings(fake, smtp, CHATWOOT_URL=https_only.url), tmp_path)
    assert result.returncode == 1
    https_url = https_only.url.replace("http://", "https://")
    assert f"CHATWOOT_URL starts with http://, but this server speaks HTTPS (TLS): use {https_url}" in result.stdout


# ---------------------------------------------------------------------------
# Warnings: misspelt settings, once each
# ---------------------------------------------------------------------------

def test_check_flags_a_misspelt_setting_in_dotenv_with_the_closest_name(fake, smtp, tmp_path):
    (tmp_path / ".env").write_text("SMTP_ADDRES=mail.example.com\nCHATWOT_URL=http://chatwoot.internal\n")
    result = run_portal(["--check"], portal_settings(fake, smtp), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SMTP_ADDRES in .env is not a setting of the portal and is ignored; did you mean SMTP_ADDRESS?" \
        in result.stdout
    assert "did you mean CHATWOOT_URL?" in result.stdout


def test_check_prints_each_warning_once(fake, smtp, tmp_path):
    settings = portal_settings(fake, smtp)
    del settings["SMTP_FROM"]  # a warning: sign-in mails come from no-reply@portal.test
    (tmp_path / ".env").write_text("SMTP_ADDRES=mail.example.com\n")
    result = run_portal(["--check"], settings, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SMTP_FROM is not set") == 1, result.stdout
    assert result.stdout.count("did you mean SMTP_ADDRESS?") == 1, result.stdout


def start_up_output(settings, cwd, until, unset=()):
    """What a real `python portal.py` prints until a line containing `until`; then it is stopped."""
    env = {key: value for key, value in os.environ.items() if key not in settings and key not in unset}
    env.update(settings)
    process = subprocess.Popen([sys.executable, str(ROOT / "portal.py")], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(30, process.kill)  # a portal that never prints it
    watchdog.start()
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if until in line:
                break
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
    return "".join(lines)


def test_start_up_logs_each_warning_once(fake, smtp, tmp_path):
    settings = portal_settings(fake, smtp, PORT=str(free_port()))
    del settings["SMTP_FROM"]
    (tmp_path / ".env").write_text("SMTP_ADDRES=mail.example.com\n")
    output = start_up_output(settings, tmp_path, "portal listening", unset=("SMTP_FROM",))
    assert "portal listening" in output, output
    assert output.count("SMTP_FROM is not set") == 1, output
    assert output.count("did you mean SMTP_ADDRESS?") == 1, output


def test_start_refusal_names_the_misspelt_setting_beside_the_missing_one(fake, smtp, tmp_path):
    settings = portal_settings(fake, smtp)
    (tmp_path / ".env").write_text(f"SMTP_ADDRES={settings.pop('SMTP_ADDRESS')}\n")
    result = run_portal([], {**settings, "SMTP_ADDRESS": ""}, tmp_path)
    assert result.returncode == 2
    assert "SMTP_ADDRESS is required" in result.stderr
    assert "SMTP_ADDRES in .env is not a setting of the portal and is ignored; did you mean SMTP_ADDRESS?" \
        in result.stderr


# ---------------------------------------------------------------------------
# --send-test-mail
# ---------------------------------------------------------------------------

def test_a_test_mail_is_sent_in_text_and_html_and_accepted(fake, smtp, tmp_path):
    result = run_portal(["--check", "--send-test-mail", "admin@example.org"], portal_settings(fake, smtp), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok    Test mail to admin@example.org: accepted by 127.0.0.1:{smtp.port} (250)" in result.stdout
    [message] = smtp.wait_for(1)
    assert message["To"] == "admin@example.org" and message["From"] == "support@example.com"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"] in result.stdout  # to find it in the mail server's log
    for part in ("plain", "html"):
        assert "This is a test mail from the support portal" in message.get_body((part,)).get_content()


def test_a_refused_test_mail_shows_the_code_and_a_reason_and_fails(fake, smtp, tmp_path):
    smtp.fail_with = "554 5.7.1 Rejected by policy"
    result = run_portal(["--check", "--send-test-mail", "admin@example.org"], portal_settings(fake, smtp), tmp_path)
    assert result.returncode == 1
    assert "FAIL  Test mail to admin@example.org" in result.stdout
    assert "refused the message itself (554 5.7.1 Rejected by policy, a permanent refusal)" in result.stdout


class RefusingEnvelopes(MailCatcher):
    """Refuses the sender or the recipient, as a server does for a foreign From or an unknown user."""

    async def handle_MAIL(self, server, session, envelope, address, options):
        if address == "nobody@example.com":
            return "553 5.7.1 Sender address rejected: not owned by user"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        if address == "gone@example.org":
            return "450 4.2.1 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.mark.parametrize("sender, recipient, expected", [
    ("nobody@example.com", "admin@example.org",
     "refused the sender nobody@example.com (553 5.7.1 Sender address rejected: not owned by user, a permanent"),
    ("support@example.com", "gone@example.org",
     "refused the recipient gone@example.org (450 4.2.1 Mailbox busy, try again later, a temporary refusal"),
], ids=["sender", "recipient"])
def test_a_refused_envelope_names_what_was_refused_and_whether_to_retry(fake, smtp_server, tmp_path,
                                                                        sender, recipient, expected):
    server = smtp_server(RefusingEnvelopes)
    result = run_portal(["--check", "--send-test-mail", recipient], portal_settings(fake, server, SMTP_FROM=sender),
                        tmp_path)
    assert result.returncode == 1
    assert expected in result.stdout
    assert server.messages == []


@pytest.mark.parametrize("address", ["admin@example.org, evil@example.net", "Admin <admin@example.org>",
                                     "admin", "x:evil@example.net;"])
def test_the_test_mail_address_must_be_one_plain_address(fake, smtp, tmp_path, address):
    result = run_portal(["--check", "--send-test-mail", address], portal_settings(fake, smtp), tmp_path)
    assert result.returncode == 2
    assert "--send-test-mail needs one plain e-mail address" in result.stderr
    assert smtp.messages == []


def test_no_test_mail_is_sent_with_a_broken_configuration(fake, smtp, tmp_path):
    settings = portal_settings(fake, smtp, PORT="abc")
    result = run_portal(["--check", "--send-test-mail", "admin@example.org"], settings, tmp_path)
    assert result.returncode == 2
    assert "PORT" in result.stderr
    assert smtp.messages == []


def test_no_test_mail_is_sent_when_the_smtp_check_fails(fake, smtp, tmp_path):
    settings = portal_settings(fake, smtp, SMTP_SECURITY="starttls")
    result = run_portal(["--check", "--send-test-mail", "admin@example.org"], settings, tmp_path)
    assert result.returncode == 1
    assert "FAIL  Test mail to admin@example.org not sent" in result.stdout
    assert smtp.messages == []
