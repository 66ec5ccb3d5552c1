"""The text a new tokenizer trains on: a fixed budget of bytes shared out between the languages as
XLM-R sampled its SentencePiece model's text, p_l ∝ (n_l / N)^alpha, so that a corpus of a
thousand languages does not train its tokenizer on its largest few.

A language gives its first lines up to its share; one with less text than its share gives all of
it, and what it leaves over goes to the others in the same proportions. The sample streams into
SentencePiece, which holds it: the budget bounds the memory training takes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

DEFAULT_GB = 1.0  # about 10M lines of 100 bytes: what SentencePiece trains on in minutes
DEFAULT_ALPHA = 0.3  # XLM-R's


def shares(sizes: Mapping[str, int | None], budget: int, alpha: float) -> dict[str, int]:
    """Bytes each language gives, from its size in bytes (None: unknown, a stream's; counted as
    the median of the known sizes, or as the budget when none is known)."""
    known = sorted(size for size in sizes.values() if size is not None)
    fallback = known[len(known) // 2] if known else budget
    size = {lang: max(1, fallback if n is None else n) for lang, n in sizes.items()}
    weight = {lang: n**alpha for lang, n in size.items()}  # (n/N)^alpha up to a common factor
    share: dict[str, int] = {}
    open_ = set(size)
    left = budget
    # Water-filling: a language smaller than its share takes all it has, and the rest is shared
    # again among the others, until every share fits.
    while open_:
        total = sum(weight[lang] for lang in open_)
        offer = {lang: left * weight[lang] / total for lang in open_}
        full = {lang for lang in open_ if size[lang] <= offer[lang]}
        if not full:
            share.update({lang: round(offer[lang]) for lang in open_})
            break
        for lang in full:
            share[lang] = size[lang]
            left -= size[lang]
        open_ -= full
    return {lang: share[lang] for lang in sizes}


def sample(lines_by_language: Mapping[str, Iterator[str]], share: Mapping[str, int],
           given: dict[str, int]) -> Iterator[str]:
    """Each language's first lines until its share of bytes is reached (the line that crosses
    it included); ``given`` gets the bytes each gave."""
    for lang, lines in lines_by_language.items():
        given[lang] = 0
        for line in lines:
            if given[lang] >= share[lang]:
                break
            given[lang] += len(line.encode("utf-8")) + 1  # and its newline
            yield line
