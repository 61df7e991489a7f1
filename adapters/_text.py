"""Text rules the platforms count by, pure: graphemes, Mastodon's weighted length, and Bluesky's
rich-text facets in UTF-8 byte offsets.

Graphemes are extended grapheme clusters (Unicode UAX #29) as the ``regex`` module's ``\\X``
finds them: "👨‍❤️‍👨" is one, "é" written as e + U+0301 is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import regex

_GRAPHEME = regex.compile(r"\X")

# Mastodon (StatusLengthValidator): every http(s) URL counts as 23 characters (the instance's
# characters_reserved_per_url) and a mention @user@domain counts as @user.
_URL = regex.compile(r"(?<![\w@/])https?://[^\s<>\"]+", regex.IGNORECASE)
_REMOTE_MENTION = regex.compile(r"(?<![\w@/])(@\w+(?:[.-]\w+)*)@[\w-]+(?:\.[\w-]+)+")
_TRAILING_PUNCT = ".,;:!?'\""

# Bluesky (bsky-docs, "Links, mentions, and rich text"): a mention is a handle after start of
# text, whitespace or "("; a tag is "#" + at least one non-digit, non-space character.
_HANDLE = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+"
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
)
_MENTION = regex.compile(r"(?:^|(?<=[\s(]))@(" + _HANDLE + r")(?![\w.-]*\w)")
_TAG = regex.compile(r"(?:^|(?<=\s))#([^\d\s]\S*)")
_TAG_TRAILING = regex.compile(r"\p{P}+$")
TAG_MAX_GRAPHEMES = 64


def graphemes(text: str) -> int:
    """The number of extended grapheme clusters in ``text``."""
    return len(_GRAPHEME.findall(text))


def _url_end(text: str, start: int, end: int) -> int:
    """Where a URL really ends: trailing punctuation and an unbalanced ")" are not part of it."""
    while end > start:
        last = text[end - 1]
        unbalanced = last == ")" and text.count("(", start, end) < text.count(")", start, end)
        if last not in _TRAILING_PUNCT and not unbalanced:
            break
        end -= 1
    return end


def _urls(text: str) -> list[tuple[int, int]]:
    """(start, end) code-point spans of the http(s) URLs in ``text``."""
    spans = []
    for match in _URL.finditer(text):
        end = _url_end(text, match.start(), match.end())
        if end > match.start() + len("http://"):
            spans.append((match.start(), end))
    return spans


def mastodon_length(text: str, spoiler_text: str = "", url_weight: int = 23) -> int:
    """A status's length as Mastodon counts it: graphemes of the content warning plus the text,
    every URL counting ``url_weight`` and remote mentions counting their local part only."""
    pieces: list[str] = []
    last = 0
    for start, end in _urls(text):
        pieces.append(text[last:start])
        pieces.append("x" * url_weight)
        last = end
    pieces.append(text[last:])
    countable = _REMOTE_MENTION.sub(lambda m: str(m.group(1)), "".join(pieces))
    return graphemes(spoiler_text) + graphemes(countable)


# --- Bluesky facets ---------------------------------------------------------------------------

FacetKind = Literal["link", "mention", "tag"]


@dataclass(frozen=True, slots=True)
class FacetSpan:
    """A facet before resolution: ``value`` is the URI, the handle (no "@") or the tag (no "#");
    ``byte_start``/``byte_end`` are UTF-8 offsets, end exclusive."""

    kind: FacetKind
    byte_start: int
    byte_end: int
    value: str


class _ByteOffsets:
    """Code-point index -> UTF-8 byte offset, computed once per text."""

    def __init__(self, text: str) -> None:
        self._offsets = [0]
        total = 0
        for char in text:
            total += len(char.encode("utf-8"))
            self._offsets.append(total)

    def __getitem__(self, index: int) -> int:
        return self._offsets[index]


def facet_spans(text: str) -> list[FacetSpan]:
    """Links (explicit http/https URLs), mentions and hashtags of ``text``, ordered by start,
    overlaps dropped (the earlier one wins)."""
    offsets = _ByteOffsets(text)
    found: list[tuple[int, int, FacetKind, str]] = []
    for start, end in _urls(text):
        found.append((start, end, "link", text[start:end]))
    for match in _MENTION.finditer(text):
        found.append((match.start(), match.end(), "mention", str(match.group(1))))
    for match in _TAG.finditer(text):
        tag = _TAG_TRAILING.sub("", str(match.group(1)))
        if tag and graphemes(tag) <= TAG_MAX_GRAPHEMES:
            found.append((match.start(), match.start() + 1 + len(tag), "tag", tag))
    spans: list[FacetSpan] = []
    reached = 0
    for start, end, kind, value in sorted(found):
        if start < reached:
            continue
        spans.append(FacetSpan(kind, offsets[start], offsets[end], value))
        reached = end
    return spans
