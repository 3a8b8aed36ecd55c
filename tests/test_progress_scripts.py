"""Every script with a long stage, run as a user's batch job would run it (stdout and stderr to
a pipe, no terminal), prints progress lines with an ETA; no stray progress bars.

SUPERBERT_PROGRESS_SECONDS=0 asks for a line at every step, so a few steps show it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_tiny_supernet
from superbert.tasks.books import BookTasksConfig, make_book_tasks

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(train_examples=48, dev_examples=24, max_chapters_per_book=4)


def _run(*argv: str) -> str:
    env = {**os.environ, "SUPERBERT_PROGRESS_SECONDS": "0", "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID"):
        env.pop(var, None)
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert r.returncode == 0, (argv[0], r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("progress")
    books = tmp / "books"
    make_book_tasks(BookTasksConfig(**SMALL), books)
    supernet = make_tiny_supernet(tmp / "supernet", layers=2, hidden=32, heads=2, ffn=64)
    return tmp, books, supernet


def _eta_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "ETA" in line]


def _no_bars(out: str) -> None:
    # a tqdm bar drawn to a pipe shows up as "NN%|" with carriage returns
    assert "\r" not in out and "%|" not in out, out[-2000:]


def test_pretraining_progress(work):
    tmp, books, supernet = work
    data = tmp / "data"
    _run("generate_data.py", "--train_corpus", str(books / "corpus" / "train.txt"),
         "--output_dir", str(data), "--bert_model", str(supernet), "--do_lower_case",
         "--max_seq_len", "32")
    out = _run("pre_training.py", "--pregenerated_data", str(data), "--student_model",
               str(supernet), "--cache_dir", str(tmp / "cache"), "--mlm_loss",
               "--masked_lm_prob", "0.15", "--do_lower_case", "--scratch", "--max_seq_length",
               "32", "--train_batch_size", "8", "--max_steps", "3", "--num_workers", "0")
    lines = _eta_lines(out)
    assert len(lines) >= 3 and "progress: step 1/3" in lines[0], out[-2000:]
    _no_bars(out)


def test_latency_dataset_progress(work):
    tmp, _, supernet = work
    out = _run("inference_time_evaluation.py", "--bert_model", str(supernet), "--num_archs", "3",
               "--infer_cnt", "1", "--max_seq_length", "16", "--output", str(tmp / "lat.tmp"),
               "--base_arch", "{'sample_layer_num': 2, 'sample_num_attention_heads': [2, 2], "
               "'sample_qkv_sizes': [32, 32], 'sample_hidden_size': 32, "
               "'sample_intermediate_sizes': [64, 64]}")
    lines = _eta_lines(out)
    assert any("timed 1/3 archs" in line for line in lines), out[-2000:]
    _no_bars(out)


def test_evaluator_progress(work):
    tmp, books, supernet = work
    out = _run("superbert_run_en_classifier.py", "--data_dir", str(books / "SST-2"),
               "--task_name", "sst-2", "--model", str(supernet), "--output_dir",
               str(tmp / "eval"), "--do_lower_case", "--max_steps", "3", "--train_batch_size",
               "8", "--max_seq_length", "32", "--no_cuda")
    lines = _eta_lines(out)
    assert len(lines) >= 3 and any("step 1/3" in line for line in lines), out[-2000:]
    _no_bars(out)
