"""Small labelled tasks derived from the built-in books, written in the real GLUE / SQuAD formats.

The quickstart needs downstream tasks that ship with the project, so the evaluator runs on the
same readers it uses for the real GLUE and SQuAD files. Three tasks, each read by the
evaluator under a real task name:

- ``SST-2/`` (task ``sst-2``): which of two books a sentence comes from. ``train.tsv`` /
  ``dev.tsv`` with the header ``sentence<TAB>label``, labels ``0`` / ``1``.
- ``MNLI/`` (task ``mnli``): does sentence A entail clause B? The real MNLI columns
  (12 in ``train.tsv``, 16 in ``dev_matched.tsv`` / ``dev_mismatched.tsv``); the label is in
  the last column, ``gold_label``. B is built from a clause holding an auxiliary verb
  (3-way, MNLI's own labels): ``entailment`` = a clause of A as it stands; ``contradiction`` =
  that clause with its auxiliary negated or un-negated ("was" <-> "was not"); ``neutral`` = such
  a clause of another sentence of A's chapter, at least ``NEUTRAL_MIN_GAP`` sentences away.
  Half the premises of every label are negated, so the label is read only by comparing B
  with A. (An earlier version asked whether B is the sentence after A: the full pretrained
  MiniLM stayed at chance on it after 200 fine-tuning steps; on this one it reaches 65-67%
  dev accuracy in 60 steps.)
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
from ..outputs import Output

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
OUTPUT_ENTRIES = ("SST-2", "MNLI", "SQuAD", "corpus", MARKER)  # everything it writes there
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


# --- task 2: does A entail B (MNLI layout) ----------------------------------------------------

@dataclass(frozen=True)
class PairExample:
    genre: str
    sentence1: str
    sentence2: str
    label: str


# An auxiliary verb, optionally negated: the one place a clause is negated or un-negated.
_AUX = re.compile(r"\b(am|is|are|was|were|had|has|have|could|would|should|will|can|must|did|"
                  r"does|do|might|may|shall)( not)?\b")
# Other negations would make a toggled clause ambiguous ("was not never"): such clauses are skipped.
_OTHER_NEGATION = re.compile(r"n't\b|\b(never|cannot|nor|no|not)\b")
_CLAUSE_BREAK = re.compile(r"\s*(?:[,;:!?]|--|\.(?=\s))\s*")


@dataclass(frozen=True)
class Clause:
    """A clause of a sentence, its first auxiliary verb (possibly negated) toggled, and which."""
    text: str
    toggled: str
    negated: bool


def _clause(sentence: str) -> Clause | None:
    """The longest usable clause of ``sentence`` holding an auxiliary and no other negation."""
    best = None
    for part in _CLAUSE_BREAK.split(sentence):
        part = part.strip().strip('"\'').strip()
        words = part.split()
        if not MIN_WORDS <= len(words) <= MAX_WORDS:
            continue
        m = _AUX.search(part)  # the first auxiliary is the one toggled
        if m is None:
            continue
        rest = part[:m.start()] + part[m.end():]
        if _OTHER_NEGATION.search(rest):
            continue
        negated = m.group(2) is not None
        toggled = part[:m.end(1)] + ("" if negated else " not") + part[m.end():]
        if best is None or len(words) > len(best.text.split()):
            best = Clause(part, toggled, negated)
    return best


def entailment_examples(chapters: dict[str, list[Chapter]], n: int,
                        rng: random.Random) -> list[PairExample]:
    """``n`` balanced (premise, hypothesis) pairs from ``chapters``.

    The premise A is a sentence; the hypothesis B is built from one of its clauses that holds
    an auxiliary verb: ``entailment`` = the clause as it stands (A says it), ``contradiction`` =
    the clause with its auxiliary negated or un-negated ("was" <-> "was not"), ``neutral`` = such
    a clause of another sentence of the same chapter (or book), toggled or not at random. In
    every label half the premises are negated, so "not" in B says nothing by itself: the
    label is read only by comparing B with A.
    """
    by_kind: dict[bool, list[tuple[Chapter, int, Clause]]] = {False: [], True: []}
    for book in sorted(chapters):
        for c in chapters[book]:
            for i, s in enumerate(c.sentences):
                if _usable(s) and (cl := _clause(s)) is not None:
                    by_kind[cl.negated].append((c, i, cl))
    counts = [n // 3 + (1 if k < n % 3 else 0) for k in range(3)]
    for kind, pool in by_kind.items():  # each label draws its premises on its own
        _need(pool, (max(counts) + (0 if kind else 1)) // 2,
              f"{'negated' if kind else 'affirmative'} clauses")
    same_book: dict[str, list[tuple[Chapter, int, Clause]]] = {}
    for entry in by_kind[False] + by_kind[True]:
        same_book.setdefault(entry[0].book, []).append(entry)
    examples = []
    for label, count in zip(MNLI_LABELS, counts):
        premises = rng.sample(by_kind[True], count // 2) + rng.sample(by_kind[False], count - count // 2)
        for c, i, cl in premises:
            a = c.sentences[i]
            if label == "entailment":
                b = cl.text
            elif label == "contradiction":
                b = cl.toggled
            else:
                others = [e for e in same_book[c.book] if e[0] is c and abs(e[1] - i) >= NEUTRAL_MIN_GAP]
                if not others:  # a short chapter: any other sentence of the same book
                    others = [e for e in same_book[c.book] if e[0] is not c or e[1] != i]
                if not others:
                    raise UserError(f"{c.book}: too few clauses for a 'neutral' pair")
                other = rng.choice(others)[2]
                b = other.toggled if rng.random() < 0.5 else other.text
            examples.append(PairExample(c.book, a, b, label))
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
    """make_book_tasks.py's flags, declared once."""

    output_dir: Path = flag(Path("experiments/data/books"), type=Path,
                            help="folder to write (default %(default)s); it is replaced whole",
                            output=Output.dir(owns=OUTPUT_ENTRIES, marker=MARKER, beside=True,
                                              overwrite="overwrite_output_dir",
                                              inputs=("books_dir",)))
    overwrite_output_dir: bool = flag(False, help="replace --output_dir even when it holds "
                                                  "files make_book_tasks.py did not write "
                                                  "(they are deleted)")
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
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        object.__setattr__(self, "sst2_books", tuple(self.sst2_books))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_book_tasks(cfg: BookTasksConfig, output_dir: str | Path) -> dict:
    """Write corpus/, SST-2/, MNLI/, SQuAD/ and ``book_tasks.json`` (the split and sizes).

    The directory is built beside ``output_dir`` and swapped in whole, so a failure leaves an
    existing one untouched. An existing directory that is not a book-tasks output is an error.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or (
            any(output_dir.iterdir()) and not (output_dir / MARKER).exists()
            and not cfg.overwrite_output_dir)):
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
    mnli_train = entailment_examples(only(split.train, matched), n_tr, rng("mnli-train"))
    mnli_dev = entailment_examples(only(split.dev, matched), n_dev, rng("mnli-dev"))
    mnli_mm = entailment_examples(only(split.dev, [cfg.mismatched_book]), n_dev, rng("mnli-dev-mm"))
    squad_train = cloze_articles(split.train, n_tr, rng("squad-train"), cfg.context_sentences, "train")
    squad_dev = cloze_articles(split.dev, n_dev, rng("squad-dev"), cfg.context_sentences, "dev")

    files = book_files(cfg.books_dir)
    meta = {
        "seed": cfg.seed, "dev_fraction": cfg.dev_fraction,
        "max_chapters_per_book": cfg.max_chapters_per_book,
        "train_examples": n_tr, "dev_examples": n_dev,
        "sst2_books": list(cfg.sst2_books), "mismatched_book": cfg.mismatched_book,
        "context_sentences": cfg.context_sentences,
        "mnli_labels": {"entailment": "B is a clause of A",
                        "contradiction": "B is a clause of A with its auxiliary verb negated or "
                                         "un-negated",
                        "neutral": f"B is a clause of a sentence of A's chapter >= "
                                   f"{NEUTRAL_MIN_GAP} sentences away (or of A's book)"},
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
