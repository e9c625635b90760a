"""The only module that opens SMTP: it sends sign-in and reply mails, in plain text and HTML.

Security follows SMTP_SECURITY: "starttls" (port 587) and "ssl" (port 465) verify the
server's certificate with the system's trust store; "none" is for a relay on the same
host. Each send opens its own connection with a timeout, so a stuck mail server costs
one request a few seconds, never a thread forever. Failures become MailError.
"""

import email.errors
import email.headerregistry
import email.message
import email.utils
import html
import logging
import smtplib
import socket
import ssl
import time

log = logging.getLogger("portal.mail")

SMTP_TIMEOUT_SECONDS = 10
TEST_MAIL_SUBJECT = "Test mail from the support portal"


class MailError(Exception):
    """The mail could not be handed to the SMTP server.

    `permanent` is True when the server refused this mail for good (a 5xx answer to
    the sender, recipient or content); trying it again later would fail the same
    way. Down, slow, 4xx and refused logins are worth another try.
    """

    def __init__(self, message, permanent=False):
        super().__init__(message)
        self.permanent = permanent


class Mailer:
    def __init__(self, config, pseudonym=lambda address: "?"):
        self._config = config
        self._pseudonym = pseudonym

    def send(self, to, subject, text, html, headers=()):
        """Send one mail; `headers` adds (name, value) pairs such as In-Reply-To."""
        message = self._compose(to, subject, text, html, headers)
        self._session("send", to, lambda smtp: smtp.send_message(message, to_addrs=[to]))

    def _compose(self, to, subject, text, html, headers=()):
        message = email.message.EmailMessage()
        message["From"] = self._config.smtp_from
        try:
            # One address, never a list: "x:evil@example.com;" must not reach evil.
            message["To"] = email.headerregistry.Address(addr_spec=to)
        except (ValueError, IndexError, email.errors.HeaderParseError):
            raise MailError("failed (not a single address)") from None
        # One line: a ticket's subject (typed by a customer, or from an e-mail) may hold
        # line breaks, which the email package refuses in a header (the mail would never go).
        message["Subject"] = " ".join(subject.split())
        message["Date"] = email.utils.formatdate(localtime=False)
        message["Message-ID"] = email.utils.make_msgid(domain=self._config.smtp_from.rpartition("@")[2] or None)
        message["Auto-Submitted"] = "auto-generated"  # no out-of-office replies to a robot
        for name, value in headers:
            message[name] = value
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        return message

    def rehearse(self, to):
        """Everything a send does but the message itself, for an address that gets none.

        Sign-in requests for unknown addresses go through the same connection,
        TLS, login and envelope as real ones (the envelope names our own address,
        and RSET drops it), so neither the answer nor its timing tells whether an
        address belongs to a customer, and an SMTP outage shows for both alike.
        """
        sender = email.utils.parseaddr(self._config.smtp_from)[1]

        def envelope(smtp):
            smtp.ehlo_or_helo_if_needed()
            code, _ = smtp.mail(sender)
            if code >= 400:  # a real send would fail here too
                raise smtplib.SMTPResponseException(code, b"")
            smtp.rcpt(sender)  # its answer is not ours to judge: some relays refuse it
            smtp.rset()

        self._session("rehearse", to, envelope)

    def _session(self, action, to, work):
        started = time.monotonic()
        outcome = "sent" if action == "send" else "ok"
        try:
            with self._open() as smtp:
                work(smtp)
        except (OSError, smtplib.SMTPException) as error:
            # Only the kind of failure and its SMTP code: a server's reply text and
            # SMTPRecipientsRefused both tend to quote the recipient's address.
            code = getattr(error, "smtp_code", None) or getattr(error, "errno", None)
            outcome = f"failed ({type(error).__name__}{f' {code}' if code else ''})"
            raise MailError(outcome, permanent=_refused_for_good(error)) from None
        finally:
            log.info("smtp %s to=%s %s %.1fms", action, self._pseudonym(to), outcome,
                     (time.monotonic() - started) * 1000)

    def check(self):
        """Problems reaching and logging in to the SMTP server (empty: fine), with the likely fix."""
        steps = []
        try:
            with self._open(steps) as smtp:
                steps.append("NOOP")
                smtp.noop()
        except (OSError, smtplib.SMTPException) as error:
            return [self._explain(error, steps[-1])]
        return []

    def send_test_mail(self, to):
        """One real mail for `python portal.py --check --send-test-mail`; the server's answer as a sentence.

        Raises MailError naming the refusal: its code, the server's words, and what it
        usually means. In English, like all of --check: it is for the sysadmin.
        """
        config = self._config
        where = f"{config.smtp_address}:{config.smtp_port}"
        portal = config.public_url("/")
        text = (f"This is a test mail from the support portal at {portal}\n\n"
                f"It was sent by `python portal.py --check --send-test-mail` through the SMTP server {where}, "
                "the way sign-in links and reply mails go out. Nothing needs to be done.\n")
        html_body = (f"<p>This is a test mail from the support portal at "
                     f"<a href=\"{html.escape(portal)}\">{html.escape(portal)}</a></p>\n"
                     f"<p>It was sent by <code>python portal.py --check --send-test-mail</code> through the SMTP "
                     f"server {html.escape(where)}, the way sign-in links and reply mails go out. "
                     "Nothing needs to be done.</p>\n")
        message = self._compose(to, TEST_MAIL_SUBJECT, text, html_body)
        steps = []
        try:
            with self._open(steps) as smtp:
                steps.append("sending")
                smtp.send_message(message, to_addrs=[to])
        except smtplib.SMTPSenderRefused as error:
            raise MailError(f"{where} refused the sender {config.smtp_from} ({_answer(error)}, {_kind(error)}): "
                            "SMTP_FROM must be an address the SMTP account may send as") from None
        except smtplib.SMTPRecipientsRefused as error:
            code, words = next(iter(error.recipients.values()))
            refusal = smtplib.SMTPResponseException(code, words)
            login = ("" if config.smtp_username
                     else "; a server that relays only for logged-in users needs SMTP_USERNAME")
            raise MailError(f"{where} refused the recipient {to} ({_answer(refusal)}, {_kind(refusal)}): no such "
                            f"mailbox, or the server does not relay to it{login}") from None
        except smtplib.SMTPDataError as error:
            raise MailError(f"{where} refused the message itself ({_answer(error)}, {_kind(error)}): its content "
                            "or a policy such as SPF or DMARC for the domain of SMTP_FROM") from None
        except (OSError, smtplib.SMTPException) as error:
            raise MailError(self._explain(error, steps[-1])) from None
        return f"accepted by {where} (250), Message-ID {message['Message-ID']}"

    def _explain(self, error, step):
        """What a failure at `step` (see _open) means, and what usually fixes it, in one sentence."""
        config = self._config
        where = f"{config.smtp_address}:{config.smtp_port}"
        pairs = "use port 465 with SMTP_SECURITY=ssl, or port 587 with SMTP_SECURITY=starttls"
        reached = f"Reached the SMTP server {where}, but"
        if step == "connect" and isinstance(error, socket.gaierror):
            return (f"Could not reach the SMTP server {where}: the name {config.smtp_address} does not "
                    f"resolve ({error.strerror}); check SMTP_ADDRESS")
        if step == "connect" and isinstance(error, ConnectionRefusedError):
            return (f"Could not reach the SMTP server {where}: connection refused (nothing listens on that "
                    "port); check SMTP_ADDRESS and SMTP_PORT")
        if step == "connect" and isinstance(error, TimeoutError):
            return (f"Could not reach the SMTP server {where}: no answer within {SMTP_TIMEOUT_SECONDS} s "
                    "(a firewall, or the wrong address or port)")
        if isinstance(error, ssl.SSLCertVerificationError):
            return (f"{reached} its certificate is not trusted ({error.verify_message}): SMTP_ADDRESS must be "
                    "a name the certificate is issued for, by an authority this system trusts")
        if isinstance(error, ssl.SSLError):
            if step == "connect" and error.reason == "WRONG_VERSION_NUMBER":
                # What SMTP_SECURITY=ssl reads from a plain port: its "220" greeting.
                return (f"{reached} it speaks plain SMTP on that port, not TLS from the first byte (the TLS "
                        f"handshake failed: {error.reason}): use SMTP_SECURITY=starttls there (usually port 587), "
                        "or port 465 with SMTP_SECURITY=ssl")
            return f"{reached} the TLS handshake failed ({error.reason or error}): {pairs}"
        if step == "connect" and isinstance(error, smtplib.SMTPServerDisconnected) and config.smtp_security != "ssl":
            # A port that expects TLS from the first byte waits for our handshake, we for its greeting.
            return (f"{reached} it sent no SMTP greeting ({error}): if that port expects TLS from the first "
                    "byte (usually 465), set SMTP_SECURITY=ssl; for STARTTLS use port 587 with SMTP_SECURITY=starttls")
        if isinstance(error, smtplib.SMTPNotSupportedError) and step == "STARTTLS":
            return f"{reached} it does not offer STARTTLS: {pairs} (SMTP_SECURITY=none only for a relay on this host)"
        if isinstance(error, smtplib.SMTPNotSupportedError) and step == "AUTH":
            tls = f"most servers offer it only over TLS, so {pairs}; " if config.smtp_security == "none" else ""
            return (f"{reached} it does not offer AUTH, so SMTP_USERNAME cannot log in: {tls}"
                    "for a relay that needs no login, leave SMTP_USERNAME empty")
        if isinstance(error, smtplib.SMTPAuthenticationError):
            return f"{reached} it refused the login ({_answer(error)}): check SMTP_USERNAME and SMTP_PASSWORD"
        if isinstance(error, smtplib.SMTPResponseException):
            return f"{reached} it answered {_answer(error)} at {step}"
        if step == "connect":
            return f"Could not reach the SMTP server {where}: {error}"
        return f"{reached} {step} failed: {type(error).__name__}: {error}"

    def _open(self, steps=None):
        """A connected, secured and logged-in SMTP session.

        `steps`, a list, gets each step's name as it begins ("connect", "STARTTLS",
        "AUTH"), so a check can tell a server without STARTTLS from one without AUTH:
        smtplib raises SMTPNotSupportedError for both.
        """
        steps = [] if steps is None else steps
        config = self._config
        steps.append("connect")
        if config.smtp_security == "ssl":
            smtp = smtplib.SMTP_SSL(config.smtp_address, config.smtp_port, timeout=SMTP_TIMEOUT_SECONDS,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(config.smtp_address, config.smtp_port, timeout=SMTP_TIMEOUT_SECONDS)
        try:
            if config.smtp_security == "starttls":
                steps.append("STARTTLS")
                smtp.starttls(context=ssl.create_default_context())
            if config.smtp_username:
                steps.append("AUTH")
                smtp.login(config.smtp_username, config.smtp_password)
        except BaseException:
            smtp.close()
            raise
        return smtp


def _refused_for_good(error):
    """A 5xx refusal of this mail (not of our login, which the sysadmin can fix)."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in error.recipients.values())
    if isinstance(error, (smtplib.SMTPSenderRefused, smtplib.SMTPDataError)):
        return error.smtp_code >= 500
    return False


def _answer(error):
    """An SMTP answer as "550 5.1.1 words", on one line and short (for --check only:
    a server's words may quote the recipient, which the send log never shows)."""
    words = error.smtp_error
    words = words.decode("utf-8", "replace") if isinstance(words, bytes) else str(words)
    return f"{error.smtp_code} {' '.join(words.split())[:200]}".strip()


def _kind(error):
    """What an answer's first digit says about trying again."""
    if 400 <= error.smtp_code < 500:
        return "a temporary refusal: greylisting, a rate limit or a full mailbox; try again in a few minutes"
    return "a permanent refusal"


class ConsoleMailer:
    """Demo mode: prints the mail instead of sending it, so a person can click the link."""

    def __init__(self, stream):
        self._stream = stream

    def send(self, to, subject, text, html, headers=()):
        print(f"\n--- mail to {to}: {subject}\n{text}\n---\n", file=self._stream, flush=True)

    def rehearse(self, to):
        pass

    def check(self):
        return []
