"""superbert_run_en_classifier.py end to end on a tiny supernet and tiny task files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from helpers import make_tiny_supernet, tiny_config
from superbert.arch import Arch, Scheme, format_arch_lines
from superbert.errors import UserError
from superbert.finetuning import features as task_features
from superbert.finetuning.config import RunConfig
from superbert.finetuning.features import load_task_data, read_feature_cache
from superbert.finetuning.model import init_head, inherit
from superbert.finetuning.run import run
from superbert.finetuning.steps import plan_steps
from superbert.modeling import AutoTinyBertForSequenceClassification, active_state_dict
from superbert.optim import BertAdam, param_groups
from superbert.results import parse_results, read_results
from superbert.tasks import glue
from superbert_run_en_classifier import parse_config
from test_tasks import write_glue_task, write_squad_task

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "superbert_run_en_classifier.py"
SMALL = Arch(layers=1, hidden=24, heads=1, qkv=16, ffn=32)
FULL = Arch(layers=2, hidden=32, heads=2, qkv=32, ffn=64)
PROXY = ["--max_seq_length", "64", "--train_batch_size", "8", "--eval_batch_size", "5",
         "--max_steps", "3", "--eval_step", "2", "--learning_rate", "1e-3",
         "--doc_stride", "16", "--max_query_length", "12", "--do_lower_case"]


@pytest.fixture(scope="module")
def supernet(tmp_path_factory) -> Path:
    return make_tiny_supernet(tmp_path_factory.mktemp("supernet") / "mlm", "mlm", layers=2,
                              hidden=32, heads=2, ffn=64, max_positions=128)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_glue_task(root / "MNLI", "mnli", n_train=24, n_dev=10)
    write_squad_task(root / "SQuAD", version_2=False, n_copies=4)
    write_squad_task(root / "SQuAD2", version_2=True, n_copies=3)
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and a busy machine makes two threads crawl)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


def run_inproc(argv: list[str]):
    return run(parse_config(argv))


def test_readme_command_shape(tmp_path, supernet, data):
    """mnli + squad over a .cands file: every arch on both tasks, blocks Evolved reads."""
    cands = tmp_path / "gen.cands"
    cands.write_text(format_arch_lines([SMALL, FULL]))
    out = tmp_path / "output"
    r = cli("--data_dir", f"{data / 'MNLI'} {data / 'SQuAD'}", "--model", str(supernet),
            "--task_name", "mnli squad", "--output_dir", str(out), "--arches_file", str(cands),
            "--save_best_model", *PROXY)
    assert r.returncode == 0, r.stderr[-3000:]
    blocks = read_results(str(out / "subbert.results"))
    assert [(b.task, b.arch) for b in blocks] == [("mnli", SMALL), ("squad1", SMALL),
                                                 ("mnli", FULL), ("squad1", FULL)]
    for b in blocks:
        assert b.best is not None and b.infer_cnt > 0 and b.time_per_batch_infer_ms > 0
        assert b.param_count == b.arch.param_count(max_positions=128)
        if b.task == "mnli":
            assert 0 <= b.best <= 1 and b.em is None
        else:
            assert 0 <= b.best <= 100 and b.em is not None
    scores = parse_results(str(out / "subbert.results"))
    assert set(scores) == {SMALL, FULL} and all(set(v) == {"mnli", "squad1"} for v in scores.values())
    text = (out / "subbert.results").read_text()
    assert text.startswith("**************S*************\ntask_name = mnli\narchitecture = {'sample_layer_num': 1,")
    # eval_results.txt: sorted `key = value` lines of every evaluation (2 per arch and task)
    ev = (out / "eval_results.txt").read_text().splitlines()
    assert sum(line.startswith("global_step = ") for line in ev) == 8
    first = ev[: ev.index("task = mnli") + 1]
    assert [line.split(" = ")[0] for line in first] == sorted(line.split(" = ")[0] for line in first)
    assert "acc" in [line.split(" = ")[0] for line in first]
    mm = (tmp_path / "output-MM" / "eval_results.txt").read_text()
    assert mm.count("task = mnli-mm") == 2 and "acc = " in mm
    preds = json.loads((out / "predictions.json").read_text())
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    assert set(preds) == set(nbest) and len(preds) == 12
    assert not (out / "null_odds.json").exists()
    # best fine-tuned sub-models, loadable with transformers

    saved = out / f"mnli_seed42_{SMALL.short().replace('/', '_')}"
    model = AutoModelForSequenceClassification.from_pretrained(saved, trust_remote_code=True)
    assert model.config.hidden_size == 24 and model.config.num_labels == 3
    assert (out / f"squad1_seed42_{FULL.short().replace('/', '_')}" / "config.json").is_file()


def test_every_glue_task_end_to_end(tmp_path, supernet):
    tasks = list(glue.GLUE)
    dirs = [write_glue_task(tmp_path / t, t, n_train=16, n_dev=7, seed=i) for i, t in enumerate(tasks)]
    out = tmp_path / "out"
    results = run_inproc(["--data_dir", " ".join(map(str, dirs)), "--model", str(supernet),
                          "--task_name", " ".join(tasks), "--output_dir", str(out), *PROXY,
                          "--max_steps", "2", "--no_cuda"])
    assert [r.task for r in results] == tasks
    for r in results:
        assert r.best is not None and r.em is None
        bound = 1.0 + 1e-9
        assert -bound <= r.best <= bound  # acc, MCC and correlations live in [-1, 1]
    assert len(read_results(str(out / "subbert.results"))) == len(tasks)
    ev = (out / "eval_results.txt").read_text()
    assert "mcc = " in ev and "corr = " in ev and "pearson = " in ev and "f1 = " in ev


def test_two_archs_score_as_each_alone(tmp_path, supernet, data):
    """No fine-tuned weight leaks from one arch into the next (and squad2 runs)."""
    def scores(archs: list[Arch], name: str) -> dict:
        cands = tmp_path / f"{name}.cands"
        cands.write_text(format_arch_lines(archs))
        res = run_inproc(["--data_dir", f"{data / 'MNLI'} {data / 'SQuAD2'}", "--model",
                          str(supernet), "--task_name", "mnli squad2", "--output_dir",
                          str(tmp_path / name), "--arches_file", str(cands), *PROXY])
        return {(r.arch, r.task): (r.best, r.em) for r in res}

    together = scores([FULL, SMALL], "both")
    alone = scores([SMALL], "alone")
    assert together[(SMALL, "mnli")] == alone[(SMALL, "mnli")]
    assert together[(SMALL, "squad2")] == alone[(SMALL, "squad2")]
    assert (tmp_path / "both" / "null_odds.json").is_file()


def test_kd_supernet_and_scheme_contradiction(tmp_path, data):
    kd = make_tiny_supernet(tmp_path / "kd", "kd", layers=2, hidden=32, heads=4, qkv=32, ffn=64,
                            max_positions=128)
    arch = Arch(layers=1, hidden=32, heads=4, qkv=16, ffn=32)  # per-head slices of 4 dims
    cands = tmp_path / "kd.cands"
    cands.write_text(format_arch_lines([arch]))
    common = ["--data_dir", str(data / "MNLI"), "--model", str(kd), "--task_name", "mnli",
              "--arches_file", str(cands), *PROXY]
    res = run_inproc([*common, "--output_dir", str(tmp_path / "o1"), "--super_model", "KD"])
    assert res[0].best is not None
    with pytest.raises(UserError, match="KD attention scheme, but MLM was asked for"):
        run_inproc([*common, "--output_dir", str(tmp_path / "o2"), "--super_model", "MLM"])


def test_explicit_flags_override_task_defaults():
    base = ["--model", "m", "--output_dir", "o"]
    cfg = parse_config([*base, "--data_dir", "a b c", "--task_name", "mnli squad cola"])
    mnli, sq, cola = cfg.tasks
    assert (mnli.num_train_epochs, mnli.max_seq_length, mnli.learning_rate, mnli.eval_step,
            mnli.train_batch_size) == (4, 128, 3e-5, 500, 32)
    assert (sq.task, sq.max_seq_length, sq.train_batch_size) == ("squad1", 384, 16)
    assert (cola.max_seq_length, cola.learning_rate, cola.train_batch_size) == (64, 1e-5, 32)
    cfg = parse_config([*base, "--data_dir", "a b", "--task_name", "mnli squad",
                        "--learning_rate", "1e-4", "--train_batch_size", "8",
                        "--version_2_with_negative", "1", "--seed", "1 2"])
    assert [t.learning_rate for t in cfg.tasks] == [1e-4, 1e-4]
    assert [t.train_batch_size for t in cfg.tasks] == [8, 8]
    assert cfg.tasks[1].task == "squad2" and cfg.seeds == (1, 2)
    assert cfg.tasks[0].num_train_epochs == 4  # not given: still the table's
    # one value per task: a classifier and SQuAD at their own lengths and rates
    cfg = parse_config([*base, "--data_dir", "a b c", "--task_name", "sst-2 mnli squad",
                        "--max_seq_length", "64 64 96", "--learning_rate", "1e-4 5e-5 1e-4"])
    assert [t.max_seq_length for t in cfg.tasks] == [64, 64, 96]
    assert [t.learning_rate for t in cfg.tasks] == [1e-4, 5e-5, 1e-4]
    assert [t.max_steps for t in cfg.tasks] == [None] * 3  # epochs decide
    cfg = parse_config([*base, "--data_dir", "a b", "--task_name", "sst-2 mnli",
                        "--max_steps", "100 300"])
    assert [t.max_steps for t in cfg.tasks] == [100, 300]
    assert [plan_steps(t, 1000).t_total for t in cfg.tasks] == [100, 300]
    cfg = parse_config([*base, "--data_dir", "a b", "--task_name", "sst-2 mnli",
                        "--max_steps", "40"])
    assert [t.max_steps for t in cfg.tasks] == [40, 40]
    with pytest.raises(UserError, match="--max_steps must be a positive"):
        parse_config([*base, "--data_dir", "a b", "--task_name", "sst-2 mnli",
                      "--max_steps", "100 0"])
    with pytest.raises(UserError, match="--max_seq_length lists 2 values for 3 tasks"):
        parse_config([*base, "--data_dir", "a b c", "--task_name", "sst-2 mnli squad",
                      "--max_seq_length", "64 96"])


def test_run_config_checks_once_whoever_builds_it():
    """RunConfig validates in __post_init__: built from flags or directly, the same checks."""
    base = dict(model="m", output_dir="o", data_dir="a", task_name="mnli")
    cfg = RunConfig(**base, super_model="kd")
    assert cfg.scheme is Scheme.KD and cfg.seeds == (42,) and cfg.tasks[0].task == "mnli"
    assert parse_config(["--model", "m", "--output_dir", "o", "--data_dir", "a", "--task_name",
                         "mnli", "--super_model", "kd"]).scheme is Scheme.KD
    assert RunConfig(**base).scheme is None
    with pytest.raises(UserError, match="--eval_batch_size must be a positive finite number"):
        RunConfig(**base, eval_batch_size=0)
    with pytest.raises(UserError, match="--version_2_with_negative 0 contradicts task squad2"):
        RunConfig(**{**base, "task_name": "squad2"}, version_2_with_negative=0)
    with pytest.raises(UserError, match="--seed must be space-separated integers"):
        RunConfig(**base, seed="1 x")


@pytest.mark.parametrize("case", ["mismatch", "unknown", "missing_tsv", "bad_json", "arch",
                                  "short_tsv"])
def test_bad_input_one_line_exit_2(tmp_path, supernet, data, case):
    out = tmp_path / "out"
    args = ["--model", str(supernet), "--output_dir", str(out), *PROXY]
    if case == "mismatch":
        args += ["--data_dir", f"{data / 'MNLI'} {data / 'SQuAD'}", "--task_name", "mnli"]
        message = "--data_dir lists 2 directories but --task_name lists 1"
    elif case == "unknown":
        args += ["--data_dir", str(data / "MNLI"), "--task_name", "mnlii"]
        message = "unknown task 'mnlii'"
    elif case == "missing_tsv":
        d = write_glue_task(tmp_path / "RTE", "rte")
        (d / "dev.tsv").unlink()
        args += ["--data_dir", f"{data / 'MNLI'} {d}", "--task_name", "mnli rte"]
        message = "GLUE file not found"
    elif case == "short_tsv":
        d = write_glue_task(tmp_path / "MRPC", "mrpc")
        (d / "train.tsv").write_text("Quality\t#1 ID\n1\t2\n")
        args += ["--data_dir", str(d), "--task_name", "mrpc"]
        message = "expected at least 5 tab-separated columns"
    elif case == "bad_json":
        d = write_squad_task(tmp_path / "SQ")
        (d / "dev-v1.1.json").write_text('{"data": [')
        args += ["--data_dir", str(d), "--task_name", "squad"]
        message = "dev-v1.1.json is not valid JSON"
    else:
        cands = tmp_path / "c.cands"
        cands.write_text(format_arch_lines([Arch(layers=3, hidden=32, heads=2, qkv=32, ffn=64)]))
        args += ["--data_dir", str(data / "MNLI"), "--task_name", "mnli", "--arches_file",
                 str(cands)]
        message = "layers 3 exceeds the supernet's 2"
    if case == "arch":  # through the real script: one stderr line, exit 2
        r = cli(*args)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
        assert r.stderr.startswith("error: ") and message in r.stderr
    else:
        with pytest.raises(UserError) as err:
            run_inproc(args)
        assert message in str(err.value)
    assert not (out / "subbert.results").exists()


@pytest.mark.parametrize("scheme", ["mlm", "kd"])
def test_dense_copy_trains_like_the_slice_in_place(scheme):
    """What the evaluator trains (a dense copy of the slice) follows exactly the original's
    in-place fine-tuning of the slice: after BertAdam steps, the slice equals the copy."""
    torch.manual_seed(0)
    cfg = tiny_config(scheme, layers=2, hidden=32, heads=4, qkv=32, ffn=64, vocab_size=50,
                      max_positions=32)
    cfg.num_labels, cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob = 3, 0.0, 0.0
    supernet = AutoTinyBertForSequenceClassification(cfg).eval()
    arch = (Arch(1, 24, 4, 16, 40) if scheme == "kd" else Arch(1, 24, 2, 16, 40))
    dense = inherit(supernet, arch, seed=3, device=torch.device("cpu")).train()
    inplace = AutoTinyBertForSequenceClassification(cfg)
    inplace.load_state_dict(supernet.state_dict())
    init_head(inplace, 3)
    inplace.set_sample_config(arch)
    inplace.train()
    opts = [BertAdam(param_groups(m, 0.01), lr=1e-2, eps=1e-6, weight_decay=0.01)
            for m in (dense, inplace)]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(1, 50, (4, 10), generator=g)
        labels = torch.randint(0, 3, (4,), generator=g)
        for m, opt in zip((dense, inplace), opts):
            m(input_ids=ids, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    got = active_state_dict(inplace)
    for name, tensor in dense.state_dict().items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_feature_cache_and_fp16_on_cpu(tmp_path, supernet, data, monkeypatch, caplog):

    args = ["--data_dir", str(data / "SQuAD"), "--model", str(supernet), "--task_name",
            "squad1", "--cache_dir", str(tmp_path / "cache"), *PROXY, "--no_cuda"]
    with pytest.warns(UserWarning, match="--fp16 needs a GPU"):
        first = run_inproc([*args, "--output_dir", str(tmp_path / "a"), "--fp16"])
    (entry,) = (tmp_path / "cache").glob("features-squad1-*")
    assert sorted(f.name for f in entry.iterdir()) == ["features.json", "features.safetensors"]

    def no_reading(*a, **k):
        raise AssertionError("features were not taken from the cache")

    monkeypatch.setattr(task_features, "_read_task_data", no_reading)
    second = run_inproc([*args, "--output_dir", str(tmp_path / "b")])
    assert (first[0].best, first[0].em) == (second[0].best, second[0].em)
    # other settings make other features
    with pytest.raises(AssertionError, match="not taken from the cache"):
        run_inproc([*args, "--output_dir", str(tmp_path / "c"), "--doc_stride", "20"])


def test_onnx_evaluation_of_a_fine_tuned_model(tmp_path, supernet, data, caplog):
    """--onnx [--int8]: the --save_best_model output exported with its head and scored by ONNX
    Runtime through the same evaluate code; FP32 scores as the torch model did."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    cands = tmp_path / "one.cands"
    cands.write_text(format_arch_lines([SMALL]))
    out = tmp_path / "ft"
    (tuned,) = run_inproc(["--data_dir", str(data / "MNLI"), "--model", str(supernet),
                           "--task_name", "mnli", "--output_dir", str(out), "--arches_file",
                           str(cands), "--save_best_model", "--no_cuda", *PROXY])
    saved = out / "mnli_seed42"
    common = ["--data_dir", str(data / "MNLI"), "--model", str(saved), "--task_name", "mnli",
              "--max_seq_length", "64", "--eval_batch_size", "5", "--do_lower_case"]
    caplog.set_level("INFO", logger="superbert.finetuning")
    fp32, int8 = run_inproc([*common, "--output_dir", str(tmp_path / "dep"), "--onnx", "--int8"])
    assert (fp32.runtime, int8.runtime) == ("onnxruntime-fp32", "onnxruntime-int8")
    assert fp32.best == tuned.best  # the torch evaluation's accuracy of the best model
    assert f"torch acc {tuned.best:.4f}; onnxruntime-fp32 acc {tuned.best:.4f}" in caplog.text
    assert int8.best is not None and 0 <= int8.best <= 1 and int8.infer_cnt == 2
    blocks = read_results(tmp_path / "dep" / "subbert.results")
    assert [(b.runtime, b.arch, b.seed) for b in blocks] == [("onnxruntime-fp32", SMALL, None),
                                                           ("onnxruntime-int8", SMALL, None)]
    assert (tmp_path / "dep" / "mnli_seed42.onnx").is_file()
    assert (tmp_path / "dep" / "mnli_seed42.int8.onnx").is_file()
    assert (tmp_path / "dep-MM" / "eval_results.txt").read_text().count("runtime = ") == 2
    assert not list(saved.glob("*.onnx"))  # the fine-tuned model's directory is left alone
    with pytest.raises(UserError, match="holds fine-tuning results"):
        run_inproc([*common, "--output_dir", str(out), "--onnx"])  # the search's results file


@pytest.mark.parametrize("extra, message", [
    (["--onnx", "--learning_rate", "1e-3"], "--onnx evaluates without training: --learning_rate"),
    (["--onnx", "--seed", "1"], "--seed does not apply"),
    (["--int8"], "--int8 needs --onnx"),
    (["--opset", "15"], "--opset needs --onnx"),
])
def test_onnx_flags_refused_where_they_mean_nothing(extra, message):
    with pytest.raises(UserError, match=message):
        parse_config(["--model", "m", "--output_dir", "o", "--data_dir", "a", "--task_name",
                      "mnli", *extra])


def test_onnx_needs_a_task_head(tmp_path, supernet, data):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    r = cli("--data_dir", str(data / "MNLI"), "--model", str(supernet), "--task_name", "mnli",
            "--output_dir", str(tmp_path / "o"), "--onnx", "--do_lower_case")
    assert r.returncode == 2 and "holds no task head" in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]


@pytest.mark.parametrize("task", ["squad1", "mnli"])
def test_feature_cache_round_trip_and_tampering(tmp_path, supernet, data, task, caplog):
    """The cache holds tensors (safetensors) and JSON, never a pickle: written then read, the
    features are identical; an altered entry is rebuilt with one warning."""
    from superbert.hf import load_tokenizer

    cfg = parse_config(["--data_dir", str(data / ("SQuAD" if task == "squad1" else "MNLI")),
                        "--model", str(supernet), "--task_name", task, "--output_dir", "o",
                        *PROXY]).tasks[0]
    tok = load_tokenizer(supernet, True)
    cache = tmp_path / "cache"
    built = load_task_data(cfg, tok, str(cache), "t")
    (entry,) = cache.iterdir()
    read = read_feature_cache(entry, cfg)

    def same(a, b):
        assert type(a) is type(b)
        for name, value in vars(a).items():
            other = getattr(b, name)
            if isinstance(value, torch.Tensor):
                assert value.dtype == other.dtype and torch.equal(value, other), name
            else:
                assert value == other, name

    for part in ("train", "dev", "dev_mm"):
        if getattr(built, part) is None:
            assert getattr(read, part) is None
        else:
            same(getattr(built, part), getattr(read, part))
    assert read.dev_examples == built.dev_examples and read.num_labels == built.num_labels
    if task == "mnli":
        assert read.dev_mm is not None

    raw = bytearray((entry / "features.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (entry / "features.safetensors").write_bytes(bytes(raw))
    caplog.set_level("INFO", logger="superbert.finetuning")
    again = load_task_data(cfg, tok, str(cache), "t")
    warnings_ = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings_) == 1 and "rebuilding the feature cache" in warnings_[0].message
    assert "does not match the checksum" in warnings_[0].message
    same(again.train, built.train)
    caplog.clear()
    load_task_data(cfg, tok, str(cache), "t")  # the rebuilt entry is good again
    assert "features from the cache" in caplog.text and "rebuilding" not in caplog.text
