"""Several sub-archs per step (--num_subnets, --sandwich) and the relation KD objective
(--kd_objective relation) in pre-training: archs visited, errors, logs, exact resume, ranks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import pre_training
from superbert.arch import SearchSpace
from superbert.errors import UserError
from superbert.pretraining.config import PretrainConfig
from superbert.pretraining.sampling import step_archs
from tests.helpers import make_tiny_supernet, same_float, tiny_config
from tests.test_distributed import assert_same_state, train_one_and_two_ranks
from tests.test_pretraining import (ROOT, SEQ, _final, _same, args, log_of, no_dropout,  # noqa: F401
                                    run_dir, save_teacher, work, write_corpus)

RELATION = ("--kd_objective", "relation", "--relation_heads", "4")


def cfg(**kw) -> PretrainConfig:
    return PretrainConfig(pregenerated_data="data", student_model="model", mlm_loss=True,
                          masked_lm_prob=0.15, **kw)


def test_num_subnets_visits_largest_and_smallest_every_step():
    space = SearchSpace.for_supernet(tiny_config("mlm"), hidden=(16, 64), ffn=(16, 128))
    for K in (2, 3, 5):
        c = cfg(num_subnets=K, sandwich=True)
        seen = set()
        for step in range(20):
            archs = step_archs(space, None, step, c)
            assert len(archs) == K == c.archs_per_step
            assert archs[0] == space.largest() and archs[1] == space.smallest()
            assert archs == step_archs(space, None, step, c)  # deterministic
            seen.update(archs[2:])
        assert K == 2 or len(seen) > 5  # the random ones vary from step to step
    # K=1 is the original's one random arch, as the default is.
    for step in range(5):
        assert step_archs(space, None, step, cfg(num_subnets=1)) == step_archs(space, None, step,
                                                                             cfg())
    assert len(step_archs(space, None, 0, cfg(sandwich=True))) == 3 == cfg(sandwich=True).archs_per_step


@pytest.mark.parametrize("kw,message", [
    ({"num_subnets": 1, "sandwich": True}, "needs --num_subnets 2 or more"),
    ({"num_subnets": 3, "sample_times_per_batch": 2}, "pass one"),
    ({"num_subnets": 0}, "--num_subnets must be a positive"),
    ({"kd_objective": "relation"}, "--mlm_loss trains without a teacher"),
    ({"kd_objective": "hidden"}, "unknown KD objective"),
    ({"inplace_distill": True}, "pass --sandwich"),
    ({"inplace_distill": True, "sandwich": True}, "is for KD"),
])
def test_bad_combinations_are_user_errors(kw, message):
    with pytest.raises(UserError, match=message):
        cfg(**kw)


def test_bad_combination_is_one_error_line_and_exit_2(work, tmp_path):
    res = subprocess.run([sys.executable, "pre_training.py", *args(work, tmp_path / "c"),
                          "--num_subnets", "1", "--sandwich"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--sandwich" in lines[0], res.stderr
    assert not (tmp_path / "c").exists()


def test_relation_sandwich_run_logs_and_records_its_options(work, tmp_path, caplog):
    cache = tmp_path / "c"
    with caplog.at_level("WARNING"):
        pre_training.main(args(work, cache, *RELATION, "--num_subnets", "3", "--sandwich",
                               "--max_steps", "3", "--warmup_steps", "5", mlm=False))
    assert any("--max_steps 3 ends inside the warm-up (5 steps)" in r.getMessage()
               for r in caplog.records)
    log = log_of(cache)
    assert [r["step"] for r in log] == [1, 2, 3]
    for r in log:
        assert len(r["arch"]) == 3 and r["arch"][:1] != r["arch"][1:2]
        assert r["relation_loss"] > 0 and "rep_loss" not in r
    assert log[0]["arch"][:2] == log[1]["arch"][:2] == log[2]["arch"][:2]  # largest, smallest
    run = json.loads((run_dir(cache) / "step_3" / "checkpoint.json").read_text())["run"]
    assert run["kd_objective"] == "relation" and run["relation_heads"] == 4
    assert run["num_subnets"] == 3 and run["sandwich"] is True
    # The supernet learns: the relation loss falls (same archs every step but the random one).
    assert log[-1]["relation_loss"] < log[0]["relation_loss"]


@pytest.mark.parametrize("objective", [(), RELATION], ids=["hidden_attention", "relation"])
def test_inplace_distillation_adds_the_largest_arch_as_a_second_target(work, tmp_path, objective):
    """KD sandwich with --inplace_distill: the smaller archs also match the largest's outputs
    (the logged inplace_loss); the run differs from the same run without it."""
    base = (*objective, "--num_subnets", "3", "--sandwich", "--max_steps", "2", "--threads", "1")
    with_it, without = tmp_path / "a", tmp_path / "b"
    pre_training.main(args(work, with_it, *base, "--inplace_distill", mlm=False))
    pre_training.main(args(work, without, *base, mlm=False))
    log_a, log_b = log_of(with_it), log_of(without)
    assert all(r["inplace_loss"] > 0 for r in log_a)
    assert all("inplace_loss" not in r for r in log_b)
    assert log_a[0]["loss"] > log_b[0]["loss"]  # same weights at step 1, one more term
    run = json.loads((run_dir(with_it) / "step_2" / "checkpoint.json").read_text())["run"]
    assert run["inplace_distill"] is True


def test_relation_heads_must_split_every_width(work, tmp_path):
    with pytest.raises(UserError, match="--relation_heads 5 does not divide"):
        pre_training.main(args(work, tmp_path / "c", "--kd_objective", "relation",
                               "--relation_heads", "5", "--max_steps", "1", mlm=False))


@pytest.mark.slow
def test_killed_sandwich_run_resumes_exactly(work, tmp_path):
    """As test_pretraining's killed-run test, with three archs a step (largest, smallest, one
    random), the KD teacher and the relation objective: SIGKILL after the first step
    checkpoint, --resume auto, bit-identical weights and optimizer state."""
    extra = (*RELATION, "--num_subnets", "3", "--sandwich", "--gradient_accumulation_steps", "2",
             "--save_steps", "3", "--threads", "1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, str(ROOT / "pre_training.py"),
                             *args(work, cut, *extra, mlm=False)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pre_training.main(args(work, full, *extra, mlm=False))
    deadline = time.monotonic() + 240
    killed = False
    while proc.poll() is None and time.monotonic() < deadline:
        if list((cut / "output").glob("superbert/checkpoints/*/step_*/checkpoint.json")):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed, "the run ended before its first step checkpoint"
    assert not (run_dir(cut) / "epoch_1").exists()
    pre_training.main(args(work, cut, *extra, "--resume", "auto", mlm=False))
    (wa, oa), (wb, ob) = _final(full), _final(cut)
    assert _same(wa, wb)
    assert _same(oa, ob)
    assert [r["step"] for r in log_of(cut)] == [r["step"] for r in log_of(full)]
    assert [r["arch"] for r in log_of(cut)] == [r["arch"] for r in log_of(full)]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_rank_with_twice_the_batch(tmp_path):
    data = write_corpus(tmp_path / "data", n=64)
    model = no_dropout(make_tiny_supernet(tmp_path / "kd", "kd"))
    teacher = save_teacher(tmp_path / "teacher")
    common = ["--pregenerated_data", str(data), "--student_model", str(model),
              "--teacher_model", str(teacher), "--qkv_size_space", "32", "64", *RELATION,
              "--num_subnets", "3", "--sandwich",
              "--max_seq_length", str(SEQ), "--epochs", "1", "--gradient_accumulation_steps", "2",
              "--learning_rate", "1e-3", "--adam_epsilon", "1e-6", "--warmup_steps", "2",
              "--logging_steps", "1", "--num_workers", "0", "--no_progress", "--do_lower_case",
              "--threads", "1"]
    one, two = train_one_and_two_ranks(common, tmp_path)
    log1, log2 = log_of(one), log_of(two)
    assert [r["step"] for r in log1] == [r["step"] for r in log2] == list(range(1, 9))
    for a, b in zip(log1, log2):
        assert same_float(a["relation_loss"], b["relation_loss"]), (a, b)
        assert a["arch"] == b["arch"] and len(a["arch"]) == 3
        assert b["rank_archs"][0] == b["rank_archs"][1] == b["arch"]
    w1 = torch.load(run_dir(one) / "epoch_0" / "pytorch_model.bin", weights_only=True)
    w2 = torch.load(run_dir(two) / "epoch_0" / "pytorch_model.bin", weights_only=True)
    assert_same_state(w1, w2)
