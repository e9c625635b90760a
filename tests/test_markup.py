"""agent_markdown: emphasis, code and links from agents' Markdown, and nothing unsafe."""

import pytest

from markup import agent_markdown


@pytest.mark.parametrize("text, html", [
    ("The technician arrives **tomorrow at 9**.", "The technician arrives <strong>tomorrow at 9</strong>."),
    ("This is *important* and _urgent_.", "This is <em>important</em> and <em>urgent</em>."),
    ("Run `reset --hard` now", "Run <code>reset --hard</code> now"),
    ("See [the guide](https://example.com/guide?a=1&b=2).",
     'See <a href="https://example.com/guide?a=1&amp;b=2" rel="noopener noreferrer nofollow">the guide</a>.'),
    ("Docs: https://example.com/docs.", 'Docs: <a href="https://example.com/docs" rel="noopener noreferrer nofollow">https://example.com/docs</a>.'),
    ("line one\nline two", "line one\nline two"),
])
def test_inline_markdown_becomes_html(text, html):
    assert agent_markdown(text) == html


@pytest.mark.parametrize("text", [
    "snake_case_name stays", "2 * 3 * 4 stays", "a ** b stays", "price_list_2024.pdf",
])
def test_text_that_only_looks_like_markdown_is_left_alone(text):
    assert agent_markdown(text) == text


def test_html_in_a_message_is_escaped():
    assert agent_markdown("<script>alert(1)</script> & <b>") == "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;"


def test_html_inside_emphasis_code_and_link_labels_is_escaped():
    html = agent_markdown("**<img src=x>** `<b>` [<i>x</i>](https://example.com)")
    assert "<img" not in html and "<b>" not in html and "<i>" not in html


@pytest.mark.parametrize("text", [
    "[click](javascript:alert(1))", "[click](data:text/html,hi)", "[click](//evil.example)",
    "javascript:alert(1)",
])
def test_only_http_links_are_made(text):
    assert "<a" not in agent_markdown(text)


def test_a_url_cannot_break_out_of_its_attribute():
    html = agent_markdown('https://example.com/"onmouseover="alert(1) and https://x.example/\'y')
    assert 'onmouseover="' not in html
    assert "href=\"https://example.com/\"" in html


def test_the_result_is_marked_safe_for_jinja():
    assert hasattr(agent_markdown("x"), "__html__")
