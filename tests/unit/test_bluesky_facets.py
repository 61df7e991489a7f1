"""Bluesky rich text: facets in UTF-8 byte offsets, grapheme counting, Mastodon's weighted
length. Pure functions: tables of cases plus properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters import _text


def spans(text: str) -> list[tuple[str, str, str]]:
    """(kind, the bytes it covers, value) of each facet."""
    raw = text.encode()
    return [
        (s.kind, raw[s.byte_start : s.byte_end].decode(), s.value) for s in _text.facet_spans(text)
    ]


def test_the_bluesky_docs_example_offsets() -> None:
    """The worked example of bsky-docs "Posts": mention 23..35, link 74..108 (bytes)."""
    text = "✨ example mentioning @atproto.com to share the URL 👨‍❤️‍👨 https://en.wikipedia.org/wiki/CBOR."

    found = _text.facet_spans(text)

    assert [(s.kind, s.byte_start, s.byte_end) for s in found] == [
        ("mention", 23, 35),
        ("link", 74, 108),
    ]
    assert [s.value for s in found] == ["atproto.com", "https://en.wikipedia.org/wiki/CBOR"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@alice.bsky.social hi", [("mention", "@alice.bsky.social", "alice.bsky.social")]),
        ("(@alice.test)", [("mention", "@alice.test", "alice.test")]),
        ("mail bob@example.com", []),
        ("@nodot alone", []),
        ("end @alice.test.", [("mention", "@alice.test", "alice.test")]),
        ("see https://x.io/a?b=1.", [("link", "https://x.io/a?b=1", "https://x.io/a?b=1")]),
        (
            "(https://en.wikipedia.org/wiki/Foo_(bar))",
            [
                (
                    "link",
                    "https://en.wikipedia.org/wiki/Foo_(bar)",
                    "https://en.wikipedia.org/wiki/Foo_(bar)",
                )
            ],
        ),
        ("no scheme example.com", []),
        ("#postd rocks", [("tag", "#postd", "postd")]),
        ("tags: #día, #東京!", [("tag", "#día", "día"), ("tag", "#東京", "東京")]),
        ("#2026 is a number", []),
        ("a#b is not a tag", []),
        ("#" + "t" * 65, []),
        (
            "🎉 @a.test #x https://y.z",
            [
                ("mention", "@a.test", "a.test"),
                ("tag", "#x", "x"),
                ("link", "https://y.z", "https://y.z"),
            ],
        ),
    ],
)
def test_facet_table(text: str, expected: list[tuple[str, str, str]]) -> None:
    """Each kind is found where the Bluesky guide says, with trailing punctuation left out."""
    assert spans(text) == expected


def test_a_hash_inside_a_link_is_not_a_tag() -> None:
    """Facets never overlap: a fragment or a handle inside a URL belongs to the link."""
    assert [kind for kind, _, _ in spans("go https://x.io/#frag/@a.test now")] == ["link"]


@given(st.text(alphabet=st.sampled_from(list("ab #@.:/h😀é\u0301 ttps")), max_size=60))
def test_spans_are_ordered_disjoint_and_on_character_boundaries(text: str) -> None:
    """Whatever the text: byte ranges are ordered, disjoint, inside the text, and decode."""
    raw = text.encode()
    reached = 0
    for span in _text.facet_spans(text):
        assert reached <= span.byte_start < span.byte_end <= len(raw)
        raw[span.byte_start : span.byte_end].decode()  # not mid-character
        reached = span.byte_end


@pytest.mark.parametrize(
    ("text", "count"),
    [("abc", 3), ("e\u0301", 1), ("👨‍❤️‍👨", 1), ("🇫🇷🇩🇪", 2), ("", 0), ("한국어", 3)],
)
def test_graphemes_count_clusters(text: str, count: int) -> None:
    """Extended grapheme clusters, not code points."""
    assert _text.graphemes(text) == count


@pytest.mark.parametrize(
    ("text", "spoiler", "length"),
    [
        ("hello", "", 5),
        ("see https://example.com/" + "x" * 100, "", 4 + 23),
        ("hi @bob@mastodon.social", "", len("hi @bob")),
        ("hi @bob", "cw", 9),
        ("a👨‍❤️‍👨", "", 2),
        ("two https://a.io https://b.io/long/path.", "", 4 + 23 + 1 + 23 + 1),
    ],
)
def test_mastodon_length(text: str, spoiler: str, length: int) -> None:
    """URLs count 23, remote mentions count their local part, the content warning counts."""
    assert _text.mastodon_length(text, spoiler) == length
