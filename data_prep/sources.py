"""Where each language's raw text comes from: the bundled corpus, a folder of text files (CC-100's
``.txt.xz`` files through a JSON list that names their languages), a folder of parquet files per
language (FineWeb-2's layout, ``data_prep.parquet``), or a Hugging Face ``datasets`` source.

``open_source`` turns a source string into ``{language: LanguageSource}`` in a stable order,
checking what can be checked before any text is read: language codes, duplicates, missing files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import DataPrepError
from data_prep.parquet import ParquetSource, language_folders
from data_prep.textio import (
    Progress,
    TextBlock,
    file_blocks,
    is_text_file,
    packed_blocks,
    read_lines,
    text_file_stem,
)
from xmod_core.languages import check_language_code, check_language_list, same_language

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
BUNDLED = "bundled"
BUNDLED_DEFAULT = "debian_ig"
HF_PREFIX = "hf:"
XZ_RATIO = 3.9  # text bytes per .xz byte, measured on the bundled corpus
# datasets' packaged builders read local or remote files: for them the template is data_files.
HF_FILE_BUILDERS = frozenset({"text", "json", "csv", "parquet", "arrow"})
HF_TEXT_COLUMN = "text"
# What datasets raises for a dataset it cannot read: missing files or configs, an offline hub,
# and (RuntimeError, datasets 4 and later) a hub dataset that still needs a loading script.
HF_ERRORS = (OSError, ValueError, ConnectionError, RuntimeError)


@dataclass(frozen=True)
class FileSource:
    """One language's text in one or more UTF-8 files (``.txt`` or ``.txt.xz``)."""

    language: str
    files: tuple[Path, ...]

    @property
    def total_bytes(self) -> int | None:
        """Raw bytes to read, when known without decompressing."""
        if any(f.name.endswith(".xz") for f in self.files):
            return None
        return sum(f.stat().st_size for f in self.files)

    @property
    def size_hint(self) -> int:
        """About how many bytes of text the files hold (an .xz file's compressed size times
        XZ_RATIO: reading the whole file to know would cost as much as preparing it)."""
        return sum(int(f.stat().st_size * (XZ_RATIO if f.name.endswith(".xz") else 1))
                   for f in self.files)

    def blocks(self) -> Iterator[TextBlock]:
        """The language's text in blocks of whole lines, in file order."""
        for path in self.files:
            yield from file_blocks(path, self.language)

    def lines(self, progress: Progress | None = None) -> Iterator[str]:
        """The language's non-empty lines, NFC and whitespace-normalised, in file order."""
        return read_lines(self.blocks(), progress)


@dataclass(frozen=True)
class HFSource:
    """One language of a ``datasets`` source, streamed (nothing is downloaded in full).

    ``name`` is a hub dataset (``argument`` is its config name) or a packaged builder such as
    ``text`` (``argument`` is its data_files). Rows' ``text`` column is split into lines.
    """

    language: str
    name: str
    argument: str

    @property
    def total_bytes(self) -> None:
        """Unknown for a stream."""
        return None

    @property
    def size_hint(self) -> None:
        """Unknown for a stream."""
        return None

    def blocks(self) -> Iterator[TextBlock]:
        """The stream's rows in blocks of whole lines (each row ends a line)."""
        return packed_blocks(self.language, str(self), self._texts())

    def lines(self, progress: Progress | None = None) -> Iterator[str]:
        """The language's non-empty lines, NFC and whitespace-normalised, in stream order."""
        return read_lines(self.blocks(), progress)

    def _texts(self) -> Iterator[bytes]:
        for row in self._rows():
            text = row.get(HF_TEXT_COLUMN)
            if not isinstance(text, str):
                columns = ", ".join(row)
                raise DataPrepError(f"{self}: no {HF_TEXT_COLUMN!r} text column (has {columns})")
            yield f"{text}\n".encode("utf-8")

    def _rows(self) -> Iterator[dict]:
        try:
            yield from self._stream()
        except HF_ERRORS as e:
            raise DataPrepError(f"{self}: {type(e).__name__}: {e}") from e

    def _stream(self) -> Iterable[dict]:
        import datasets  # heavy (pyarrow, pandas); only hf: sources need it

        if self.name in HF_FILE_BUILDERS:
            return datasets.load_dataset(
                self.name, data_files=self.argument, split="train", streaming=True
            )
        return datasets.load_dataset(self.name, self.argument, split="train", streaming=True)

    def __str__(self) -> str:
        what = "data_files" if self.name in HF_FILE_BUILDERS else "config"
        return f"datasets source {self.name!r} ({what} {self.argument!r})"


LanguageSource = FileSource | ParquetSource | HFSource


def source_name(source: str | os.PathLike) -> str:
    """How a preparation records ``source``: a local path made absolute, so the same folder
    named from anywhere (``fw2/``, ``$PWD/fw2``, a Slurm task started in another directory) is
    one request; ``bundled`` and ``hf:`` sources as given."""
    spec = str(source)
    if spec == BUNDLED or spec.startswith((BUNDLED + ":", HF_PREFIX)):
        return spec
    return str(Path(spec).resolve())


def open_source(
    source: str | os.PathLike, languages: Sequence[str] | None = None
) -> dict[str, LanguageSource]:
    """Resolve ``source`` to its languages, in the order of ``languages`` (None or empty: all of
    the source's, sorted).

    ``source``: ``bundled`` (or ``bundled:<folder>`` of data_prep/corpus), a folder of
    ``<code>.txt[.xz]`` files, a folder of ``<code>/`` folders of parquet files (FineWeb-2's
    layout), a JSON file ``{"<code>": path or [paths]}``, one text file of
    the one language ``languages`` names, or ``hf:NAME[:TEMPLATE]`` (TEMPLATE: config name, or
    data_files for builders like ``text``, with ``{lang}`` -> ``en_XX`` and ``{iso}`` -> ``en``;
    default ``{lang}``). A code is ``xx_YY`` or ``xxx_Xxxx`` (``xmod_core.languages``).
    """
    languages = _language_list(languages) if languages else None
    spec = str(source)
    if spec.startswith(HF_PREFIX):
        return _hf_sources(spec, languages)
    if Path(spec).is_file() and Path(spec).suffix != ".json":
        if not languages or len(languages) != 1:
            raise DataPrepError(f"source {spec} is one text file: name its one language "
                                "(--languages xx_YY or xxx_Xxxx)")
        return {languages[0]: FileSource(languages[0], (Path(spec),))}
    available = _files_by_language(spec)
    return _select(available, languages, spec)


def _language_code(code: str, where: str) -> str:
    try:
        return check_language_code(code, where)
    except ValueError as e:
        raise DataPrepError(str(e)) from None


def _language_list(codes: Sequence[str]) -> list[str]:
    try:
        return check_language_list(codes, "--languages")
    except ValueError as e:
        raise DataPrepError(str(e)) from None


def _files_by_language(spec: str) -> dict[str, FileSource]:
    if spec == BUNDLED or spec.startswith(BUNDLED + ":"):
        path = CORPUS_DIR / (spec.partition(":")[2] or BUNDLED_DEFAULT)
    else:
        path = Path(spec)
    if not path.exists():
        where = "" if str(path) == spec else f" ({path})"
        raise DataPrepError(f"source {spec} does not exist{where}")
    if path.is_dir():
        return _folder_sources(path)
    if path.suffix == ".json":
        return _json_sources(path)
    raise DataPrepError(f"source {spec} is neither a folder, a .json file nor hf:NAME")


def _folder_sources(folder: Path) -> dict[str, FileSource | ParquetSource]:
    found: dict[str, FileSource | ParquetSource] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and is_text_file(p)):
        code = _language_code(text_file_stem(path), str(path))
        if code in found:
            first = found[code].files[0].name
            raise DataPrepError(f"language {code} twice in {folder}: {first} and {path.name}")
        found[code] = FileSource(code, (path,))
    if found:
        return _one_code_each(found, folder)
    for name, files in language_folders(folder).items():
        code = _language_code(name, str(files[0].parent))
        found[code] = ParquetSource(code, tuple(files))
    if not found:
        raise DataPrepError(f"source {folder} holds no <code>.txt or <code>.txt.xz file and no "
                            "<code>/ folder of parquet files (FineWeb-2's layout)")
    return _one_code_each(found, folder)


def _one_code_each(found: dict[str, LanguageSource], where: Path) -> dict[str, LanguageSource]:
    """``found``, unless it names one language twice (en_XX beside eng_Latn)."""
    try:
        check_language_list(found, str(where))
    except ValueError as e:
        raise DataPrepError(str(e)) from None
    return found


def _json_sources(path: Path) -> dict[str, FileSource]:
    try:
        pairs = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=list)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataPrepError(f"{path} is not a JSON object of language -> path(s): {e}") from None
    # With object_pairs_hook an object loads as a list of (key, value) tuples, a JSON list as a
    # list of its items.
    if not isinstance(pairs, list) or not pairs or not all(isinstance(p, tuple) for p in pairs):
        raise DataPrepError(f"{path} must be a non-empty JSON object of language -> path(s), "
                            'e.g. {"yor_Latn": "yo.txt.xz"}')
    codes = [_language_code(code, str(path)) for code, _ in pairs]
    twice = sorted({code for code in codes if codes.count(code) > 1})
    if twice:
        raise DataPrepError(f"language {', '.join(twice)} twice in {path}")
    found = {code: FileSource(code, _json_files(path, code, value)) for code, value in pairs}
    return _one_code_each(found, path)


def _json_files(path: Path, code: str, value: object) -> tuple[Path, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataPrepError(f"{path}: {code} must map to a path or a non-empty list of paths")
    files = tuple(path.parent / n for n in names)  # relative paths are relative to the JSON file
    for f in files:
        if f.is_dir():
            raise DataPrepError(f"{path}: {f} of language {code} is a folder: a JSON source "
                                "lists text files (.txt, .txt.xz); a folder of <code>/ parquet "
                                "folders is a --source of its own")
        if not f.is_file():
            raise DataPrepError(f"{path}: file {f} of language {code} does not exist")
    return files


def parse_hf_spec(spec: str) -> tuple[str, str]:
    """(NAME, TEMPLATE) of ``hf:NAME[:TEMPLATE]``; TEMPLATE is empty when not given."""
    name, _, template = spec.removeprefix(HF_PREFIX).partition(":")
    if not name:
        raise DataPrepError(f"source {spec!r}: expected hf:NAME[:TEMPLATE]")
    return name, template


def fill_template(template: str, lang: str, spec: str) -> str:
    """A per-language config or file name: ``{lang}`` -> ``en_XX``, ``{iso}`` -> ``en``."""
    try:
        return template.format(lang=lang, iso=lang.split("_")[0])
    except (KeyError, IndexError, ValueError) as e:
        raise DataPrepError(
            f"source {spec!r}: bad template field {e}; use {{lang}} or {{iso}}"
        ) from None


def _hf_sources(spec: str, languages: list[str] | None) -> dict[str, LanguageSource]:
    name, template = parse_hf_spec(spec)
    if not languages:
        raise DataPrepError(f"source {spec!r} cannot list its languages: pass --languages")
    if name in HF_FILE_BUILDERS and not template:
        example = f"hf:{name}:/data/{{lang}}.txt"
        raise DataPrepError(f"source {spec!r}: the {name} builder needs data_files, e.g. {example}")
    template = template or "{lang}"
    return {lang: HFSource(lang, name, fill_template(template, lang, spec)) for lang in languages}


def _select(
    available: Mapping[str, LanguageSource], languages: list[str] | None, spec: str
) -> dict[str, LanguageSource]:
    if languages is None:
        return {code: available[code] for code in sorted(available)}
    missing = [code for code in languages if code not in available]
    other = {code: same_language(code, list(available)) for code in missing}
    if any(other.values()):
        code, named = next((code, named) for code, named in other.items() if named)
        raise DataPrepError(f"language {code} not in source {spec}: it names that language "
                            f"{named}; use {named}")
    if missing:
        raise DataPrepError(
            f"language(s) {', '.join(missing)} not in source {spec}; "
            f"it has: {', '.join(sorted(available))}"
        )
    return {code: available[code] for code in languages}
