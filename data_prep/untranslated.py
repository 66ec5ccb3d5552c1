"""Find paragraphs a translation left in English, given the English original.

Translations of a manual keep some paragraphs in English: word for word (commands, URLs), or
as English prose around translated cross-references ("see Раздел 6.3.10, «...»"). Either would
be English text under another language's label. A paragraph counts as untranslated when

* it is identical to an English paragraph, or
* most of its letters (SHARED_SHARE) lie in runs of NGRAM words that also occur in the English
  original, and it reads as prose: English function words make up at least PROSE_SHARE of its
  letters. The second test keeps translated sentences that quote English command output or
  interface strings ("04:00.0 VGA compatible controller [0300]: ..."), which have almost none.

On the Debian Installation Guide the second test finds 38-68 English paragraphs in each of
cs, ru, sv and vi, 1-5 in da, el and ja, and none in the other translations.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

NGRAM = 4
SHARED_SHARE = 0.6
PROSE_SHARE = 0.03
# Frequent English words that are not also common words of the guide's other Latin-script
# languages (so no "is", "of", "for", "have", "at", "an", "in").
FUNCTION_WORDS = frozenset(
    """the and you your that this with are will which from should if not it can these there
    when into their only also be or than then""".split()
)
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters, in any script


def _ngrams(words: list[str]) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)]


class UntranslatedFilter:
    """``is_untranslated(line)`` against the paragraphs of the English original."""

    def __init__(self, english: Iterable[str]) -> None:
        self._lines = set(english)
        self._ngrams = {g for line in self._lines for g in _ngrams(line.split())}

    def is_untranslated(self, line: str) -> bool:
        """Whether ``line`` is English text copied from the original (see the module doc)."""
        if line in self._lines:
            return True
        return self._shared_share(line) >= SHARED_SHARE and _prose_share(line) >= PROSE_SHARE

    def _shared_share(self, line: str) -> float:
        words = line.split()
        shared = [False] * len(words)
        for i, gram in enumerate(_ngrams(words)):
            if gram in self._ngrams:
                shared[i : i + NGRAM] = [True] * NGRAM
        total = sum(map(len, words))
        return sum(len(w) for w, s in zip(words, shared) if s) / total if total else 0.0


def _prose_share(line: str) -> float:
    words = _WORD.findall(line.lower())
    total = sum(map(len, words))
    return sum(len(w) for w in words if w in FUNCTION_WORDS) / total if total else 0.0
