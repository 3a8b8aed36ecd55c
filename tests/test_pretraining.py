"""pre_training.py: objectives, optimiser, schedule, checkpoints, resume, further training, errors.

Tiny supernets (hidden 64, 3 layers, real 30522 vocab) on a tiny corpus written in the
original's JSON shard format; runs are in-process except where the exit status is the point.
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from superbert.errors import UserError
from superbert.hf import bundled_vocab_path, read_state_dict
from superbert.checkpoint import find_checkpoints, verify_checkpoint
from superbert.optim import BertAdam, resolve_warmup, warmup_linear
from tests.helpers import assert_same_values, make_tiny_supernet, same_float

import pre_training

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the cat sat on mat dog ran to park a big small red blue house tree bird sang in "
         "morning sun rose over hill and river flowed past old mill").split()
SEQ = 32


def write_corpus(out: Path, n: int = 64, seed: int = 0, extra: str | None = None) -> Path:
    """The original's shards: train_doc_tokens_ngrams_{i}.json, {"tokens": [...]} lines."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    shards = [[] for _ in range(4)]
    for i in range(n):
        start = rng.randrange(len(WORDS))
        length = rng.randint(6, SEQ)
        tokens = [WORDS[(start + k) % len(WORDS)] for k in range(length)]  # learnable order
        if extra and i == n // 2:
            tokens[0] = extra
        shards[i % 4].append(json.dumps({"tokens": tokens}))
    for i, lines in enumerate(shards):
        (out / f"train_doc_tokens_ngrams_{i}.json").write_text("\n".join(lines) + "\n")
    return out


def no_dropout(model_dir: Path) -> Path:
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["hidden_dropout_prob"] = cfg["attention_probs_dropout_prob"] = 0.0
    (model_dir / "config.json").write_text(json.dumps(cfg))
    return model_dir


def save_teacher(out: Path, heads: int = 4, hidden: int = 32) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    teacher = BertModel(BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=2,
                                   num_attention_heads=heads, intermediate_size=64,
                                   max_position_embeddings=64))
    teacher.save_pretrained(out)
    shutil.copyfile(bundled_vocab_path(), out / "vocab.txt")
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    return {"root": root, "data": write_corpus(root / "data"),
            "mlm": make_tiny_supernet(root / "mlm", "mlm"),
            "kd": make_tiny_supernet(root / "kd", "kd"),
            "teacher": save_teacher(root / "teacher")}


def args(work, cache: Path, *extra: str, mlm: bool = True) -> list[str]:
    base = ["--pregenerated_data", str(work["data"]), "--cache_dir", str(cache),
            "--max_seq_length", str(SEQ), "--epochs", "2", "--train_batch_size", "8",
            "--learning_rate", "2e-3", "--warmup_proportion", "0.1", "--logging_steps", "1",
            "--num_workers", "0", "--no_progress", "--do_lower_case"]
    if mlm:
        base += ["--student_model", str(work["mlm"]), "--mlm_loss", "--masked_lm_prob", "0.15"]
    else:
        base += ["--student_model", str(work["kd"]), "--teacher_model", str(work["teacher"]),
                 "--qkv_size_space", "32", "64"]
    return base + list(extra)


def run_dir(cache: Path) -> Path:
    (d,) = (cache / "output" / "superbert" / "checkpoints").iterdir()
    return d


def log_of(cache: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir(cache) / "train_log.jsonl").read_text().splitlines()]


def mean(xs):
    return sum(xs) / len(xs)


# ---- optimiser and schedule ---------------------------------------------------------------------
def test_bertadam_is_the_original_update():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 3))
    skipped = torch.nn.Parameter(torch.randn(4))
    opt = BertAdam([{"params": [p], "weight_decay": 0.01},
                    {"params": [skipped], "weight_decay": 0.0}], lr=0.1, eps=1e-6,
                   max_grad_norm=1.0)
    ref = p.detach().clone()
    m = torch.zeros_like(ref)
    v = torch.zeros_like(ref)
    before = skipped.detach().clone()
    for _ in range(3):
        g = torch.randn_like(ref) * 3
        p.grad = g.clone()
        opt.step()
        g = g / max(1.0, float(g.norm()) / 1.0) if g.norm() > 1 else g  # per-tensor clip
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        ref = ref - 0.1 * (m / (v.sqrt() + 1e-6) + 0.01 * ref)  # no bias correction
    assert torch.allclose(p.detach(), ref, atol=1e-5)
    assert torch.equal(skipped.detach(), before)  # grad None: untouched, no state
    assert skipped not in opt.state


def test_warmup_rule_and_schedule():
    assert resolve_warmup(100, 10, None)[0] == 10
    assert resolve_warmup(100, None, 0.2)[0] == 20
    assert resolve_warmup(100, None, None)[0] == 10  # 10000 > 100 steps: switched to 0.1
    assert resolve_warmup(100, 500, 0.3)[0] == 30
    with pytest.raises(UserError):
        resolve_warmup(100, None, 1.5)
    lrs = [warmup_linear(s, 10, 2) for s in range(11)]
    assert lrs[:3] == [0.0, 0.5, 1.0] and lrs[-1] == 0.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


# ---- objectives -----------------------------------------------------------------------------------
def test_mlm_run_lowers_loss_and_writes_the_original_layout(work, tmp_path):
    cache = tmp_path / "c"
    pre_training.main(args(work, cache))
    log = log_of(cache)
    assert len(log) == 16 and [r["step"] for r in log] == list(range(1, 17))
    losses = [r["loss"] for r in log]
    assert mean(losses[-3:]) < mean(losses[:3]) - 0.5, losses
    assert len({r["arch"][0] for r in log}) > 3  # sub-archs are sampled per step
    d = run_dir(cache)
    assert d.name == "superbert_epoch_2_lr_0.002_bsz_8_grad_accu_1_32_gpu_1"
    for e in (0, 1):
        for f in ("pytorch_model.bin", "config.json", "vocab.txt", "optimizer.pt"):
            assert (d / f"epoch_{e}" / f).is_file()
        verify_checkpoint(d / f"epoch_{e}")
    cfg = json.loads((d / "epoch_1" / "config.json").read_text())
    assert cfg["attention_scheme"] == "mlm" and cfg.get("fit_size") is None
    assert (cache / "output" / "superbert" / "tensorboard" / d.name).is_dir()


@pytest.fixture(scope="module")
def kd_run(work, tmp_path_factory) -> Path:
    """One KD run (cache dir), shared by the tests that read it."""
    cache = tmp_path_factory.mktemp("kd_run") / "c"
    pre_training.main(args(work, cache, "--masked_lm_prob", "0", mlm=False))
    return cache


def test_kd_run_lowers_loss(kd_run):
    cache = kd_run
    log = log_of(cache)
    losses = [r["loss"] for r in log]
    assert all(same_float(r["loss"], r["rep_loss"] + r["att_loss"]) for r in log)
    assert mean(losses[-3:]) < 0.7 * mean(losses[:3]), losses
    from superbert.arch import Arch

    archs = {Arch.parse(r["arch"][0]) for r in log}
    assert len(archs) > 3 and {a.heads for a in archs} == {4}  # KD: all heads, qkv varies
    cfg = json.loads((run_dir(cache) / "epoch_1" / "config.json").read_text())
    assert cfg["attention_scheme"] == "kd" and cfg["fit_size"] == 32


def test_kd_original_input_order_runs(work, tmp_path):
    cache = tmp_path / "c"
    pre_training.main(args(work, cache, "--masked_lm_prob", "0", "--original_input_order",
                           "--max_steps", "2", "--epochs", "1", mlm=False))
    assert len(log_of(cache)) == 2


# ---- resume -----------------------------------------------------------------------------------------
def _final(cache: Path) -> tuple[dict, dict]:
    d = run_dir(cache) / "epoch_1"
    return (torch.load(d / "pytorch_model.bin", weights_only=True),
            torch.load(d / "optimizer.pt", weights_only=False))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_killed_run_resumes_exactly(work, tmp_path):
    # Dropout on and 2-step accumulation: the RNG, data position and optimizer must all resume.
    # The run is SIGKILLed as soon as its first step checkpoint is complete, wherever it is.
    import os
    import signal
    import time

    # One thread everywhere: the full run shares this process with tests that change torch's
    # thread count, the cut run is a fresh process, and bit-equality needs the same reductions.
    extra = ("--gradient_accumulation_steps", "2", "--save_steps", "3", "--threads", "1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, str(ROOT / "pre_training.py"), *args(work, cut, *extra)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pre_training.main(args(work, full, *extra))
    deadline = time.monotonic() + 240
    marker = None
    while proc.poll() is None and time.monotonic() < deadline:
        found = list((cut / "output").glob("superbert/checkpoints/*/step_*/checkpoint.json"))
        if found:
            os.kill(proc.pid, signal.SIGKILL)
            marker = found
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert marker, "the run ended before its first step checkpoint"
    assert not (run_dir(cut) / "epoch_1").exists()
    pre_training.main(args(work, cut, *extra, "--resume", "auto"))
    (wa, oa), (wb, ob) = _final(full), _final(cut)
    assert _same(wa, wb)
    assert _same(oa, ob)
    steps = [r["step"] for r in log_of(cut)]
    # Killed after step k (>= 3), resumed after the newest step checkpoint c <= k (c % 3 == 0).
    restart = next((i for i in range(1, len(steps)) if steps[i] != steps[i - 1] + 1), None)
    if restart is not None:
        assert steps[restart] % 3 == 1 and steps[restart] <= steps[restart - 1]
    assert steps[-1] == 16 and sorted(set(steps)) == list(range(1, 17))
    assert steps == list(range(1, 17))  # the killed run's records after its checkpoint dropped


def test_damaged_checkpoints_are_not_loaded(work, tmp_path):
    cache = tmp_path / "c"
    pre_training.main(args(work, cache, "--save_steps", "2", "--max_steps", "4"))
    d = run_dir(cache)
    opt = d / "step_4" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:-100])  # truncated on disk
    with pytest.raises(UserError, match="truncated"):
        pre_training.main(args(work, cache, "--resume", str(d / "step_4")))
    (d / "step_2" / "checkpoint.json").unlink()  # killed before the manifest: incomplete
    with pytest.raises(UserError, match="not a complete checkpoint"):
        pre_training.main(args(work, cache, "--resume", str(d / "step_2")))
    # auto skips both damaged ones and starts over from scratch
    pre_training.main(args(work, cache, "--resume", "auto", "--max_steps", "1"))
    assert log_of(cache)[-1]["step"] == 1


def test_a_crash_while_saving_leaves_no_checkpoint(work, tmp_path, monkeypatch):
    import superbert.pretraining.trainer as trainer

    cache = tmp_path / "c"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(trainer, "write_manifest", boom)
    with pytest.raises(OSError):
        pre_training.main(args(work, cache, "--save_steps", "2", "--max_steps", "3"))
    assert find_checkpoints(run_dir(cache)) == []
    assert not [p for p in run_dir(cache).iterdir() if p.name.startswith(".")]


# ---- further training ----------------------------------------------------------------------------
def test_further_train_starts_from_the_extracted_weights(work, kd_run, tmp_path, monkeypatch):
    from superbert.arch import Arch
    from superbert.hf import extract_to_dir
    import superbert.pretraining.run as pretraining_run

    supernet = run_dir(kd_run) / "epoch_1"
    arch = Arch(layers=2, hidden=64, heads=4, qkv=48, ffn=128)
    _, sub = extract_to_dir(supernet, arch, tmp_path / "sub")
    saved = read_state_dict(sub)
    assert any(k.startswith("cls.") for k in saved) and "bert.dense_fit.weight" in saved
    seen = {}
    real_trainer = pretraining_run.Trainer

    class Spy(real_trainer):
        def __post_init__(self):
            seen["state"] = {k: v.clone() for k, v in self.model.state_dict().items()}
            seen["fixed"] = self.fixed_arch
            super().__post_init__()

    monkeypatch.setattr(pretraining_run, "Trainer", Spy)
    cache = tmp_path / "c"
    argv = args(work, cache, "--masked_lm_prob", "0", "--further_train", "--max_steps", "2",
                mlm=False)
    argv[argv.index("--student_model") + 1] = str(sub)
    del argv[argv.index("--qkv_size_space"): argv.index("--qkv_size_space") + 3]
    pre_training.main(argv)
    assert seen["fixed"] == arch
    for key, value in saved.items():
        assert torch.equal(seen["state"][key], value), key
    assert all(r["arch"] == [str(arch)] for r in log_of(cache))


# ---- bad input ----------------------------------------------------------------------------------
def _script(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "pre_training.py"), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_bad_input_exits_2_with_one_line(work, tmp_path):
    cache = tmp_path / "c"
    r = _script(args(work, cache, "--train_batch_size", "6", "--gradient_accumulation_steps", "4"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "not divisible" in r.stderr
    argv = args(work, cache, "--masked_lm_prob", "0", mlm=False)
    argv[argv.index("--teacher_model") + 1] = str(tmp_path / "missing")
    r = _script(argv)
    assert r.returncode == 2 and "missing" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not cache.exists()  # nothing written


@pytest.mark.parametrize("extra, message", [
    (("--hidden_size_space", "64", "128"), "exceeds the supernet"),
    (("--layer_num_space", "1", "9"), "exceeds the supernet"),
    (("--qkv_size_space", "32", "64"), "applies to the KD scheme"),
    (("--continue_index", "2"), "--resume"),
    (("--fp16_opt_level", "O2"), "torch.amp"),
    (("--kd",), "contradict"),
    (("--super_model", "kd"), "contradicts the objective"),
    (("--masked_lm_prob", "0"), "masks nothing"),
])
def test_bad_flags(work, tmp_path, extra, message):
    cache = tmp_path / "c"
    with pytest.raises(UserError, match=message):
        pre_training.main(args(work, cache, *extra))
    assert not cache.exists()


def test_bad_teacher_and_data(work, tmp_path):
    cache = tmp_path / "c"
    with pytest.raises(UserError, match="needs --teacher_model"):
        argv = args(work, cache, mlm=False)
        del argv[argv.index("--teacher_model"): argv.index("--teacher_model") + 2]
        pre_training.main(argv)
    other = save_teacher(tmp_path / "t2", heads=2)
    argv = args(work, cache, mlm=False)
    argv[argv.index("--teacher_model") + 1] = str(other)
    with pytest.raises(UserError, match="heads"):
        pre_training.main(argv)
    bad = write_corpus(tmp_path / "bad", extra="notawordpiece")
    argv = args(work, cache)
    argv[argv.index("--pregenerated_data") + 1] = str(bad)
    with pytest.raises(UserError, match="not in"):
        pre_training.main(argv)
    with pytest.raises(UserError, match="max_seq_length"):
        pre_training.main(args(work, cache, "--max_seq_length", "16"))
    assert not cache.exists()


def test_existing_run_is_not_overwritten(work, tmp_path):
    cache = tmp_path / "c"
    pre_training.main(args(work, cache, "--max_steps", "2", "--save_steps", "2"))
    before = {p.name: (p / "checkpoint.json").read_text() for p in find_checkpoints(run_dir(cache))}
    with pytest.raises(UserError, match="already holds checkpoints"):
        pre_training.main(args(work, cache, "--max_steps", "2", "--save_steps", "2"))
    after = {p.name: (p / "checkpoint.json").read_text() for p in find_checkpoints(run_dir(cache))}
    assert before == after


def test_generated_bin_data_and_the_extension_flags(work, tmp_path, caplog):
    """Shards from generate_data (bin format); --sandwich, --sample_times_per_batch, --fp16 on
    CPU (bfloat16 with a warning), --optimizer adamw, and the lower-casing check."""
    from superbert.arch import Arch
    from superbert.data.config import DataConfig
    from superbert.data.generate import generate_pretraining_data

    corpus = tmp_path / "corpus.txt"
    rng = random.Random(1)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + " .\n"
            for _ in range(120)]
    corpus.write_text("".join(d if i % 5 else d + "\n" for i, d in enumerate(docs)))
    data = tmp_path / "bin"
    generate_pretraining_data(DataConfig(train_corpus=corpus, output_dir=data,
                                         bert_model=str(work["mlm"]), do_lower_case=True,
                                         max_seq_len=SEQ, progress=False))
    cache = tmp_path / "c"
    argv = args(work, cache, "--sandwich", "--sample_times_per_batch", "2", "--fp16",
                "--optimizer", "adamw", "--max_steps", "3", "--epochs", "1")
    argv[argv.index("--pregenerated_data") + 1] = str(data)
    with pytest.warns(UserWarning, match="fp16 on CPU"):
        pre_training.main(argv)
    log = log_of(cache)
    assert [r["step"] for r in log] == [1, 2, 3]
    for r in log:
        archs = [Arch.parse(a) for a in r["arch"]]
        assert len(archs) == 4  # largest, smallest, 2 random
        assert archs[0] == Arch(3, 64, 4, 64, 128) and archs[1] == Arch(1, 64, 1, 16, 128)
    with pytest.raises(UserError, match="do_lower_case"):
        argv.remove("--do_lower_case")
        pre_training.main(argv + ["--resume", "auto"])


@pytest.mark.parametrize("kind", ["bert", "electra"])
def test_teacher_scores_are_its_last_layer_attention_logits(tmp_path, kind):
    """The recomputed pre-softmax scores give exactly the teacher's own attention probs;
    an ELECTRA discriminator checkpoint (electra.* keys) loads as a teacher too."""
    from transformers import (BertConfig, BertModel, ElectraConfig, ElectraForPreTraining,
                              ElectraModel)

    from superbert.distill import kd_counts, kd_loss_sums, load_teacher

    torch.manual_seed(0)
    if kind == "bert":
        BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64)).save_pretrained(tmp_path)
        ref = BertModel.from_pretrained(tmp_path, attn_implementation="eager")
    else:
        ElectraForPreTraining(ElectraConfig(vocab_size=30522, embedding_size=16, hidden_size=32,
                                            num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64)).save_pretrained(tmp_path)
        ref = ElectraModel.from_pretrained(tmp_path, attn_implementation="eager")
    teacher = load_teacher(str(tmp_path))
    ids = torch.randint(1000, 2000, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    out = teacher(ids, mask, None)
    with torch.no_grad():
        want = ref.eval()(ids, attention_mask=mask, output_attentions=True)
    probs = out.scores.masked_fill(~mask[:, None, None, :].bool(), -1e9).softmax(-1)
    assert torch.allclose(probs, want.attentions[-1], atol=1e-6)
    assert_same_values(out.hidden, want.last_hidden_state, "teacher hidden")
    # Padded queries/keys do not count: changing the student there changes nothing.
    student_h, student_s = out.hidden + 0.1, out.scores + 0.2
    rep, att = kd_loss_sums(student_h, student_s, out, mask)
    student_h[1, 7:] += 5.0
    student_s[1, :, 7:, :] += 5.0
    student_s[1, :, :, 8:] -= 5.0
    rep2, att2 = kd_loss_sums(student_h, student_s, out, mask)
    assert torch.allclose(rep, rep2) and torch.allclose(att, att2)
    n_rep, n_att = kd_counts(mask, 2, 10, 32, 4)
    assert n_rep == 16 * 32 and n_att == (100 + 36) * 4
    assert abs(float(rep / n_rep) - 0.01) < 1e-6 and abs(float(att / n_att) - 0.04) < 1e-6


# ---- nothing lost, nothing silently wrong ---------------------------------------------------------
def test_max_steps_ends_with_a_checkpoint_of_its_step(work, tmp_path):
    cache = tmp_path / "c"
    pre_training.main(args(work, cache, "--max_steps", "3"))
    assert [p.name for p in find_checkpoints(run_dir(cache))] == ["step_3"]
    assert verify_checkpoint(run_dir(cache) / "step_3")["global_step"] == 3
    cache = tmp_path / "c2"
    pre_training.main(args(work, cache, "--max_steps", "5", "--save_steps", "2",
                           "--logging_steps", "2"))
    assert [p.name for p in find_checkpoints(run_dir(cache))] == ["step_2", "step_4", "step_5"]
    assert [r["step"] for r in log_of(cache)] == [2, 4, 5]  # the last steps are logged too
    # Resumed at (or past) --max_steps: nothing more is trained.
    pre_training.main(args(work, cache, "--max_steps", "5", "--save_steps", "2",
                           "--logging_steps", "2", "--resume", "auto"))
    assert [r["step"] for r in log_of(cache)] == [2, 4, 5]


def test_a_resumed_run_cleans_up_and_logs_no_step_twice(work, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    cache = tmp_path / "c"
    pre_training.main(args(work, cache, "--max_steps", "4", "--save_steps", "2"))
    d = run_dir(cache)
    # As if killed while writing step 4: its log records are there, its checkpoint is half
    # written in a staging directory.
    shutil.rmtree(d / "step_4")
    (d / ".step_4.k1ll3d.tmp" / "payload").mkdir(parents=True)
    (d / ".step_4.k1ll3d.tmp" / "payload" / "optimizer.pt").write_bytes(b"half")
    with open(d / "train_log.jsonl", "a") as fh:
        fh.write('{"step": 5, "lo')  # a record cut short
    caplog.clear()
    pre_training.main(args(work, cache, "--max_steps", "4", "--resume", "auto"))
    assert [r["step"] for r in log_of(cache)] == [1, 2, 3, 4]
    assert not [p for p in d.iterdir() if p.name.startswith(".")]
    console = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [m.split()[1] for m in console] == ["3/16", "4/16"]
    assert any("removed 1 directory" in r.getMessage() for r in caplog.records)


def test_resume_refuses_changed_settings_unless_asked(work, tmp_path, caplog):
    import logging

    cache = tmp_path / "c"
    pre_training.main(args(work, cache, "--max_steps", "2"))
    ckpt = str(run_dir(cache) / "step_2")
    other_data = write_corpus(tmp_path / "other", seed=5)
    moved = args(work, cache, "--resume", ckpt)
    moved[moved.index("--pregenerated_data") + 1] = str(other_data)
    for argv, what in [(args(work, cache, "--resume", ckpt, "--learning_rate", "1e-3"),
                        "learning_rate=0.002 (this run: 0.001)"),
                       (args(work, cache, "--resume", ckpt, "--warmup_proportion", "0.5"),
                        "warmup_steps=1 (this run: 8)"),
                       (args(work, cache, "--resume", ckpt, "--layer_num_space", "1", "2"),
                        "space="),
                       (moved, "pregenerated_data="),
                       (args(work, cache, "--resume", ckpt, "--sandwich"), "sandwich=False")]:
        with pytest.raises(UserError, match="--resume_changed_settings") as err:
            pre_training.main(argv)
        assert what in str(err.value)
    assert len(list((cache / "output" / "superbert" / "checkpoints").iterdir())) == 1
    caplog.set_level(logging.WARNING)
    with pytest.raises(UserError, match="train_batch_size"):  # never, even when asked
        pre_training.main(args(work, cache, "--resume", ckpt, "--train_batch_size", "4",
                               "--resume_changed_settings"))
    pre_training.main(args(work, cache, "--resume", ckpt, "--learning_rate", "1e-3",
                           "--max_steps", "3", "--resume_changed_settings"))
    assert any("learning_rate=0.002 (this run: 0.001)" in r.getMessage() for r in caplog.records)
    # The run's name holds its lr (the original's layout): the resumed run is a new directory.
    (resumed,) = (cache / "output" / "superbert" / "checkpoints").glob("*_lr_0.001_*")
    step3 = json.loads((resumed / "train_log.jsonl").read_text().splitlines()[-1])
    assert (resumed / "step_3" / "checkpoint.json").is_file()
    assert step3["step"] == 3 and step3["lr"] == pytest.approx(1e-3 * warmup_linear(3, 16, 1))


def test_data_short_of_one_step_runs_one_partial_step(work, tmp_path):
    data = write_corpus(tmp_path / "three", n=3)
    cache = tmp_path / "c"
    argv = args(work, cache, "--gradient_accumulation_steps", "2")
    argv[argv.index("--pregenerated_data") + 1] = str(data)
    pre_training.main(argv)
    assert [r["step"] for r in log_of(cache)] == [1, 2]  # one step per epoch
    assert [p.name for p in find_checkpoints(run_dir(cache))] == ["epoch_0", "epoch_1"]


def test_tensorboard_and_progress_lines(work, tmp_path, monkeypatch, caplog):
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import superbert.pretraining.trainer as trainer

    monkeypatch.setattr(trainer, "PROGRESS_SECONDS", 0.0)
    caplog.set_level(logging.INFO)
    cache = tmp_path / "c"
    pre_training.main(args(work, cache, "--max_steps", "6", "--logging_steps", "3"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    # --max_steps 6 stops the 16-step schedule early: progress and ETA count to step 6
    assert len(lines) >= 6 and lines[0].startswith("progress: step 1/6 (17%) loss ")
    assert all(" step/s " in l and " tok/s ETA " in l for l in lines)
    tb = cache / "output" / "superbert" / "tensorboard" / run_dir(cache).name
    events = EventAccumulator(str(tb))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss", "lr", "tokens_per_s"} <= set(tags)
    by_size = [t for t in tags if t.startswith("loss_by_arch_size/")]
    assert by_size and all(t.endswith("%_of_largest") for t in by_size)
    assert sorted(e.step for e in events.Scalars("loss")) == [3, 6]
    log = log_of(cache)
    assert all("loss_by_size" in r for r in log)
