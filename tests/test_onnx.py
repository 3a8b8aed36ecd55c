"""ONNX export and ONNX Runtime inference (superbert/deploy.py): the exported graph computes what
the extracted torch model computes, at batch and sequence sizes it was not traced at."""
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from superbert import deploy
from superbert.arch import Arch, SearchSpace
from superbert.deploy import (Head, OrtModel, OrtTaskModel, export_onnx, ort_info, read_sidecar,
                              time_onnx)
from superbert.errors import UserError
from superbert.hf import extract_to_dir, load_model, save_model
from superbert.modeling import (AutoTinyBertForQuestionAnswering,
                                AutoTinyBertForSequenceClassification, AutoTinyBertModel)
from tests.helpers import VOCAB, make_tiny_supernet
from superbert.timing_protocol import TimingProtocol

TOL = 1e-4


def padded_batch(B, T, seed=0):
    """Rows of decreasing length (padding in the batch), two segments."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30522, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for row in range(1, B):
        mask[row, max(2, T - 3 * row):] = 0
    ids[mask == 0] = 0
    segments = torch.zeros(B, T, dtype=torch.long)
    segments[:, T // 2:] = 1
    return ids, mask, segments


def max_diff(ort_out, torch_out):
    return float(np.max(np.abs(ort_out - torch_out.numpy())))


@pytest.fixture(scope="module")
def supernets(tmp_path_factory):
    root = tmp_path_factory.mktemp("supernets")
    # 4 heads over qkv 64: head width 16 (MLM), 4 heads of 12 at qkv 48 (KD): never 64.
    return {scheme: make_tiny_supernet(root / scheme, scheme, seed=1, layers=3, hidden=64,
                                       heads=4, qkv=64, ffn=128)
            for scheme in ("mlm", "kd")}


def random_archs(supernet, scheme, n, seed):
    from superbert.hf import load_config

    config = load_config(supernet)
    space = SearchSpace.for_supernet(config, hidden=(8, 64), hidden_step=4, ffn=(4, 128),
                                     ffn_step=4, qkv=(4, 64))
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


def extracted(supernets, scheme, arch, tmp_path):
    _, out = extract_to_dir(supernets[scheme], arch, tmp_path / "sub")
    return out


FIXED = [("mlm", Arch(2, 48, 2, 32, 96)),   # 2 heads of 16
         ("kd", Arch(3, 56, 4, 48, 80)),    # 4 heads of 12
         ("kd", Arch(1, 64, 4, 64, 128))]   # the whole supernet


@pytest.mark.parametrize("scheme, arch", FIXED)
def test_encoder_matches_torch_on_padded_batches_of_new_lengths(supernets, scheme, arch,
                                                                 tmp_path):
    model_dir = extracted(supernets, scheme, arch, tmp_path)
    files = export_onnx(model_dir)
    assert files.fp32 == model_dir / "model.onnx" and files.int8 is None
    torch_model = load_model(model_dir, AutoTinyBertModel)
    torch_model.train()
    deploy.export_model(torch_model, tmp_path / "again.onnx")
    assert torch_model.training  # its mode is restored
    torch_model.eval()
    session = OrtModel(files.fp32, threads=1)
    # Traced at batch 2 x 7: other batch sizes and lengths run through the same graph.
    for B, T in ((3, 13), (1, 40), (4, 5)):
        ids, mask, segments = padded_batch(B, T, seed=T)
        got = session(ids, mask, segments)
        with torch.no_grad():
            want = torch_model(ids, attention_mask=mask, token_type_ids=segments)
        assert got["last_hidden_state"].shape == (B, T, arch.hidden)
        assert max_diff(got["last_hidden_state"], want.last_hidden_state) <= TOL
        assert max_diff(got["pooler_output"], want.pooler_output) <= TOL


def test_random_archs_of_both_schemes(supernets, tmp_path):
    """Archs drawn from the whole space (any head width the grid allows)."""
    for scheme in ("mlm", "kd"):
        for i, arch in enumerate(random_archs(supernets[scheme], scheme, 2, seed=7)):
            model_dir = extracted(supernets, scheme, arch, tmp_path / f"{scheme}{i}")
            files = export_onnx(model_dir, tmp_path / f"{scheme}{i}.onnx")
            ids, mask, segments = padded_batch(3, 21, seed=i)
            got = OrtModel(files.fp32)(ids, mask, segments)
            with torch.no_grad():
                want = load_model(model_dir, AutoTinyBertModel)(ids, mask, segments)
            assert max_diff(got["last_hidden_state"], want.last_hidden_state) <= TOL, arch
            assert read_sidecar(files.fp32)["arch"] == str(arch)


def test_graph_inputs_axes_opset_and_sidecar(supernets, tmp_path):
    arch = Arch(2, 48, 4, 48, 96)
    model_dir = extracted(supernets, "kd", arch, tmp_path)
    files = export_onnx(model_dir, tmp_path / "out" / "enc.onnx", opset=18)
    graph = onnx.load(str(files.fp32))
    assert [i.name for i in graph.graph.input] == list(deploy.INPUT_NAMES)
    for i in graph.graph.input:
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert [o.name for o in graph.graph.output] == ["last_hidden_state", "pooler_output"]
    assert {o.domain: o.version for o in graph.opset_import}[""] == 18
    meta = json.loads((tmp_path / "out" / "enc.onnx.json").read_text())
    assert meta["opset"] == 18 and meta["head"] == "encoder" and meta["scheme"] == "kd"
    assert Arch.parse(meta["arch"]) == arch
    assert meta["torch_version"] == torch.__version__
    assert meta["onnx_version"] == onnx.__version__
    assert meta["max_abs_diff_vs_torch"] <= TOL
    # Nothing else left beside the output (the staging directory is gone).
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["enc.onnx", "enc.onnx.json"]


def finetuned_dir(supernets, cls, tmp_path, num_labels=3):
    """A directory as the evaluator's --save_best_model writes it (head weights included)."""
    arch = Arch(2, 40, 4, 24, 72)  # KD: 4 heads of 6
    model_dir = extracted(supernets, "kd", arch, tmp_path)
    kwargs = {"num_labels": num_labels} if cls is AutoTinyBertForSequenceClassification else {}
    model = load_model(model_dir, cls, **kwargs)
    torch.manual_seed(3)
    with torch.no_grad():  # a trained head is not the zero-bias init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return save_model(model, tmp_path / "best", VOCAB)


def test_sequence_classification_head(supernets, tmp_path):
    out = finetuned_dir(supernets, AutoTinyBertForSequenceClassification, tmp_path)
    assert Head.of_model_dir(out) is Head.SEQUENCE_CLASSIFICATION
    files = export_onnx(out, head="auto")
    session = OrtModel(files.fp32)
    assert session.output_names == ("logits",)
    torch_model = load_model(out, AutoTinyBertForSequenceClassification)
    ids, mask, segments = padded_batch(5, 17)
    with torch.no_grad():
        want = torch_model(ids, attention_mask=mask, token_type_ids=segments).logits
    got = session(ids, mask, segments)["logits"]
    assert got.shape == (5, 3)
    assert max_diff(got, want) <= TOL
    assert read_sidecar(files.fp32)["num_labels"] == 3
    # The evaluator's view: same call, same output type, same loss.
    labels = torch.tensor([0, 2, 1, 1, 0])
    ort_model = OrtTaskModel(files.fp32)
    assert not ort_model.training
    got = ort_model(input_ids=ids, attention_mask=mask, token_type_ids=segments, labels=labels)
    with torch.no_grad():
        want = torch_model(input_ids=ids, attention_mask=mask, token_type_ids=segments,
                           labels=labels)
    assert max_diff(got.logits.numpy(), want.logits) <= TOL
    assert abs(float(got.loss) - float(want.loss)) <= TOL


def test_question_answering_head(supernets, tmp_path):
    out = finetuned_dir(supernets, AutoTinyBertForQuestionAnswering, tmp_path)
    files = export_onnx(out, head="question-answering")
    torch_model = load_model(out, AutoTinyBertForQuestionAnswering)
    ids, mask, segments = padded_batch(2, 23)
    with torch.no_grad():
        want = torch_model(ids, attention_mask=mask, token_type_ids=segments)
    got = OrtModel(files.fp32)(ids, mask, segments)
    assert max_diff(got["start_logits"], want.start_logits) <= TOL
    assert max_diff(got["end_logits"], want.end_logits) <= TOL
    qa = OrtTaskModel(files.fp32)(input_ids=ids, attention_mask=mask, token_type_ids=segments)
    assert max_diff(qa.start_logits.numpy(), want.start_logits) <= TOL
    # A QA model has no pooler: its encoder export has one output, and is no task model.
    enc = export_onnx(out, tmp_path / "enc.onnx")
    assert OrtModel(enc.fp32).output_names == ("last_hidden_state",)
    with pytest.raises(UserError, match="encoder graph"):
        OrtTaskModel(enc.fp32)


def test_int8_is_written_runs_and_stays_close(supernets, tmp_path):
    arch = Arch(3, 64, 4, 48, 128)
    model_dir = extracted(supernets, "kd", arch, tmp_path)
    files = export_onnx(model_dir, int8=True)
    assert files.int8 == model_dir / "model.int8.onnx" and files.int8.is_file()
    assert files.int8.stat().st_size < files.fp32.stat().st_size
    ops = {n.op_type for n in onnx.load(str(files.int8)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}, ops
    meta = read_sidecar(files.int8)
    assert meta["precision"] == "int8" and meta["quantization"]["weight_type"] == "QInt8"
    assert meta["quantization"]["per_channel"] is True
    ids, mask, segments = padded_batch(3, 30)
    fp32 = OrtModel(files.fp32)(ids, mask, segments)["last_hidden_state"]
    int8 = OrtModel(files.int8)(ids, mask, segments)["last_hidden_state"]
    assert int8.shape == fp32.shape and np.isfinite(int8).all()
    a, b = fp32.ravel(), int8.ravel()
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert cosine > 0.9, cosine
    assert not np.array_equal(a, b)  # it really is another graph
    # Exporting FP32 alone again removes the INT8 graph that no longer matches it.
    export_onnx(model_dir)
    assert not files.int8.exists() and not deploy.sidecar_path(files.int8).exists()


def test_time_onnx_follows_the_timing_protocol(supernets, tmp_path):
    arch = Arch(1, 32, 2, 32, 64)
    model_dir = extracted(supernets, "mlm", arch, tmp_path)
    files = export_onnx(model_dir, int8=True)
    for path in (files.fp32, files.int8):
        t = time_onnx(path, TimingProtocol(infer_cnt=3, seq_len=16, batch_size=2))
        assert t.arch == arch and t.runs == 3
        assert 0 < t.min_ms <= t.median_ms and t.ms == t.median_ms
    t = time_onnx(files.fp32, TimingProtocol(infer_cnt=2, statistic="min", clock="cpu"))
    assert t.ms == t.min_ms
    with pytest.raises(UserError, match="max_position_embeddings"):
        time_onnx(files.fp32, TimingProtocol(seq_len=129))
    with pytest.raises(UserError, match="torch backend"):
        time_onnx(files.fp32, TimingProtocol(subject="supernet"))
    info = ort_info()
    assert "CPUExecutionProvider" in info["providers"] and info["ort_version"]


def test_onnx_timing_backend_exports_each_arch_once(supernets, monkeypatch):
    from superbert.hf import load_config
    from superbert.modeling import sub_config

    base = load_config(supernets["kd"])
    base.vocab_size = 5000  # below the timing token: the last id is used instead
    built = []

    def build(arch):
        built.append(arch)
        return AutoTinyBertModel(sub_config(base, arch)).eval()

    a, b, c = Arch(1, 24, 4, 24, 48), Arch(1, 32, 4, 48, 64), Arch(2, 16, 4, 16, 32)
    protocol = TimingProtocol(infer_cnt=2, seq_len=8)
    for backend in ("onnxruntime", "onnxruntime-int8"):
        built.clear()
        with deploy.OnnxTimingBackend(backend, keep=2) as timer:
            for arch in (a, b, a, c, a, b):
                t = timer.time(arch, lambda: build(arch), protocol)
                assert t.arch == arch and t.runs == 2 and t.ms > 0
            # every graph kept: b, dropped from the open sessions, is reopened, not re-exported
            assert built == [a, b, c] and timer.exports == 3
            assert len(timer._sessions) == 2 and list(timer._sessions) == [a, b]
            assert len(list(Path(timer._tmp.name).glob("*.onnx"))) == 3
            assert timer.info()["precision"] == ("int8" if backend.endswith("int8") else "fp32")
            tmp = Path(timer._tmp.name)
        assert not tmp.exists()
    # over its byte budget the backend removes graphs without an open session (and re-exports
    # them when asked again)
    built.clear()
    with deploy.OnnxTimingBackend("onnxruntime", keep=1, max_bytes=0) as timer:
        for arch in (a, b, a):
            timer.time(arch, lambda: build(arch), protocol)
        assert built == [a, b, a]
        assert len(list(Path(timer._tmp.name).glob("*.onnx"))) == 1
    with pytest.raises(UserError, match="unknown ONNX backend"):
        deploy.OnnxTimingBackend("tensorrt")


def test_timed_int8_graph_quantises_every_linear(supernets):
    # The timer's random weights are all different: the exporter merges equal initializers, and
    # ORT's quantiser leaves a MatMul whose weight is shared in FP32.
    from superbert.hf import load_config
    from superbert.latency import Timer

    config = load_config(supernets["kd"])
    arch = Arch(2, 32, 4, 32, 64)
    with Timer(config, "kd", TimingProtocol(infer_cnt=1, seq_len=8,
                                            backend="onnxruntime-int8")) as timer:
        model = timer.build(arch)
        timer.time(arch)
        graph = onnx.load(str(next(iter(timer.onnx._graphs.values()))))
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    ops = [n.op_type for n in graph.graph.node]
    assert linears == 2 * 6 + 1 and ops.count("MatMulInteger") == linears
    # the timing export's small word-embedding table (every timed token is the same id)
    assert model.embeddings.word_embeddings.num_embeddings == min(config.vocab_size, 1024)


# ---- user errors -------------------------------------------------------------------------------
def test_directory_without_weights_is_one_user_error(supernets, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((supernets["kd"] / "config.json").read_text())
    with pytest.raises(UserError, match="no weights in .*submodel_extractor.py"):
        export_onnx(bare)
    with pytest.raises(UserError, match="not found"):
        export_onnx(tmp_path / "missing")
    assert list(bare.iterdir()) == [bare / "config.json"]


def test_bad_requests_are_user_errors(supernets, tmp_path):
    model_dir = extracted(supernets, "mlm", Arch(1, 32, 2, 32, 64), tmp_path)
    with pytest.raises(UserError, match="no sequence-classification head"):
        export_onnx(model_dir, head="sequence-classification")  # an extracted MLM model
    with pytest.raises(UserError, match="unknown head"):
        export_onnx(model_dir, head="tagging")
    with pytest.raises(UserError, match="opset"):
        export_onnx(model_dir, opset=9)
    with pytest.raises(UserError, match=r"\.onnx"):
        export_onnx(model_dir, tmp_path / "model.bin")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph")
    with pytest.raises(UserError, match="cannot load ONNX model"):
        OrtModel(junk)
    with pytest.raises(UserError, match="not found"):
        OrtModel(tmp_path / "absent.onnx")


def test_a_failed_export_leaves_nothing_behind(supernets, tmp_path, monkeypatch):
    model_dir = extracted(supernets, "mlm", Arch(1, 32, 2, 32, 64), tmp_path)
    before = sorted(p.name for p in model_dir.iterdir())

    def broken(*args, **kwargs):
        raise RuntimeError("quantiser crashed")

    monkeypatch.setattr(deploy, "quantize_int8", broken)
    with pytest.raises(RuntimeError, match="quantiser crashed"):
        export_onnx(model_dir, int8=True)
    assert sorted(p.name for p in model_dir.iterdir()) == before


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_missing_onnx_packages_are_one_user_error(supernets, tmp_path, monkeypatch, missing):
    model_dir = extracted(supernets, "mlm", Arch(1, 32, 2, 32, 64), tmp_path)
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    for call in (lambda: export_onnx(model_dir), lambda: OrtModel(tmp_path / "m.onnx"),
                 lambda: time_onnx(tmp_path / "m.onnx"), ort_info):
        with pytest.raises(UserError, match=r'pip install "superbert\[onnx\]"'):
            call()
    assert not (model_dir / "model.onnx").exists()
