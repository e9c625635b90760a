"""Agent messages to HTML: the small, safe part of Markdown that agents use.

Chatwoot's dashboard editor writes Markdown (`**bold**`, `*italic*`, `` `code` ``,
`[text](url)`), and a customer should see emphasis, not asterisks. This is the one
place the portal makes HTML from text, so it is built to be obviously safe:

* every piece of the message's own text is HTML-escaped before it is used;
* the only tags made are <strong>, <em>, <code> and <a>;
* links go only to http(s) URLs, whose characters cannot leave the attribute;
* line breaks stay as text (the page shows them with `white-space: pre-wrap`).

Block syntax (lists, quotes, headings) is left as typed: it reads well as plain
text. Customer messages are never passed through here; they show as typed.
"""

import re

from markupsafe import Markup, escape

# Link targets: http(s) only, and no character that could end the attribute.
_URL = r"https?://[^\s<>\"'()\[\]`*]+"
_TOKEN = re.compile(
    r"`(?P<code>[^`\n]+)`"
    rf"|\[(?P<label>[^\]\n]+)\]\((?P<target>{_URL})\)"
    # A bare URL; trailing punctuation belongs to the sentence, not the link.
    rf"|(?P<bare>{_URL}(?<![.,;:!?]))"
)
# Emphasis cannot contain its own marker and spans at most 500 characters, so each
# match attempt stops at the next marker: linear time even on a pasted log full
# of unclosed `*` or `_` (an open-ended `.+?` took minutes on 150,000 characters).
_BOLD = re.compile(r"\*\*(?=\S)([^*\n]{1,500}?)(?<=\S)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]{1,500}?)(?<=[^\s*])\*(?![\w*])"
                     r"|(?<!\w)_(?=\S)([^_\n]{1,500}?)(?<=\S)_(?!\w)")


def agent_markdown(untrusted_text):
    """Markup for an agent's message: escaped text with inline Markdown applied."""
    parts, position = [], 0
    for match in _TOKEN.finditer(untrusted_text):
        parts.append(_emphasis(untrusted_text[position:match.start()]))
        if match["code"] is not None:
            parts.append(f"<code>{escape(match['code'])}</code>")
        else:
            target = match["target"] or match["bare"]
            label = _emphasis(match["label"]) if match["label"] is not None else escape(target)
            parts.append(f'<a href="{escape(target)}" rel="noopener noreferrer nofollow">{label}</a>')
        position = match.end()
    parts.append(_emphasis(untrusted_text[position:]))
    return Markup("".join(parts))


def _emphasis(untrusted_text):
    # Markers survive escaping unchanged, and the tags added here carry no text
    # of their own, so working on the escaped text is safe.
    text = str(escape(untrusted_text))
    if "*" not in text and "_" not in text:
        return text  # most text: no regex work at all
    text = _BOLD.sub(_strong, text)
    return _ITALIC.sub(_em, text)


def _strong(match):
    return f"<strong>{match.group(1)}</strong>"


def _em(match):
    return f"<em>{match.group(1) or match.group(2)}</em>"
