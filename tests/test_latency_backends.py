"""The ONNX Runtime latency backends: a dataset timed with --backend onnxruntime trains a
predictor that remembers its backend, Candidate / Fast / --measure run on it end to end (and
--measure times with ONNX Runtime), backends never mix, and a missing onnxruntime or an unknown
backend is one line, exit 2."""
import json
import sys
from pathlib import Path

import pytest
import torch

import inference_time_evaluation
import latency_predictor
import searcher
import superbert.deploy as deploy
from superbert.arch import Arch
from superbert.cli import run_main
from superbert.latency import LatencyPredictor, read_latency_dataset
from tests.helpers import make_tiny_supernet

BASE = Arch(2, 32, 4, 32, 64)  # a tiny reference keeps the run short
SPACE = ["--hidden_size_space", "8", "32", "--intermediate_size_space", "8", "64",
         "--qkv_size_space", "8", "32"]


def timing_args(model, out, backend, num_archs=12):
    return ["--bert_model", str(model), "--num_archs", str(num_archs), "--infer_cnt", "2",
            "--warmup", "0", "--max_seq_length", "16", "--backend", backend, "--output", str(out),
            "--base_arch", str(BASE), "--no_progress", *SPACE]


def one_error_line(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run_main(main, [str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def ort(tmp_path_factory):
    d = tmp_path_factory.mktemp("ort")
    model = make_tiny_supernet(d / "supernet", scheme="kd", layers=2, hidden=32, heads=4, ffn=64)
    out = d / "ort" / "lat.tmp"
    inference_time_evaluation.main(timing_args(model, out, "onnxruntime"))
    return d, model, out


def test_onnxruntime_dataset_records_its_backend(ort):
    d, model, out = ort
    records = read_latency_dataset(out)
    assert len({a for a, _ in records}) == 12 and all(ms > 0 for _, ms in records)
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["backend"] == "onnxruntime" and side["protocol"]["backend"] == "onnxruntime"
    runtime = side["runtime"]
    assert runtime["backend"] == "onnxruntime" and runtime["precision"] == "fp32"
    assert runtime["ort_version"] == __import__("onnxruntime").__version__
    assert "CPUExecutionProvider" in runtime["providers"]
    assert runtime["session_providers"] == ["CPUExecutionProvider"]
    assert side["base_latency_ms"] > 0 and Arch.parse(side["base_arch"]) == BASE


def test_predictor_candidate_fast_and_measure_on_onnxruntime(ort, tmp_path, capsys, monkeypatch):
    d, model, out = ort
    ckpt = tmp_path / "time.pt"
    latency_predictor.main(["--lat_dataset_path", str(out), "--ckpt_path", str(ckpt),
                            "--predictor", "cost", "--plot", str(tmp_path / "p.png"),
                            "--no_progress"])
    assert "onnxruntime timings" in capsys.readouterr().out
    pred = LatencyPredictor.load(ckpt)
    assert pred.backend == "onnxruntime"
    assert torch.load(ckpt, weights_only=True)["backend"] == "onnxruntime"
    # a latency constraint that puts an arch passing Fast's ratio rule in the (wide) window:
    # the other five such archs of this grid (hidden 24/32) are within its factor
    mid = Arch(1, 24, 4, 24, 40)
    speedup = pred.base_latency_ms / pred.predict_one(mid)
    common = ["--ckpt_path", ckpt, "--bert_model", model, "--latency_constraint", speedup,
              "--lat_min_ratio", 0.3, "--lat_max_ratio", 3.0, "--hidden_step", 8, "--ffn_step", 8,
              "--qkv_step", 8, "--layer_num_space", 1, 2, *SPACE, "--no_progress"]
    cands = tmp_path / "cands"
    searcher.main([str(a) for a in ["--method", "Candidate", "--candidate_file", cands, *common]])
    assert mid in {Arch.parse(line) for line in cands.read_text().splitlines()}
    # --measure times with the predictor's backend, the reference too
    timed = []
    real = deploy.OnnxTimingBackend.time

    def spy(self, arch, *args, **kwargs):
        timed.append((self.backend, arch))
        return real(self, arch, *args, **kwargs)

    monkeypatch.setattr(deploy.OnnxTimingBackend, "time", spy)
    gen = tmp_path / "fast.cands"
    searcher.main([str(a) for a in ["--method", "Fast", "--candidate_file", cands,
                                    "--output_file", gen, "--gen_size", 2, "--measure", 2,
                                    *common]])
    printed = capsys.readouterr().out
    written = [Arch.parse(line) for line in gen.read_text().splitlines()]
    assert len(written) == 2
    assert "with the onnxruntime backend" in printed
    assert {b for b, _ in timed} == {"onnxruntime"}
    assert [a for _, a in timed] == [BASE, *written, BASE]
    for a in written:
        assert a.short() in printed


def test_backends_never_mix(ort, tmp_path, capsys):
    d, model, out = ort
    # resuming the onnxruntime dataset with torch timings is refused, the file untouched
    before = out.read_text()
    says = one_error_line(inference_time_evaluation.main,
                          timing_args(model, out, "torch", num_archs=13), capsys)
    assert "--backend onnxruntime" in says and "--backend torch" in says
    assert out.read_text() == before
    # a torch dataset and the onnxruntime one fitted together: one line, nothing written
    torch_out = tmp_path / "torch" / "lat.tmp"
    inference_time_evaluation.main(timing_args(model, torch_out, "torch", num_archs=3))
    assert json.loads(Path(str(torch_out) + ".json").read_text())["backend"] == "torch"
    ckpt = tmp_path / "time.pt"
    says = one_error_line(latency_predictor.main, ["--lat_dataset_path", torch_out, out,
                                                   "--ckpt_path", ckpt, "--predictor", "cost"],
                          capsys)
    assert "different backends" in says and "torch vs onnxruntime" in says
    assert not ckpt.exists()
    # two datasets of one backend fit together: the records of both, the mean reference
    copy = tmp_path / "ort2" / "lat.tmp"
    inference_time_evaluation.main(timing_args(model, copy, "onnxruntime", num_archs=3)
                                   [:-len(SPACE)] + ["--seed", "7", *SPACE])
    latency_predictor.main(["--lat_dataset_path", str(out), str(copy), "--ckpt_path", str(ckpt),
                            "--predictor", "cost", "--no_progress"])
    pred = LatencyPredictor.load(ckpt)
    bases = [json.loads(Path(str(p) + ".json").read_text())["base_latency_ms"] for p in (out, copy)]
    assert pred.backend == "onnxruntime"
    assert pred.base_latency_ms == pytest.approx(sum(bases) / 2)
    assert pred.meta["n_archs"] == len({a for p in (out, copy) for a, _ in read_latency_dataset(p)})


def test_old_time_pt_without_backend_means_torch(ort, tmp_path):
    d, model, out = ort
    ckpt = tmp_path / "time.pt"
    latency_predictor.main(["--lat_dataset_path", str(out), "--ckpt_path", str(ckpt),
                            "--predictor", "cost", "--no_progress"])
    blob = torch.load(ckpt, weights_only=True)
    del blob["backend"]
    torch.save(blob, tmp_path / "old.pt")
    assert LatencyPredictor.load(tmp_path / "old.pt").backend == "torch"


def test_unknown_backend_exits_2(tmp_path, capsys):
    says = one_error_line(inference_time_evaluation.main,
                          ["--backend", "tensorrt", "--output", tmp_path / "lat.tmp"], capsys)
    assert "tensorrt" in says and "onnxruntime-int8" in says
    assert not (tmp_path / "lat.tmp").exists()


@pytest.mark.parametrize("backend", ["onnxruntime", "onnxruntime-int8"])
def test_missing_onnxruntime_is_one_line_how_to_install(backend, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises
    says = one_error_line(inference_time_evaluation.main,
                          ["--backend", backend, "--output", tmp_path / "lat.tmp",
                           "--num_archs", "2"], capsys)
    assert 'pip install "superbert[onnx]"' in says
    assert not (tmp_path / "lat.tmp").exists()


def test_int8_backend_times_and_records_its_precision(ort, tmp_path):
    d, model, out = ort
    q8 = tmp_path / "lat.tmp"
    inference_time_evaluation.main(timing_args(model, q8, "onnxruntime-int8", num_archs=2))
    assert len(read_latency_dataset(q8)) == 2
    side = json.loads(Path(str(q8) + ".json").read_text())
    assert side["backend"] == "onnxruntime-int8" and side["runtime"]["precision"] == "int8"


@pytest.mark.parametrize("backend", ["onnxruntime", "onnxruntime-int8"])
def test_dataset_exports_and_quantises_each_arch_once_over_passes(backend, ort, tmp_path,
                                                                  monkeypatch):
    d, model, _ = ort
    counts = {"export_model": 0, "quantize_int8": 0}
    for name in counts:
        def counted(*args, _real=getattr(deploy, name), _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(deploy, name, counted)
    out = tmp_path / "lat.tmp"
    inference_time_evaluation.main(timing_args(model, out, backend, num_archs=4)
                                   + ["--passes", "2"])
    records = read_latency_dataset(out)
    assert len(records) == 8 and len({a for a, _ in records}) == 4
    # 4 archs and the reference, each exported (and quantised) once for both passes
    assert counts["export_model"] == 5
    assert counts["quantize_int8"] == (5 if backend.endswith("int8") else 0)
