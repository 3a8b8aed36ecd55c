"""Small labelled tasks derived from the built-in books, written in the real GLUE / SQuAD formats.

The quickstart needs downstream tasks that ship with the project, so the evaluator runs on the
same readers it uses for the real GLUE and SQuAD files. Three tasks, each read by the
evaluator under a real task name:

- ``SST-2/`` (task ``sst-2``): which of two books a sentence comes from. ``train.tsv`` /
  ``dev.tsv`` with the header ``sentence<TAB>label``, labels ``0`` / ``1``.
- ``MNLI/`` (task ``mnli``): does sentence B follow sentence A? The real MNLI columns
  (12 in ``train.tsv``, 16 in ``dev_matched.tsv`` / ``dev_mismatched.tsv``); the label is in
  the last column, ``gold_label``. Mapping (3-way, MNLI's own labels):
  ``entailment`` = B is the very next sentence after A; ``neutral`` = B is from the same chapter,
  at least ``NEUTRAL_MIN_GAP`` sentences away; ``contradiction`` = B is from another book.
  The parse columns hold a flat bracketing of the whitespace tokens (no real parser; every
  reader uses only sentence1 / sentence2 / gold_label). ``genre`` is the book of sentence A;
  ``dev_mismatched.tsv`` is drawn from a book kept out of ``train.tsv`` and ``dev_matched.tsv``,
  as MNLI's mismatched genres are.
- ``SQuAD/`` (task ``squad1``): cloze spans. The context is a run of consecutive sentences of a
  chapter; the question is one of those sentences with a name (or, failing that, a long word)
  replaced by ``_____``; the answer is the blanked word at its place in the context.
  ``train-v1.1.json`` / ``dev-v1.1.json`` in SQuAD v1.1's JSON layout.

Dev data never leaks into training: whole chapters are held out per book (seeded), every dev
example is built only from held-out chapters, and ``corpus/train.txt`` (for pre-training) holds
only the training chapters; ``corpus/heldout.txt`` holds the held-out ones, so an MLM loss on it
measures generalisation. Everything is deterministic for a given ``seed``.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..cli import flag
from ..errors import UserError
from ..io import atomic_path

log = logging.getLogger(__name__)

BOOK_TITLES = {
    "emma": "Jane Austen, Emma",
    "mansfieldpark": "Jane Austen, Mansfield Park",
    "northangerabbey": "Jane Austen, Northanger Abbey",
    "persuasion": "Jane Austen, Persuasion",
    "prideprejudice": "Jane Austen, Pride and Prejudice",
    "sensesensibility": "Jane Austen, Sense and Sensibility",
    "warofworlds": "H. G. Wells, The War of the Worlds",
    "twentythousandleagues": "Jules Verne, Twenty Thousand Leagues under the Sea",
    "greatexpectations": "Charles Dickens, Great Expectations",
}
MNLI_TRAIN_COLUMNS = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                      "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
                      "sentence1", "sentence2", "label1", "gold_label")
MNLI_DEV_COLUMNS = MNLI_TRAIN_COLUMNS[:11] + ("label2", "label3", "label4", "label5", "gold_label")
MNLI_LABELS = ("entailment", "neutral", "contradiction")
NEUTRAL_MIN_GAP = 3
BLANK = "_____"
MARKER = "book_tasks.json"  # written last: marks a complete output directory
# Sentence lengths (whitespace words) usable in the sentence tasks: very short lines are
# mostly chapter debris, very long ones would be truncated at 128 WordPieces.
MIN_WORDS, MAX_WORDS = 4, 50
_NAME = re.compile(r"[A-Z][a-z]{2,}")
_LONG_WORD = re.compile(r"[a-z]{7,}")
_NOT_NAME = {"The", "And", "But", "Yes", "Sir", "Mrs", "Miss", "Lady", "Madam", "Captain",
             "Chapter", "What", "Why", "How", "Oh", "Well", "Then", "She", "His", "Her", "They"}


def default_books_dir() -> Path:
    """The books shipped with the project (``data/books`` beside the package)."""
    return Path(__file__).resolve().parents[2] / "data" / "books"


@dataclass(frozen=True)
class Chapter:
    book: str
    number: int  # 1-based, in file order
    sentences: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.book}:{self.number}"


def _clean(line: str) -> str:
    # TSV cells must not hold tabs; runs of spaces carry nothing.
    return " ".join(line.replace("\t", " ").split())


def read_book(path: str | Path) -> list[Chapter]:
    """Chapters of one book in corpus format (one sentence a line, blank line between chapters).

    ``.gz`` files are decompressed; invalid UTF-8 is a UserError naming the line.
    """
    path = Path(path)
    book = path.name.split(".")[0]
    opener = gzip.open if path.suffix == ".gz" else open
    chapters: list[Chapter] = []
    current: list[str] = []
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = _clean(raw.decode("utf-8"))
                except UnicodeDecodeError as err:
                    raise UserError(f"{path}:{lineno}: not UTF-8 ({err.reason})") from None
                if line:
                    current.append(line)
                elif current:
                    chapters.append(Chapter(book, len(chapters) + 1, tuple(current)))
                    current = []
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if current:
        chapters.append(Chapter(book, len(chapters) + 1, tuple(current)))
    return chapters


def book_files(books_dir: str | Path) -> dict[str, Path]:
    """``{book: path}`` for every ``*.txt.gz`` / ``*.txt`` in ``books_dir``, sorted by name."""
    books_dir = Path(books_dir)
    if not books_dir.is_dir():
        raise UserError(f"books directory {books_dir} does not exist")
    files = sorted(p for p in books_dir.iterdir() if p.name.endswith((".txt.gz", ".txt")))
    found: dict[str, Path] = {}
    for p in files:
        found.setdefault(p.name.split(".")[0], p)
    if not found:
        raise UserError(f"no *.txt.gz or *.txt books in {books_dir}")
    return found


def read_books(books_dir: str | Path, max_chapters_per_book: int | None = None) -> dict[str, list[Chapter]]:
    books = {}
    for book, path in book_files(books_dir).items():
        chapters = read_book(path)
        if max_chapters_per_book:
            chapters = chapters[:max_chapters_per_book]
        if len(chapters) < 2:
            raise UserError(f"{path}: needs at least 2 chapters (one to train on, one held out), "
                            f"found {len(chapters)}")
        books[book] = chapters
    return books


@dataclass(frozen=True)
class ChapterSplit:
    train: dict[str, list[Chapter]]
    dev: dict[str, list[Chapter]]


def split_chapters(books: dict[str, list[Chapter]], dev_fraction: float, seed: int) -> ChapterSplit:
    """Hold out whole chapters: ``ceil(dev_fraction * n)`` per book (at least 1, at most n-1)."""
    if not 0 < dev_fraction < 1:
        raise UserError(f"--dev_fraction must be in (0, 1), got {dev_fraction}")
    train, dev = {}, {}
    for book, chapters in books.items():
        n_dev = min(len(chapters) - 1, max(1, math.ceil(dev_fraction * len(chapters))))
        held = set(random.Random(f"{seed}-split-{book}").sample(range(len(chapters)), n_dev))
        train[book] = [c for i, c in enumerate(chapters) if i not in held]
        dev[book] = [c for i, c in enumerate(chapters) if i in held]
    return ChapterSplit(train, dev)


def _usable(sentence: str) -> bool:
    return MIN_WORDS <= len(sentence.split()) <= MAX_WORDS


def _need(pool: Sequence, n: int, what: str) -> None:
    if n > len(pool):
        raise UserError(f"only {len(pool)} {what} available, {n} requested; lower the example "
                        f"counts or raise --max_chapters_per_book / --dev_fraction")


# --- task 1: which book (SST-2 layout) ---------------------------------------------------------

def book_id_examples(chapters: dict[str, list[Chapter]], books: Sequence[str], n: int,
                     rng: random.Random) -> list[tuple[str, int]]:
    """``n`` (sentence, label) pairs, label = index of the sentence's book in ``books``, balanced."""
    examples: list[tuple[str, int]] = []
    for label, book in enumerate(books):
        pool = sorted({s for c in chapters[book] for s in c.sentences if _usable(s)})
        k = n // len(books) + (1 if label < n % len(books) else 0)
        _need(pool, k, f"usable sentences of {book}")
        examples += [(s, label) for s in rng.sample(pool, k)]
    rng.shuffle(examples)
    return examples


def write_sst2(path: Path, examples: Iterable[tuple[str, int]]) -> None:
    lines = ["sentence\tlabel"] + [f"{s}\t{label}" for s, label in examples]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- task 2: does B follow A (MNLI layout) -----------------------------------------------------

@dataclass(frozen=True)
class PairExample:
    genre: str
    sentence1: str
    sentence2: str
    label: str


def next_sentence_examples(chapters: dict[str, list[Chapter]], others: dict[str, list[Chapter]],
                           n: int, rng: random.Random) -> list[PairExample]:
    """``n`` balanced pairs from ``chapters``; contradictions draw B from ``others``' other books."""
    anchors = [(c, i) for book in sorted(chapters) for c in chapters[book]
               for i in range(len(c.sentences) - 1)
               if _usable(c.sentences[i]) and _usable(c.sentences[i + 1])]
    counts = [n // 3 + (1 if k < n % 3 else 0) for k in range(3)]
    _need(anchors, sum(counts), "consecutive sentence pairs")
    picked = rng.sample(anchors, sum(counts))
    foreign = {book: sorted({s for b, cs in others.items() if b != book
                             for c in cs for s in c.sentences if _usable(s)})
               for book in chapters}
    examples = []
    for k, (c, i) in enumerate(picked):
        a = c.sentences[i]
        if k < counts[0]:
            examples.append(PairExample(c.book, a, c.sentences[i + 1], "entailment"))
            continue
        if k < counts[0] + counts[1]:
            far = [j for j in range(len(c.sentences))
                   if abs(j - i) >= NEUTRAL_MIN_GAP and _usable(c.sentences[j])]
            if far:
                examples.append(PairExample(c.book, a, c.sentences[rng.choice(far)], "neutral"))
                continue
            # A chapter too short for a distant sentence: fall back to another chapter of the
            # same book, which is just as "same story, not next".
            same = [s for o in chapters[c.book] if o is not c for s in o.sentences if _usable(s)]
            if not same:
                raise UserError(f"{c.book}: too few chapters for a 'neutral' pair")
            examples.append(PairExample(c.book, a, rng.choice(same), "neutral"))
            continue
        if not foreign[c.book]:
            raise UserError("a 'contradiction' pair needs sentences from a second book")
        examples.append(PairExample(c.book, a, rng.choice(foreign[c.book]), "contradiction"))
    rng.shuffle(examples)
    return examples


def _flat_parses(sentence: str) -> tuple[str, str]:
    words = sentence.replace("(", "-LRB-").replace(")", "-RRB-").split()
    return "( " + " ".join(words) + " )", "(ROOT " + " ".join(f"(X {w})" for w in words) + ")"


def write_mnli(path: Path, examples: Sequence[PairExample], dev: bool, first_id: int = 0) -> None:
    columns = MNLI_DEV_COLUMNS if dev else MNLI_TRAIN_COLUMNS
    lines = ["\t".join(columns)]
    for k, ex in enumerate(examples):
        prompt = first_id + k
        b1, p1 = _flat_parses(ex.sentence1)
        b2, p2 = _flat_parses(ex.sentence2)
        labels = [ex.label] * (5 if dev else 1)
        row = [str(k), str(prompt), f"{prompt}{ex.label[0]}", ex.genre, b1, b2, p1, p2,
               ex.sentence1, ex.sentence2, *labels, ex.label]
        assert len(row) == len(columns)
        lines.append("\t".join(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- task 3: cloze spans (SQuAD v1.1 JSON) -----------------------------------------------------

def _blank_candidates(sentence: str) -> list[tuple[int, str]]:
    """(offset, word) of names inside the sentence, else of long lower-case words."""
    names = []
    for m in _NAME.finditer(sentence):
        before = sentence[:m.start()].rstrip()
        word_boundary = m.end() == len(sentence) or not sentence[m.end()].isalpha()
        # Skip sentence/quote starts: their capital says nothing about being a name.
        if before and before[-1] not in "\"'.!?:;-" and word_boundary \
                and (m.start() == 0 or not sentence[m.start() - 1].isalpha()) \
                and m.group() not in _NOT_NAME:
            names.append((m.start(), m.group()))
    if names:
        return names
    return [(m.start(), m.group()) for m in _LONG_WORD.finditer(sentence)
            if (m.start() == 0 or not sentence[m.start() - 1].isalpha())
            and (m.end() == len(sentence) or not sentence[m.end()].isalpha())]


def cloze_articles(chapters: dict[str, list[Chapter]], n: int, rng: random.Random,
                   context_sentences: int, split: str) -> list[dict]:
    """``n`` SQuAD v1.1 paragraphs (one question each), grouped into one article per chapter."""
    windows = [(c, i) for book in sorted(chapters) for c in chapters[book]
               for i in range(0, len(c.sentences) - context_sentences + 1, context_sentences)
               if all(len(s.split()) <= MAX_WORDS for s in c.sentences[i:i + context_sentences])]
    rng.shuffle(windows)
    articles: dict[str, dict] = {}
    made = 0
    for c, i in windows:
        if made == n:
            break
        sentences = c.sentences[i:i + context_sentences]
        choices = [(q, off, w) for q, s in enumerate(sentences) if _usable(s)
                   for off, w in _blank_candidates(s)]
        if not choices:
            continue
        q, off, word = rng.choice(choices)
        context = " ".join(sentences)
        start = sum(len(s) + 1 for s in sentences[:q]) + off
        assert context[start:start + len(word)] == word
        question = sentences[q][:off] + BLANK + sentences[q][off + len(word):]
        qid = f"{split}-{c.book}-{c.number}-{i}"
        article = articles.setdefault(c.name, {
            "title": f"{BOOK_TITLES.get(c.book, c.book)}, chapter {c.number}", "paragraphs": []})
        article["paragraphs"].append({"context": context, "qas": [{
            "id": qid, "question": question,
            "answers": [{"text": word, "answer_start": start}]}]})
        made += 1
    if made < n:
        raise UserError(f"only {made} cloze paragraphs available for {split}, {n} requested; "
                        "lower the example counts or raise --max_chapters_per_book / --dev_fraction")
    return list(articles.values())


def write_squad(path: Path, articles: list[dict]) -> None:
    path.write_text(json.dumps({"version": "1.1", "data": articles}, ensure_ascii=False),
                    encoding="utf-8")


# --- the whole set -----------------------------------------------------------------------------

def write_corpus(path: Path, chapters: dict[str, list[Chapter]]) -> None:
    """Corpus format for generate_data.py: one sentence a line, a blank line after each chapter."""
    with open(path, "w", encoding="utf-8") as f:
        for book in sorted(chapters):
            for c in chapters[book]:
                f.write("\n".join(c.sentences) + "\n\n")


@dataclass(frozen=True, kw_only=True)
class BookTasksConfig:
    """make_book_tasks.py's flags (all but --output_dir), declared once."""

    books_dir: Path = flag(default_books_dir(), type=Path, help="folder of books in corpus "
                           "format, *.txt.gz or *.txt (default: data/books)")
    seed: int = flag(42, type=int)
    dev_fraction: float = flag(0.2, type=float, help="fraction of each book's chapters held "
                               "out for dev (default %(default)s)")
    train_examples: int = flag(2000, type=int,
                               help="examples in each task's train file (default %(default)s)")
    dev_examples: int = flag(500, type=int, help="examples in each dev file (default %(default)s)")
    sst2_books: tuple[str, str] = flag(("prideprejudice", "warofworlds"), nargs=2,
                                       metavar=("BOOK0", "BOOK1"),
                                       help="the two books of the SST-2-style task (labels 0 "
                                            "and 1; default %(default)s)")
    mismatched_book: str = flag("twentythousandleagues", help="book used only for MNLI "
                                "dev_mismatched (default %(default)s)")
    context_sentences: int = flag(5, type=int, help="sentences per SQuAD context paragraph "
                                  "(default %(default)s)")
    max_chapters_per_book: int | None = flag(None, type=int, help="use only each book's first N "
                                             "chapters (small smoke-test sets)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "books_dir", Path(self.books_dir))
        object.__setattr__(self, "sst2_books", tuple(self.sst2_books))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_book_tasks(cfg: BookTasksConfig, output_dir: str | Path) -> dict:
    """Write corpus/, SST-2/, MNLI/, SQuAD/ and ``book_tasks.json`` (the split and sizes).

    The directory is built beside ``output_dir`` and swapped in whole, so a failure leaves an
    existing one untouched. An existing directory that is not a book-tasks output is an error.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or
                                (any(output_dir.iterdir()) and not (output_dir / MARKER).exists())):
        raise UserError(f"{output_dir} exists and is not a make_book_tasks.py output; "
                        "choose another --output_dir")
    for name in ("train_examples", "dev_examples", "context_sentences"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be positive")
    books = read_books(cfg.books_dir, cfg.max_chapters_per_book)
    for book in (*cfg.sst2_books, cfg.mismatched_book):
        if book not in books:
            raise UserError(f"no book named {book!r} in {cfg.books_dir} (have: {', '.join(books)})")
    if len(set(cfg.sst2_books)) != 2:
        raise UserError("--sst2_books needs two different books (SST-2 labels are 0 and 1)")
    matched = [b for b in books if b != cfg.mismatched_book]
    if len(matched) < 2:
        raise UserError("the MNLI-style task needs at least two books besides --mismatched_book")
    split = split_chapters(books, cfg.dev_fraction, cfg.seed)

    def only(part: dict[str, list[Chapter]], names: Iterable[str]) -> dict[str, list[Chapter]]:
        return {b: part[b] for b in names}

    n_tr, n_dev = cfg.train_examples, cfg.dev_examples
    rng = lambda task: random.Random(f"{cfg.seed}-{task}")  # noqa: E731 - one stream per file
    sst_train = book_id_examples(split.train, cfg.sst2_books, n_tr, rng("sst2-train"))
    sst_dev = book_id_examples(split.dev, cfg.sst2_books, n_dev, rng("sst2-dev"))
    # The mismatched book stays out of train and dev_matched entirely, as MNLI's unseen genres.
    mnli_train = next_sentence_examples(only(split.train, matched), only(split.train, matched),
                                        n_tr, rng("mnli-train"))
    mnli_dev = next_sentence_examples(only(split.dev, matched), only(split.dev, matched), n_dev,
                                      rng("mnli-dev"))
    mnli_mm = next_sentence_examples(only(split.dev, [cfg.mismatched_book]), split.dev, n_dev,
                                     rng("mnli-dev-mm"))
    squad_train = cloze_articles(split.train, n_tr, rng("squad-train"), cfg.context_sentences, "train")
    squad_dev = cloze_articles(split.dev, n_dev, rng("squad-dev"), cfg.context_sentences, "dev")

    files = book_files(cfg.books_dir)
    meta = {
        "seed": cfg.seed, "dev_fraction": cfg.dev_fraction,
        "max_chapters_per_book": cfg.max_chapters_per_book,
        "train_examples": n_tr, "dev_examples": n_dev,
        "sst2_books": list(cfg.sst2_books), "mismatched_book": cfg.mismatched_book,
        "context_sentences": cfg.context_sentences,
        "mnli_labels": {"entailment": "B is the next sentence after A",
                        "neutral": f"B is from A's chapter, >= {NEUTRAL_MIN_GAP} sentences away",
                        "contradiction": "B is from another book"},
        "books": {b: {"file": files[b].name, "md5": _md5(files[b]),
                      "train_chapters": [c.number for c in split.train[b]],
                      "dev_chapters": [c.number for c in split.dev[b]]} for b in books},
        "tasks": {"sst-2": "SST-2", "mnli": "MNLI", "squad1": "SQuAD"},
    }
    with atomic_path(output_dir) as tmp:
        for sub in ("corpus", "SST-2", "MNLI", "SQuAD"):
            (tmp / sub).mkdir(parents=True)
        write_corpus(tmp / "corpus" / "train.txt", split.train)
        write_corpus(tmp / "corpus" / "heldout.txt", split.dev)
        write_sst2(tmp / "SST-2" / "train.tsv", sst_train)
        write_sst2(tmp / "SST-2" / "dev.tsv", sst_dev)
        write_mnli(tmp / "MNLI" / "train.tsv", mnli_train, dev=False)
        write_mnli(tmp / "MNLI" / "dev_matched.tsv", mnli_dev, dev=True, first_id=n_tr)
        write_mnli(tmp / "MNLI" / "dev_mismatched.tsv", mnli_mm, dev=True, first_id=n_tr + n_dev)
        write_squad(tmp / "SQuAD" / "train-v1.1.json", squad_train)
        write_squad(tmp / "SQuAD" / "dev-v1.1.json", squad_dev)
        (tmp / MARKER).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    log.info("wrote %s", output_dir)
    return meta
