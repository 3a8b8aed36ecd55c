"""Deploy what was searched: export an extracted (or fine-tuned) model to ONNX, run it and time
it with ONNX Runtime on CPU.

Files written by `export_onnx(model_dir)` (beside the weights unless `out_path` says otherwise):

    model.onnx            FP32 graph. Inputs input_ids, attention_mask, token_type_ids (int64,
                          [batch, sequence], both axes dynamic). Outputs by head:
                            encoder                  last_hidden_state [batch, sequence, hidden],
                                                     pooler_output [batch, hidden] (when the
                                                     checkpoint has a pooler)
                            sequence-classification  logits [batch, num_labels]
                            question-answering       start_logits, end_logits [batch, sequence]
    model.int8.onnx       (int8=True) the same graph after ONNX Runtime's dynamic quantiser:
                          QInt8 weights with per-channel scales, activations quantised at run
                          time.
    model.onnx.json       sidecar of each .onnx file (`<file>.json`, as the latency dataset's):
                          format, file, precision, head, inputs, outputs, opset, exporter, arch,
                          scheme, vocab_size, max_position_embeddings, torch / onnx /
                          onnxruntime versions, and the measured max |ONNX - torch| of the
                          export check.

The exporter is torch's TorchScript tracer (`torch.onnx.export(dynamo=False)`): it works offline
with torch alone, while the dynamo exporter needs onnxscript. The tracer puts the module in eval
mode and afterwards restores the mode of the module it was given, recursively (a wrapper left in
training mode would switch dropout on in the model it wraps); `export_model` restores the
model's own mode itself.

`time_onnx` times an ONNX file under `TimingProtocol` (threads, batch x seq of token
9333, warm-up, timed runs, median/min, wall/cpu clock), so its numbers sit beside the torch
backend's. `OnnxTimingBackend` is what `latency.Timer` delegates to for
`inference_time_evaluation.py --backend onnxruntime | onnxruntime-int8`; its `info()` (backend,
precision, opset, exporter, ONNX Runtime version, available and session providers) is the
latency dataset sidecar's "runtime".

onnx and onnxruntime are optional (`pip install "superbert[onnx]"`); they are imported when a
function here needs them.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .arch import Arch
from .errors import UserError
from .io import read_json, staging_dir
from .timing_protocol import BACKENDS, TIMING_TOKEN_ID, Timing, TimingProtocol

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "superbert-onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# LayerNormalization is a single op from opset 17; scaled_dot_product_attention needs 14; the
# TorchScript exporter stops at 20.
DEFAULT_OPSET = 17
OPSETS = range(14, 21)
EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript tracer)"
INSTALL_HINT = 'pip install "superbert[onnx]" (or: pip install onnx onnxruntime)'
# Per-channel weight scales: on MiniLM-L6 one scale per tensor moves the encoder output to
# cosine 0.87-0.94 of FP32, one per output column to 0.99, at the same speed.
PER_CHANNEL = True
# An export whose outputs differ from torch's by more than this is logged as suspicious.
CHECK_TOLERANCE = 1e-3


class Head(StrEnum):
    """What the graph computes: the bare encoder, or a fine-tuned task head."""

    ENCODER = "encoder"
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    QUESTION_ANSWERING = "question-answering"

    @classmethod
    def parse(cls, text: "str | Head | None") -> "Head":
        if text is None:
            return cls.ENCODER
        try:
            return cls(str(text).strip().lower().replace("_", "-"))
        except ValueError:
            raise UserError(f"unknown head {text!r}: expected one of "
                            f"{', '.join(h.value for h in cls)}") from None

    @classmethod
    def of_model_dir(cls, model_dir: str | os.PathLike) -> "Head":
        """The head a saved directory was written with (config.json `architectures`), e.g. the
        evaluator's --save_best_model output; the encoder for an extracted model."""
        from .hf import read_config_json

        names = " ".join(str(n) for n in read_config_json(model_dir).get("architectures") or [])
        if "ForSequenceClassification" in names:
            return cls.SEQUENCE_CLASSIFICATION
        if "ForQuestionAnswering" in names:
            return cls.QUESTION_ANSWERING
        return cls.ENCODER


# The checkpoint entry a head's weights must include (a missing head would be initialised
# fresh by the loader, and a random classifier exported without a word).
HEAD_KEY = {Head.SEQUENCE_CLASSIFICATION: "classifier.weight",
            Head.QUESTION_ANSWERING: "qa_outputs.weight"}
POOLER_KEY = "bert.pooler.dense.weight"


@dataclass(frozen=True)
class OnnxFiles:
    """What `export_onnx` wrote."""

    fp32: Path
    int8: Path | None
    sidecars: tuple[Path, ...]


def require_onnx() -> tuple[ModuleType, ModuleType]:
    """onnx and onnxruntime, or one UserError saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise UserError(f"ONNX export and inference need onnx and onnxruntime ({err}); "
                        f"install them with: {INSTALL_HINT}") from None
    return onnx, onnxruntime


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    return Path(str(onnx_path) + ".json")


def int8_path(onnx_path: str | os.PathLike) -> Path:
    """model.onnx -> model.int8.onnx"""
    p = Path(onnx_path)
    return p.with_name(p.name[: -len(".onnx")] + ".int8.onnx")


def read_sidecar(onnx_path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of an ONNX file, or None when there is none."""
    path = sidecar_path(onnx_path)
    if not path.is_file():
        return None
    data = read_json(path, "ONNX sidecar")
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{path} is not a superbert ONNX sidecar")
    return data


# ---- export ------------------------------------------------------------------------------------
def output_names(model: nn.Module, head: Head) -> tuple[str, ...]:
    if head is Head.SEQUENCE_CLASSIFICATION:
        return ("logits",)
    if head is Head.QUESTION_ANSWERING:
        return ("start_logits", "end_logits")
    if getattr(model, "pooler", None) is None:
        return ("last_hidden_state",)
    return ("last_hidden_state", "pooler_output")


class _Graph(nn.Module):
    """The model as the graph sees it: three int64 inputs, a tuple of named outputs."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.outputs = outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(getattr(out, name) for name in self.outputs)


def example_inputs(batch: int, seq: int, vocab_size: int, seed: int = 0,
                   pad_from: int | None = None) -> dict[str, torch.Tensor]:
    """Random ids, two segments, and (with `pad_from`) the last rows padded from that position."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1
    if pad_from is not None:
        mask[batch // 2:, pad_from:] = 0
        ids[batch // 2:, pad_from:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def check_opset(opset: int) -> None:
    if opset not in OPSETS:
        raise UserError(f"opset {opset} is not supported: choose {OPSETS.start}..{OPSETS.stop - 1}")


def export_model(model: nn.Module, path: str | os.PathLike, head: Head | str | None = None,
                 opset: int = DEFAULT_OPSET) -> tuple[str, ...]:
    """Trace an in-memory model to an ONNX file at `path` (written in place: callers stage it).

    Returns the output names. Used by `export_onnx` and by timing backends that export
    random-weight models of each arch.
    """
    require_onnx()
    head = Head.parse(head)
    check_opset(opset)
    outputs = output_names(model, head)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}
    for name in outputs:
        axes[name] = {0: "batch"} if name in ("pooler_output", "logits") else {0: "batch",
                                                                               1: "sequence"}
    # Batch and sequence differ, so the tracer cannot mistake one for the other.
    example = example_inputs(2, 7, int(model.config.vocab_size), pad_from=5)
    was_training = model.training
    graph = _Graph(model, outputs).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # TracerWarnings about Python branches on sizes fixed by the config, and the
            # deprecation notice of the TorchScript exporter.
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, tuple(example[n] for n in INPUT_NAMES), str(path),
                              dynamo=False, opset_version=opset, input_names=list(INPUT_NAMES),
                              output_names=list(outputs), dynamic_axes=axes,
                              do_constant_folding=True)
    finally:
        model.train(was_training)
    return outputs


def quantize_int8(fp32_path: str | os.PathLike, int8_out: str | os.PathLike,
                  per_channel: bool = PER_CHANNEL) -> None:
    """ONNX Runtime's dynamic quantiser: QInt8 weights (a scale per output column with
    `per_channel`), activations quantised per call."""
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser logs a line per tensor on the root logger at INFO, and a pre-processing
    # hint at WARNING: silenced while it runs.
    was = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(fp32_path), str(int8_out), weight_type=QuantType.QInt8,
                             per_channel=per_channel)
    finally:
        logging.disable(was)


def load_for_export(model_dir: str | os.PathLike, head: Head) -> nn.Module:
    """The model of an extracted or fine-tuned directory, with `head`, in eval mode."""
    from .hf import has_weights, load_config, load_weights, normalize_keys, read_state_dict
    from .modeling import (AutoTinyBertForQuestionAnswering,
                           AutoTinyBertForSequenceClassification, AutoTinyBertModel)

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"model directory not found: {model_dir}")
    if not has_weights(model_dir):
        raise UserError(f"no weights in {model_dir}: run submodel_extractor.py first (or export "
                        f"a fine-tuned model saved with --save_best_model)")
    config = load_config(model_dir)
    config.fit_size = None  # the KD projection is a training-time layer, never deployed
    state = normalize_keys(read_state_dict(model_dir))
    if head is Head.ENCODER:
        model = AutoTinyBertModel(config, add_pooling_layer=POOLER_KEY in state)
    else:
        if HEAD_KEY[head] not in state:
            found = Head.of_model_dir(model_dir)
            raise UserError(f"{model_dir} holds no {head.value} head ({HEAD_KEY[head]} is "
                            f"missing; the directory holds a {found.value} model)")
        cls = (AutoTinyBertForSequenceClassification if head is Head.SEQUENCE_CLASSIFICATION
               else AutoTinyBertForQuestionAnswering)
        model = cls(config)
    load_weights(model, state, str(model_dir))
    return model.float().eval()


def export_onnx(model_dir: str | os.PathLike, out_path: str | os.PathLike | None = None,
                head: Head | str | None = None, opset: int = DEFAULT_OPSET,
                int8: bool = False) -> OnnxFiles:
    """Export the model in `model_dir` to `out_path` (default `<model_dir>/model.onnx`), and
    with `int8` also `model.int8.onnx`; each file gets a `<file>.json` sidecar.

    `head`: None or "encoder" (last_hidden_state, pooler_output), "sequence-classification",
    "question-answering", or "auto" (the head config.json names). The exported graph is run
    once with ONNX Runtime against torch on a padded batch; the max difference goes into the
    sidecar. All files appear together (staged beside the target, then moved in, sidecars
    last).
    """
    require_onnx()
    model_dir = Path(model_dir)
    head = Head.of_model_dir(model_dir) if str(head).lower() == "auto" else Head.parse(head)
    fp32 = Path(out_path) if out_path is not None else model_dir / "model.onnx"
    if fp32.is_dir():
        fp32 = fp32 / "model.onnx"
    if fp32.suffix != ".onnx":
        raise UserError(f"the ONNX output must end in .onnx, got {fp32}")
    check_opset(opset)
    model = load_for_export(model_dir, head)
    q8 = int8_path(fp32) if int8 else None
    with staging_dir(fp32) as tmp:
        outputs = export_model(model, tmp / fp32.name, head, opset)
        meta = _sidecar(model, model_dir, fp32.name, head, outputs, opset, "fp32")
        meta["max_abs_diff_vs_torch"] = check_export(model, tmp / fp32.name, outputs)
        if meta["max_abs_diff_vs_torch"] > CHECK_TOLERANCE:
            logger.warning("%s: ONNX outputs differ from torch by up to %.2g", fp32,
                           meta["max_abs_diff_vs_torch"])
        metas = {fp32.name: meta}
        if q8 is not None:
            quantize_int8(tmp / fp32.name, tmp / q8.name)
            metas[q8.name] = {**meta, "file": q8.name, "precision": "int8",
                              "quantization": {"method": "onnxruntime.quantization."
                                                         "quantize_dynamic",
                                               "weight_type": "QInt8",
                                               "per_channel": PER_CHANNEL},
                              "max_abs_diff_vs_torch": check_export(model, tmp / q8.name,
                                                                    outputs)}
        for name, data in metas.items():
            sidecar_path(tmp / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        fp32.parent.mkdir(parents=True, exist_ok=True)
        for name in metas:  # graphs first, then their sidecars
            os.replace(tmp / name, fp32.parent / name)
        for name in metas:
            os.replace(sidecar_path(tmp / name), sidecar_path(fp32.parent / name))
    stale = int8_path(fp32)
    if q8 is None and stale.exists():
        # An INT8 graph of an earlier export would sit beside a FP32 graph it no longer matches.
        logger.info("removing %s, left by an earlier export", stale)
        stale.unlink()
        sidecar_path(stale).unlink(missing_ok=True)
    logger.info("wrote %s%s (%s, opset %d, max |onnx - torch| %.2g)", fp32,
                f" and {q8.name}" if q8 else "", head.value, opset, meta["max_abs_diff_vs_torch"])
    return OnnxFiles(fp32, q8, tuple(sidecar_path(fp32.parent / n) for n in metas))


def _sidecar(model: nn.Module, model_dir: Path, file: str, head: Head,
             outputs: tuple[str, ...], opset: int, precision: str) -> dict[str, Any]:
    onnx, ort = require_onnx()
    c = model.config
    arch = Arch(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.qkv_size,
                c.intermediate_size)
    return {"format": SIDECAR_FORMAT, "version": 1, "file": file, "precision": precision,
            "head": head.value, "inputs": list(INPUT_NAMES), "outputs": list(outputs),
            "dynamic_axes": ["batch", "sequence"], "opset": opset, "exporter": EXPORTER,
            "arch": str(arch), "scheme": str(c.attention_scheme), "vocab_size": c.vocab_size,
            "max_position_embeddings": c.max_position_embeddings,
            "num_labels": c.num_labels if head is Head.SEQUENCE_CLASSIFICATION else None,
            "source": str(model_dir), "torch_version": torch.__version__,
            "onnx_version": onnx.__version__, "onnxruntime_version": ort.__version__}


@torch.no_grad()
def check_export(model: nn.Module, path: str | os.PathLike, outputs: tuple[str, ...]) -> float:
    """Max |ONNX Runtime - torch| over all outputs on a padded batch of a length not traced."""
    seq = min(11, int(model.config.max_position_embeddings))
    example = example_inputs(3, seq, int(model.config.vocab_size), seed=1, pad_from=max(1, seq - 4))
    want = _Graph(model, outputs).eval()(*(example[n] for n in INPUT_NAMES))
    got = OrtModel(path, threads=1)(**example)
    return max(float(np.max(np.abs(got[name] - w.numpy()))) for name, w in zip(outputs, want))


# ---- inference ---------------------------------------------------------------------------------
def ort_info() -> dict[str, Any]:
    """What a latency dataset's sidecar records about the runtime."""
    _, ort = require_onnx()
    return {"ort_version": ort.__version__, "providers": list(ort.get_available_providers())}


class OrtModel:
    """An ONNX Runtime CPU session with its threads pinned (`threads` intra-op, 1 inter-op,
    sequential execution, all graph optimisations); call it like the torch model, get numpy."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        _, ort = require_onnx()
        if int(threads) < 1:
            raise UserError(f"threads must be at least 1, got {threads}")
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX model not found: {self.path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types for bad files
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"cannot load ONNX model {self.path}: {first}") from None
        self.threads = int(threads)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.meta = read_sidecar(self.path)

    def feed(self, input_ids: Any, attention_mask: Any = None,
             token_type_ids: Any = None) -> dict[str, np.ndarray]:
        """The session's input dict (int64 numpy); a missing mask attends everywhere, missing
        segment ids are segment 0."""
        ids = _as_int64(input_ids)
        given = {"input_ids": ids,
                 "attention_mask": np.ones_like(ids) if attention_mask is None
                 else _as_int64(attention_mask),
                 "token_type_ids": np.zeros_like(ids) if token_type_ids is None
                 else _as_int64(token_type_ids)}
        return {name: given[name] for name in self.input_names}

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(feed))

    def __call__(self, input_ids: Any, attention_mask: Any = None,
                 token_type_ids: Any = None) -> dict[str, np.ndarray]:
        out = self.run(self.feed(input_ids, attention_mask, token_type_ids))
        return dict(zip(self.output_names, out))


class OrtTaskModel(nn.Module):
    """An exported task head behind the torch model's interface, for evaluation code written
    against `AutoTinyBertFor{SequenceClassification,QuestionAnswering}`: called with the same
    batch dict (labels included), it returns the same output type, loss computed as the torch
    head computes it. Runs on CPU; outputs are CPU tensors."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        super().__init__()
        self.session = OrtModel(path, threads)
        names = self.session.output_names
        if names == ("logits",):
            self.head = Head.SEQUENCE_CLASSIFICATION
        elif names == ("start_logits", "end_logits"):
            self.head = Head.QUESTION_ANSWERING
        else:
            raise UserError(f"{path} is an encoder graph (outputs {', '.join(names)}); export "
                            f"the fine-tuned model with its head (--save_best_model output, "
                            f"head 'auto')")
        self.train(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **unused: Any):
        from .modeling import QuestionAnsweringOutput, SequenceClassifierOutput

        out = {k: torch.from_numpy(v)
               for k, v in self.session(input_ids, attention_mask, token_type_ids).items()}
        if self.head is Head.QUESTION_ANSWERING:
            return QuestionAnsweringOutput(start_logits=out["start_logits"],
                                           end_logits=out["end_logits"])
        logits = out["logits"]
        loss = None
        if labels is not None:  # as AutoTinyBertForSequenceClassification.forward
            labels = labels.cpu()
            if logits.shape[-1] == 1:
                loss = F.mse_loss(logits.view(-1).float(), labels.view(-1).float())
            else:
                loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _as_int64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.int64)


# ---- timing ------------------------------------------------------------------------------------
def time_onnx(path: "str | os.PathLike | OrtModel", protocol: TimingProtocol | None = None,
              arch: Arch | None = None, runs: int | None = None,
              warmup: int | None = None) -> Timing:
    """Time an ONNX file (or an open `OrtModel` with the protocol's threads) under
    `TimingProtocol`, the torch backend's protocol: threads, batch x seq_len of the
    timing token, `warmup` untimed and `infer_cnt` timed runs, wall or CPU clock, median or
    min. Returns a `Timing`; `arch` defaults to the sidecar's."""
    protocol = protocol or TimingProtocol()
    if protocol.subject != "extracted":
        raise UserError("an ONNX file holds an extracted model; the sliced-supernet subject "
                        "(--time_supernet) is for the torch backend only")
    model = path if isinstance(path, OrtModel) else OrtModel(path, protocol.threads)
    if model.threads != protocol.threads:
        raise ValueError(f"session has {model.threads} threads, the protocol {protocol.threads}")
    meta = model.meta or {}
    if arch is None:
        if "arch" not in meta:
            raise UserError(f"{model.path} has no sidecar naming its arch; pass the arch")
        arch = Arch.parse(meta["arch"])
    vocab = int(meta.get("vocab_size", TIMING_TOKEN_ID + 1))
    positions = meta.get("max_position_embeddings")
    if positions is not None and protocol.seq_len > int(positions):
        raise UserError(f"--max_seq_length {protocol.seq_len} exceeds the model's "
                        f"max_position_embeddings {positions}")
    token = TIMING_TOKEN_ID if TIMING_TOKEN_ID < vocab else vocab - 1
    ids = np.full((protocol.batch_size, protocol.seq_len), token, dtype=np.int64)
    feed = model.feed(ids)
    clock = time.perf_counter if protocol.clock == "wall" else time.process_time
    for _ in range(protocol.warmup if warmup is None else warmup):
        model.run(feed)
    times = []
    for _ in range(runs or protocol.infer_cnt):
        start = clock()
        model.run(feed)
        times.append((clock() - start) * 1000.0)
    return Timing(arch, float(np.median(times)), float(np.mean(times)), len(times),
                  float(np.min(times)), protocol.statistic)


class OnnxTimingBackend:
    """The onnxruntime backends of the latency dataset: an arch's model (random weights:
    latency depends on shapes only) is exported once, quantised once for "onnxruntime-int8",
    and timed with `time_onnx`.

    Exporting costs far more than timing (MiniLM-L6 on a loaded 2-core VM: ~1 s to export,
    ~0.6 s to quantise, 0.1-0.5 s for the 11 forwards of a timing), so every graph stays in a
    temporary directory until `close()`: the second pass of a latency dataset, a reference timed
    between archs and the rounds of a speedup measurement reopen the file instead of exporting
    again. Sessions of the last `keep` archs stay open; older graphs are removed only when the
    directory would exceed `max_bytes`. `exports` counts the archs exported."""

    def __init__(self, backend: str = "onnxruntime", opset: int = DEFAULT_OPSET, keep: int = 2,
                 max_bytes: int = 4 << 30):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        if backend not in BACKENDS[1:]:
            raise UserError(f"unknown ONNX backend {backend!r}: expected one of "
                            f"{', '.join(BACKENDS[1:])}")
        require_onnx()
        self.backend, self.opset, self.keep, self.max_bytes = backend, opset, keep, max_bytes
        self.int8 = backend.endswith("int8")
        self._tmp = tempfile.TemporaryDirectory(prefix="superbert-onnx-")
        # insertion order = least recently used first
        self._graphs: dict[Arch, Path] = {}  # arch -> its graph (with a sidecar beside it)
        self._sessions: dict[Arch, OrtModel] = {}  # the last `keep` archs' open sessions
        self.exports = 0

    def info(self) -> dict[str, Any]:
        """For the dataset sidecar: backend, precision, opset, runtime version and providers."""
        return {"backend": self.backend, "precision": "int8" if self.int8 else "fp32",
                "opset": self.opset, "exporter": EXPORTER, **ort_info(),
                "session_providers": ["CPUExecutionProvider"]}  # what OrtModel runs on

    def session(self, arch: Arch, build: Callable[[], nn.Module], threads: int) -> OrtModel:
        """The session of `arch`: an open one, else one on its graph, else exported from
        `build()` first."""
        if arch in self._sessions and self._sessions[arch].threads == threads:
            self._sessions[arch] = self._sessions.pop(arch)
            self._graphs[arch] = self._graphs.pop(arch)
            return self._sessions[arch]
        self._sessions.pop(arch, None)
        path = self._graphs.pop(arch, None) or self._export(arch, build())
        self._graphs[arch] = path
        while len(self._sessions) >= self.keep:
            del self._sessions[next(iter(self._sessions))]
        self._sessions[arch] = OrtModel(path, threads)
        self._trim()
        return self._sessions[arch]

    def _export(self, arch: Arch, model: nn.Module) -> Path:
        self.exports += 1
        path = Path(self._tmp.name) / f"arch{self.exports}.onnx"
        outputs = export_model(model, path, Head.ENCODER, self.opset)
        if self.int8:
            quantize_int8(path, int8_path(path))
            path.unlink()
            path = int8_path(path)
        # The sidecar tells time_onnx the vocab (timing token) and the position limit.
        meta = _sidecar(model, Path("<in memory>"), path.name, Head.ENCODER, outputs,
                        self.opset, "int8" if self.int8 else "fp32")
        sidecar_path(path).write_text(json.dumps(meta))
        return path

    def _trim(self) -> None:
        """Remove the least recently used graphs without an open session while the directory
        holds more than `max_bytes`."""
        sizes = {a: p.stat().st_size for a, p in self._graphs.items()}
        total = sum(sizes.values())
        for arch in list(self._graphs):
            if total <= self.max_bytes:
                break
            if arch not in self._sessions:
                path = self._graphs.pop(arch)
                path.unlink()
                sidecar_path(path).unlink()
                total -= sizes[arch]

    def time(self, arch: Arch, build: Callable[[], nn.Module], protocol: Any = None,
             runs: int | None = None, warmup: int | None = None):
        """`arch` timed under `protocol` (a `Timing`); `build()` makes its model."""
        protocol = protocol or TimingProtocol()
        session = self.session(arch, build, protocol.threads)
        return time_onnx(session, protocol, arch, runs=runs, warmup=warmup)

    def close(self) -> None:
        self._sessions.clear()
        self._graphs.clear()
        self._tmp.cleanup()

    def __enter__(self) -> "OnnxTimingBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
