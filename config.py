"""The portal's configuration: one schema, read once at start, validated as a whole.

Settings come from the process environment and from a `.env` file in the working
directory where one exists; the environment wins, so systemd's EnvironmentFile and a
shell `export` both override the file. Every problem is collected and reported
together (by start-up and by `python portal.py --check`), naming the setting and
what is wrong with it, never its value when the value is a secret. Warnings (a
misspelt name such as SMTP_ADDRES, a password sent unencrypted) are collected the
same way and shown once, at start-up or by --check.
"""

import dataclasses
import difflib
import ipaddress
import os
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BRAND_ASSETS_DIR = HERE / "static" / "brand"
DEFAULT_STATE_DIR = HERE / "state"

# A secret shorter than the minimum is refused; one shorter than the recommended
# length starts with a warning. `python3 -c "import secrets;
# print(secrets.token_hex(32))"` gives 64 characters.
MIN_SESSION_SECRET_LENGTH = 16
RECOMMENDED_SESSION_SECRET_LENGTH = 32
BRAND_FILES = ("logo.png", "logo_thumbnail.png")
# Chatwoot's own webhook secrets are 24 characters; one made up for the URL
# must not be guessable either.
MIN_WEBHOOK_SECRET_LENGTH = 16
# An unknown name this close to a setting's (difflib's ratio) is taken for a typo:
# SMTP_ADDRES, CHATWOT_URL and SMTP_PASS are caught, SMTP_HOST (which would
# suggest SMTP_PORT) is not.
TYPO_CUTOFF = 0.8
# The environment holds much besides the portal's settings (PATH, SESSION_MANAGER,
# other services'), so only names with these prefixes are checked for typos there;
# every name in .env is, as that file is the portal's own.
TYPO_PREFIXES = ("CHATWOOT_", "SMTP_", "PORTAL_", "WEBHOOK_", "NOTIFY_", "ATTACHMENT_", "STATE_")
# SMTP_SECURITY=none sends SMTP_PASSWORD in the clear; harmless only on this host.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


class ConfigError(Exception):
    """Raised with every problem found, one per line; `warnings` are found alongside.

    A misspelt name in .env often is the problem ("SMTP_ADDRESS is required" next to
    SMTP_ADDRES), so the warnings are reported with the problems.
    """

    def __init__(self, problems, warnings=()):
        self.problems = list(problems)
        self.warnings = list(warnings)
        super().__init__("\n".join(self.problems))


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    default: str | None  # None: required
    help: str


# The one schema. Adding a setting here? Also add it to .env.example and to the
# README's configuration table (tests/test_config.py checks both).
SETTINGS = (
    Setting("HOST", "127.0.0.1", "Address the portal listens on."),
    Setting("PORT", "3001", "TCP port the portal listens on."),
    Setting("BASE_PATH", "/portal", "URL prefix the portal is served under (nginx location)."),
    Setting("PORTAL_URL", None, "Public origin of the portal, e.g. https://support.example.com; links are PORTAL_URL + BASE_PATH + path."),
    Setting("CHATWOOT_URL", "http://localhost:3000", "Base URL of Chatwoot, as reached from the portal."),
    Setting("CHATWOOT_API_TOKEN", None, "Access token of a Chatwoot administrator (Profile > Access Token)."),
    Setting("CHATWOOT_ACCOUNT_ID", "1", "Chatwoot account id."),
    Setting("CHATWOOT_INBOX_ID", None, "Id of the API-type inbox that new tickets go to."),
    Setting("CHATWOOT_TIMEOUT", "5", "Seconds to wait for Chatwoot before showing a friendly error."),
    Setting("SESSION_SECRET", None, "Random key that signs cookies and tokens: 32 characters or more (16 at the very least)."),
    Setting("SESSION_IDLE_MINUTES", "30", "A session ends after this many minutes without a request."),
    Setting("MAGIC_LINK_MINUTES", "15", "How long a sign-in link stays valid."),
    Setting("SMTP_ADDRESS", None, "Host name of the SMTP server that sends sign-in links."),
    Setting("SMTP_PORT", "587", "SMTP port (587 for STARTTLS, 465 for SSL)."),
    Setting("SMTP_USERNAME", "", "SMTP user; empty means no SMTP AUTH."),
    Setting("SMTP_PASSWORD", "", "SMTP password."),
    Setting("SMTP_FROM", "", "From address of sign-in mails; defaults to SMTP_USERNAME, else no-reply@ the PORTAL_URL host."),
    Setting("SMTP_SECURITY", "starttls", "starttls, ssl or none (none only for a local relay)."),
    Setting("BRAND_ASSETS_DIR", str(DEFAULT_BRAND_ASSETS_DIR), "Folder holding logo.png and logo_thumbnail.png (Chatwoot's public/brand-assets)."),
    Setting("TRUSTED_PROXY", "127.0.0.1", "Address of the reverse proxy whose X-Forwarded-For (the client address for rate limits) is believed."),
    Setting("ATTACHMENT_MAX_FILES", "5", "Files a customer may attach to one new ticket or reply (1 to 15, Chatwoot's own limit)."),
    Setting("ATTACHMENT_MAX_MB", "10", "Largest file a customer may attach, in MB (1 to 40, Chatwoot's default upload limit)."),
    Setting("WEBHOOK_SECRET", "", "Secret of Chatwoot's account webhook (its signing secret, Chatwoot 4.12+), or a random string also put in the webhook URL as ?secret= for older Chatwoot. Empty: no reply mails, /webhooks/chatwoot answers 404."),
    Setting("NOTIFY_INBOXES", "", "Comma-separated ids of the inboxes whose agent replies are mailed to the customer; default CHATWOOT_INBOX_ID. E-mail inboxes mail their contacts themselves."),
    Setting("NOTIFY_DELAY_SECONDS", "60", "Agent replies to one ticket within this many seconds go out as one mail; the customer reading the ticket meanwhile cancels it. 0 mails each reply at once."),
    Setting("STATE_DIR", str(DEFAULT_STATE_DIR), "Writable folder for the portal's state file (the reply-mail queue, customers' languages); systemd's StateDirectory."),
    Setting("STATE_URL", "", "Empty: state in this process (sessions) and its STATE_DIR file (the mail queue). redis://[:password@]host:port/db (rediss:// for TLS): all state in Redis, shared by several portal processes."),
    Setting("STATE_PREFIX", "portal:", "Prefix of every Redis key the portal writes (STATE_URL only): portals sharing a Redis database need different prefixes unless they are instances of the same portal."),
)

SMTP_SECURITY_CHOICES = ("starttls", "ssl", "none")


@dataclasses.dataclass(frozen=True)
class Config:
    host: str
    port: int
    base_path: str
    portal_url: str
    chatwoot_url: str
    chatwoot_api_token: str = dataclasses.field(repr=False)
    chatwoot_account_id: int
    chatwoot_inbox_id: int
    chatwoot_timeout: float
    session_secret: str = dataclasses.field(repr=False)
    session_idle_minutes: int
    magic_link_minutes: int
    smtp_address: str
    smtp_port: int
    smtp_username: str
    smtp_password: str = dataclasses.field(repr=False)
    smtp_from: str
    smtp_security: str
    brand_assets_dir: Path
    trusted_proxy: str
    attachment_max_files: int
    attachment_max_mb: int
    webhook_secret: str = dataclasses.field(repr=False)
    notify_inboxes: tuple
    notify_delay_seconds: int
    state_dir: Path
    state_url: str = dataclasses.field(repr=False)  # may hold the Redis password
    state_prefix: str
    # Things that work but deserve a look; printed at start and by --check.
    warnings: tuple = ()

    @property
    def attachment_max_bytes(self):
        return self.attachment_max_mb * 1024 * 1024

    @property
    def secure_cookies(self):
        return self.portal_url.startswith("https://")

    def public_url(self, path):
        """Absolute URL of a portal path, for links that leave the browser (e-mail)."""
        return self.portal_url + self.base_path + path


def read_dotenv(path):
    """KEY=VALUE lines; blank lines and # comments skipped; optional matching quotes stripped.

    Deliberately no interpolation or escapes: secrets may contain `$` or `\\`.
    """
    values = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return values
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError([f"{path}:{number}: expected KEY=VALUE"])
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_config(environ=None, dotenv_path=".env"):
    """Build the Config, or raise ConfigError listing every problem at once."""
    environ = os.environ if environ is None else environ
    dotenv = read_dotenv(dotenv_path) if dotenv_path else {}
    raw = dict(dotenv)
    raw.update({key: value for key, value in environ.items() if key in _BY_NAME})
    problems, warnings = [], _misspelt_names(dotenv, environ)

    def get(name):
        setting = _BY_NAME[name]
        value = raw.get(name, "").strip()
        if not value:
            if setting.default is None:
                problems.append(f"{name} is required: {setting.help}")
            return setting.default or ""
        return value

    def integer(name, low, high):
        value = get(name)
        if not value:
            return 0
        try:
            number = int(value)
        except ValueError:
            problems.append(f"{name} must be a whole number, not {value!r}")
            return 0
        if not low <= number <= high:
            problems.append(f"{name} must be between {low} and {high}, not {number}")
        return number

    host = get("HOST")
    port = integer("PORT", 1, 65535)
    base_path = get("BASE_PATH").rstrip("/")
    if base_path and (not base_path.startswith("/") or "//" in base_path or "?" in base_path):
        problems.append(f"BASE_PATH must be a path like /portal, not {base_path!r}")

    portal_url = _origin(get("PORTAL_URL"), "PORTAL_URL", problems)
    chatwoot_url = _origin(get("CHATWOOT_URL"), "CHATWOOT_URL", problems, allow_path=True)

    secret = get("SESSION_SECRET")
    generate = "generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"
    if secret and len(secret) < MIN_SESSION_SECRET_LENGTH:
        problems.append(f"SESSION_SECRET is too short ({len(secret)} characters, need at least "
                        f"{MIN_SESSION_SECRET_LENGTH}); {generate}")
    elif secret and len(secret) < RECOMMENDED_SESSION_SECRET_LENGTH:
        warnings.append(f"SESSION_SECRET has only {len(secret)} characters; "
                        f"{RECOMMENDED_SESSION_SECRET_LENGTH} or more are recommended; {generate}")

    timeout_text = get("CHATWOOT_TIMEOUT")
    try:
        timeout = float(timeout_text)
        if not 0.5 <= timeout <= 60:
            problems.append(f"CHATWOOT_TIMEOUT must be between 0.5 and 60 seconds, not {timeout_text}")
    except ValueError:
        problems.append(f"CHATWOOT_TIMEOUT must be a number of seconds, not {timeout_text!r}")
        timeout = 5.0

    security = get("SMTP_SECURITY").lower()
    if security not in SMTP_SECURITY_CHOICES:
        problems.append(f"SMTP_SECURITY must be one of {', '.join(SMTP_SECURITY_CHOICES)}, not {security!r}")
    smtp_username = get("SMTP_USERNAME")
    smtp_password = get("SMTP_PASSWORD")
    if smtp_username and not smtp_password:
        problems.append("SMTP_PASSWORD is required when SMTP_USERNAME is set")
    smtp_address = get("SMTP_ADDRESS")
    if (security == "none" and smtp_username and smtp_password and smtp_address
            and smtp_address.lower().strip("[]") not in LOCAL_HOSTS):
        warnings.append(f"SMTP_SECURITY is none, so SMTP_PASSWORD is sent unencrypted to {smtp_address}; "
                        "use port 587 with SMTP_SECURITY=starttls or 465 with ssl (none only for a relay "
                        "on this host: localhost, 127.0.0.1 or ::1)")
    smtp_from = get("SMTP_FROM")
    if smtp_from and "@" not in smtp_from:
        problems.append(f"SMTP_FROM must be an e-mail address, not {smtp_from!r}")
    elif not smtp_from:
        portal_host = urllib.parse.urlsplit(portal_url).hostname or "localhost"
        smtp_from = smtp_username if "@" in smtp_username else f"no-reply@{portal_host}"
        if smtp_from != smtp_username:
            warnings.append(f"SMTP_FROM is not set; sign-in mails come from {smtp_from}")

    brand_dir = Path(get("BRAND_ASSETS_DIR"))
    present = [name for name in BRAND_FILES if (brand_dir / name).is_file()]
    if not present:
        problems.append(f"BRAND_ASSETS_DIR has neither {' nor '.join(BRAND_FILES)}: {brand_dir}")
    elif len(present) == 1:
        warnings.append(f"BRAND_ASSETS_DIR has no {(set(BRAND_FILES) - set(present)).pop()}; "
                        f"{present[0]} serves as both logo and favicon")

    trusted_proxy = get("TRUSTED_PROXY")
    try:
        ipaddress.ip_address(trusted_proxy)
    except ValueError:
        problems.append(f"TRUSTED_PROXY must be an IP address, not {trusted_proxy!r}")

    webhook_secret = get("WEBHOOK_SECRET")
    if webhook_secret and len(webhook_secret) < MIN_WEBHOOK_SECRET_LENGTH:
        problems.append(f"WEBHOOK_SECRET is too short ({len(webhook_secret)} characters, need at least "
                        f"{MIN_WEBHOOK_SECRET_LENGTH}); use the secret Chatwoot shows for the webhook, or {generate}")
    inbox_id = integer("CHATWOOT_INBOX_ID", 1, 2**31 - 1)
    notify_inboxes = []
    for part in filter(None, (p.strip() for p in get("NOTIFY_INBOXES").split(","))):
        if part.isdigit() and 1 <= int(part) < 2**31:
            notify_inboxes.append(int(part))
        else:
            problems.append(f"NOTIFY_INBOXES must be inbox ids separated by commas, not {part!r}")
    notify_inboxes = tuple(notify_inboxes) or ((inbox_id,) if inbox_id else ())

    state_url = get("STATE_URL").strip()
    if state_url:
        parts = urllib.parse.urlsplit(state_url)
        try:
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            port_ok = False
        database = parts.path.strip("/")
        if parts.scheme not in ("redis", "rediss") or not parts.hostname or not port_ok:
            # Never the value itself: it may carry the Redis password.
            problems.append("STATE_URL must look like redis://[:password@]host:port/db (rediss:// for TLS)")
        elif database and not database.isdigit():
            problems.append(f"STATE_URL must end in a database number such as /1, not /{database}")
    state_prefix = get("STATE_PREFIX")
    if not state_prefix or len(state_prefix) > 64 or any(c.isspace() for c in state_prefix):
        problems.append(f"STATE_PREFIX must be 1 to 64 characters without spaces, not {state_prefix!r}")

    config = Config(
        host=host,
        port=port,
        base_path=base_path,
        portal_url=portal_url,
        chatwoot_url=chatwoot_url,
        chatwoot_api_token=get("CHATWOOT_API_TOKEN"),
        chatwoot_account_id=integer("CHATWOOT_ACCOUNT_ID", 1, 2**31 - 1),
        chatwoot_inbox_id=inbox_id,
        chatwoot_timeout=timeout,
        session_secret=secret,
        session_idle_minutes=integer("SESSION_IDLE_MINUTES", 1, 24 * 60),
        magic_link_minutes=integer("MAGIC_LINK_MINUTES", 1, 24 * 60),
        smtp_address=smtp_address,
        smtp_port=integer("SMTP_PORT", 1, 65535),
        smtp_username=smtp_username,
        smtp_password=smtp_password,
        smtp_from=smtp_from,
        smtp_security=security,
        brand_assets_dir=brand_dir,
        trusted_proxy=trusted_proxy,
        attachment_max_files=integer("ATTACHMENT_MAX_FILES", 1, 15),
        attachment_max_mb=integer("ATTACHMENT_MAX_MB", 1, 40),
        webhook_secret=webhook_secret,
        notify_inboxes=notify_inboxes,
        notify_delay_seconds=integer("NOTIFY_DELAY_SECONDS", 0, 3600),
        state_dir=Path(get("STATE_DIR")),
        state_url=state_url,
        state_prefix=state_prefix,
        warnings=tuple(warnings),
    )
    if problems:
        raise ConfigError(problems, warnings)
    return config


def _origin(value, name, problems, allow_path=False):
    """Validate an http(s) URL and return it without a trailing slash."""
    if not value:
        return ""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"{name} must be an http:// or https:// URL, not {value!r}")
    elif not allow_path and parts.path.strip("/"):
        problems.append(f"{name} must be an origin without a path (put the path in BASE_PATH), not {value!r}")
    elif parts.query or parts.fragment:
        problems.append(f"{name} must not carry a query or fragment: {value!r}")
    return value.rstrip("/")


def _misspelt_names(dotenv, environ):
    """A warning for each unknown name that looks like a setting, with the closest one.

    Such a line is ignored, so the setting it meant keeps its default or is missing.
    """
    names = dict.fromkeys(dotenv)  # .env first: a name in both is reported as in .env
    names.update(dict.fromkeys(key for key in environ if key.upper().startswith(TYPO_PREFIXES)))
    warnings = []
    for name in names:
        if name in _BY_NAME:
            continue
        match = difflib.get_close_matches(name.upper(), _BY_NAME, n=1, cutoff=TYPO_CUTOFF)
        if match:
            where = ".env" if name in dotenv else "the environment"
            warnings.append(f"{name} in {where} is not a setting of the portal and is ignored; "
                            f"did you mean {match[0]}?")
    return warnings


_BY_NAME = {setting.name: setting for setting in SETTINGS}
