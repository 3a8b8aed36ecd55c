"""generate_data.py and superbert/data/: packing, ids, formats, workers, masking, bad input."""
from __future__ import annotations

import gzip
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from superbert.data.config import DataConfig
from superbert.data.generate import _Packer, generate_pretraining_data
from superbert.data.masking import MaskingCollator
from superbert.data.shards import JSON_SHARD, PretrainingDataset, token_dtype, vocab_md5
from superbert.errors import UserError
from superbert.hf import bundled_vocab_path, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
VOCAB = bundled_vocab_path()
MAX = 16

WORDS = ("the cat sat on a mat while Emma Woodhouse considered unexceptionable matrimony and "
         "Mr. Knightley's opinion of Harriet; nevertheless, 1,234 submarines -- Nautilus! -- "
         "dived under forty-two thousand leagues of café water").split()


def make_corpus(seed: int = 0, docs: int = 6) -> tuple[str, list[list[str]]]:
    """A corpus text and its documents (lists of non-blank lines), with the awkward cases:
    a sentence longer than MAX WordPieces, whitespace-only and repeated blank lines, CRLF, a
    line that yields no WordPiece, a leading blank line."""
    rng = random.Random(seed)
    documents = []
    for d in range(docs):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))
                     for _ in range(rng.randint(1, 7))]
        if d == 1:
            sentences.insert(0, " ".join(WORDS))  # first sentence over-long (original: empty instance)
        if d == 3:
            sentences.append(" ".join(WORDS[:12] * 3))  # over-long in the middle
            sentences.append("\x00")                     # non-blank, no WordPiece
        documents.append(sentences)
    text = "\n"
    for d, sentences in enumerate(documents):
        end = "\r\n" if d == 2 else "\n"
        text += "".join(s + end for s in sentences)
        text += ["\n", "  \t\n", "\n\n"][d % 3]
    return text, documents


def reference_instances(documents: list[list[list[int]]], max_len: int) -> list[list[int]]:
    """The packing rule written sentence by sentence, as the spec states it."""
    out = []
    for doc in documents:
        buf: list[int] = []
        for sent in doc:
            if not sent:
                continue
            if len(buf) + len(sent) <= max_len:
                buf += sent
            elif len(sent) <= max_len:
                out.append(buf)
                buf = list(sent)
            else:
                if buf:
                    out.append(buf)
                chunks = [sent[i:i + max_len] for i in range(0, len(sent), max_len)]
                out.extend(chunks[:-1])
                buf = list(chunks[-1])
        if buf:
            out.append(buf)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB, do_lower_case=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    text, docs = make_corpus()
    (root / "corpus.txt").write_bytes(text.encode("utf-8"))
    with gzip.open(root / "corpus.txt.gz", "wb") as fh:
        fh.write(text.encode("utf-8"))
    model = root / "model"
    model.mkdir()
    shutil.copy(VOCAB, model / "vocab.txt")
    return root, docs


def generate(corpus_file, out, **kw):
    kw.setdefault("do_lower_case", True)
    kw.setdefault("max_seq_len", MAX)
    return generate_pretraining_data(DataConfig(train_corpus=corpus_file, output_dir=out,
                                                bert_model=str(VOCAB), progress=False, **kw))


def files_of(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def bin_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "bin"
    generate(corpus[0] / "corpus.txt", out)
    return out


# ---- packing ---------------------------------------------------------------------------------
def test_packer_rules_on_lengths():
    p = _Packer(10)
    # doc 1: 4+5 fit, 3 closes; doc break; 25 = 10+10+5, then 4 joins the remainder; 6 closes
    ends = p.feed(np.array([4, 5, 3, -1, 25, 4, 6, -1, -1, 0, -1]))
    assert ends == [9, 12, 22, 32, 41, 47]
    assert p.documents == 2 and p.finish() == [] and p.documents == 2


def test_packer_random_properties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        max_len = int(rng.integers(1, 20))
        lengths = rng.integers(-1, 3 * max_len, size=200)
        p = _Packer(max_len)
        ends = p.feed(lengths) + p.finish()
        starts = [0] + ends[:-1]
        sizes = np.array(ends) - np.array(starts)
        assert (sizes > 0).all() and (sizes <= max_len).all() and ends[-1] == lengths[lengths > 0].sum()
        pos, doc_edges = 0, set()
        for n in lengths:
            if n < 0:
                doc_edges.add(pos)
            pos += max(n, 0)
        for s, e in zip(starts, ends):  # never across a document boundary
            assert not any(s < b < e for b in doc_edges)


# ---- generated data --------------------------------------------------------------------------
def test_ids_and_packing_match_tokenizer(corpus, bin_dir, tokenizer):
    _, docs = corpus
    doc_ids = [[tokenizer(s, add_special_tokens=False)["input_ids"] for s in d] for d in docs]
    expected = reference_instances(doc_ids, MAX)
    assert any(len(s) > MAX for d in doc_ids for s in d)  # the case is exercised
    ds = PretrainingDataset(bin_dir, MAX, VOCAB)
    got = [ds[i][1].tolist() for i in range(len(ds))]
    assert got == expected
    assert all(0 < len(x) <= MAX for x in got)
    meta = json.loads((bin_dir / "metadata.json").read_text())
    assert meta["documents"] == len(docs) and meta["instances"] == len(expected)
    assert meta["tokens"] == sum(map(len, expected)) == ds.num_tokens
    assert meta["vocab_md5"] == vocab_md5(VOCAB) and meta["max_seq_len"] == MAX
    assert meta["do_lower_case"] is True and meta["dtype"] == "uint16"
    idx, ids = ds[3]
    assert idx == 3 and ids.dtype == np.int64


def test_json_format_is_the_originals_and_reads_back(corpus, bin_dir, tmp_path, tokenizer):
    out = tmp_path / "json"
    generate(corpus[0] / "corpus.txt", out, fmt="json")
    shards = sorted(out.glob("train_doc_tokens_ngrams_*.json"))
    assert len(shards) == 28
    ref = PretrainingDataset(bin_dir, MAX, VOCAB)
    for k in range(len(ref)):  # round-robin: instance k is line k // 28 of shard k % 28
        line = (out / JSON_SHARD.format(k % 28)).read_text().splitlines()[k // 28]
        assert json.loads(line) == {"tokens": tokenizer.convert_ids_to_tokens(ref[k][1].tolist())}
    ours = PretrainingDataset(out, MAX, VOCAB)
    (out / "metadata.json").unlink()  # as the original wrote it: shards only
    original = PretrainingDataset(out, MAX, VOCAB)
    want = sorted(ref[k][1].tolist() for k in range(len(ref)))
    for ds in (ours, original):
        assert len(ds) == len(ref)
        assert sorted(ds[k][1].tolist() for k in range(len(ds))) == want


def test_output_independent_of_workers_memory_mode_and_gzip(corpus, bin_dir, tmp_path):
    root, _ = corpus
    want = files_of(bin_dir)
    generate(root / "corpus.txt", tmp_path / "w2", num_workers=2, block_bytes=100)
    generate(root / "corpus.txt.gz", tmp_path / "gz", reduce_memory=True, block_bytes=64)
    meta = json.loads(want["metadata.json"])
    for name in ("w2", "gz"):
        got = files_of(tmp_path / name)
        assert [p for p in (tmp_path / name).iterdir() if p.name.startswith(".")] == []
        got_meta = json.loads(got.pop("metadata.json"))
        got_meta.pop("corpus")
        assert got_meta == {k: v for k, v in meta.items() if k != "corpus"}
        assert got == {k: v for k, v in want.items() if k != "metadata.json"}
    generate(root / "corpus.txt", tmp_path / "s3", num_shards=3, reduce_memory=True,
             num_workers=2, block_bytes=50)
    a = PretrainingDataset(tmp_path / "s3", MAX, VOCAB)
    generate(root / "corpus.txt", tmp_path / "s3b", num_shards=3)
    assert files_of(tmp_path / "s3") == files_of(tmp_path / "s3b")
    b = PretrainingDataset(bin_dir, MAX, VOCAB)
    assert len(a) == len(b) and sorted(a[i][1].tolist() for i in range(len(a))) == \
        sorted(b[i][1].tolist() for i in range(len(b)))


# ---- reading: bad data -----------------------------------------------------------------------
def test_dataset_rejects_bad_data(bin_dir, tmp_path):
    with pytest.raises(UserError, match="not found"):
        PretrainingDataset(tmp_path / "nope", MAX, VOCAB)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no pre-training shards"):
        PretrainingDataset(tmp_path / "empty", MAX, VOCAB)
    other_vocab = tmp_path / "vocab.txt"
    other_vocab.write_text(VOCAB.read_text().replace("[unused0]", "[unusedX]"))
    with pytest.raises(UserError, match="another vocab"):
        PretrainingDataset(bin_dir, MAX, other_vocab)
    with pytest.raises(UserError, match="max_seq_len 16"):
        PretrainingDataset(bin_dir, 8, VOCAB)
    assert len(PretrainingDataset(bin_dir, MAX, VOCAB, debug_limit=3)) == 3
    for name, cut in (("shard_0.tokens.bin", 3), ("shard_0.offsets.bin", 8)):
        bad = tmp_path / f"bad_{name}"
        shutil.copytree(bin_dir, bad)
        data = (bad / name).read_bytes()
        (bad / name).write_bytes(data[:-cut])
        with pytest.raises(UserError, match="truncated or corrupt"):
            PretrainingDataset(bad, MAX, VOCAB)
    orig = tmp_path / "orig"
    orig.mkdir()
    (orig / JSON_SHARD.format(0)).write_text('{"tokens": ["the", "cat"]}\n{"tokens": []}\n')
    with pytest.raises(UserError, match="instance 1 is empty"):
        PretrainingDataset(orig, MAX, VOCAB)
    (orig / JSON_SHARD.format(0)).write_text('{"tokens": ["the", "Cat"]}\n')
    with pytest.raises(UserError, match="'Cat' is not in"):
        PretrainingDataset(orig, MAX, VOCAB)
    (orig / JSON_SHARD.format(0)).write_text('{"tokens": ["the"' + ', "cat"' * 20 + ']}\n')
    with pytest.raises(UserError, match="instance 0 has 21 tokens"):
        PretrainingDataset(orig, MAX, VOCAB)
    (orig / JSON_SHARD.format(0)).write_text('{"tokens": ["the", "ca')
    with pytest.raises(UserError, match="corrupt or truncated"):
        PretrainingDataset(orig, MAX, VOCAB)


def test_token_ids_beyond_the_vocab_are_caught_when_the_shard_is_opened(bin_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bin_dir, bad)
    tokens = np.fromfile(bad / "shard_0.tokens.bin", dtype=np.uint16)
    tokens[len(tokens) // 2] = 30522  # one past the 30522-token vocab, mid-shard
    tokens.tofile(bad / "shard_0.tokens.bin")
    with pytest.raises(UserError, match=r"shard_0\.tokens\.bin holds token id 30522, beyond "
                                        r"the 30522-token vocab"):
        PretrainingDataset(bad, MAX, VOCAB)
    tokens[len(tokens) // 2] = 30521  # the last id is in the vocab
    tokens.tofile(bad / "shard_0.tokens.bin")
    assert len(PretrainingDataset(bad, MAX, VOCAB)) == len(PretrainingDataset(bin_dir, MAX, VOCAB))


def test_sample_batches_draws_unmasked_padded_sequences(bin_dir):
    from superbert.data.shards import sample_batches

    ds = PretrainingDataset(bin_dir, MAX, VOCAB)
    batches = sample_batches(ds, 5, 2, seed=3, pad_token_id=0)
    assert [len(b["input_ids"]) for b in batches] == [2, 2, 1]
    again = sample_batches(ds, 5, 2, seed=3, pad_token_id=0)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    seqs = {tuple(ids[mask.bool()].tolist()) for b in batches
            for ids, mask in zip(b["input_ids"], b["attention_mask"])}
    every = {tuple(ds[i][1].tolist()) for i in range(len(ds))}
    assert len(seqs) == 5 and seqs <= every  # distinct, real sequences, unmasked
    for b in batches:
        assert (b["input_ids"][b["attention_mask"] == 0] == 0).all()
    assert sum(len(b["input_ids"]) for b in sample_batches(ds, 10_000, 4, 0, 0)) == len(ds)


def test_dataset_pickles_without_the_data_and_token_dtype(bin_dir):
    import pickle

    ds = PretrainingDataset(bin_dir, MAX, VOCAB)
    blob = pickle.dumps(ds)  # what a spawned DataLoader worker receives: the maps re-open
    assert ds.__getstate__()["_token_parts"] is None and isinstance(ds._token_parts[0], np.memmap)
    clone = pickle.loads(blob)
    assert all((clone[i][1] == ds[i][1]).all() for i in range(len(ds)))
    assert token_dtype(30522) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


# ---- masking ---------------------------------------------------------------------------------
SPECIAL = [0, 100, 101, 102, 103]


def collator(**kw):
    kw.setdefault("max_seq_length", 128)
    return MaskingCollator(30522, mask_token_id=103, pad_token_id=0, special_token_ids=SPECIAL, **kw)


def random_batch(n, seed=0, low=1, high=128):
    rng = np.random.default_rng(seed)
    return [(i, rng.integers(1000, 30000, size=int(rng.integers(low, high + 1)))) for i in range(n)]


def test_masking_80_10_10_counts_and_padding():
    batch = random_batch(400, low=64)
    out = collator()(batch)
    ids, labels, att = out["input_ids"], out["labels"], out["attention_mask"]
    assert ids.shape == (400, max(len(x) for _, x in batch)) and ids.dtype == torch.long
    for row, (_, x) in enumerate(batch):
        n = len(x)
        assert att[row, :n].all() and not att[row, n:].any() and (ids[row, n:] == 0).all()
        assert int((labels[row] != -100).sum()) == min(77, round(n * 0.15))
        assert (labels[row, :n][labels[row, :n] != -100] == torch.from_numpy(x)[labels[row, :n] != -100]).all()
    sel = labels != -100
    masked = (ids[sel] == 103).float().mean()
    kept = (ids[sel] == labels[sel]).float().mean()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02 and abs(1 - masked - kept - 0.1) < 0.02
    rand = ids[sel][(ids[sel] != 103) & (ids[sel] != labels[sel])]
    assert not np.isin(rand.numpy(), SPECIAL).any()
    same_length = collator()([(i, np.arange(1000, 1100)) for i in range(4000)])["labels"]
    per_position = (same_length != -100).float().mean(0)  # positions uniform over the sequence
    assert per_position.min() > 0.12 and per_position.max() < 0.18
    # the cap, and masked_lm_prob 0 (KD) masking nothing
    capped = collator(masked_lm_prob=1.0, max_predictions_per_seq=20)(batch)["labels"]
    assert ((capped != -100).sum(1) == 20).all()
    assert (collator(masked_lm_prob=0.0)(batch)["labels"] == -100).all()


def test_masking_is_a_function_of_seed_epoch_index():
    batch = random_batch(16)
    c = collator()
    first = c(batch)
    again = collator()(batch)
    assert all(torch.equal(first[k], again[k]) for k in first)
    c.set_epoch(1)
    assert not torch.equal(c(batch)["labels"], first["labels"])
    assert not torch.equal(collator(seed=7)(batch)["labels"], first["labels"])
    # the same examples split over two "ranks" (or in another order) mask identically
    halves = [collator()(batch[:8]), collator()(batch[8:][::-1])]
    for row, (_, x) in enumerate(batch):
        part, r = (halves[0], row) if row < 8 else (halves[1], 15 - row)
        n = len(x)
        for k in ("input_ids", "labels"):
            assert torch.equal(part[k][r, :n], first[k][row, :n])


def test_original_masking_quirks():
    c = collator(masked_lm_prob=0.0, original_masking=True)
    batch = random_batch(300, seed=1, low=3, high=40)
    labels = c(batch)["labels"]
    assert ((labels != -100).sum(1) == 1).all()  # at least one, even at prob 0
    assert (labels[:, 0] == -100).all()
    for row, (_, x) in enumerate(batch):
        assert labels[row, len(x) - 1] == -100  # never the last token
    short = c([(0, np.array([5, 6])), (1, np.array([5]))])  # the original crashes here
    assert (short["labels"] == -100).all()
    tiny = MaskingCollator(8, 3, 0, [0, 1, 2, 3], 64, masked_lm_prob=1.0, original_masking=True)
    out = tiny([(i, np.full(60, 5)) for i in range(50)])
    assert np.isin([0, 1, 2], out["input_ids"].numpy()).all()  # random ids from the whole vocab
    fixed = MaskingCollator(8, 3, 0, [0, 1, 2, 3], 64, masked_lm_prob=1.0)(
        [(i, np.full(60, 5)) for i in range(50)])["input_ids"]
    assert not np.isin([0, 1, 2], fixed.numpy()).any()


# ---- the script: bad input -------------------------------------------------------------------
CASES = {
    "empty": ("empty corpus", b"\n \n\n", [], "is empty"),
    # One document is a corpus (no next-sentence task needs a second one).
    "one_document": ("one document", b"One sentence.\nAnother one.\n\n", [], None),
    "bad_utf8": ("non-UTF-8", b"Good line.\n\nA bad \xff\xfe byte.\n", ["--num_workers", "2"],
                 ":3: invalid UTF-8"),  # raised in a worker process
    "missing_vocab": ("no vocab.txt", b"A.\n\nB.\n", ["--bert_model", "{empty_model}"], "no vocab.txt"),
    "existing_output": ("output exists", b"A.\n\nB.\n", ["--output_dir", "{existing}"], "already holds"),
    "replace_ok": ("replace", b"Good line.\n\nA bad \xff\xfe byte.\n", ["--encoding_errors", "replace"], None),
}


# Each case runs generate_data.py as its own process. Interpreter start-up and the torch and
# transformers imports cost seconds per process, so one real `python generate_data.py` run
# checks the entry point and the others are forked from a process that imported them once.
FORK_HARNESS = r"""
import json, os, runpy, sys
import generate_data  # noqa: F401  (the imports every run pays, once)
from superbert.hf import bundled_vocab_path, load_tokenizer
load_tokenizer(bundled_vocab_path())
for name, argv, log in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        for fd, suffix in ((1, ".out"), (2, ".err")):
            os.dup2(os.open(log + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = argv
        code = 0
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    with open(log + ".rc", "w") as fh:
        fh.write(str(os.waitstatus_to_exitcode(status)))
"""
REAL_PROCESS_CASE = "bad_utf8"


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("cli")
    (root / "empty_model").mkdir()
    existing = root / "existing"
    existing.mkdir()
    (existing / "metadata.json").write_text("precious")
    argvs, forked = {}, []
    for name, (_, data, extra, _) in CASES.items():
        (root / f"{name}.txt").write_bytes(data)
        args = {"--train_corpus": str(root / f"{name}.txt"),
                "--output_dir": str(root / f"out_{name}" / "data"), "--bert_model": str(corpus[0] / "model")}
        for flag, value in zip(extra[::2], extra[1::2]):
            args[flag] = value.format(empty_model=root / "empty_model", existing=existing)
        argvs[name] = (["generate_data.py", "--do_lower_case"]
                       + [x for kv in args.items() for x in kv], args["--output_dir"])
        if name != REAL_PROCESS_CASE:
            forked.append([name, argvs[name][0], str(root / name)])
    real = subprocess.Popen([sys.executable, *argvs[REAL_PROCESS_CASE][0]], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    harness = subprocess.run([sys.executable, "-c", FORK_HARNESS, json.dumps(forked)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert harness.returncode == 0, harness.stderr
    out, err = real.communicate(timeout=300)
    results = {REAL_PROCESS_CASE: (real.returncode, out, err, argvs[REAL_PROCESS_CASE][1])}
    for name, _, log in forked:
        results[name] = (int(Path(log + ".rc").read_text()), Path(log + ".out").read_text(),
                         Path(log + ".err").read_text(), argvs[name][1])
    return results, existing


@pytest.mark.parametrize("name", [k for k, v in CASES.items() if v[3]])
def test_script_bad_input(script_runs, name):
    results, existing = script_runs
    rc, out, err, out_dir = results[name]
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and CASES[name][3] in lines[0], err
    if name == "existing_output":
        assert (existing / "metadata.json").read_text() == "precious"
        assert sorted(p.name for p in existing.iterdir()) == ["metadata.json"]
    else:
        assert not Path(out_dir).parent.exists()  # no partial output (nor parent it made)


def test_a_corpus_of_one_document_is_a_corpus(script_runs):
    rc, out, err, out_dir = script_runs[0]["one_document"]
    assert rc == 0 and err == "", err
    assert "documents: 1, instances: 1, tokens:" in out
    ds = PretrainingDataset(out_dir, 128, VOCAB)
    assert len(ds) == 1 and len(ds[0][1]) == 6  # one, sentence, ., another, one, .


def test_script_replace_flag_and_summary(script_runs):
    rc, out, err, out_dir = script_runs[0]["replace_ok"]
    assert rc == 0 and err == "", err
    assert "documents: 2, instances: 2, tokens:" in out and "tokens/s" in out
    ds = PretrainingDataset(out_dir, 128, VOCAB)
    assert len(ds) == 2
