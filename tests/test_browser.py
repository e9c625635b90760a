"""The portal in a real browser: Debian's headless Chromium, driven by Selenium.

One Chromium serves the whole module (cookies are cleared between tests); every
test gets its own fake Chatwoot, SMTP catcher and portal. Every page the browser
settles on is checked for console errors and Content-Security-Policy violations.
axe-core (npm; `.venv/node_modules/axe-core/axe.min.js` or $AXE_CORE_JS) checks
accessibility, in light and dark mode (emulated through the DevTools protocol).
Screenshots land in tests/artifacts/screenshots/ (not committed); `python
tests/screenshots.py` makes the ones shown in the README.
"""

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from conftest import require_tools

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"
JANE = "jane@example.com"
OTHER = {"en": "es", "es": "en"}
LANGUAGE_BUTTON = {"en": "English", "es": "Español"}  # the navbar button that switches TO a language
VIEWPORTS = {"desktop": (1280, 800, False), "phone": (390, 844, True)}

# What a customer reads at each step, spelled out rather than looked up in i18n.py,
# so a missing or wrong translation shows here.
TEXT = {
    "en": {
        "signin": "Sign in to see your tickets", "email_label": "E-mail address",
        "send_link": "Send me a sign-in link", "sent": "Check your e-mail",
        "mail_subject": "Your sign-in link", "verify": "Sign in to the support portal",
        "verify_button": "Sign in", "tickets": "My tickets", "no_tickets": "You have no tickets yet.",
        "new_ticket": "New ticket", "new_heading": "Open a new ticket", "subject_label": "Subject",
        "message_label": "Message", "create": "Send ticket",
        "created": "Your ticket was created. We will answer here soon.", "open": "We're on it", "you": "You",
        "reply_label": "Your reply", "reply_button": "Send reply", "reply_sent": "Your reply was sent.",
        "cancel_summary": "Cancel ticket…", "cancel_confirm": "Yes, cancel this ticket",
        "cancelled": "Your ticket was cancelled.", "resolved": "Closed",
        "reopens": "This ticket is closed. Sending a reply will reopen it.",
        "sign_out": "Sign out", "signed_out": "You have signed out.",
        "signin_required": "Please sign in to continue.", "signed_in_as": f"Signed in as {JANE}",
        "not_found": "Page not found",
        "subject": "Printer on fire", "message": "It smokes since this morning.\nPlease help!",
        "reply": "Still smoking after I unplugged it.",
    },
    "es": {
        "signin": "Inicia sesión para ver tus tickets", "email_label": "Correo electrónico",
        "send_link": "Enviarme un enlace de acceso", "sent": "Revisa tu correo",
        "mail_subject": "Tu enlace de acceso", "verify": "Entrar al portal de soporte",
        "verify_button": "Entrar", "tickets": "Mis tickets", "no_tickets": "Todavía no tienes tickets.",
        "new_ticket": "Nuevo ticket", "new_heading": "Abrir un ticket nuevo", "subject_label": "Asunto",
        "message_label": "Mensaje", "create": "Enviar ticket",
        "created": "Tu ticket se ha creado. Te responderemos aquí pronto.", "open": "Estamos en ello", "you": "Tú",
        "reply_label": "Tu respuesta", "reply_button": "Enviar respuesta",
        "reply_sent": "Tu respuesta se ha enviado.",
        "cancel_summary": "Cancelar ticket…", "cancel_confirm": "Sí, cancelar este ticket",
        "cancelled": "Tu ticket se ha cancelado.", "resolved": "Cerrado",
        "reopens": "Este ticket está cerrado. Si envías una respuesta, se volverá a abrir.",
        "sign_out": "Cerrar sesión", "signed_out": "Has cerrado la sesión.",
        "signin_required": "Inicia sesión para continuar.", "signed_in_as": f"Sesión iniciada como {JANE}",
        "not_found": "Página no encontrada",
        "subject": "La impresora está en llamas", "message": "Echa humo desde esta mañana.\n¡Ayuda, por favor!",
        "reply": "Sigue echando humo después de desenchufarla.",
    },
}


# ---------------------------------------------------------------------------
# Chromium
# ---------------------------------------------------------------------------

# Records CSP violations in the page itself, in case the console ever words them
# differently; installed before any page script runs.
CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__cspViolations.push(e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') +
                              ' at ' + e.sourceFile + ':' + e.lineNumber);
});
"""


def start_chromium():
    """Debian's Chromium, headless, with a throwaway profile; never downloads anything."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="portal-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--lang=en-US", "--hide-scrollbars",
                 "--force-color-profile=srgb", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"intl.accept_languages": "en-US,en"})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.profile_dir = profile
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_LISTENER})
    return driver


def stop_chromium(driver):
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def axe_source():
    path = Path(os.environ.get("AXE_CORE_JS") or ROOT / ".venv" / "node_modules" / "axe-core" / "axe.min.js")
    if not path.is_file():
        message = f"axe-core not found at {path} (make test installs it with npm; or set AXE_CORE_JS)"
        if os.environ.get("REQUIRE_SYSTEM_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path.read_text(encoding="utf-8")


def _by():
    from selenium.webdriver.common.by import By

    return By


class Chromium:
    """A person at the browser: opens pages, types, clicks, reads what is shown.

    Every page it settles on must leave the console free of errors and CSP
    violations; `visited` lists them for the failure messages.
    """

    def __init__(self, driver, port):
        self.driver = driver
        self.origin = f"http://127.0.0.1:{port}"
        self.visited = []

    # -- moving around -------------------------------------------------------

    def open(self, path_or_url, expect_status=None):
        url = path_or_url if path_or_url.startswith("http") else self.origin + path_or_url
        self.driver.get(url)
        self.settle(expect_status)

    def click(self, element, expect_status=None):
        """Click something that loads a new page, and wait for that page."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.execute_script("window.__leaving = true")
        element.click()
        # A new document has no marker; asking while it loads may fail, so retry.
        WebDriverWait(self.driver, 10, ignored_exceptions=(WebDriverException,)).until(
            lambda d: d.execute_script("return !window.__leaving && document.readyState === 'complete'"))
        self.settle(expect_status)

    def settle(self, expect_status=None):
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, 10).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
        self.visited.append(self.path)
        self.assert_console_clean(expect_status)

    def assert_console_clean(self, expect_status=None):
        entries = self.driver.get_log("browser")
        here = self.driver.current_url
        problems = []
        for entry in entries:
            message = entry["message"]
            # A page that is itself an error (404) is reported as a failed load of
            # that very page; only that exact line is expected.
            if (expect_status and message.startswith(here.split("#")[0] + " ")
                    and f"status of {expect_status} " in message):
                continue
            if entry["level"] == "SEVERE" or "Content Security Policy" in message or "Content-Security-Policy" in message:
                problems.append(f"{entry['level']} {message}")
        problems += [f"CSP violation: {v}" for v in
                     self.driver.execute_script("return window.__cspViolations || []")]
        assert not problems, f"console problems on {self.path}:\n" + "\n".join(problems)

    def clear(self):
        """Forget cookies (all ports share 127.0.0.1) and stale console lines."""
        self.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        self.prefer("light")
        self.show_at("desktop")
        self.driver.get("about:blank")
        self.driver.get_log("browser")

    # -- looking -------------------------------------------------------------

    @property
    def path(self):
        return self.driver.current_url[len(self.origin):] if self.driver.current_url.startswith(self.origin) \
            else self.driver.current_url

    @property
    def lang(self):
        return self.driver.find_element(_by().TAG_NAME, "html").get_attribute("lang")

    def find(self, css):
        return self.driver.find_element(_by().CSS_SELECTOR, css)

    def find_all(self, css):
        return self.driver.find_elements(_by().CSS_SELECTOR, css)

    def text(self, css):
        return self.find(css).text

    def page_text(self):
        return self.find("body").text

    def button(self, label):
        """The button a person would press: found by its visible words."""
        every = self.driver.find_elements(_by().TAG_NAME, "button")
        # textContent, not .text: a button inside a closed <details> has no visible text yet.
        buttons = [b for b in every if b.get_attribute("textContent").strip() == label]
        assert buttons, f"no button reading {label!r} on {self.path}; buttons: " + repr(
            [b.get_attribute("textContent").strip() for b in every])
        return buttons[0]

    def link(self, label):
        links = self.driver.find_elements(_by().LINK_TEXT, label)
        assert links, f"no link reading {label!r} on {self.path}"
        return links[0]

    def type_into(self, label, text):
        """Type into the field whose <label> reads `label`, as a person would find it."""
        labels = [lab for lab in self.find_all("label") if lab.text == label]
        assert labels, f"no field labelled {label!r} on {self.path}: " + repr([lab.text for lab in self.find_all("label")])
        field = self.find("#" + labels[0].get_attribute("for"))
        field.clear()
        field.send_keys(text)
        return field

    # -- viewports, screenshots, axe ----------------------------------------

    def show_at(self, size):
        """A size from VIEWPORTS, or (width, height, mobile)."""
        width, height, mobile = VIEWPORTS[size] if isinstance(size, str) else size
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    def prefer(self, scheme):
        """The operating system's light or dark setting, as `prefers-color-scheme` sees it."""
        self.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
            "features": [{"name": "prefers-color-scheme", "value": scheme}]})

    def screenshot(self, folder, name, size):
        self.show_at(size)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}-{size}.png"
        self.driver.save_screenshot(str(path))
        return path

    def horizontal_overflow(self):
        """Elements wider than the viewport (a phone would scroll sideways)."""
        return self.driver.execute_script("""
            var width = document.documentElement.clientWidth, wide = [];
            document.querySelectorAll('body *').forEach(function (el) {
              var box = el.getBoundingClientRect();
              if (box.width && (box.right > width + 1 || box.left < -1) && !el.closest('.skip'))
                wide.push(el.tagName.toLowerCase() + (el.className ? '.' + el.className : '') +
                          ' ' + Math.round(box.left) + '..' + Math.round(box.right));
            });
            return {scrollWidth: document.documentElement.scrollWidth, width: width, wide: wide};
        """)

    def axe(self):
        """axe-core's verdict on the page as shown: violations, and the rule ids that passed."""
        if not self.driver.execute_script("return typeof window.axe === 'object'"):
            self.driver.execute_script(axe_source())
        result = self.driver.execute_async_script("""
            var done = arguments[arguments.length - 1];
            axe.run(document, {resultTypes: ['violations']}).then(function (r) {
              done({violations: r.violations.map(function (v) {
                      return {id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
                              nodes: v.nodes.map(function (n) { return {target: n.target.join(' '),
                                                                        summary: n.failureSummary}; })};
                    }),
                    passes: r.passes.map(function (p) { return p.id; }),
                    incomplete: r.incomplete.map(function (p) { return p.id; })});
            }, function (e) { done({error: String(e)}); });
        """)
        assert "error" not in result, f"axe failed on {self.path}: {result['error']}"
        return result


def describe_violations(violations):
    lines = []
    for v in violations:
        lines.append(f"[{v['impact']}] {v['id']}: {v['help']} ({v['helpUrl']})")
        lines += [f"    {n['target']}: {n['summary']}".replace("\n", " ") for n in v["nodes"][:6]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Fixtures and steps
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium_driver():
    require_tools("chromium", "chromedriver")
    driver = start_chromium()
    yield driver
    stop_chromium(driver)


@pytest.fixture
def chromium(chromium_driver, portal):
    browser = Chromium(chromium_driver, portal.port)
    browser.clear()
    yield browser
    browser.clear()


def seed_tickets(fake):
    """Jane's tickets in every state, one with a thread both ways, one from e-mail."""
    now = int(time.time())
    hour = 3600
    fire = fake.add_conversation(fake.jane, fake.api_inbox, "Printer on fire", "open", now - 50 * hour)
    fake.add_message(fire, "My printer is on fire since this morning.", "incoming", created_at=now - 50 * hour)
    fake.add_message(fire, "Hi Jane, please unplug it. A technician is on the way.", "outgoing",
                     created_at=now - 49 * hour)
    fake.add_message(fire, "Unplugged. It is still smoking a bit.", "incoming", created_at=now - 47 * hour)
    invoice = fake.add_conversation(fake.jane, fake.api_inbox, "Invoice 2024-117 is wrong", "pending",
                                    now - 120 * hour)
    fake.add_message(invoice, "The invoice lists 12 toner cartridges, we got 2.", "incoming",
                     created_at=now - 120 * hour)
    password = fake.add_conversation(fake.jane, fake.api_inbox, "Password reset", "resolved", now - 480 * hour)
    fake.add_message(password, "I cannot reset my password.", "incoming", created_at=now - 480 * hour)
    renewal = fake.add_conversation(fake.jane, fake.api_inbox, "Contract renewal", "snoozed", now - 72 * hour)
    fake.add_message(renewal, "Please remind me about the renewal next week.", "incoming", created_at=now - 72 * hour)
    by_mail = fake.add_conversation(fake.jane, fake.email_inbox, "Delivery address", "open", now - 24 * hour)
    fake.add_message(by_mail, "Please ship to our new office, 5 Main St.", "incoming", created_at=now - 24 * hour)
    return {"fire": fire, "invoice": invoice, "password": password, "renewal": renewal, "by_mail": by_mail}


def choose_language(browser, lang):
    """On any page: press the navbar button of `lang` unless the page already speaks it."""
    if browser.lang != lang:
        browser.click(browser.button(LANGUAGE_BUTTON[lang]))
    assert browser.lang == lang, f"page in {browser.lang!r} after choosing {lang!r}"


def mailed_link(browser, smtp, address):
    """The link from the newest mail, pointed at this test's portal instead of PORTAL_URL."""
    return smtp.link_for(address).replace("http://portal.test", browser.origin)


def sign_in(browser, smtp, lang, address=JANE):
    browser.open("/portal/")
    choose_language(browser, lang)
    browser.type_into(TEXT[lang]["email_label"], address)
    browser.click(browser.button(TEXT[lang]["send_link"]))
    browser.open(mailed_link(browser, smtp, address))
    browser.click(browser.button(TEXT[lang]["verify_button"]))
    assert browser.path == "/portal/dashboard", browser.path


# ---------------------------------------------------------------------------
# The journey
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "es"])
def test_a_customer_signs_in_creates_replies_cancels_switches_language_and_signs_out(chromium, portal, smtp, fake, lang):
    require_tools("chromium", "chromedriver")
    t, other = TEXT[lang], TEXT[OTHER[lang]]
    browser = chromium

    # Sign-in page, in the chosen language.
    browser.open("/portal/")
    assert browser.lang == "en" and browser.text("h1") == TEXT["en"]["signin"]
    choose_language(browser, lang)
    assert browser.text("h1") == t["signin"]
    assert browser.path == "/portal/"

    # Ask for a link; the mail comes in the page's language.
    browser.type_into(t["email_label"], JANE)
    browser.click(browser.button(t["send_link"]))
    assert browser.text("h1") == t["sent"]
    assert JANE in browser.page_text()
    assert smtp.messages[-1]["Subject"] == t["mail_subject"]

    # Open the link: a confirmation page; the token is used only on the button.
    browser.open(mailed_link(browser, smtp, JANE))
    assert browser.text("h1") == t["verify"] and JANE in browser.page_text()
    browser.click(browser.button(t["verify_button"]))

    # The dashboard, empty so far.
    assert browser.path == "/portal/dashboard"
    assert browser.text("h1") == t["tickets"]
    assert t["no_tickets"] in browser.page_text()
    assert browser.text("footer") == t["signed_in_as"]

    # A new ticket, typed into the form.
    browser.click(browser.link(t["new_ticket"]))
    assert browser.path == "/portal/tickets/new"
    assert browser.text("h1") == t["new_heading"]
    browser.type_into(t["subject_label"], t["subject"])
    browser.type_into(t["message_label"], t["message"])
    browser.click(browser.button(t["create"]))

    match = re.fullmatch(r"/portal/tickets/(\d+)", browser.path)
    assert match, browser.path
    ticket_id = int(match.group(1))
    assert browser.text("h1") == t["subject"]
    assert browser.text("[role=status]") == t["created"]
    assert browser.text(".page-head .badge") == t["open"]
    first = browser.find(".thread .message")
    assert first.find_element(_by().CSS_SELECTOR, ".sender").text == t["you"]
    assert first.find_element(_by().CSS_SELECTOR, ".message-body").text == t["message"]
    conversation = fake.conversation(ticket_id)
    assert (conversation["contact_id"], conversation["inbox_id"], conversation["status"]) == (fake.jane, fake.api_inbox, "open")
    assert conversation["additional_attributes"].get("mail_subject") == t["subject"]
    # (Browsers send a textarea's line breaks as CRLF; see the line-break test below.)
    assert [(m["content"].replace("\r\n", "\n"), m["message_type"], m["private"])
            for m in fake.messages_of(ticket_id)] == [(t["message"], 0, False)]

    # A reply.
    browser.type_into(t["reply_label"], t["reply"])
    browser.click(browser.button(t["reply_button"]))
    assert browser.path == f"/portal/tickets/{ticket_id}#latest"
    assert browser.text("[role=status]") == t["reply_sent"]
    latest = browser.find("#latest")
    assert latest.find_element(_by().CSS_SELECTOR, ".sender").text == t["you"]
    assert latest.find_element(_by().CSS_SELECTOR, ".message-body").text == t["reply"]
    assert [(m["content"], m["message_type"], m["private"]) for m in fake.messages_of(ticket_id)][-1] == (t["reply"], 0, False)

    # Cancel: the button is hidden until the <details> box is opened.
    confirm = browser.button(t["cancel_confirm"])
    assert not confirm.is_displayed()
    summary = browser.find("details.cancel-box summary")
    assert summary.text == t["cancel_summary"]
    summary.click()
    assert confirm.is_displayed()
    assert fake.conversation(ticket_id)["status"] == "open"
    browser.click(confirm)
    assert browser.path == f"/portal/tickets/{ticket_id}"
    assert browser.text("[role=status]") == t["cancelled"]
    assert browser.text(".page-head .badge") == t["resolved"]
    assert t["reopens"] in browser.page_text()
    assert browser.find_all("details.cancel-box") == []
    assert fake.conversation(ticket_id)["status"] == "resolved"

    # Switch language: the same ticket, now in the other language.
    choose_language(browser, OTHER[lang])
    assert browser.path == f"/portal/tickets/{ticket_id}"
    assert browser.text("h1") == t["subject"]
    assert browser.text(".page-head .badge") == other["resolved"]
    assert browser.text("footer") == other["signed_in_as"]

    # Sign out: back on the sign-in page, and the dashboard is closed.
    browser.click(browser.button(other["sign_out"]))
    assert browser.path == "/portal/?notice=signed_out"
    assert browser.text("h1") == other["signin"]
    assert browser.text("[role=status]") == other["signed_out"]
    browser.open("/portal/dashboard")
    assert browser.path.startswith("/portal/?next=%2Fdashboard")
    assert browser.text("[role=status]") == other["signin_required"]
    assert browser.find_all("footer p") == []
    assert fake.conversation(ticket_id)["status"] == "resolved"
    assert len(browser.visited) >= 11, browser.visited


def open_new_ticket_form(browser, smtp, subject):
    sign_in(browser, smtp, "en")
    browser.open("/portal/tickets/new")
    browser.type_into(TEXT["en"]["subject_label"], subject)
    return browser.find("#message")


def test_line_breaks_typed_in_the_browser_reach_chatwoot_as_plain_newlines(chromium, portal, smtp, fake):
    """Browsers post a textarea's line breaks as CRLF; Chatwoot's own widget and API clients send LF."""
    require_tools("chromium", "chromedriver")
    t = TEXT["en"]
    open_new_ticket_form(chromium, smtp, "Two lines").send_keys("First line\nSecond line")
    chromium.click(chromium.button(t["create"]))
    ticket_id = int(chromium.path.rsplit("/", 1)[1])
    chromium.type_into(t["reply_label"], "Third line\nFourth line")
    chromium.click(chromium.button(t["reply_button"]))
    assert [m["content"] for m in fake.messages_of(ticket_id)] == ["First line\nSecond line", "Third line\nFourth line"]


def test_a_message_as_long_as_the_form_allows_is_accepted(chromium, portal, smtp, fake):
    """The textarea's maxlength counts a line break as one character; the portal must agree."""
    require_tools("chromium", "chromedriver")
    field = open_new_ticket_form(chromium, smtp, "Long list")
    # As if pasted: the browser itself caps a paste at maxlength.
    text = "".join(f"Item {n:04d}\n" for n in range(1000))  # 10 000 characters, 1 000 line breaks
    length, limit = chromium.driver.execute_script(
        "arguments[0].value = arguments[1]; return [arguments[0].value.length, arguments[0].maxLength]", field, text)
    assert length == limit == 10_000
    # A refusal is a 400 page; let it through the console check to show its own words.
    chromium.click(chromium.button(TEXT["en"]["create"]), expect_status=400)
    refusal = [e.text for e in chromium.find_all(".field-error, .notice-error")]
    assert re.fullmatch(r"/portal/tickets/\d+", chromium.path), f"refused on {chromium.path}: {refusal}"
    assert chromium.text("[role=status]") == TEXT["en"]["created"]


def test_the_console_check_notices_an_inline_script_the_policy_refuses(chromium):
    """The guard the other tests rely on: CSP is enforced and a violation fails the page."""
    require_tools("chromium", "chromedriver")
    chromium.open("/portal/")
    chromium.driver.execute_script("""
        var s = document.createElement('script');
        s.textContent = 'document.title = "injected"';
        document.body.appendChild(s);
    """)
    assert chromium.driver.title != "injected"
    with pytest.raises(AssertionError, match="Content Security Policy"):
        chromium.assert_console_clean()


# ---------------------------------------------------------------------------
# Accessibility
# ---------------------------------------------------------------------------

# The luminance (0 black .. 1 white) of the page behind everything and of its text, and
# every element painted with a light background: in dark mode a forgotten light colour
# (a badge, a notice, a field) shows up here even when its text contrast is fine. Not
# images: their plate stays light on purpose (style.css, dark mode).
SCHEME_REPORT = """
    function luminance(css) {
      var parts = (css.match(/[\\d.]+/g) || []).map(Number);
      if (parts.length < 3 || (parts.length > 3 && parts[3] === 0)) return null;
      var c = parts.slice(0, 3).map(function (v) {
        v = v / 255;
        return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
      });
      return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
    }
    var root = getComputedStyle(document.documentElement), light = [];
    document.querySelectorAll('body *').forEach(function (el) {
      var box = el.getBoundingClientRect(), background = getComputedStyle(el).backgroundColor;
      var lum = luminance(background);
      if (box.width && box.height && lum !== null && lum > 0.6 && el.tagName !== 'IMG')
        light.push(el.tagName.toLowerCase() + (el.className ? '.' + String(el.className).replace(/ /g, '.') : '') +
                   ' ' + background);
    });
    return {background: luminance(root.backgroundColor), text: luminance(root.color), light: light};
"""


def assert_scheme_shown(browser, scheme, page):
    shown = browser.driver.execute_script(SCHEME_REPORT)
    where = f"the {page} page ({browser.path}) in {scheme} mode"
    if scheme == "dark":
        assert shown["background"] < 0.05 and shown["text"] > 0.6, f"{where} is not dark: {shown}"
        assert not shown["light"], f"light surfaces on {where}:\n" + "\n".join(sorted(set(shown["light"])))
    else:
        assert shown["background"] > 0.8 and shown["text"] < 0.05, f"{where} is not light: {shown}"


def assert_accessible(browser, page, form=False, scheme="light"):
    assert_scheme_shown(browser, scheme, page)
    result = browser.axe()
    serious = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert not serious, (f"axe on the {page} page ({browser.path}, lang {browser.lang}, {scheme} mode):\n"
                         + describe_violations(serious))
    checked = set(result["passes"]) | set(result["incomplete"])
    assert "color-contrast" in checked, f"axe did not check contrast on the {page} page"
    if form:
        assert "label" in result["passes"], f"form fields without labels on the {page} page"


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("lang", ["en", "es"])
def test_sign_in_dashboard_ticket_and_new_ticket_pages_have_no_serious_axe_violations(chromium, portal, smtp, fake,
                                                                                       lang, scheme):
    require_tools("chromium", "chromedriver")
    tickets = seed_tickets(fake)
    browser = chromium
    browser.prefer(scheme)
    browser.open("/portal/")
    choose_language(browser, lang)
    assert_accessible(browser, "sign-in", form=True, scheme=scheme)
    sign_in(browser, smtp, lang)
    assert_accessible(browser, "dashboard", scheme=scheme)
    browser.open("/portal/dashboard?status=all")  # the status tabs, every badge
    assert len(browser.find_all(".ticket-item")) == len(tickets)
    assert_accessible(browser, "dashboard, every status", scheme=scheme)
    browser.open(f"/portal/tickets/{tickets['fire']}")
    assert len(browser.find_all(".thread .message")) == 3
    browser.find("details.cancel-box summary").click()  # the danger button is checked too
    assert_accessible(browser, "ticket", form=True, scheme=scheme)
    browser.open("/portal/tickets/new")
    assert_accessible(browser, "new ticket", form=True, scheme=scheme)


FOCUS_REPORT = """
    var el = document.activeElement;
    if (!el || el === document.body || el === document.documentElement) return null;
    var style = getComputedStyle(el);
    var behind = el.parentElement, background = 'rgba(0, 0, 0, 0)';
    while (behind) {
      background = getComputedStyle(behind).backgroundColor;
      if (!/rgba\\(.*, 0\\)$/.test(background) && background !== 'transparent') break;
      behind = behind.parentElement;
    }
    if (!behind) background = 'rgb(255, 255, 255)';
    var label = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
                ' "' + (el.textContent || el.value || '').trim().slice(0, 30) + '"';
    return {label: label, style: style.outlineStyle, width: parseFloat(style.outlineWidth),
            color: style.outlineColor, background: background,
            focusVisible: el.matches(':focus-visible')};
"""


def tab_through(browser, presses=40):
    """Press Tab through the whole page; what each focused element looks like."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    seen = {}
    for _ in range(presses):
        ActionChains(browser.driver).send_keys(Keys.TAB).perform()
        report = browser.driver.execute_script(FOCUS_REPORT)
        if report is None:
            continue
        if report["label"] in seen:
            break
        seen[report["label"]] = report
    return seen


def _luminance(css_color):
    r, g, b = (int(x) for x in re.findall(r"[\d.]+", css_color)[:3])

    def channel(c):
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a, b):
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def focus_reports(browser, smtp, fake):
    tickets = seed_tickets(fake)
    browser.open("/portal/")
    on_signin = tab_through(browser)
    sign_in(browser, smtp, "en")
    browser.open(f"/portal/tickets/{tickets['fire']}")
    on_ticket = tab_through(browser)
    return on_signin, on_ticket


def test_every_control_reached_with_tab_shows_a_focus_outline(chromium, portal, smtp, fake):
    require_tools("chromium", "chromedriver")
    on_signin, on_ticket = focus_reports(chromium, smtp, fake)
    labels = " ".join(on_signin)
    assert "input#email" in labels and '"Send me a sign-in link"' in labels and '"Skip to content"' in labels, labels
    labels = " ".join(on_ticket)
    assert "textarea#message" in labels and '"Send reply"' in labels and '"Cancel ticket…"' in labels, labels
    hidden = [f"{r['label']}: outline {r['style']} {r['width']}px, :focus-visible={r['focusVisible']}"
              for r in [*on_signin.values(), *on_ticket.values()]
              if r["style"] == "none" or r["width"] < 2 or not r["focusVisible"]]
    assert not hidden, "focus not visible on:\n" + "\n".join(hidden)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_focus_outline_contrasts_at_least_three_to_one_with_the_background_around_it(chromium, portal, smtp, fake,
                                                                                          scheme):
    """WCAG 1.4.11 (non-text contrast) applies to focus indicators."""
    require_tools("chromium", "chromedriver")
    chromium.prefer(scheme)
    on_signin, on_ticket = focus_reports(chromium, smtp, fake)
    assert_scheme_shown(chromium, scheme, "ticket")
    faint = sorted({f"outline {r['color']} on {r['background']}: {contrast(r['color'], r['background']):.2f}:1"
                    for r in [*on_signin.values(), *on_ticket.values()]
                    if contrast(r["color"], r["background"]) < 3})
    assert not faint, "focus outline too faint (needs 3:1):\n" + "\n".join(faint)


# ---------------------------------------------------------------------------
# Screenshots, desktop and phone
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "es"])
def test_every_page_fits_a_phone_and_a_desktop_and_is_photographed(chromium, portal, smtp, fake, lang):
    require_tools("chromium", "chromedriver")
    tickets = seed_tickets(fake)
    browser, t = chromium, TEXT[lang]
    folder = ARTIFACTS / lang
    for old in folder.glob("*.png"):
        old.unlink()
    overflowing = []

    def photograph(name):
        for size in VIEWPORTS:
            browser.screenshot(folder, name, size)
            layout = browser.horizontal_overflow()
            if layout["scrollWidth"] > layout["width"] or layout["wide"]:
                overflowing.append(f"{name} at {size}: page {layout['scrollWidth']}px in {layout['width']}px; "
                                   + ", ".join(layout["wide"][:5]))
        browser.show_at("desktop")

    browser.open("/portal/")
    choose_language(browser, lang)
    photograph("signin")
    browser.type_into(t["email_label"], JANE)
    browser.click(browser.button(t["send_link"]))
    photograph("link-sent")
    browser.open(mailed_link(browser, smtp, JANE))
    assert browser.text("h1") == t["verify"]
    photograph("verify")
    browser.click(browser.button(t["verify_button"]))
    photograph("dashboard")
    browser.open(f"/portal/tickets/{tickets['fire']}")
    photograph("ticket")
    browser.open("/portal/tickets/new")
    photograph("new-ticket")
    browser.open("/portal/no-such-page", expect_status=404)
    assert browser.text("h1") == t["not_found"]
    photograph("not-found")

    names = sorted(p.name for p in folder.glob("*.png"))
    assert len(names) == 14 and all(p.stat().st_size > 5000 for p in folder.glob("*.png")), names
    assert not overflowing, "wider than the screen:\n" + "\n".join(overflowing)


# ---------------------------------------------------------------------------
# Dark mode: the same contrast standard with the system set to dark
# ---------------------------------------------------------------------------

def tiny_png(rgb=(200, 60, 40), size=4):
    """A valid PNG of one colour, so the thumbnail loads without a console error."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_notices_badges_labels_code_thumbnails_and_the_rating_form_keep_their_contrast_in_light_and_dark(
        chromium, portal, smtp, fake, clock, scheme):
    """Every colour the portal paints, not only the plain pages: each kind of notice, every
    status and priority badge, the unread labels, agents' code and quotes, a thumbnail,
    the chosen rating, a field error."""
    require_tools("chromium", "chromedriver")
    t, browser = TEXT["en"], chromium
    tickets = seed_tickets(fake)
    # The agent answered last: "New reply" on the dashboard.
    fake.add_message(tickets["fire"], "Could you send a photo?", "outgoing", created_at=int(time.time()) - 3600)
    for priority in ("low", "medium", "high", "urgent"):
        fake.add_conversation(fake.jane, fake.api_inbox, f"A {priority} ticket", priority=priority)
    now, day = int(clock()), 86400
    rich = fake.add_conversation(fake.jane, fake.api_inbox, "Scanner driver", "resolved", now - 2 * day,
                                 priority="urgent")
    fake.add_message(rich, "The scanner stopped. A photo of its screen:", "incoming", created_at=now - 2 * day,
                     attachments=[{"filename": "screen.png", "content_type": "image/png", "data": tiny_png(),
                                   "width": 4, "height": 4}])
    fake.add_message(rich, "Run `lsusb`, then:\n\n```\nsudo systemctl restart saned\n```\n\n"
                           "> Version 5.2 is the one that works.", "outgoing", created_at=now - day)
    fake.add_message(rich, "Please rate the conversation", "template", content_type="input_csat",
                     content_attributes={"display_type": "emoji"}, created_at=now - 3600)
    browser.prefer(scheme)

    # A wrong sign-in code: the error notice.
    browser.open("/portal/")
    browser.type_into(t["email_label"], JANE)
    browser.click(browser.button(t["send_link"]))
    browser.type_into("Code from the e-mail", "000 000")
    browser.click(browser.button("Sign in with the code"), expect_status=400)
    assert browser.find_all(".notice-error")
    assert_accessible(browser, "sign-in code, wrong", form=True, scheme=scheme)

    sign_in(browser, smtp, "en")
    browser.open("/portal/dashboard?status=all")
    # "Waiting for your reply" is a status badge's words now, not a separate label.
    for shown in (".label-new", ".badge-open", ".badge-pending", ".badge-resolved",
                  ".badge-snoozed", ".badge-priority-low", ".badge-priority-urgent"):
        assert browser.find_all(shown), f"no {shown} on the dashboard"
    assert_accessible(browser, "dashboard, labels and badges", scheme=scheme)

    browser.open(f"/portal/tickets/{rich}")
    for shown in (".message-body code", ".message-body pre", ".message-body blockquote", ".attachment .thumb img",
                  ".notice-info", ".rating-form"):
        assert browser.find_all(shown), f"no {shown} on the ticket"
    browser.find(".rating-form input[name=rating][value='4']").click()  # the chosen answer is highlighted
    assert_accessible(browser, "ticket, resolved, with a survey", form=True, scheme=scheme)
    browser.type_into(t["reply_label"], "It works again, thanks.")
    browser.click(browser.button(t["reply_button"]))
    assert browser.find_all(".notice-ok[role=status]")
    browser.find("details.cancel-box summary").click()
    assert_accessible(browser, "ticket, reopened by a reply", form=True, scheme=scheme)

    browser.open("/portal/tickets/new")
    browser.type_into(t["subject_label"], "Blank message")
    browser.type_into(t["message_label"], "   ")
    browser.click(browser.button(t["create"]), expect_status=400)
    assert browser.find_all(".field-error")
    assert_accessible(browser, "new ticket, refused", form=True, scheme=scheme)


def test_form_controls_the_portal_does_not_paint_follow_the_dark_setting(chromium, portal, smtp, fake):
    """`<meta name="color-scheme">`: the browser's own parts (the file button, scroll bars,
    the search field's clear button) turn dark too, instead of white boxes on a dark page."""
    require_tools("chromium", "chromedriver")
    browser = chromium
    browser.prefer("dark")
    sign_in(browser, smtp, "en")
    browser.open("/portal/tickets/new")
    button = browser.driver.execute_script(
        "return getComputedStyle(document.querySelector('#files'), '::file-selector-button').backgroundColor")
    assert _luminance(button) < 0.2, f"the file button stays light in dark mode: {button}"


# ---------------------------------------------------------------------------
# Landing where the news is
# ---------------------------------------------------------------------------

VIEWPORT_BOX = """
var box = document.querySelector(arguments[0]).getBoundingClientRect();
return {top: box.top, bottom: box.bottom, viewport: window.innerHeight, scrolled: window.scrollY};
"""


def assert_in_view(browser, css, whole=False):
    box = browser.driver.execute_script(VIEWPORT_BOX, css)
    seen = 0 <= box["top"] < box["viewport"] and (box["bottom"] <= box["viewport"] or not whole)
    assert seen, f"{css} is not {'wholly ' if whole else ''}in view on {browser.path}: {box}"


def test_a_long_thread_on_a_phone_opens_at_the_newest_message_and_a_reply_lands_by_its_notice(
        chromium, portal, smtp, fake):
    require_tools("chromium", "chromedriver")
    t, browser = TEXT["en"], chromium
    now, hour = int(time.time()), 3600
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Network drops every hour", "open", now - 40 * hour)
    for n in range(30):
        fake.add_message(ticket, f"Update {n + 1} on the network problem.\nIt dropped again at {n % 24}:00.",
                         "incoming" if n % 2 == 0 else "outgoing", created_at=now - (40 - n) * hour)
    sign_in(browser, smtp, "en")
    browser.show_at("phone")
    browser.click(browser.find(f'.ticket-link[href*="/tickets/{ticket}"]'))
    assert browser.path == f"/portal/tickets/{ticket}#latest"
    assert "Update 30 " in browser.text("#latest")
    assert_in_view(browser, "#latest")

    browser.type_into(t["reply_label"], t["reply"])
    browser.click(browser.button(t["reply_button"]))
    assert browser.text("[role=status]") == t["reply_sent"]
    assert_in_view(browser, "[role=status]", whole=True)
    assert t["reply"] in browser.text("#latest")
    assert_in_view(browser, "#latest")

    # A new ticket with a long first message: its notice is where the page opens too.
    browser.open("/portal/tickets/new")
    browser.type_into(t["subject_label"], t["subject"])
    browser.type_into(t["message_label"], "\n".join(f"Line {n} of what happened." for n in range(60)))
    browser.click(browser.button(t["create"]))
    assert browser.text("[role=status]") == t["created"]
    assert_in_view(browser, "[role=status]", whole=True)


# ---------------------------------------------------------------------------
# Less clutter
# ---------------------------------------------------------------------------

SMALL_PHONE = (360, 740, True)

NEW_TICKET_ACTIONS = """
var label = arguments[0];
return Array.prototype.filter.call(document.querySelectorAll('a, button'), function (el) {
  var box = el.getBoundingClientRect();
  return box.width && box.height && el.textContent.trim() === label;
}).map(function (el) { return el.outerHTML; });
"""


@pytest.mark.parametrize("lang", ["en", "es"])
def test_every_view_offers_at_most_one_new_ticket_action(chromium, portal, smtp, fake, lang):
    require_tools("chromium", "chromedriver")
    t, browser = TEXT[lang], chromium

    def actions(view, expected):
        found = browser.driver.execute_script(NEW_TICKET_ACTIONS, t["new_ticket"])
        assert len(found) == expected, f"{len(found)} '{t['new_ticket']}' actions on {view}:\n" + "\n".join(found)

    sign_in(browser, smtp, lang)
    assert t["no_tickets"] in browser.page_text()
    actions("the empty dashboard", 1)
    tickets = seed_tickets(fake)
    browser.open("/portal/dashboard")
    actions("the dashboard", 1)
    browser.open(f"/portal/tickets/{tickets['fire']}")
    actions("a ticket", 1)
    browser.open("/portal/tickets/new")
    actions("the new-ticket page", 0)
    browser.type_into(t["subject_label"], t["subject"])
    browser.type_into(t["message_label"], "   ")
    browser.click(browser.button(t["create"]), expect_status=400)
    actions("the new-ticket form sent back", 0)


NAV_LINES = """
var controls = Array.prototype.filter.call(document.querySelectorAll('.topnav a, .topnav button'),
                                           function (el) { return el.getBoundingClientRect().width; });
return controls.map(function (el) {
  var box = el.getBoundingClientRect();
  return {text: el.textContent.trim(), top: Math.round(box.top), height: Math.round(box.height),
          right: Math.round(box.right)};
});
"""


@pytest.mark.parametrize("lang", ["en", "es"])
def test_sign_out_never_wraps_alone_on_a_360px_phone(chromium, portal, smtp, fake, lang):
    require_tools("chromium", "chromedriver")
    t, browser = TEXT[lang], chromium
    tickets = seed_tickets(fake)
    sign_in(browser, smtp, lang)
    browser.show_at(SMALL_PHONE)
    for path in ("/portal/dashboard", f"/portal/tickets/{tickets['fire']}", "/portal/tickets/new"):
        browser.open(path)
        controls = browser.driver.execute_script(NAV_LINES)
        *_, neighbour, sign_out = controls
        assert sign_out["text"] == t["sign_out"], controls
        one_line = len({c["top"] for c in controls}) == 1
        assert one_line or sign_out["top"] == neighbour["top"], f"'{t['sign_out']}' alone on its line on {path}: {controls}"
        assert sign_out["height"] <= neighbour["height"], f"'{t['sign_out']}' broken in two on {path}: {controls}"
        layout = browser.horizontal_overflow()
        assert layout["scrollWidth"] <= layout["width"] and not layout["wide"], f"{path} at 360px: {layout}"


HEADINGS_BESIDE_LABELS = """
var pairs = [];
document.querySelectorAll('main h1, main h2, main h3').forEach(function (heading) {
  var scope = heading.closest('section, form, fieldset') || heading.parentElement;
  scope.querySelectorAll('label, legend').forEach(function (label) {
    pairs.push([heading.textContent.trim(), label.textContent.trim()]);
  });
});
return pairs;
"""


def repeats(heading, label):
    """Whether one says what the other says: "Reply" above "Your reply"."""
    words = [re.findall(r"\w+", text.casefold()) for text in (heading, label)]
    short, long = sorted(words, key=len)
    return any(long[i:i + len(short)] == short for i in range(len(long) - len(short) + 1))


@pytest.mark.parametrize("lang", ["en", "es"])
def test_no_heading_repeats_the_label_of_its_field_and_the_reply_form_stays_a_named_region(
        chromium, portal, smtp, fake, clock, lang):
    require_tools("chromium", "chromedriver")
    t, browser = TEXT[lang], chromium
    assert repeats("Reply", "Your reply") and not repeats("Open a new ticket", "Subject")  # the rule itself
    rated = fake.add_conversation(fake.jane, fake.api_inbox, "Scanner driver", "resolved", int(clock()) - 86400)
    fake.add_message(rated, "Which driver does the scanner need?", "incoming", created_at=int(clock()) - 86400)
    fake.add_message(rated, "Please rate the conversation", "template", content_type="input_csat",
                     content_attributes={"display_type": "emoji"}, created_at=int(clock()) - 3600)
    repeated = []
    browser.open("/portal/")
    choose_language(browser, lang)
    repeated += [(browser.path, *pair) for pair in browser.driver.execute_script(HEADINGS_BESIDE_LABELS)
                 if repeats(*pair)]
    sign_in(browser, smtp, lang)
    for path in (f"/portal/tickets/{rated}", "/portal/tickets/new"):
        browser.open(path)
        pairs = browser.driver.execute_script(HEADINGS_BESIDE_LABELS)
        assert pairs, f"no headings with fields on {path}"
        repeated += [(path, *pair) for pair in pairs if repeats(*pair)]
    assert not repeated, "headings that repeat their field's label:\n" + "\n".join(map(repr, repeated))

    browser.open(f"/portal/tickets/{rated}")
    reply = browser.find("section:has(> form textarea#message)")
    assert reply.aria_role == "region" and reply.accessible_name.strip(), \
        f"the reply form's section has no name: role {reply.aria_role!r}, name {reply.accessible_name!r}"
