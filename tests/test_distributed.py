"""Distributed pre-training: torchrun (gloo, 2 processes) equals one process with twice the batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from superbert.errors import UserError
from tests.helpers import assert_same_values, make_tiny_supernet, same_float
from tests.test_pretraining import ROOT, SEQ, no_dropout, write_corpus
from superbert.distributed import DistEnv, init_distributed, main_process_first

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_needs_no_process_group(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    env = init_distributed(-1, no_cuda=True)
    assert env == DistEnv(0, 1, 0, torch.device("cpu"), None) and env.is_main
    order = []
    with main_process_first(env):
        order.append("main")
    assert order == ["main"]
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE"):
        init_distributed(-1, no_cuda=True)



def train_one_and_two_ranks(common: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """pre_training.py with `common` flags as one process of batch 8 and, at the same time, as
    two gloo ranks of batch 4 under torchrun; returns their cache dirs (one, two)."""
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.Popen([sys.executable, "pre_training.py", *common, "--cache_dir", str(one),
                               "--train_batch_size", "8"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                            "pre_training.py", *common, "--cache_dir", str(two),
                            "--train_batch_size", "4"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out, _ = single.communicate(timeout=300)
    assert single.returncode == 0, out[-3000:]
    assert multi.returncode == 0, (multi.stdout + multi.stderr)[-3000:]
    return one, two


def assert_same_state(w1: dict, w2: dict) -> None:
    """The same weights after the same steps, to float32 rounding scaled per tensor."""
    assert w1.keys() == w2.keys()
    for k in w1:
        assert_same_values(w2[k], w1[k], k)

@pytest.mark.parametrize("reorder", [False, True], ids=["plain", "reordered"])
def test_torchrun_two_ranks_equal_one_rank_with_twice_the_batch(tmp_path, reorder):
    """Also with --reorder: rank 0 reorders the pretrained supernet, the others receive it."""
    data = write_corpus(tmp_path / "data", n=64)
    # Dropout off: each rank draws its own dropout masks, so only a deterministic model can
    # match bit for bit (well, to float rounding).
    model = no_dropout(make_tiny_supernet(tmp_path / "mlm", "mlm"))
    common = ["--pregenerated_data", str(data), "--student_model", str(model),
              "--max_seq_length", str(SEQ), "--epochs", "1", "--gradient_accumulation_steps", "2",
              # Adam divides by sqrt(v): a gradient entry that is ~0 by cancellation (rows of
              # the tied vocab matrix) turns summation-order rounding into an lr-sized step;
              # eps 1e-6 (the BertAdam default of the original code) keeps that at rounding size.
              "--learning_rate", "1e-3", "--adam_epsilon", "1e-6",
              "--warmup_steps", "2", "--logging_steps", "1",
              "--num_workers", "0", "--no_progress", "--do_lower_case", "--mlm_loss",
              "--masked_lm_prob", "0.15", "--threads", "1"]
    common += ["--reorder", "--reorder_samples", "24"] if reorder else []
    one, two = train_one_and_two_ranks(common, tmp_path)

    def run(cache: Path, gpus: int) -> Path:
        return (cache / "output/superbert/checkpoints" /
                f"superbert_epoch_1_lr_0.001_bsz_{8 // gpus}_grad_accu_2_{SEQ}_gpu_{gpus}")

    log1 = [json.loads(l) for l in (run(one, 1) / "train_log.jsonl").read_text().splitlines()]
    log2 = [json.loads(l) for l in (run(two, 2) / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log1] == [r["step"] for r in log2] == list(range(1, 9))
    for a, b in zip(log1, log2):
        assert same_float(a["loss"], b["loss"]), (a, b)
        assert a["arch"] == b["arch"]
        assert len(b["rank_archs"]) == 2 and b["rank_archs"][0] == b["rank_archs"][1] == b["arch"]
    assert len({r["arch"][0] for r in log1}) > 2
    w1 = torch.load(run(one, 1) / "epoch_0" / "pytorch_model.bin", weights_only=True)
    w2 = torch.load(run(two, 2) / "epoch_0" / "pytorch_model.bin", weights_only=True)
    assert_same_state(w1, w2)
    for cache, gpus in ((one, 1), (two, 2)):
        assert (run(cache, gpus) / "epoch_0" / "permutation.json").is_file() == reorder
    if reorder:
        assert ((run(one, 1) / "epoch_0" / "permutation.json").read_bytes()
                == (run(two, 2) / "epoch_0" / "permutation.json").read_bytes())
