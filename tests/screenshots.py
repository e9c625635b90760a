"""Make the README's screenshots: python tests/screenshots.py

Runs the demo account (FakeChatwoot.seed_demo) behind the portal in this process,
catches the sign-in mail with a real SMTP server, and drives Debian's headless
Chromium; it writes English pages at desktop (1280x800) and phone (390x844) sizes
to docs/screenshots/:

- signin: the sign-in page;
- signin-code: "Check your e-mail" after asking for jane@example.com's link, with
  the mail's code typed into its form (Jane then signs in with that code);
- dashboard-unread: Jane's open tickets at her first visit, with "New reply" and
  "Waiting for your reply" labels;
- ticket, ticket-attachments: "Printer on fire", its top, then scrolled to its
  photo and PDF;
- dashboard: Jane's tickets, all of them, once she has read "Printer on fire";
- new-ticket, new-ticket-files: the form empty, then filled in with a priority
  and two files chosen;
- ticket-rating: the resolved "Scanner driver" ticket scrolled to its last reply
  and its rating form (4 chosen, a comment typed);
- ticket-rated: that ticket once the rating is sent: the thanks, the thread and
  the rating given, all at the top of the page;
- dashboard-filtered: max@example.com's 64 tickets, all statuses, searched for
  "order", on page 2 of 2: tabs with counts, the search box, priority badges and
  the page links in one desktop picture.

A representative set is also shot in dark mode (the system's setting, emulated
with Chromium's DevTools protocol), as <name>-dark-desktop.png and
<name>-dark-phone.png: signin, signin-code, dashboard-unread, ticket-attachments,
new-ticket-files, ticket-rating, ticket-rated and dashboard-filtered.
"""

import re
import socket
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from aiosmtpd.controller import Controller  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from conftest import MailCatcher, portal_settings, start_portal  # noqa: E402
from fake_chatwoot import FakeChatwoot  # noqa: E402
from test_browser import Chromium, start_chromium, stop_chromium, VIEWPORTS  # noqa: E402

OUT = HERE.parent / "docs" / "screenshots"
JANE = "jane@example.com"
MAX = "max@example.com"


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


def code_for(catcher, address):
    """The sign-in code ("123 456") of the newest mail to `address`."""
    catcher.link_for(address)  # fails, naming the addresses mailed, when there is none
    message = next(m for m in reversed(catcher.messages) if m["To"] == address)
    return re.search(r"\b\d{3} \d{3}\b", message.get_body(("plain",)).get_content()).group(0)


# Brings the element to the top of the viewport (less a margin), then waits until
# every image on the page has loaded (the thumbnails are loading="lazy").
SCROLL_TO = """
var el = document.querySelector(arguments[0]);
window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY - 16);
"""
IN_VIEW = """
var box = document.querySelector(arguments[0]).getBoundingClientRect();
return box.top >= 0 && box.bottom <= window.innerHeight;
"""
DARK = "return window.matchMedia('(prefers-color-scheme: dark)').matches;"
IMAGES_LOADED = """
return Array.prototype.every.call(document.images, function (img) {
  return img.complete && img.naturalWidth > 0;
});
"""


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

        def shoot(name, scroll_to=None, must_show=None, dark=False):
            """Both sizes of the page as it is. `scroll_to`: the element to bring to
            the top first; `must_show`: the element that must then be wholly in
            the picture. Either is a CSS selector, or a dict of them by size.
            `dark`: then both sizes again in dark mode, as <name>-dark-<size>."""
            for scheme in ("light", "dark") if dark else ("light",):
                browser.prefer(scheme)
                assert browser.driver.execute_script(DARK) == (scheme == "dark"), f"{name} is not {scheme}"
                for size in VIEWPORTS:
                    target, wanted = (rule.get(size) if isinstance(rule, dict) else rule
                                      for rule in (scroll_to, must_show))
                    if target:  # after the resize: each size scrolls by its own layout
                        browser.show_at(size)
                        browser.driver.execute_script(SCROLL_TO, target)
                        WebDriverWait(browser.driver, 10).until(lambda d: d.execute_script(IMAGES_LOADED))
                    if wanted:
                        browser.show_at(size)
                        assert browser.driver.execute_script(IN_VIEW, wanted), f"{wanted} is cut off in {name}-{size}"
                    shots.append(browser.screenshot(OUT, name if scheme == "light" else f"{name}-dark", size))
            browser.prefer("light")
            browser.show_at("desktop")
            browser.driver.execute_script("window.scrollTo(0, 0)")

        browser.open("/portal/")
        browser.driver.execute_script("document.activeElement.blur()")  # no caret or ring in the picture
        shoot("signin", dark=True)
        browser.type_into("E-mail address", JANE)
        browser.click(browser.button("Send me a sign-in link"))
        assert "Check your e-mail" in browser.page_text(), browser.page_text()
        browser.type_into("Code from the e-mail", code_for(catcher, JANE))
        browser.driver.execute_script("document.activeElement.blur()")
        shoot("signin-code", dark=True)
        browser.click(browser.button("Sign in with the code"))
        assert browser.path.startswith("/portal/dashboard"), browser.path
        # First visit: nothing read yet, so the agents' latest replies are new.
        listed = browser.find(".ticket-list").get_attribute("textContent")  # textContent: not upper-cased by CSS
        assert "New reply" in listed and "Waiting for your reply" in listed, listed
        shoot("dashboard-unread", dark=True)
        fire = find_ticket(fake, "Printer on fire")
        browser.open(f"/portal/tickets/{fire}")
        shoot("ticket")
        shoot("ticket-attachments", scroll_to=".message:has(+ .message .attachment-image)", dark=True)
        browser.open("/portal/dashboard?status=all")
        shoot("dashboard")
        browser.open("/portal/tickets/new")
        shoot("new-ticket")
        photo = next(a["data"] for m in fake.messages_of(fire) for a in m["attachments"]
                     if a["content_type"] == "image/png")
        with tempfile.TemporaryDirectory(prefix="portal-screenshots-") as folder:
            chosen = [Path(folder) / "printer.png", Path(folder) / "error-log.txt"]
            chosen[0].write_bytes(photo)
            chosen[1].write_text("09:12 E-304 fuser overheated\n09:13 E-304 fuser overheated\n")
            browser.type_into("Subject", "Printer smokes again")
            browser.type_into("Message", "The printer started smoking again this morning. "
                                         "A photo and the error log are attached.")
            Select(browser.find("#priority")).select_by_visible_text("High priority")
            # A file input takes the paths as typed keys; with `multiple`, one per line.
            browser.find("#files").send_keys("\n".join(str(path) for path in chosen))
            browser.driver.execute_script("document.activeElement.blur()")
            shoot("new-ticket-files", scroll_to="label[for=subject]", dark=True)
        scanner = find_ticket(fake, "Scanner driver")
        browser.open(f"/portal/tickets/{scanner}")
        browser.find(".rating-form input[name=rating][value='4']").click()
        browser.type_into("Comment (optional)", "Quick and clear answer, the scanner works again.")
        browser.driver.execute_script("document.activeElement.blur()")
        shoot("ticket-rating", scroll_to="#latest", dark=True)
        browser.click(browser.button("Send rating"))
        assert "You rated this 4 out of 5." in browser.page_text(), browser.page_text()
        # The top of the page: the thanks, the whole (short) thread and the rating given.
        shoot("ticket-rated", scroll_to="body", must_show="#rating", dark=True)
        browser.clear()
        browser.open("/portal/")
        browser.type_into("E-mail address", MAX)
        browser.click(browser.button("Send me a sign-in link"))
        browser.open(catcher.link_for(MAX).replace("http://portal.test", browser.origin))
        browser.click(browser.button("Sign in"))
        # Page 2 of 2 of the search: on a desktop, short enough that the tabs, the
        # search box and the page links fit in one picture; on a phone, its top.
        browser.open("/portal/dashboard?status=all&q=order&page=2")
        assert browser.find("#q").get_attribute("value") == "order"
        assert browser.find_all(".pagination a"), "no page links"
        shoot("dashboard-filtered", scroll_to={"desktop": ".page-head", "phone": "body"},
              must_show={"desktop": ".pagination"}, dark=True)
        for path in shots:
            print(path.relative_to(HERE.parent))
    finally:
        stop_chromium(driver)
        portal.close()
        mail.stop()
        fake.stop()


if __name__ == "__main__":
    main()
