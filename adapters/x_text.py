"""X's weighted post length (twitter-text v3 configuration), pure.

twitter-text v3: the text is NFC-normalized; each code point weighs 2 ("200" at scale 100) unless
it falls in one of the light ranges (Latin, general punctuation...), which weigh 1; every URL
weighs 23 (t.co); an emoji sequence weighs 2 however many code points it has; 280 is the maximum.

Simplifications (documented in adapters/README.md): only explicit ``http(s)://`` URLs are
recognised (twitter-text also links bare domains such as ``example.com`` using its TLD list, so
such a text is counted shorter here than by X), and "emoji" means a grapheme cluster holding an
Extended_Pictographic or regional-indicator code point rather than twitter-text's emoji list.
Leading @mentions of replies are counted (X does not count them), which errs on the safe side.
"""

from __future__ import annotations

import unicodedata

import regex

from adapters import _text

MAX_WEIGHTED_LENGTH = 280
URL_WEIGHT = 23
# twitter-text v3 config "ranges" of weight 100 (= 1 character); everything else weighs 200.
LIGHT_RANGES = ((0x0000, 0x10FF), (0x2000, 0x200D), (0x2010, 0x201F), (0x2032, 0x2037))
_GRAPHEME = regex.compile(r"\X")
_EMOJI = regex.compile(r"[\p{Extended_Pictographic}\p{Regional_Indicator}]")


def _code_point_weight(char: str) -> int:
    code = ord(char)
    return 1 if any(low <= code <= high for low, high in LIGHT_RANGES) else 2


def _plain_weight(text: str) -> int:
    total = 0
    for cluster in _GRAPHEME.findall(text):
        if _EMOJI.search(cluster):
            total += 2
        else:
            total += sum(_code_point_weight(char) for char in cluster)
    return total


def weighted_length(text: str) -> int:
    """``text``'s length as X counts it against the 280 limit (see the module docstring)."""
    text = unicodedata.normalize("NFC", text)
    total, last = 0, 0
    for start, end in _text._urls(text):
        total += _plain_weight(text[last:start]) + URL_WEIGHT
        last = end
    return total + _plain_weight(text[last:])
