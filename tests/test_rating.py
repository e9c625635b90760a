"""Rating a ticket: Chatwoot's CSAT survey answered on the ticket page, end to end.

Chatwoot posts its survey into a conversation as a public template message with
`content_type` `input_csat` (contract part 2 §6). The portal shows a 1-5 rating
with an optional comment for it, records the answer with the public
`PUT /public/api/v1/csat_survey/{uuid}` exactly as Chatwoot's own survey page does,
and shows the answer from the thread, never from what that endpoint returns.

The portal runs on the test's clock (NOW); the fake Chatwoot on wall-clock time,
which is earlier. Surveys are seeded relative to NOW unless a test needs the two
to disagree.
"""

import html
import logging
import re
import time

import pytest

import chatwoot_client
import fake_chatwoot
from conftest import sign_in

JANE = "jane@example.com"
NOW = 1_800_000_000  # the portal's FakeClock: 2027-01-15 08:00:00 UTC
DAY = 86400
MISSING_ID = 987654
SURVEY_TEXT = "Please rate the conversation"
REVIEW_NOTE = "INTERNAL: customer is on the churn list, offer nothing"


@pytest.fixture
def jane(portal, smtp):
    """A browser signed in as Jane, on her dashboard."""
    browser, page = sign_in(portal, smtp, JANE)
    assert page.status == 200, page.text
    return browser


def add_survey(fake, ticket, sent_at=NOW - 3600, **kwargs):
    """Chatwoot's survey message, as CsatSurveyService posts it on resolve."""
    return fake.add_message(ticket, SURVEY_TEXT, "template", content_type="input_csat",
                            content_attributes={"display_type": "emoji", **kwargs}, created_at=sent_at)


def resolved_ticket(fake, contact=None, sent_at=NOW - 3600):
    """A resolved ticket of Jane's (or `contact`'s) with a reply and the survey."""
    ticket = fake.add_conversation(contact or fake.jane, fake.api_inbox, "Printer on fire", "resolved",
                                   created_at=NOW - 2 * DAY)
    fake.add_message(ticket, "My printer is on fire.", "incoming", created_at=NOW - 2 * DAY)
    fake.add_message(ticket, "A technician fixed it.", "outgoing", created_at=NOW - DAY)
    add_survey(fake, ticket, sent_at)
    return ticket


def ticket_page(portal, browser, ticket):
    page = browser.get(portal.url(f"/tickets/{ticket}"))
    assert page.status == 200, page.text
    return page


def rating_forms(page):
    return [f for f in page.forms if f.action.endswith("/rating")]


def rate(portal, browser, ticket, follow=True, **fields):
    """Submit the ticket page's rating form with these fields (None: leave it out)."""
    page = ticket_page(portal, browser, ticket)
    form = page.form(f"/tickets/{ticket}/rating")
    values = {**form.fields, **fields}
    values = {name: value for name, value in values.items() if value is not None}
    return browser.post(portal.url(f"/tickets/{ticket}/rating"), values, follow=follow)


def section(page):
    """The rating section's markup, or None."""
    match = re.search(r'<section[^>]*\bid="rating".*?</section>', page.text, re.S)
    return match.group(0) if match else None


def words(markup):
    """What a reader reads in some markup: tags gone, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup or "")).split())


def csrf_of(page):
    return next(f.fields["csrf_token"] for f in page.forms if "csrf_token" in f.fields)


def puts(fake):
    return [c for c in fake.calls if c[0] in ("PUT", "PATCH")]


def recorded(fake, ticket):
    """The submitted_values stored in the thread's survey message, or None."""
    survey = next(m for m in fake.messages_of(ticket) if m["content_type"] == "input_csat")
    return survey["content_attributes"].get("submitted_values")


def checked_rating(form_markup):
    found = re.findall(r'<input type="radio" name="rating" value="(\d)" checked', form_markup)
    return found[0] if found else None


# ---------------------------------------------------------------------------
# When the form shows
# ---------------------------------------------------------------------------

def test_a_ticket_without_a_survey_shows_no_rating_at_all(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer on fire", "resolved")
    fake.add_message(ticket, "My printer is on fire.", "incoming")
    page = ticket_page(portal, jane, ticket)
    assert section(page) is None
    assert rating_forms(page) == []
    assert "How satisfied" not in page.text


SURVEY_MESSAGE = {"id": 7, "content": SURVEY_TEXT, "message_type": 3, "content_type": "input_csat",
                  "content_attributes": {"display_type": "emoji"}, "created_at": NOW, "private": False}


@pytest.mark.parametrize("changes, expected", [
    ({}, chatwoot_client.Survey(7, NOW)),
    ({"message_type": "template", "private": None}, chatwoot_client.Survey(7, NOW)),  # the webhook shape
    ({"private": True}, None), ({"private": "true"}, None), ({"message_type": 2}, None),
    ({"content_type": "text"}, None),
    ({"content_attributes": {"submitted_values": {"csat_survey_response": {"rating": 4, "feedback_message": " Ok \n"}}}},
     chatwoot_client.Survey(7, NOW, 4, "Ok")),
    ({"content_attributes": {"submitted_values": {"csat_survey_response": {"rating": "5"}}}},
     chatwoot_client.Survey(7, NOW, 5, "")),
    ({"content_attributes": {"submitted_values": {"csat_survey_response": {"rating": True, "feedback_message": "x"}}}},
     chatwoot_client.Survey(7, NOW)),
    ({"content_attributes": {"submitted_values": {"csat_survey_response": {"rating": 0, "feedback_message": "x"}}}},
     chatwoot_client.Survey(7, NOW)),
    ({"content_attributes": {"submitted_values": "garbled"}}, chatwoot_client.Survey(7, NOW)),
    ({"content_attributes": None}, chatwoot_client.Survey(7, NOW)),
], ids=["survey", "webhook-shape", "private", "private-string", "activity", "not-csat", "rated", "rating-string",
        "rating-bool", "rating-zero", "garbled", "no-attributes"])
def test_only_a_public_input_csat_message_is_a_survey_and_only_a_valid_answer_counts(changes, expected):
    assert chatwoot_client._survey({**SURVEY_MESSAGE, **changes}) == expected


def test_a_survey_shows_a_fieldset_of_five_labelled_radios_and_an_optional_comment(portal, fake, jane):
    ticket = resolved_ticket(fake)
    page = ticket_page(portal, jane, ticket)
    part = section(page)
    assert part is not None
    [form] = rating_forms(page)
    assert form.method == "POST" and form.fields["csrf_token"] == csrf_of(page)
    fieldset = re.search(r"<fieldset.*?</fieldset>", part, re.S).group(0)
    assert words(re.search(r"<legend>.*?</legend>", fieldset, re.S).group(0)) \
        == "How satisfied are you with our support on this ticket?"
    labels = re.findall(r'<label class="rating-choice"><input type="radio" name="rating" value="(\d)"[^>]*>(.*?)</label>',
                        fieldset, re.S)
    assert [(value, words(text)) for value, text in labels] == [
        ("1", "1 – Very dissatisfied"), ("2", "2 – Dissatisfied"), ("3", "3 – Neither satisfied nor dissatisfied"),
        ("4", "4 – Satisfied"), ("5", "5 – Very satisfied")]
    assert checked_rating(fieldset) is None  # nothing chosen for the customer
    assert re.search(r'<label for="feedback">Comment \(optional\)</label>', part)
    assert re.search(r'<textarea id="feedback" name="feedback"[^>]*maxlength="1000"', part)
    # The survey is not a message of the thread: its text and Chatwoot's link stay out.
    assert SURVEY_TEXT not in page.text and "survey/responses" not in page.text


# ---------------------------------------------------------------------------
# Recording a rating
# ---------------------------------------------------------------------------

def test_a_rating_is_recorded_in_chatwoot_exactly_as_its_survey_page_records_it(portal, fake, jane):
    ticket = resolved_ticket(fake)
    answer = rate(portal, jane, ticket, follow=False, rating="4", feedback="  Quick and kind.\n")
    assert answer.status == 303
    assert answer.header("Location").endswith(f"/portal/tickets/{ticket}#rating")
    expected = {"csat_survey_response": {"rating": 4, "feedback_message": "Quick and kind."}}
    assert [(r["uuid"], r["submitted_values"]) for r in fake.csat_responses] \
        == [(fake.conversation(ticket)["uuid"], expected)]
    assert recorded(fake, ticket) == expected
    assert isinstance(recorded(fake, ticket)["csat_survey_response"]["rating"], int)
    assert fake.csat_record(ticket)["rating"] == 4  # Chatwoot's CSAT record follows


def test_after_rating_the_page_thanks_and_shows_the_rating_and_the_comment(portal, fake, jane):
    ticket = resolved_ticket(fake)
    page = rate(portal, jane, ticket, rating="4", feedback="Quick and kind.\nThanks Sam!")
    assert page.status == 200
    assert "Thank you for your rating." in page.text
    part = section(page)
    assert "You rated this 4 out of 5." in words(part)
    assert re.search(r'<blockquote class="rating-comment">Quick and kind.\nThanks Sam!</blockquote>', part)
    # Changing it is offered while Chatwoot allows, starting from what was given.
    change = re.search(r'<details class="rating-change">.*?</details>', part, re.S)
    assert change and "Change your rating" in words(change.group(0))
    assert checked_rating(change.group(0)) == "4"
    assert rating_forms(page)[0].fields["feedback"] == "Quick and kind.\nThanks Sam!"


def test_a_second_rating_updates_the_first(portal, fake, jane):
    ticket = resolved_ticket(fake)
    rate(portal, jane, ticket, rating="4", feedback="Quick.")
    first_record = fake.csat_record(ticket)
    page = rate(portal, jane, ticket, rating="2", feedback="It burns again.")
    assert "You rated this 2 out of 5." in words(section(page))
    assert "It burns again." in section(page) and "Quick." not in section(page)
    assert recorded(fake, ticket) == {"csat_survey_response": {"rating": 2, "feedback_message": "It burns again."}}
    assert len(fake.csat_responses) == 2
    record = fake.csat_record(ticket)
    assert (record["id"], record["rating"], record["feedback_message"]) == (first_record["id"], 2, "It burns again.")


def test_a_rating_without_a_comment_is_recorded_with_an_empty_one(portal, fake, jane):
    ticket = resolved_ticket(fake)
    page = rate(portal, jane, ticket, rating="5", feedback="")
    assert recorded(fake, ticket) == {"csat_survey_response": {"rating": 5, "feedback_message": ""}}
    assert "You rated this 5 out of 5." in words(section(page))
    assert "rating-comment" not in section(page)


def test_a_rating_costs_two_chatwoot_calls_and_the_put_carries_no_api_token(portal, fake, jane):
    ticket = resolved_ticket(fake)
    page = ticket_page(portal, jane, ticket)
    fake.reset_calls()
    answer = jane.post(portal.url(f"/tickets/{ticket}/rating"),
                       {"csrf_token": csrf_of(page), "rating": "3", "feedback": "Fine."}, follow=False)
    assert answer.status == 303
    conversation_uuid = fake.conversation(ticket)["uuid"]
    assert [(c[0], c[1]) for c in fake.calls] == [
        ("GET", f"/api/v1/accounts/{fake.account_id}/conversations/{ticket}"),
        ("PUT", f"/public/api/v1/csat_survey/{conversation_uuid}")]
    assert fake.public_requests == [{"method": "PUT", "path": f"/public/api/v1/csat_survey/{conversation_uuid}",
                                     "token": False}]


def test_the_conversation_uuid_stays_out_of_the_log(portal, fake, jane, caplog):
    ticket = resolved_ticket(fake)
    caplog.set_level(logging.INFO)
    rate(portal, jane, ticket, rating="4", feedback="Ok")
    assert recorded(fake, ticket)
    assert "chatwoot PUT /public/csat_survey/:id 200" in caplog.text
    assert fake.conversation(ticket)["uuid"] not in caplog.text


def test_the_conversation_uuid_never_reaches_a_page(portal, fake, jane):
    ticket = resolved_ticket(fake)
    conversation_uuid = fake.conversation(ticket)["uuid"]
    pages = [ticket_page(portal, jane, ticket), rate(portal, jane, ticket, rating="4", feedback="Ok"),
             rate(portal, jane, ticket, rating="9", feedback="Ok")]
    assert all(conversation_uuid not in page.text for page in pages)


# ---------------------------------------------------------------------------
# Refusals: nothing reaches Chatwoot, what was typed comes back
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("rating", ["0", "6", "x", "", None, "4.0", " 4", "-1"],
                         ids=["zero", "six", "letter", "empty", "missing", "decimal", "space", "negative"])
def test_an_invalid_rating_answers_400_keeps_the_comment_and_sends_nothing(portal, fake, jane, rating):
    ticket = resolved_ticket(fake)
    page = ticket_page(portal, jane, ticket)
    fake.reset_calls()
    fields = {"csrf_token": csrf_of(page), "feedback": "Kept <b>as typed</b>\nline two"}
    if rating is not None:
        fields["rating"] = rating
    page = jane.post(portal.url(f"/tickets/{ticket}/rating"), fields)
    assert page.status == 400
    assert "Please choose a rating from 1 to 5." in words(section(page))
    assert rating_forms(page)[0].fields["feedback"] == "Kept <b>as typed</b>\nline two"
    assert puts(fake) == [] and fake.csat_responses == [] and recorded(fake, ticket) is None


def test_an_over_long_comment_answers_400_keeps_it_and_sends_nothing(portal, fake, jane):
    ticket = resolved_ticket(fake)
    page = ticket_page(portal, jane, ticket)
    fake.reset_calls()
    too_long = "é" * 1001
    page = jane.post(portal.url(f"/tickets/{ticket}/rating"),
                     {"csrf_token": csrf_of(page), "rating": "2", "feedback": too_long})
    assert page.status == 400
    assert "The comment is too long: at most 1000 characters." in words(section(page))
    form = rating_forms(page)[0]
    assert form.fields["feedback"] == too_long
    assert checked_rating(section(page)) == "2"
    assert puts(fake) == [] and fake.csat_responses == []
    # One character less is a comment Chatwoot gets.
    jane.post(portal.url(f"/tickets/{ticket}/rating"), {**form.fields, "rating": "2", "feedback": "é" * 1000})
    assert recorded(fake, ticket) == {"csat_survey_response": {"rating": 2, "feedback_message": "é" * 1000}}


def test_another_contacts_ticket_is_refused_like_a_missing_one_and_nothing_is_recorded(portal, fake, jane):
    bobs = resolved_ticket(fake, contact=fake.bob)
    page = jane.get(portal.url("/dashboard"))
    fields = {"csrf_token": csrf_of(page), "rating": "1", "feedback": "Hijack"}
    fake.reset_calls()
    someone_elses = jane.post(portal.url(f"/tickets/{bobs}/rating"), fields)
    missing = jane.post(portal.url(f"/tickets/{MISSING_ID}/rating"), fields)
    assert someone_elses.status == missing.status == 404
    main = re.compile(r"<main\b.*?</main>", re.S)
    assert main.search(someone_elses.text).group(0) == main.search(missing.text).group(0)
    assert puts(fake) == [] and fake.public_requests == [] and fake.csat_responses == []
    assert recorded(fake, bobs) is None


def test_a_rating_without_the_csrf_token_is_refused(portal, fake, jane):
    ticket = resolved_ticket(fake)
    page = jane.post(portal.url(f"/tickets/{ticket}/rating"), {"rating": "5", "feedback": "x"})
    assert page.status == 403
    assert fake.csat_responses == []


def test_a_signed_out_rating_asks_to_sign_in_with_the_comment_to_copy(portal, fake, smtp):
    ticket = resolved_ticket(fake)
    browser = portal.browser()
    page = browser.get(portal.url("/"))
    page = browser.post(portal.url(f"/tickets/{ticket}/rating"),
                        {"csrf_token": csrf_of(page), "rating": "5", "feedback": "Lovely service"})
    assert page.status == 401
    assert "Lovely service" in page.text
    assert fake.csat_responses == []


# ---------------------------------------------------------------------------
# Chatwoot's 14-day lock, a missing survey, Chatwoot down
# ---------------------------------------------------------------------------

# NOW is 2027-01-15 08:00 UTC. Chatwoot compares UTC dates: sent on 2027-01-01 is
# 14 days (open), on 2026-12-31, even one second before midnight, 15 (closed).
@pytest.mark.parametrize("sent_at, is_open", [
    (NOW - 14 * DAY - 8 * 3600, True),  # 2027-01-01 00:00:00
    (NOW - 14 * DAY - 8 * 3600 - 1, False),  # 2026-12-31 23:59:59
    (NOW - 30 * DAY, False),
], ids=["day-14", "day-15", "day-30"])
def test_the_form_shows_for_14_days_of_utc_dates_then_plain_words_instead(portal, fake, jane, sent_at, is_open):
    ticket = resolved_ticket(fake, sent_at=sent_at)
    page = ticket_page(portal, jane, ticket)
    closed_words = "Ratings can be given within 14 days of our survey, and that time has passed."
    assert bool(rating_forms(page)) is is_open
    assert (closed_words in words(section(page))) is not is_open


def test_a_closed_survey_still_shows_the_rating_given(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Old one", "resolved")
    add_survey(fake, ticket, NOW - 20 * DAY,
               submitted_values={"csat_survey_response": {"rating": 5, "feedback_message": "Great"}})
    page = ticket_page(portal, jane, ticket)
    part = words(section(page))
    assert "You rated this 5 out of 5." in part and "Great" in part
    assert "within 14 days" in part and rating_forms(page) == []


def test_chatwoots_own_422_lock_is_said_in_the_same_plain_words(portal, fake, jane, clock):
    # The fake runs on wall-clock time. With the portal's clock two days behind
    # it, a survey 15 days old for Chatwoot is 13 days old for the portal.
    clock.now = time.time() - 2 * DAY
    ticket = resolved_ticket(fake, sent_at=int(time.time()) - 15 * DAY)
    page = ticket_page(portal, jane, ticket)
    assert rating_forms(page)  # the portal thinks it open
    page = jane.submit(page, f"/tickets/{ticket}/rating", rating="3", feedback="Too late?")
    assert page.status == 409
    assert [c[0] for c in puts(fake)] == ["PUT"]  # Chatwoot was asked, and refused
    part = words(section(page))
    assert "Ratings can be given within 14 days of our survey, and that time has passed." in part
    assert "Your comment was not sent: Too late?" in part
    assert rating_forms(page) == []
    assert fake.csat_responses == [] and recorded(fake, ticket) is None


def test_no_survey_in_chatwoot_answers_the_ticket_page_with_a_plain_notice(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Printer on fire", "resolved")
    fake.add_message(ticket, "My printer is on fire.", "incoming")
    page = ticket_page(portal, jane, ticket)
    page = jane.post(portal.url(f"/tickets/{ticket}/rating"),
                     {"csrf_token": csrf_of(page), "rating": "5", "feedback": "Hm"})
    assert page.status == 409
    assert "There is no survey on this ticket, so it cannot be rated." in words(section(page))
    assert "My printer is on fire." in page.text  # the ticket page itself
    assert [c[0] for c in puts(fake)] == ["PUT"] and fake.csat_responses == []


def _public_api_answers(monkeypatch, answer):
    """The fake's public API answers this way (None: hangs up); its account API as usual."""
    original = fake_chatwoot.FakeChatwoot._answer

    def patched(self, method, target, headers, raw_body):
        if target.startswith("/public/"):
            self.calls.append((method, target.split("?")[0], {}))
            return answer
        return original(self, method, target, headers, raw_body)

    monkeypatch.setattr(fake_chatwoot.FakeChatwoot, "_answer", patched)


@pytest.mark.parametrize("where", ["everything", "public-api-503", "public-api-hangs-up"])
def test_chatwoot_down_answers_503_with_the_rating_and_comment_kept(portal, fake, jane, monkeypatch, where):
    ticket = resolved_ticket(fake)
    page = ticket_page(portal, jane, ticket)
    if where == "everything":
        fake.set_fault("status", 503)
    elif where == "public-api-503":
        _public_api_answers(monkeypatch, (503, "application/json", b'{"error":"Service Unavailable"}', {}))
    else:
        _public_api_answers(monkeypatch, None)
    page = jane.submit(page, f"/tickets/{ticket}/rating", rating="2", feedback="Still smoking <b>a bit</b>")
    assert page.status == 503
    assert "Our support system is not answering" in page.text
    assert "Nothing you typed is lost" in page.text
    [form] = rating_forms(page)
    assert form.fields["feedback"] == "Still smoking <b>a bit</b>"
    assert checked_rating(page.text) == "2"
    assert recorded(fake, ticket) is None
    # Chatwoot is back: the same form goes through.
    fake.set_fault(None)
    monkeypatch.undo()
    page = jane.submit(page, f"/tickets/{ticket}/rating", rating="2", feedback=form.fields["feedback"])
    assert page.status == 200 and "You rated this 2 out of 5." in words(section(page))
    assert recorded(fake, ticket) == {"csat_survey_response": {"rating": 2, "feedback_message": "Still smoking <b>a bit</b>"}}


# ---------------------------------------------------------------------------
# Only the rating and the comment: never Chatwoot's CSAT record
# ---------------------------------------------------------------------------

def test_internal_review_notes_in_chatwoots_csat_record_never_reach_a_page(portal, fake, jane):
    ticket = resolved_ticket(fake)
    rate(portal, jane, ticket, rating="2", feedback="Slow.")
    fake.review_csat(ticket, REVIEW_NOTE)
    assert REVIEW_NOTE in str(fake.csat_record(ticket))  # what Chatwoot's CSAT answers now carry

    def shows_nothing_of_the_record(page):
        return not any(text in page.text for text in (
            REVIEW_NOTE, "churn", "csat_review_notes", "review_notes_updated_by_id", "assigned_agent_id"))

    answer = rate(portal, jane, ticket, follow=False, rating="3", feedback="Better now.")
    assert answer.status == 303 and shows_nothing_of_the_record(answer)
    shown = jane.get(answer.header("Location"))
    assert "You rated this 3 out of 5." in words(section(shown)) and shows_nothing_of_the_record(shown)
    refused = jane.post(portal.url(f"/tickets/{ticket}/rating"), {"csrf_token": csrf_of(shown), "rating": "7"})
    assert refused.status == 400 and shows_nothing_of_the_record(refused)
    assert shows_nothing_of_the_record(jane.get(portal.url("/dashboard")))


def test_a_rating_chatwoot_stored_out_of_range_shows_as_none(portal, fake, jane):
    ticket = fake.add_conversation(fake.jane, fake.api_inbox, "Odd", "resolved")
    add_survey(fake, ticket, submitted_values={"csat_survey_response": {"rating": 9, "feedback_message": "Nine"}})
    page = ticket_page(portal, jane, ticket)
    assert "rated this" not in words(section(page)) and "Nine" not in page.text
    assert rating_forms(page)  # can still be answered properly


# ---------------------------------------------------------------------------
# Spanish
# ---------------------------------------------------------------------------

def test_rating_words_are_spanish_when_spanish_is_chosen(portal, fake, jane):
    ticket = resolved_ticket(fake)
    closed = resolved_ticket(fake, sent_at=NOW - 20 * DAY)
    page = ticket_page(portal, jane, ticket)
    page = jane.submit(page, "/lang", lang="es")
    part = words(section(page))
    assert "Tu valoración" in part and "¿Cómo de satisfecho estás con nuestra atención en este ticket?" in part
    assert "1 – Muy insatisfecho" in part and "5 – Muy satisfecho" in part and "Comentario (opcional)" in part
    page = jane.submit(page, f"/tickets/{ticket}/rating", rating="0", feedback="Bien")
    assert "Elige una valoración del 1 al 5." in words(section(page))
    page = jane.submit(page, f"/tickets/{ticket}/rating", rating="4", feedback="Bien")
    assert "Gracias por tu valoración." in page.text
    assert "Lo valoraste con un 4 de 5." in words(section(page)) and "Cambiar tu valoración" in words(section(page))
    page = ticket_page(portal, jane, closed)
    assert "Las valoraciones se pueden dar en los 14 días siguientes a nuestra encuesta" in words(section(page))
