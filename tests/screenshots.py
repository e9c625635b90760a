"""Make the README's screenshots: python tests/screenshots.py

Runs the demo account (FakeChatwoot.seed_demo) behind the portal in this process,
catches the sign-in mail with a real SMTP server, signs in as jane@example.com in
Debian's headless Chromium, and writes English pages at desktop (1280x800) and
phone (390x844) sizes to docs/screenshots/.
"""

import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from aiosmtpd.controller import Controller  # noqa: E402

from conftest import MailCatcher, portal_settings, start_portal  # noqa: E402
from fake_chatwoot import FakeChatwoot  # noqa: E402
from test_browser import Chromium, start_chromium, stop_chromium, VIEWPORTS  # noqa: E402

OUT = HERE.parent / "docs" / "screenshots"
JANE = "jane@example.com"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def find_ticket(fake, subject):
    for display_id in range(1, 100):
        try:
            if fake.conversation(display_id)["additional_attributes"].get("mail_subject") == subject:
                return display_id
        except KeyError:
            continue
    raise LookupError(subject)


def main():
    fake = FakeChatwoot().start()
    seeded = fake.seed_demo()
    fake.api_inbox = seeded["api_inbox_id"]
    catcher = MailCatcher()
    catcher.port = free_port()
    mail = Controller(catcher, hostname="127.0.0.1", port=catcher.port)
    mail.start()
    portal = start_portal(portal_settings(fake, catcher), time.time)
    driver = start_chromium()
    try:
        browser = Chromium(driver, portal.port)
        browser.clear()
        shots = []

        def shoot(name):
            for size in VIEWPORTS:
                shots.append(browser.screenshot(OUT, name, size))
            browser.show_at("desktop")

        browser.open("/portal/")
        browser.driver.execute_script("document.activeElement.blur()")  # no caret or ring in the picture
        shoot("signin")
        browser.type_into("E-mail address", JANE)
        browser.click(browser.button("Send me a sign-in link"))
        browser.open(catcher.link_for(JANE).replace("http://portal.test", browser.origin))
        browser.click(browser.button("Sign in"))
        shoot("dashboard")
        browser.open(f"/portal/tickets/{find_ticket(fake, 'Printer on fire')}")
        shoot("ticket")
        browser.open("/portal/tickets/new")
        shoot("new-ticket")
        for path in shots:
            print(path.relative_to(HERE.parent))
    finally:
        stop_chromium(driver)
        portal.close()
        mail.stop()
        fake.stop()


if __name__ == "__main__":
    main()
