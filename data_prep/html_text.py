"""Plain text from HTML documentation pages: one line per block element (paragraph, item, cell).

Standard library only (``html.parser``), so rebuilding the bundled corpus needs nothing beyond
Python and the two source packages.
"""

from __future__ import annotations

import unicodedata
from html.parser import HTMLParser

# Elements whose start or end ends the current line of text.
BLOCK_TAGS = frozenset(
    """address article aside blockquote body br caption dd div dl dt figcaption footer h1 h2 h3 h4
    h5 h6 header hr li main nav ol p section table tbody td tfoot th thead title tr ul""".split()
)
# Elements whose whole content is dropped: code listings and screen dumps (pre) are not prose,
# and head only repeats the page's heading in its title.
SKIP_TAGS = frozenset({"head", "pre", "script", "style"})
# DocBook's navigation bars, tables of contents and lists of tables/figures repeat titles that
# appear again, in place, as headings.
SKIP_CLASSES = frozenset(
    {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures", "list-of-examples"}
)
VOID_TAGS = frozenset("area base br col embed hr img input link meta source track wbr".split())


class _BlockTextParser(HTMLParser):
    """Collects the text of block elements, skipping SKIP_TAGS and SKIP_CLASSES subtrees."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._parts: list[str] = []
        self._skip_tag: str | None = None  # tag that opened the subtree being skipped
        self._skip_depth = 0  # open elements named _skip_tag inside that subtree

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth += 1
            return
        classes = set((dict(attrs).get("class") or "").split())
        if tag in SKIP_TAGS or (classes & SKIP_CLASSES and tag not in VOID_TAGS):
            self._flush()
            self._skip_tag, self._skip_depth = tag, 1
        elif tag in BLOCK_TAGS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
        elif tag in BLOCK_TAGS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skip_tag is None:
            self._parts.append(data)

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        line = " ".join("".join(self._parts).split())
        self._parts.clear()
        if line:
            self.lines.append(unicodedata.normalize("NFC", line))


def html_paragraphs(html: str) -> list[str]:
    """Text of each block element of ``html``, whitespace collapsed, NFC, empty ones dropped."""
    parser = _BlockTextParser()
    parser.feed(html)
    parser.close()
    return parser.lines


def clean_lines(lines: list[str], min_chars: int = 20) -> list[str]:
    """Drop lines shorter than ``min_chars`` and every repeat of a line already seen.

    Short lines are mostly headings, table cells and file names; repeats are navigation and
    boilerplate that every page of a manual carries.
    """
    return [lines[i] for i in kept_line_indices(lines, min_chars)]


def kept_line_indices(lines: list[str], min_chars: int = 20) -> list[int]:
    """Indices of the lines ``clean_lines`` keeps, for callers that carry a tag per line."""
    seen: set[str] = set()
    kept = []
    for i, line in enumerate(lines):
        if len(line) >= min_chars and line not in seen:
            seen.add(line)
            kept.append(i)
    return kept
