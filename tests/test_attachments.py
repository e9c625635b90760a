"""Files on tickets, end to end: upload on create and reply, limits, the download proxy.

The portal on waitress, the fake Chatwoot storing the files and serving them from
blob URLs on its own host (contract §10), a real SMTP server for the sign-in.
"""

import re

import pytest

from conftest import BASE, portal_settings, sign_in, start_portal

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.7\n" + b"%binary\n" * 200
ZIP = b"PK\x03\x04" + b"\x00" * 200


@pytest.fixture
def jane(portal, smtp):
    browser, _ = sign_in(portal, smtp, "jane@example.com")
    return browser


@pytest.fixture
def ticket(fake):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, subject="Printer on fire")
    fake.add_message(ticket, "My printer is on fire.")
    return ticket


def writes(fake):
    return [call for call in fake.calls if call[0] in ("POST", "PATCH")]


def attachment_links(page, ticket):
    return re.findall(rf'(?:href|src)="({BASE}/tickets/{ticket}/attachments/[^"]+)"', page.text)


def create_with_files(portal, browser, files, subject="Printer on fire", message="See the photo."):
    page = browser.get(portal.url("/tickets/new"))
    return browser.submit(page, "/tickets", files=files, subject=subject, message=message)


# ---------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------

def test_the_forms_say_the_limits_before_a_file_is_picked(portal, jane, ticket):
    for path in ("/tickets/new", f"/tickets/{ticket}"):
        page = jane.get(portal.url(path))
        assert 'type="file"' in page.text and "multiple" in page.text
        assert 'enctype="multipart/form-data"' in page.text
        assert "Up to 5 files, 10 MB each" in page.text


def test_a_new_ticket_carries_its_files_in_one_chatwoot_call(fake, portal, jane):
    fake.reset_calls()
    page = create_with_files(portal, jane, [("files", "photo.png", PNG, "image/png"),
                                            ("files", "invoice.pdf", PDF, "application/pdf")])
    assert page.status == 200 and "Your ticket was created" in page.text
    assert [c[1].rsplit("/", 1)[-1] for c in writes(fake)] == ["conversations"]  # one call
    ticket = int(page.url.rsplit("/", 1)[-1])
    [first] = fake.messages_of(ticket)
    assert first["message_type"] == 0 and first["content"] == "See the photo."
    stored = [(a["filename"], a["content_type"], a["file_type"], a["data"]) for a in first["attachments"]]
    assert stored == [("photo.png", "image/png", "image", PNG), ("invoice.pdf", "application/pdf", "file", PDF)]
    assert fake.conversation(ticket)["additional_attributes"]["mail_subject"] == "Printer on fire"


def test_a_reply_carries_its_files_and_costs_two_calls(fake, portal, jane, ticket):
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    fake.reset_calls()
    page = jane.submit(page, f"/tickets/{ticket}/reply", message="Here is the bill.",
                       files=[("files", "bill.pdf", PDF)], follow=False)
    assert page.status == 303
    assert [(method, path.rsplit("/", 1)[-1]) for method, path, _ in fake.calls] == [
        ("GET", str(ticket)), ("POST", "messages")]  # the ownership check, then one write
    reply = fake.messages_of(ticket)[-1]
    assert reply["message_type"] == 0 and reply["content"] == "Here is the bill."
    assert [a["filename"] for a in reply["attachments"]] == ["bill.pdf"]


def test_a_reply_may_be_only_a_file(fake, portal, jane, ticket):
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    page = jane.submit(page, f"/tickets/{ticket}/reply", message="", files=[("files", "shot.png", PNG)])
    assert page.status == 200
    reply = fake.messages_of(ticket)[-1]
    assert reply["message_type"] == 0 and [a["filename"] for a in reply["attachments"]] == ["shot.png"]
    assert len(attachment_links(page, ticket)) >= 2  # shown right away: link and thumbnail


def test_urlencoded_forms_keep_working(fake, portal, jane, ticket):
    page = jane.get(portal.url("/tickets/new"))
    fields = dict(page.form("/tickets").fields, subject="Plain form", message="No files here.")
    page = jane.post(portal.url("/tickets"), fields)
    assert page.status == 200 and "Your ticket was created" in page.text
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    fields = dict(page.form(f"/tickets/{ticket}/reply").fields, message="Plain reply.")
    page = jane.post(portal.url(f"/tickets/{ticket}/reply"), fields)
    assert page.status == 200 and fake.messages_of(ticket)[-1]["content"] == "Plain reply."


@pytest.mark.parametrize("files, status, words", [
    ([("files", f"shot{n}.png", PNG) for n in range(6)], 400, "at most 5 files"),
    ([("files", "page.png", b"<!doctype html><script>alert(1)</script>")], 400, "page.png"),
    ([("files", "empty.pdf", b"")], 400, "empty.pdf"),
    ([("files", "setup.exe", b"MZ\x90\x00" * 10)], 400, "setup.exe"),
])
def test_refused_files_keep_the_text_and_send_nothing(fake, portal, jane, files, status, words):
    fake.reset_calls()
    page = create_with_files(portal, jane, files, subject="Kept subject", message="Kept message")
    assert page.status == status
    assert words in page.text
    assert "Please choose the files again" in page.text
    form = page.form("/tickets")
    assert form.fields["subject"] == "Kept subject" and form.fields["message"] == "Kept message"
    assert writes(fake) == []


def test_a_file_over_the_size_limit_is_a_413_naming_file_and_limit(fake, smtp, clock):
    running = start_portal(portal_settings(fake, smtp, ATTACHMENT_MAX_MB="1"), clock)
    try:
        browser, _ = sign_in(running, smtp, "jane@example.com")
        fake.reset_calls()
        page = create_with_files(running, browser, [("files", "huge.pdf", PDF + b"x" * 1_100_000),
                                                    ("files", "small.png", PNG)], message="Kept")
        assert page.status == 413
        assert "huge.pdf" in page.text and "1 MB" in page.text
        assert page.form("/tickets").fields["message"] == "Kept"
        assert writes(fake) == []
    finally:
        running.close()


def test_a_reply_with_a_refused_file_keeps_the_reply(fake, portal, jane, ticket):
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    fake.reset_calls()
    page = jane.submit(page, f"/tickets/{ticket}/reply", message="My words stay.",
                       files=[("files", "evil.jpg", b"<html>")])
    assert page.status == 400 and "evil.jpg" in page.text
    assert page.form(f"/tickets/{ticket}/reply").fields["message"] == "My words stay."
    assert writes(fake) == []


def test_the_limits_are_settings(fake, smtp, clock):
    running = start_portal(portal_settings(fake, smtp, ATTACHMENT_MAX_FILES="2", ATTACHMENT_MAX_MB="3"), clock)
    try:
        browser, _ = sign_in(running, smtp, "jane@example.com")
        assert "Up to 2 files, 3 MB each" in browser.get(running.url("/tickets/new")).text
        page = create_with_files(running, browser, [("files", f"s{n}.png", PNG) for n in range(3)])
        assert page.status == 400 and "at most 2 files" in page.text
    finally:
        running.close()


def test_a_create_whose_answer_was_lost_is_not_made_twice_with_its_files(fake, portal, jane):
    page = jane.get(portal.url("/tickets/new"))
    fake.set_fault("slow", seconds=1.5, count=1)  # Chatwoot saves, but after our 1 s timeout
    page = jane.submit(page, "/tickets", files=[("files", "photo.png", PNG)], subject="Lost answer", message="Once")
    assert page.status == 503
    assert "Lost answer" in page.text  # the form again, to send once more
    page = jane.submit(page, "/tickets", files=[("files", "photo.png", PNG)])
    assert page.status == 200
    with fake._lock:
        made = [c for c in fake._conversations.values()
                if c["additional_attributes"].get("mail_subject") == "Lost answer"]
    assert len(made) == 1
    assert [a["filename"] for a in fake.messages_of(made[0]["display_id"])[0]["attachments"]] == ["photo.png"]


# ---------------------------------------------------------------------------
# The ticket page and downloads
# ---------------------------------------------------------------------------

@pytest.fixture
def with_files(fake, ticket):
    fake.add_message(ticket, "Here is the log and a photo.", "outgoing", attachments=[
        {"filename": "screen.png", "content_type": "image/png", "data": PNG, "width": 640, "height": 480},
        {"filename": "report.pdf", "content_type": "application/pdf", "data": PDF},
        {"filename": "logs.zip", "content_type": "application/zip", "data": ZIP},
        {"filename": "page.html", "content_type": "text/html", "data": b"<script>alert(document.cookie)</script>"},
    ])
    fake.add_message(ticket, "Internal screenshot", "outgoing", private=True, attachments=[
        {"filename": "internal.png", "content_type": "image/png", "data": PNG}])
    return {a["filename"]: a["id"] for m in fake.messages_of(ticket) for a in m["attachments"]}


def test_the_thread_shows_images_as_thumbnails_and_files_as_links_into_the_portal(portal, jane, ticket, with_files):
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    image = f"{BASE}/tickets/{ticket}/attachments/{with_files['screen.png']}"
    assert re.search(rf'<a [^>]*href="{image}[^"]*"[^>]*>\s*<img [^>]*src="{image}[^"]*"', page.text)
    assert "report.pdf" in page.text and "logs.zip" in page.text
    assert re.search(r"report\.pdf</a>\s*<span[^>]*>[^<]*\d+(?:[.,]\d)? (?:B|KB)", page.text)
    assert "internal.png" not in page.text  # a private note's file never shows
    assert "127.0.0.1" not in page.text and "active_storage" not in page.text  # no Chatwoot URL


def test_a_download_streams_chatwoots_bytes_with_safe_headers(fake, portal, jane, ticket, with_files):
    fake.blob_requests.clear()
    page = jane.get(portal.url(f"/tickets/{ticket}/attachments/{with_files['screen.png']}/screen.png"))
    assert page.status == 200 and page.body == PNG
    assert page.header("Content-Type") == "image/png"
    assert page.header("Content-Disposition").startswith('inline; filename="screen.png"')
    assert page.header("X-Content-Type-Options") == "nosniff"
    assert page.header("Content-Security-Policy") == "sandbox; default-src 'none'"
    assert page.header("Cache-Control").startswith("private")
    assert fake.blob_requests and not any(r["token"] for r in fake.blob_requests)  # never the API token


def test_an_html_file_is_served_as_an_inert_download(portal, jane, ticket, with_files):
    page = jane.get(portal.url(f"/tickets/{ticket}/attachments/{with_files['page.html']}"))
    assert page.status == 200
    assert page.header("Content-Type") == "application/octet-stream"
    assert page.header("Content-Disposition").startswith("attachment;")
    assert page.header("Content-Security-Policy") == "sandbox; default-src 'none'"


@pytest.mark.parametrize("name, disposition, content_type", [
    ("report.pdf", "inline", "application/pdf"), ("logs.zip", "attachment", "application/zip")])
def test_pdf_opens_inline_and_other_files_download(portal, jane, ticket, with_files, name, disposition, content_type):
    page = jane.get(portal.url(f"/tickets/{ticket}/attachments/{with_files[name]}"))
    assert page.header("Content-Disposition").startswith(disposition + ";")
    assert page.header("Content-Type") == content_type


def test_attachment_ids_that_are_not_this_customers_public_files_are_404(fake, portal, jane, ticket, with_files):
    bobs = fake.add_conversation(fake.bob, fake.api_inbox, subject="Bob's")
    fake.add_message(bobs, "Bob's file", attachments=[{"filename": "bob.pdf", "content_type": "application/pdf",
                                                        "data": PDF}])
    bob_file = fake.messages_of(bobs)[0]["attachments"][0]["id"]
    other = fake.add_conversation(fake.jane, fake.api_inbox, subject="Jane's other ticket")
    for path in (f"/tickets/{bobs}/attachments/{bob_file}",           # someone else's ticket
                 f"/tickets/{ticket}/attachments/{bob_file}",         # a file of another ticket
                 f"/tickets/{other}/attachments/{with_files['screen.png']}",
                 f"/tickets/{ticket}/attachments/{with_files['internal.png']}",  # a private note's
                 f"/tickets/{ticket}/attachments/999999",
                 "/tickets/999999/attachments/1"):
        page = jane.get(portal.url(path))
        assert page.status == 404, path
        assert PNG not in page.body and PDF not in page.body


def test_a_signed_out_download_goes_through_sign_in_back_to_the_ticket(portal, smtp, ticket, with_files):
    browser = portal.browser()
    page = browser.get(portal.url(f"/tickets/{ticket}/attachments/{with_files['report.pdf']}"))
    assert "/auth/request" in page.text
    page = browser.submit(page, "/auth/request", email="jane@example.com")
    page = browser.get(smtp.link_for("jane@example.com").replace("http://portal.test", ""))
    page = browser.submit(page, "/auth/verify")
    assert page.status == 200 and page.url.endswith(f"/tickets/{ticket}")


def test_file_names_from_chatwoot_are_escaped_on_the_page(fake, portal, jane, ticket):
    fake.add_message(ticket, "", "outgoing", attachments=[
        {"filename": '<img src=x onerror=alert(1)>.pdf', "content_type": "application/pdf", "data": PDF}])
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    assert "<img src=x" not in page.text and "&lt;img src=x onerror=alert(1)&gt;.pdf" in page.text


def test_ten_megabytes_go_up_and_come_back_whole(fake, portal, jane):
    data = b"%PDF-1.7\n" + bytes(range(256)) * (10 * 1024 * 1024 // 256 - 1)
    assert len(data) <= 10 * 1024 * 1024
    page = create_with_files(portal, jane, [("files", "manual.pdf", data)])
    assert page.status == 200
    ticket = int(page.url.rsplit("/", 1)[-1])
    [link] = {link.split("/manual.pdf")[0] for link in attachment_links(page, ticket)}
    download = jane.get(link)
    assert download.status == 200 and len(download.body) == len(data) and download.body == data
    assert download.header("Content-Length") == str(len(data))


def test_a_reply_whose_answer_was_lost_is_not_sent_twice_with_its_files(fake, portal, jane, ticket):
    page = jane.get(portal.url(f"/tickets/{ticket}"))
    fake.set_fault("slow", seconds=1.5, count=1)  # the write: saved, but after our 1 s timeout
    original = fake._answer

    def slow_write_only(method, target, headers, raw_body):
        if method == "GET":  # let reads through unslowed
            with fake._lock:
                fault, fake._fault = fake._fault, None
            try:
                return original(method, target, headers, raw_body)
            finally:
                with fake._lock:
                    fake._fault = fault
        return original(method, target, headers, raw_body)

    fake._answer = slow_write_only
    try:
        page = jane.submit(page, f"/tickets/{ticket}/reply", message="With the bill.",
                           files=[("files", "bill.pdf", PDF)])
        assert page.status == 503
        assert "With the bill." in page.text and "Please choose the files again" in page.text
    finally:
        fake._answer = original
    page = jane.submit(page, f"/tickets/{ticket}/reply", files=[("files", "bill.pdf", PDF)])
    assert page.status == 200
    replies = [m for m in fake.messages_of(ticket) if m["content"] == "With the bill."]
    assert len(replies) == 1 and [a["filename"] for a in replies[0]["attachments"]] == ["bill.pdf"]
