from conftest import sign_in


def test_the_whole_journey_sign_in_create_reply_cancel(portal, smtp, fake):
    browser, page = sign_in(portal, smtp, "jane@example.com")
    assert page.status == 200 and "/portal/dashboard" in page.url, page.text
    page = browser.get(portal.url("/tickets/new"))
    page = browser.submit(page, "/tickets", subject="Printer on fire", message="It smokes.\nHelp!")
    assert page.status == 200, page.text
    assert "Printer on fire" in page
    ticket_id = int(page.url.rsplit("/", 1)[1])
    page = browser.submit(page, f"/tickets/{ticket_id}/reply", message="Still burning")
    assert "Still burning" in page, page.text
    page = browser.submit(page, f"/tickets/{ticket_id}/cancel")
    assert page.status == 200
    assert fake.conversation(ticket_id)["status"] == "resolved"
