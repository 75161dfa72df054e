"""Software manuals as document pages (R manuals, ReportLab user guide, Debian Reference), via pypdfium2.

Split rule (README, data section; ``tests/test_datasets_splits.py`` recomputes it): test manuals =
R-FAQ, R-data, R-admin; dev = the Debian Reference (the ``docs-dev`` set for recipe choices, so it is held
out of training); train = every other PDF listed in ``MANUALS``. Pages are streamed one at a time (a
manual can have 2,415 pages).

Query-sentence rule (``query_sentences``), applied to a page's text layer:
1. soft hyphens at line ends are joined (``read-\\ning`` -> ``reading``), whitespace collapsed;
2. the text is split into sentences after ``.``, ``?`` or ``!`` followed by space and a capital, a digit
   (numbered headings, footnote marks) or an opening quote/parenthesis;
3. a sentence qualifies if it has 6-30 words, starts with a capital letter, ends with ``.``/``?``/``!``,
   at least 80% of its words are purely alphabetic, and it holds no code or boilerplate marker
   (``{ } < > $ \\ = _ # @ | ~ ^ [ ]``, a bullet, ``()``, ``::``, ``http``, ``www.``, ``...``, a leading
   "Chapter/Section/Appendix/Figure/Table");
4. sentences that occur on more than one page of the set (case-insensitive) are dropped, since their
   source page would be ambiguous;
5. of the rest, the ``per_page`` with the smallest ``sha1("<manual>:<page>:<sentence>")`` are kept.
The relevant page of a query is the page it came from (the sentence stays in the page's text: that is
the task, "find the page that says this").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image

from metaembed.datasets._assets import require, stable_hash

R_MANUALS = Path("/usr/share/R/doc/manual")
#: file name -> (path, apt package); the order fixes the listing order of the train manuals.
MANUALS: dict[str, tuple[Path, str]] = {
    **{f"{name}.pdf": (R_MANUALS / f"{name}.pdf", "r-doc-pdf")
       for name in ("R-intro", "R-exts", "R-admin", "R-ints", "R-lang", "R-FAQ", "R-data", "refman")},
    "reportlab-userguide.pdf": (Path("/usr/share/doc/python-reportlab-doc/reportlab-userguide.pdf"),
                                "python-reportlab-doc"),
    "debian-reference.en.pdf": (Path("/usr/share/debian-reference/debian-reference.en.pdf"), "debian-reference-en"),
}
TEST_MANUALS = ("R-FAQ.pdf", "R-data.pdf", "R-admin.pdf")
DEV_MANUALS = ("debian-reference.en.pdf",)
SPLITS = ("train", "dev", "test")
DEFAULT_DPI = 100
MIN_WORDS, MAX_WORDS, MIN_ALPHA_FRACTION = 6, 30, 0.8

_SOFT_HYPHEN_BREAK = re.compile(r"[\ufffe\u00ad\x02]\s*\r?\n")
_SOFT_HYPHEN = re.compile(r"[\ufffe\u00ad\x02]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\u201c\"'(])")
_CODE_MARKERS = re.compile(r"[{}<>$\\=_#@|~^\[\]\u2022]|\(\)|::|https?:|www\.|\.\.\.")
_BOILERPLATE_START = re.compile(r"^(Chapter|Section|Appendix|Figure|Table)\b")
_ALPHA_WORD = re.compile(r"^[A-Za-z\u00c0-\u024f'\u2019-]+$")


@dataclass(frozen=True)
class Page:
    """One page: ``number`` is 1-based; ``image`` is None when rendering was not asked for."""

    manual: str
    number: int
    text: str
    image: Image.Image | None

    @property
    def key(self) -> str:
        return f"pdf:{self.manual}:{self.number}"


def manual_names(split: str) -> list[str]:
    """File names of the ``train``, ``dev`` or ``test`` manuals, in listing order."""
    if split not in SPLITS:
        raise ValueError(f"unknown manuals split {split!r}; expected one of {SPLITS}")
    held_out = {"dev": DEV_MANUALS, "test": TEST_MANUALS}
    if split in held_out:
        return [name for name in MANUALS if name in held_out[split]]
    return [name for name in MANUALS if name not in TEST_MANUALS + DEV_MANUALS]


def manual_path(name: str) -> Path:
    """Path of a listed manual, or a clear error naming the apt package that provides it."""
    if name not in MANUALS:
        raise ValueError(f"unknown manual {name!r}; known: {', '.join(MANUALS)}")
    path, package = MANUALS[name]
    return require(path, package)


def clean_text(raw: str) -> str:
    """Text layer with soft-hyphenated line breaks joined and ``\\r\\n`` normalised to ``\\n``."""
    text = _SOFT_HYPHEN.sub("", _SOFT_HYPHEN_BREAK.sub("", raw))
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip()


def page_count(name: str) -> int:
    """Number of pages of a listed manual."""
    document = pdfium.PdfDocument(manual_path(name))
    try:
        return len(document)
    finally:
        document.close()


def iter_pages(name: str, dpi: int | None = DEFAULT_DPI, numbers: Iterable[int] | None = None,
               max_side: int | None = None) -> Iterator[Page]:
    """Stream pages of a manual: its text layer and, unless ``dpi`` is None, an RGB render at ``dpi``.

    ``numbers`` (1-based) picks pages; default every page in order. ``max_side`` downscales each render
    right away (longer side <= ``max_side``), so only one full-size render is ever held.
    """
    document = pdfium.PdfDocument(manual_path(name))
    try:
        count = len(document)
        for number in range(1, count + 1) if numbers is None else numbers:
            if not 1 <= number <= count:
                raise ValueError(f"{name} has {count} pages; page {number} does not exist")
            page = document[number - 1]
            try:
                textpage = page.get_textpage()
                text = clean_text(textpage.get_text_range())
                textpage.close()
                image = page.render(scale=dpi / 72).to_pil().convert("RGB") if dpi else None
                if image is not None and max_side is not None and max(image.size) > max_side:
                    image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            finally:
                page.close()
            yield Page(name, number, text, image)
    finally:
        document.close()


def _qualifies(sentence: str) -> bool:
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or not sentence[0].isupper() or sentence[-1] not in ".?!":
        return False
    if _CODE_MARKERS.search(sentence) or _BOILERPLATE_START.match(sentence):
        return False
    alpha = sum(1 for word in words if _ALPHA_WORD.match(word.strip(".,;:!?\"'()\u201c\u201d")))
    return alpha >= MIN_ALPHA_FRACTION * len(words)


def candidate_sentences(text: str) -> list[str]:
    """Sentences of a page's (cleaned) text that pass rule 3 of the module docstring, in page order."""
    flat = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(flat) if s and _qualifies(s)]


def query_sentences(pages: Iterable[tuple[str, int, str]], per_page: int = 3) -> dict[tuple[str, int], list[str]]:
    """``{(manual, page): [sentences]}`` by the module's rule, for ``(manual, page number, text)`` triples.

    Needs every page of the set at once (rule 4 looks across pages); texts are small, so that is cheap.
    """
    candidates = {(manual, number): candidate_sentences(text) for manual, number, text in pages}
    seen = Counter(s.lower() for sentences in candidates.values() for s in set(sentences))
    chosen = {}
    for (manual, number), sentences in candidates.items():
        unique = [s for s in dict.fromkeys(sentences) if seen[s.lower()] == 1]
        unique.sort(key=lambda s: stable_hash(f"{manual}:{number}:{s}"))
        chosen[(manual, number)] = unique[:per_page]
    return chosen
