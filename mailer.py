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
import logging
import smtplib
import ssl
import time

log = logging.getLogger("portal.mail")

SMTP_TIMEOUT_SECONDS = 10


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
        message = email.message.EmailMessage()
        message["From"] = self._config.smtp_from
        try:
            # One address, never a list: "x:evil@example.com;" must not reach evil.
            message["To"] = email.headerregistry.Address(addr_spec=to)
        except (ValueError, IndexError, email.errors.HeaderParseError):
            raise MailError("failed (not a single address)") from None
        message["Subject"] = subject
        message["Date"] = email.utils.formatdate(localtime=False)
        message["Message-ID"] = email.utils.make_msgid(domain=self._config.smtp_from.rpartition("@")[2] or None)
        message["Auto-Submitted"] = "auto-generated"  # no out-of-office replies to a robot
        for name, value in headers:
            message[name] = value
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        self._session("send", to, lambda smtp: smtp.send_message(message, to_addrs=[to]))

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
        """Problems reaching and logging in to the SMTP server (empty: fine)."""
        try:
            with self._open() as smtp:
                smtp.noop()
        except smtplib.SMTPAuthenticationError:
            return ["The SMTP server refused SMTP_USERNAME / SMTP_PASSWORD"]
        except ssl.SSLError as error:
            return [f"TLS with the SMTP server failed ({error.reason or error}); check SMTP_SECURITY and SMTP_PORT"]
        except (OSError, smtplib.SMTPException) as error:
            return [f"Could not reach the SMTP server {self._config.smtp_address}:{self._config.smtp_port}: {error}"]
        return []

    def _open(self):
        config = self._config
        if config.smtp_security == "ssl":
            smtp = smtplib.SMTP_SSL(config.smtp_address, config.smtp_port, timeout=SMTP_TIMEOUT_SECONDS,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(config.smtp_address, config.smtp_port, timeout=SMTP_TIMEOUT_SECONDS)
        try:
            if config.smtp_security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if config.smtp_username:
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
