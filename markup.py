"""Agent messages to HTML: CommonMark, as Chatwoot's dashboard shows it, made safe.

Chatwoot's editor writes Markdown (emphasis, lists, quotes, fenced code, links), and
a customer should see a list, not dashes and asterisks. This module owns turning an
agent's text into HTML; it is a thin wrapper around markdown-it-py, a CommonMark
parser built to stay linear on pathological input (tests/test_markup.py feeds it
200 KB of it). Customer messages never pass through here; they show as typed.

Why the result is safe to mark `Markup`:

* raw HTML is off (`html=False`): `<script>`, `<b>` and `<!-- -->` in a message are
  parsed as text, and every piece of text is HTML-escaped by the renderer;
* the renderer only makes the tags of CommonMark's own blocks and inlines (p, br,
  em, strong, code, pre, blockquote, ul/ol/li, hr, h3-h6, a), and attribute
  values are escaped;
* a link is made only when `_is_allowed_link` accepts its target *after* the
  library has decoded entities and escapes and percent-encoded it: it must start
  with `http://`, `https://` or `mailto:`. Anything else (`javascript:`,
  `JaVaScRiPt:`, `java\\tscript:`, `&#106;avascript:`, `data:`, relative or
  `//host` URLs) is left as the text the agent typed. The parser asks it for
  every link, image and autolink; the one target it lets through unasked, an
  empty one (`[x]()`), is unlinked by `_agent_rules` before rendering;
* every link gets `rel="noopener noreferrer nofollow"` at render time, whichever
  rule made it;
* no `<img>` is ever rendered (no remote loads from a mail or a page): before
  rendering, every image token is replaced by a link to its URL, or by its text;
* a fenced block's language becomes `class="language-xxx"` only when it is a
  plain word; anything else is dropped.

What the portal adds to plain CommonMark, to match Chatwoot:

* a single newline is a line break (`breaks=True`), as the dashboard shows it;
* bare http(s) URLs become links (`_link_bare_urls`: linkify would need
  linkify-it-py, one more dependency for one small rule);
* headings are demoted two levels (h1 -> h3 ... h4-h6 -> h6), so a `# Title` in a
  message is never bigger than the page's own h1 and h2.

Tables and strikethrough are not CommonMark; they show as typed. What is nested
deeper than the preset's limit of 20 levels is dropped (a list level takes two,
so items below the ninth list level are lost): the limit also bounds the work on
hostile input like `[a[a[a...`, which grows with it, so it stays.
"""

import collections
import re
import threading

from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

LINK_REL = "noopener noreferrer nofollow"

# Checked on the normalized target: entities and backslash escapes decoded, spaces
# and control characters percent-encoded, so no spelling of another scheme passes.
_ALLOWED_LINK = re.compile(r"(?:https?://|mailto:)", re.IGNORECASE)

# A message's "# Title" is h3: the ticket page already uses h1 and h2.
HEADING_SHIFT = 2

# A fenced block's language, e.g. "python" or "c++"; anything else is dropped.
_LANGUAGE = re.compile(r"[\w+#.-]{1,32}")

# A message never changes once sent, and a thread is read again and again, so the
# HTML of recent messages is kept: rendering takes about 1 ms for 500 characters.
# Every process keeps its own, bounded twice: by messages (each costs ~200 bytes
# beside its characters, however short) and by characters of text and HTML (a
# message may be 40 characters or 100,000). 1,024 typical ones of 500 characters
# (the threads of the last few dozen tickets opened, the last reply mails) take
# 1.5 MB; it never holds more than ~2.2 MB of ASCII, ~8 MB of emoji.
RENDER_CACHE_MESSAGES = 1024
RENDER_CACHE_CHARS = 2_000_000
# Longer than this (text and HTML) is rendered every time, not kept: one such
# message would push out dozens of ordinary ones.
RENDER_CACHE_MAX_ENTRY_CHARS = RENDER_CACHE_CHARS // 32

# Bare URLs: where one starts, then its pieces one at a time (a run of ordinary
# characters, or a single parenthesis), so parentheses can be counted and every
# character is looked at once: linear time, whatever the text.
_BARE_URL_START = re.compile(r"(?<![\w/])https?://(?=\w)", re.IGNORECASE)
_BARE_URL_PIECE = re.compile(r"[^\s<>\"`\[\]()]+|[()]")
# Punctuation that ends the sentence, not the URL: "see https://example.com/a."
_TRAILING_PUNCTUATION = ".,;:!?'*"


def agent_markdown(untrusted_text):
    """Markup for an agent's message: CommonMark blocks and inlines, safe to show."""
    html = _rendered.get(untrusted_text)
    if html is None:
        html = _render(untrusted_text)
        _rendered.put(untrusted_text, html)
    return Markup(html)


def _render(untrusted_text):
    return _md.render(untrusted_text).rstrip("\n")


class RenderCache:
    """text -> HTML, least recently used first out, within a count and a size.

    waitress renders on several threads: one lock guards the dict and the running
    size. Two threads may render the same text at once; the second put just
    replaces the first.
    """

    def __init__(self, max_messages, max_chars, max_entry_chars):
        self.max_messages, self.max_chars, self.max_entry_chars = max_messages, max_chars, max_entry_chars
        self._items = collections.OrderedDict()
        self._chars = 0  # len(text) + len(html) of everything kept
        self._lock = threading.Lock()

    def get(self, text):
        with self._lock:
            html = self._items.get(text)
            if html is not None:
                self._items.move_to_end(text)
            return html

    def put(self, text, html):
        size = len(text) + len(html)
        if size > self.max_entry_chars:
            return
        with self._lock:
            old = self._items.pop(text, None)
            if old is not None:
                self._chars -= len(text) + len(old)
            self._items[text] = html
            self._chars += size
            while len(self._items) > self.max_messages or self._chars > self.max_chars:
                gone_text, gone_html = self._items.popitem(last=False)
                self._chars -= len(gone_text) + len(gone_html)

    def __len__(self):
        with self._lock:
            return len(self._items)

    @property
    def chars(self):
        with self._lock:
            return self._chars


_rendered = RenderCache(RENDER_CACHE_MESSAGES, RENDER_CACHE_CHARS, RENDER_CACHE_MAX_ENTRY_CHARS)


def _is_allowed_link(normalized_url):
    return _ALLOWED_LINK.match(normalized_url) is not None


# ---------------------------------------------------------------------------
# Core rule: after parsing, before rendering
# ---------------------------------------------------------------------------

def _agent_rules(state):
    for token in state.tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1]) + HEADING_SHIFT, 6)}"
        elif token.type == "fence":
            language = (token.info.split() or [""])[0]
            token.info = language if _LANGUAGE.fullmatch(language) else ""
        elif token.type == "inline" and token.children:
            token.children = _inline_children(state.md, token.children)


def _inline_children(md, children):
    result, live_links = [], []  # for each open link: is it kept?
    for token in children:
        if token.type == "link_open":
            # The parser validated the target, but lets an empty one through: `[x]()`.
            live_links.append(_is_allowed_link(token.attrGet("href") or ""))
            if live_links[-1]:
                result.append(token)
        elif token.type == "link_close":
            if live_links.pop():
                result.append(token)
        elif token.type == "image":
            result.extend(_image_as_link(token, inside_link=any(live_links)))
        elif token.type == "text" and not any(live_links):
            result.extend(_link_bare_urls(md, token))
        else:
            result.append(token)
    return result


def _image_as_link(image, inside_link):
    """An image as a link to its URL showing its alt text; only the text inside a
    link (which leads somewhere already) or when the URL is empty: `![x]()`."""
    url = image.attrGet("src") or ""
    label = Token("text", "", 0, level=image.level, content=_plain_text(image.children) or url)
    if inside_link or not _is_allowed_link(url):
        return [label]
    link_open = Token("link_open", "a", 1, level=image.level, attrs={"href": url})
    return [link_open, label, Token("link_close", "a", -1, level=image.level)]


def _plain_text(tokens):
    parts = []
    for token in tokens or ():
        if token.type in ("text", "text_special", "code_inline"):
            parts.append(token.content)
        elif token.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif token.type == "image":
            parts.append(_plain_text(token.children))
    return "".join(parts)


def _link_bare_urls(md, text_token):
    """The text token, split into text and links around the bare http(s) URLs in it."""
    text, tokens, done = text_token.content, [], 0
    level = text_token.level
    search_from = 0
    while (start := _BARE_URL_START.search(text, search_from)) is not None:
        end = _url_end(text, start.end())
        search_from = end
        # Never empty past "://": the start pattern wants a letter or digit there.
        url = text[start.start():end].rstrip(_TRAILING_PUNCTUATION)
        if start.start() > done:
            tokens.append(Token("text", "", 0, level=level, content=text[done:start.start()]))
        tokens += [
            Token("link_open", "a", 1, level=level, attrs={"href": md.normalizeLink(url)}, markup="linkify", info="auto"),
            Token("text", "", 0, level=level + 1, content=url),
            Token("link_close", "a", -1, level=level, markup="linkify", info="auto"),
        ]
        done = start.start() + len(url)
    if not tokens:
        return [text_token]
    if done < len(text):
        tokens.append(Token("text", "", 0, level=level, content=text[done:]))
    return tokens


def _url_end(text, position):
    """Where a URL starting before `position` ends: at a space, quote, bracket or an
    unbalanced ")", so ".../wiki/Printer_(computing)" stays whole but "(see https://x)"
    leaves its ")" outside."""
    depth = 0
    while (piece := _BARE_URL_PIECE.match(text, position)) is not None:
        if piece[0] == "(":
            depth += 1
        elif piece[0] == ")":
            if depth == 0:
                break
            depth -= 1
        position = piece.end()
    return position


# ---------------------------------------------------------------------------
# Render rules
# ---------------------------------------------------------------------------

def _render_link_open(self, tokens, idx, options, env):
    tokens[idx].attrSet("rel", LINK_REL)
    return self.renderToken(tokens, idx, options, env)


_md = MarkdownIt("commonmark", {"html": False, "breaks": True, "xhtmlOut": False})
_md.validateLink = _is_allowed_link
_md.core.ruler.push("agent_rules", _agent_rules)
_md.add_render_rule("link_open", _render_link_open)
# The library compiles its rule chains on first use; do it now, before waitress'
# threads could see a half-built chain.
for _ruler in (_md.core.ruler, _md.block.ruler, _md.inline.ruler, _md.inline.ruler2):
    _ruler.getRules("")
