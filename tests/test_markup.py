"""agent_markdown: CommonMark from agents' messages, as Chatwoot shows it, and nothing unsafe."""

import re
import threading
from html.parser import HTMLParser

import pytest

from markup import agent_markdown

REL = 'rel="noopener noreferrer nofollow"'


def link(href, label=None):
    return f'<a href="{href}" {REL}>{label or href}</a>'


class _Elements(HTMLParser):
    """Every start tag of a fragment, with its attributes."""

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.found = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


SAFE_TAGS = {"p", "br", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li", "hr",
             "h3", "h4", "h5", "h6", "a"}


def assert_only_safe_html(html):
    """The whole safety promise: known tags, and no attribute but a live link's or a language."""
    for tag, attrs in _Elements(str(html)).found:
        assert tag in SAFE_TAGS, (tag, html)
        if tag == "a":
            assert set(attrs) <= {"href", "rel", "title"}, html
            assert re.match(r"(?:https?://|mailto:)", attrs["href"], re.I), html
            assert attrs["rel"] == "noopener noreferrer nofollow", html
        elif tag == "code" and attrs:
            assert list(attrs) == ["class"] and re.fullmatch(r"language-[\w+#.-]+", attrs["class"]), html
        elif tag == "ol" and attrs:
            assert list(attrs) == ["start"] and attrs["start"].isdigit(), html
        else:
            assert not attrs, html


# -- Inline Markdown --------------------------------------------------------------------

@pytest.mark.parametrize("text, html", [
    ("The technician arrives **tomorrow at 9**.", "<p>The technician arrives <strong>tomorrow at 9</strong>.</p>"),
    ("This is *important* and _urgent_.", "<p>This is <em>important</em> and <em>urgent</em>.</p>"),
    ("Run `reset --hard` now", "<p>Run <code>reset --hard</code> now</p>"),
    ("Run `` a `tick` `` now", "<p>Run <code>a `tick`</code> now</p>"),
    ("See [the guide](https://example.com/guide?a=1&b=2).",
     f"<p>See {link('https://example.com/guide?a=1&amp;b=2', 'the guide')}.</p>"),
    ("Docs: https://example.com/docs.", f"<p>Docs: {link('https://example.com/docs')}.</p>"),
    ("Write to <help@example.com>", f"<p>Write to {link('mailto:help@example.com', 'help@example.com')}</p>"),
    ("[Mail us](mailto:help@example.com)", f"<p>{link('mailto:help@example.com', 'Mail us')}</p>"),
])
def test_inline_markdown_becomes_html(text, html):
    assert agent_markdown(text) == html


@pytest.mark.parametrize("text", [
    "snake_case_name stays", "2 * 3 * 4 stays", "a ** b stays", "price_list_2024.pdf",
])
def test_text_that_only_looks_like_markdown_is_left_alone(text):
    assert agent_markdown(text) == f"<p>{text}</p>"


# -- Line breaks ------------------------------------------------------------------------

def test_a_single_newline_is_a_line_break_as_in_chatwoot():
    assert agent_markdown("line one\nline two") == "<p>line one<br>\nline two</p>"


def test_chatwoots_backslash_newline_is_a_hard_line_break():
    assert agent_markdown("line one\\\nline two") == "<p>line one<br>\nline two</p>"


def test_a_blank_line_starts_a_new_paragraph():
    assert agent_markdown("one\n\ntwo") == "<p>one</p>\n<p>two</p>"


# -- Blocks -----------------------------------------------------------------------------

def test_a_dash_list_becomes_a_list():
    assert agent_markdown("Please check:\n\n- the cable\n- the *power*") == (
        "<p>Please check:</p>\n<ul>\n<li>the cable</li>\n<li>the <em>power</em></li>\n</ul>")


def test_a_numbered_list_becomes_an_ordered_list_keeping_its_start():
    assert agent_markdown("1. Open\n2. Close") == "<ol>\n<li>Open</li>\n<li>Close</li>\n</ol>"
    assert agent_markdown("3. Third\n4. Fourth").startswith('<ol start="3">')


def test_a_quote_becomes_a_blockquote():
    assert agent_markdown("> You wrote:\n> it beeps") == (
        "<blockquote>\n<p>You wrote:<br>\nit beeps</p>\n</blockquote>")


def test_fenced_code_keeps_its_text_escaped_and_its_language_as_a_class():
    assert agent_markdown("```python\nif a < b:\n    print('**x**')\n```") == (
        '<pre><code class="language-python">if a &lt; b:\n    print(\'**x**\')\n</code></pre>')


@pytest.mark.parametrize("info", [
    '"onmouseover="alert(1)', "x\" onclick=\"alert(1)", "py{.evil}", "a&quot;b", "<b>", "c" * 40,
])
def test_a_fence_language_that_is_not_a_plain_word_is_dropped(info):
    html = agent_markdown(f"```{info}\ncode\n```")
    assert html == "<pre><code>code\n</code></pre>"


def test_a_fence_language_keeps_only_its_first_word():
    assert agent_markdown("```c++ title=x\ncode\n```") == '<pre><code class="language-c++">code\n</code></pre>'


def test_headings_are_demoted_below_the_pages_own():
    assert agent_markdown("# One\n## Two\n### Three\n#### Four\n###### Six\nSub\n---") == (
        "<h3>One</h3>\n<h4>Two</h4>\n<h5>Three</h5>\n<h6>Four</h6>\n<h6>Six</h6>\n<h4>Sub</h4>")


def test_tables_are_not_commonmark_and_show_as_typed():
    assert agent_markdown("| a | b |\n|---|---|\n| 1 | 2 |") == "<p>| a | b |<br>\n|---|---|<br>\n| 1 | 2 |</p>"


# -- Links ------------------------------------------------------------------------------

def test_every_link_gets_rel_noopener_noreferrer_nofollow():
    html = agent_markdown("[a](https://a.example) <https://b.example> https://c.example "
                          "![d](https://d.example/d.png) [e]\n\n[e]: http://e.example")
    assert html.count("<a ") == html.count(REL) == 5


def test_an_image_becomes_a_link_showing_its_alt_text():
    assert agent_markdown("![the wiring diagram](https://example.com/d.png)") == (
        f"<p>{link('https://example.com/d.png', 'the wiring diagram')}</p>")


def test_an_image_without_alt_text_becomes_a_link_showing_its_url():
    assert agent_markdown("![](https://example.com/d.png)") == f"<p>{link('https://example.com/d.png')}</p>"


def test_an_image_alt_text_keeps_its_escaped_characters_and_drops_its_markup():
    assert agent_markdown("![a &amp; b\\* **c** `d`](https://example.com/d.png)") == (
        f"<p>{link('https://example.com/d.png', 'a &amp; b* c d')}</p>")


def test_an_image_inside_a_link_becomes_the_links_text():
    assert agent_markdown("[![logo](https://example.com/l.png)](https://example.com)") == (
        f"<p>{link('https://example.com', 'logo')}</p>")


@pytest.mark.parametrize("text", [
    "![x](https://example.com/a.png)", '![x](https://example.com/a.png "t")', "![x][r]\n\n[r]: https://example.com/a.png",
    "![x](data:image/png;base64,iVBORw0KGgo=)", "![](//example.com/a.png)", "![a ![b](https://x.example/b)](https://x.example/a)",
])
def test_an_image_is_never_loaded(text):
    html = agent_markdown(text)
    assert "<img" not in html and "src=" not in html
    assert_only_safe_html(html)


@pytest.mark.parametrize("text, url", [
    ("See https://en.wikipedia.org/wiki/Printer_(computing).", "https://en.wikipedia.org/wiki/Printer_(computing)"),
    ("(see https://example.com/a)", "https://example.com/a"),
    ("(see https://en.wikipedia.org/wiki/Printer_(computing))", "https://en.wikipedia.org/wiki/Printer_(computing)"),
    ("Is it https://example.com/a?", "https://example.com/a"),
    ("Go to https://example.com/a?b=1&c=2!", "https://example.com/a?b=1&amp;c=2"),
    ("Open https://example.com/a:", "https://example.com/a"),
    ("First https://example.com/a, then", "https://example.com/a"),
    ("It's at 'https://example.com/a'.", "https://example.com/a"),
    ("Plain http://example.com/x;", "http://example.com/x"),
])
def test_a_bare_url_is_linked_without_the_sentence_around_it(text, url):
    assert link(url) in agent_markdown(text)
    assert agent_markdown(text).count("<a ") == 1


def test_two_bare_urls_on_one_line_are_both_linked():
    assert agent_markdown("https://a.example/x or https://b.example/y") == (
        f"<p>{link('https://a.example/x')} or {link('https://b.example/y')}</p>")


@pytest.mark.parametrize("text", [
    "`https://example.com/in-code`", "```\nhttps://example.com/in-a-fence\n```", "    https://example.com/indented",
])
def test_a_url_in_code_is_not_linked(text):
    assert "<a" not in agent_markdown(text)


def test_a_url_in_a_links_text_is_not_linked_again():
    assert agent_markdown("[https://a.example](https://b.example)") == (
        f"<p>{link('https://b.example', 'https://a.example')}</p>")


def test_a_url_cannot_break_out_of_its_attribute():
    html = agent_markdown('https://example.com/"onmouseover="alert(1) and https://x.example/\'y')
    assert 'onmouseover="' not in html
    assert "href=\"https://example.com/\"" in html
    assert_only_safe_html(html)


# -- Nothing unsafe ---------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "[click](javascript:alert(1))", "[click](JaVaScRiPt:alert(1))", "[click](<java\tscript:alert(1)>)",
    "[click](&#106;avascript:alert(1))", "[click](&#x6A;avascript:alert(1))", "[click](javas&#99;ript:alert(1))",
    "[click](javascript&#58;alert(1))", "[click](javascript&colon;alert(1))", "[click](java%0ascript:alert(1))",
    "[click](<javascript:alert(1)>)", "[click](\\javascript:alert(1))", "[click]( javascript:alert(1) )",
    "[click](vbscript:msgbox(1))", "[click](VBScript:msgbox(1))", "[click](data:text/html,<script>alert(1)</script>)",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)", "[click](file:///etc/passwd)",
    "[click](//evil.example)", "[click](/relative/path)", "[click](#top)", "[click](?q=1)", "[click]()",
    "[click](<>)", "[click](https:evil.example)", "[click](http:/evil.example)",
    "[click][r]\n\n[r]: javascript:alert(1)", "[click]\n\n[click]: data:text/html,x",
    "<javascript:alert(1)>", "<JAVASCRIPT:alert(1)>", "<data:text/html,x>", "<vbscript:msgbox(1)>",
    "javascript:alert(1)", "data:text/html,hi", "vbscript:msgbox(1)", "file:///etc/passwd", "//evil.example",
    "![x](javascript:alert(1))", "![x](data:image/svg+xml,<svg onload=alert(1)>)",
])
def test_links_other_than_http_https_and_mailto_stay_text(text):
    html = agent_markdown(text)
    assert "<a" not in html and "href" not in html
    assert_only_safe_html(html)


@pytest.mark.parametrize("text, html", [
    ("[click](javascript:alert(1))", "<p>[click](javascript:alert(1))</p>"),
    ("[click](/relative)", "<p>[click](/relative)</p>"),
    ("[click](data:image/png;base64,iVBORw0KGgo=)", "<p>[click](data:image/png;base64,iVBORw0KGgo=)</p>"),
    ("![x](data:image/png;base64,iVBORw0KGgo=)", "<p>![x](data:image/png;base64,iVBORw0KGgo=)</p>"),
    ("<javascript:alert(1)>", "<p>&lt;javascript:alert(1)&gt;</p>"),
    ("[click]()", "<p>click</p>"),
])
def test_a_refused_link_is_shown_as_the_agent_typed_it(text, html):
    assert agent_markdown(text) == html


@pytest.mark.parametrize("text", [
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '<a href="javascript:alert(1)">x</a>',
    '<a href="https://example.com" onclick="alert(1)">x</a>', "<iframe src=https://evil.example></iframe>",
    "<svg onload=alert(1)>", "<style>body{display:none}</style>", "<details open ontoggle=alert(1)>",
    "<div>\n*not* markdown\n</div>", "<!-- hidden -->", "<![CDATA[x]]>", "<?php echo 1 ?>", "<!DOCTYPE html>",
    "<b>bold</b> and <i>italic</i>", "**<script>alert(1)</script>**", "`x`<script>alert(1)</script>",
    "> <script>alert(1)</script>", "- <img src=x onerror=alert(1)>", "# <script>alert(1)</script>",
    "[<img src=x onerror=alert(1)>](https://example.com)", "![<img src=x onerror=alert(1)>](https://example.com/a.png)",
    '[x](https://example.com "<script>alert(1)</script>")', '[x](https://example.com "a\\" onclick=\\"alert(1)")',
    "&lt;script&gt;alert(1)&lt;/script&gt;", "&#60;script&#62;alert(1)&#60;/script&#62;",
])
def test_raw_html_is_shown_as_text_never_live(text):
    html = agent_markdown(text)
    assert_only_safe_html(html)
    assert "<script" not in html and "<img" not in html and "<!--" not in html


def test_html_in_a_message_is_escaped():
    assert agent_markdown("<script>alert(1)</script> & <b>") == "<p>&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;</p>"


def test_html_inside_emphasis_code_and_link_labels_is_escaped():
    html = agent_markdown("**<img src=x>** `<b>` [<i>x</i>](https://example.com)")
    assert "<img" not in html and "<b>" not in html and "<i>" not in html


def test_the_result_is_marked_safe_for_jinja():
    assert hasattr(agent_markdown("x"), "__html__")


# -- Hostile input ----------------------------------------------------------------------

SIZE = 200_000


@pytest.mark.parametrize("text", [
    "*" * SIZE, "*a " * (SIZE // 3), "_x " * (SIZE // 3), "**b " * (SIZE // 4), "[" * (SIZE // 2),
    "[a" * (SIZE // 2), "[a](" * (SIZE // 4), "![a" * (SIZE // 3), ">" * SIZE, "> " * (SIZE // 2), "`" * SIZE, "`a``" * (SIZE // 4),
    "(" * SIZE, "<" * SIZE, "\\" * SIZE, "&#" * (SIZE // 2), "- " * (SIZE // 2), "<http://" * (SIZE // 8),
    "https://example.com/" + "(" * SIZE, "https://a.example)" * (SIZE // 18), "https://a.example/" + "." * SIZE,
    "".join("  " * depth + "- x\n" for depth in range(1000)),
], ids=lambda text: repr(text[:12]))
def test_a_200_kb_hostile_message_renders(text):
    # A hang guard, not a speed test: each of these takes at most a few seconds.
    # The thread only stops a hung run from hanging the suite.
    rendered = []
    worker = threading.Thread(target=lambda: rendered.append(agent_markdown(text)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert rendered, "agent_markdown did not finish within 60 s"
    assert_only_safe_html(rendered[0])


# ---------------------------------------------------------------------------
# The cache of rendered messages: bounded by count and by characters
# ---------------------------------------------------------------------------

def test_the_render_cache_forgets_the_least_recently_used_message_past_its_count():
    from markup import RenderCache
    cache = RenderCache(max_messages=3, max_chars=10_000, max_entry_chars=1000)
    for text in ("a", "b", "c"):
        cache.put(text, f"<p>{text}</p>")
    assert cache.get("a") == "<p>a</p>"  # now the most recently used
    cache.put("d", "<p>d</p>")
    assert len(cache) == 3 and cache.get("b") is None
    assert cache.get("a") and cache.get("c") and cache.get("d")


def test_the_render_cache_stays_within_its_characters():
    from markup import RenderCache
    cache = RenderCache(max_messages=1000, max_chars=100, max_entry_chars=60)
    for number in range(20):
        cache.put(f"text {number:02d} " * 2, "<p>" + "x" * 20 + "</p>")
    assert cache.chars <= 100 and 0 < len(cache) < 20


def test_a_message_too_long_for_the_render_cache_is_shown_but_not_kept():
    import markup
    long_text = "word " * (markup.RENDER_CACHE_MAX_ENTRY_CHARS // 4)
    before = len(markup._rendered)
    html = agent_markdown(long_text)
    assert html.startswith("<p>word word") and len(markup._rendered) == before
    assert agent_markdown(long_text) == html


def test_a_cached_message_renders_as_the_first_time():
    text = "**bold** and <script>x</script> https://example.com/a_(b)"
    first = agent_markdown(text)
    assert agent_markdown(text) == first and "<script>" not in first
