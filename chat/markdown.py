"""Model output to safe HTML: Markdown with highlighted code, then sanitized, so an answer can
never run script or inject markup whatever the model writes."""
import functools

import nh3
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name
from pygments.util import ClassNotFound

_formatter = HtmlFormatter(nowrap=True)


def _highlight(code, lang, attrs):
    try:
        lexer = get_lexer_by_name(lang) if lang else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    return highlight(code, lexer, _formatter)


_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "highlight": _highlight}).enable(
    ["table", "strikethrough"])

ALLOWED_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "span", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "img",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"alt", "title"},  # no src: a model must not make the browser fetch anything
    "code": {"class"},
    "span": {"class"},
    "pre": {"class"},
    "th": {"style"},
    "td": {"style"},
    "ol": {"start"},
}


# Every new turn re-renders the tab's whole thread, so the same answers come back over and over;
# a long chat would re-highlight all its code on every send. Huge texts are not kept.
CACHE_ENTRIES = 512
CACHE_MAX_CHARS = 64 * 1024


def render_markdown(text):
    text = text or ""
    return _render(text) if len(text) > CACHE_MAX_CHARS else _render_cached(text)


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def _render_cached(text):
    return _render(text)


def _render(text):
    html = _md.render(text)
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        filter_style_properties={"text-align"},
    )
