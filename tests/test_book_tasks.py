"""make_book_tasks.py: real file layouts, determinism, chapter hold-out, and user errors."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from superbert.errors import UserError
from superbert.tasks.books import (BLANK, MARKER, MNLI_DEV_COLUMNS, MNLI_LABELS,
                                   MNLI_TRAIN_COLUMNS, BookTasksConfig, default_books_dir,
                                   make_book_tasks, read_book, read_books)

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(train_examples=60, dev_examples=30, max_chapters_per_book=8)


def _tsv(path: Path) -> list[list[str]]:
    # GLUE readers split on tabs with quoting off (sentences hold quote marks).
    with open(path, encoding="utf-8") as f:
        return list(csv.reader(f, delimiter="\t", quotechar=None))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bt") / "books"
    meta = make_book_tasks(BookTasksConfig(seed=3, **SMALL), out)
    return out, meta


def test_shipped_books_match_their_readme():
    books = read_books(default_books_dir())
    assert len(books) == 9
    assert sum(len(c) for c in books.values()) == 403
    assert len(books["persuasion"]) == 24
    readme = (default_books_dir() / "README.md").read_text()
    for book in books:
        assert f"{book}.txt.gz" in readme


def test_sst2_layout(tasks):
    out, _ = tasks
    for name, n in (("train.tsv", 60), ("dev.tsv", 30)):
        rows = _tsv(out / "SST-2" / name)
        assert rows[0] == ["sentence", "label"]
        assert all(len(r) == 2 for r in rows)
        assert Counter(r[1] for r in rows[1:]) == {"0": n // 2, "1": n // 2}


def test_mnli_layout_and_mismatched_genre(tasks):
    out, meta = tasks
    train = _tsv(out / "MNLI" / "train.tsv")
    assert tuple(train[0]) == MNLI_TRAIN_COLUMNS and len(train) == 61
    assert all(len(r) == 12 for r in train)
    assert Counter(r[-1] for r in train[1:]) == {label: 20 for label in MNLI_LABELS}
    mm_book = meta["mismatched_book"]
    for name in ("dev_matched.tsv", "dev_mismatched.tsv"):
        rows = _tsv(out / "MNLI" / name)
        assert tuple(rows[0]) == MNLI_DEV_COLUMNS and len(rows) == 31
        assert all(len(r) == 16 and r[-1] in MNLI_LABELS for r in rows[1:])
    genres = {r[3] for r in train[1:]} | {r[3] for r in _tsv(out / "MNLI" / "dev_matched.tsv")[1:]}
    assert mm_book not in genres
    assert {r[3] for r in _tsv(out / "MNLI" / "dev_mismatched.tsv")[1:]} == {mm_book}
    # premises are held-out sentences; B is a clause of A (entailment), that clause with one
    # "not" added or removed (contradiction), or a clause of another sentence (neutral)
    corpus = set((out / "corpus" / "heldout.txt").read_text().split("\n"))
    words = lambda text: text.replace(" not ", " ").split()  # noqa: E731
    for r in _tsv(out / "MNLI" / "dev_matched.tsv")[1:]:
        a, b, label = r[8], r[9], r[-1]
        assert a in corpus
        if label == "entailment":
            assert b in a
        elif label == "contradiction":
            assert b not in a and " ".join(words(f" {b} ")) in " ".join(words(f" {a} "))
        else:
            assert b not in a
    # "not" in B alone says nothing: in every label about half the hypotheses hold one
    rows = train[1:]
    for label in MNLI_LABELS:
        with_not = sum(" not " in f" {r[9]} " for r in rows if r[-1] == label)
        assert 5 <= with_not <= 15, (label, with_not)


def test_squad_layout_and_spans(tasks):
    out, _ = tasks
    for name, n in (("train-v1.1.json", 60), ("dev-v1.1.json", 30)):
        data = json.loads((out / "SQuAD" / name).read_text())
        assert data["version"] == "1.1"
        qas = [(p["context"], qa) for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
        assert len(qas) == n and len({qa["id"] for _, qa in qas}) == n
        for context, qa in qas:
            (ans,) = qa["answers"]
            start = ans["answer_start"]
            assert context[start:start + len(ans["text"])] == ans["text"]
            assert BLANK in qa["question"]
            # the blanked sentence sits in the context with the answer in the blank
            assert qa["question"].replace(BLANK, ans["text"]) in context


def test_dev_never_leaks_into_train(tasks):
    out, meta = tasks
    for b in meta["books"].values():
        assert b["dev_chapters"] and not set(b["dev_chapters"]) & set(b["train_chapters"])
    heldout = set((out / "corpus" / "heldout.txt").read_text().splitlines()) - {""}
    train = set((out / "corpus" / "train.txt").read_text().splitlines()) - {""}
    dev_sents = {r[0] for r in _tsv(out / "SST-2" / "dev.tsv")[1:]}
    mnli_dev = _tsv(out / "MNLI" / "dev_matched.tsv")[1:]
    dev_sents |= {r[8] for r in mnli_dev}
    assert dev_sents <= heldout
    # hypotheses are clauses of held-out sentences ("not" added or removed)
    flat = lambda text: f" {text} ".replace(" not ", " ")  # noqa: E731
    heldout_text = flat(" ".join(heldout))
    assert all(flat(r[9]).strip() in heldout_text for r in mnli_dev)
    train_sents = {r[0] for r in _tsv(out / "SST-2" / "train.tsv")[1:]}
    assert train_sents <= train
    # corpus files are whole chapters, blank-line separated
    n_dev = sum(len(b["dev_chapters"]) for b in meta["books"].values())
    assert (out / "corpus" / "heldout.txt").read_text().count("\n\n") == n_dev


def test_deterministic_per_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_book_tasks(BookTasksConfig(seed=1, **SMALL), a)
    make_book_tasks(BookTasksConfig(seed=1, **SMALL), b)
    make_book_tasks(BookTasksConfig(seed=2, **SMALL), c)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 10
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "MNLI" / "train.tsv").read_bytes() != (c / "MNLI" / "train.tsv").read_bytes()
    # a rerun over its own output replaces it
    make_book_tasks(BookTasksConfig(seed=2, **SMALL), a)
    assert (a / "MNLI" / "train.tsv").read_bytes() == (c / "MNLI" / "train.tsv").read_bytes()


def test_read_book_plain_and_bad_utf8(tmp_path):
    p = tmp_path / "tiny.txt"
    p.write_bytes(b"One sentence here.\nTwo\tsentences.\n\nChapter two.\n")
    chapters = read_book(p)
    assert [c.sentences for c in chapters] == [("One sentence here.", "Two sentences."),
                                               ("Chapter two.",)]
    p.write_bytes(b"ok\n\xff bad\n")
    with pytest.raises(UserError, match="tiny.txt:2"):
        read_book(p)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "make_book_tasks.py", *args], cwd=ROOT,
                          capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["--sst2_books", "emma", "nosuchbook"], "no book named 'nosuchbook'"),
    (["--sst2_books", "emma", "emma"], "two different books"),
    (["--train_examples", "100000"], "requested"),
    (["--dev_fraction", "1.5"], "--dev_fraction"),
])
def test_cli_user_errors(tmp_path, args, message):
    out = tmp_path / "out"
    r = _run("--output_dir", str(out), "--max_chapters_per_book", "6", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and message in r.stderr
    assert not out.exists()


def test_cli_refuses_a_foreign_directory_and_keeps_it(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = _run("--output_dir", str(out))
    assert r.returncode == 2 and "holds notes.txt" in r.stderr
    assert (out / "notes.txt").read_text() == "keep me" and not (out / MARKER).exists()


def test_rerun_over_own_output_keeps_a_users_file_unless_overwrite(tmp_path):
    """A finished output with a user's file added: refused (the whole folder is swapped in
    on a re-run, which would delete it), and replaced only with --overwrite_output_dir."""
    out = tmp_path / "o"
    small = ("--train_examples", "8", "--dev_examples", "4", "--max_chapters_per_book", "4")
    assert _run("--output_dir", str(out), *small).returncode == 0
    (out / "notes.txt").write_text("keep me")
    r = _run("--output_dir", str(out), *small)
    assert r.returncode == 2 and "holds notes.txt" in r.stderr and "--overwrite_output_dir" in r.stderr
    assert (out / "notes.txt").read_text() == "keep me"
    r = _run("--output_dir", str(out), *small, "--overwrite_output_dir")
    assert r.returncode == 0, r.stderr
    assert not (out / "notes.txt").exists() and (out / MARKER).is_file()


def test_cli_writes_everything(tmp_path):
    r = _run("--output_dir", str(tmp_path / "o"), "--train_examples", "30", "--dev_examples", "12",
             "--max_chapters_per_book", "6", "--seed", "5")
    assert r.returncode == 0, r.stderr
    assert "held out" in r.stdout
    meta = json.loads((tmp_path / "o" / MARKER).read_text())
    assert meta["seed"] == 5 and meta["tasks"] == {"sst-2": "SST-2", "mnli": "MNLI", "squad1": "SQuAD"}
