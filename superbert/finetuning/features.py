"""A task's tokenized train and dev sets (`TaskData`, `load_task_data`) and their on-disk cache
under --cache_dir: tensors in safetensors, the rest in JSON (nothing is unpickled)."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..errors import UserError
from ..io import atomic_path, file_digest
from ..tasks import glue, is_squad, squad
from .config import TaskConfig

logger = logging.getLogger(__name__)


FEATURES_VERSION = 2  # bump when the feature layout changes (invalidates --cache_dir entries)

# ---- data ---------------------------------------------------------------------------------------
@dataclass
class TaskData:
    """A task's tokenized train and dev sets (built once per run, shared by every arch)."""

    cfg: TaskConfig
    train: Any                   # glue.Features or squad.SquadFeatures
    dev: Any
    num_labels: int
    dev_examples: list = field(default_factory=list)  # SQuAD: examples for decoding
    dev_mm: Any = None           # MNLI: dev_mismatched, scored once after training

    @property
    def task(self) -> str:
        return self.cfg.task


def task_files(cfg: TaskConfig) -> list[Path]:
    data_dir = Path(cfg.data_dir)
    if is_squad(cfg.task):
        return [data_dir / squad.TRAIN_FILES[cfg.task], data_dir / squad.DEV_FILES[cfg.task]]
    spec = glue.GLUE[cfg.task]
    files = [data_dir / spec.train_file, data_dir / spec.dev_file]
    if cfg.task == "mnli":
        files.append(data_dir / glue.GLUE["mnli-mm"].dev_file)
    return files


def _cache_key(cfg: TaskConfig, tokenizer_id: str) -> str:
    """What the features depend on: the files (path, size, mtime), the tokenizer, the
    tokenization settings and the example caps."""
    stats = []
    for f in task_files(cfg):
        st = f.stat()
        stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    keys = ("task", "max_seq_length", "doc_stride", "max_query_length", "max_train_examples",
            "max_eval_examples")
    payload = json.dumps([FEATURES_VERSION, tokenizer_id, stats,
                          {k: getattr(cfg, k) for k in keys}], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def load_task_data(cfg: TaskConfig, tokenizer, cache_dir: str | None = None,
                   tokenizer_id: str = "") -> TaskData:
    """Read and tokenize a task; with `cache_dir`, reuse the features of an earlier run on the
    same files and settings (each search generation re-reads the same MNLI / SQuAD)."""
    data_dir = Path(cfg.data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data directory for {cfg.task} not found: {data_dir}")
    path, damaged = None, False
    if cache_dir:
        for f in task_files(cfg):
            if not f.is_file():
                raise UserError(f"{cfg.task} file not found: {f}")
        path = Path(cache_dir) / f"features-{cfg.task}-{_cache_key(cfg, tokenizer_id)}"
        if path.is_dir():
            try:
                data = read_feature_cache(path, cfg)
                logger.info("%s: features from the cache %s", cfg.task, path)
                return data
            except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
                # a damaged or altered entry is rebuilt, never trusted
                logger.warning("%s: rebuilding the feature cache %s: %s", cfg.task, path, err)
                damaged = True
    data = _read_task_data(cfg, tokenizer)
    if path is not None and (damaged or not path.is_dir()):
        # Processes sharing a run (torchrun ranks) may all build the same entry: the first
        # complete one stays; a process that loses the race keeps its own copy in memory.
        try:
            with atomic_path(path) as tmp:
                write_feature_cache(tmp, data)
        except OSError as err:
            if not path.is_dir():
                logger.warning("%s: could not store the feature cache %s (%s)", cfg.task, path,
                               err)
    return data


# ---- the feature cache: tensors in safetensors, the rest in JSON (nothing is unpickled) ---------
CACHE_TENSORS, CACHE_META = "features.safetensors", "features.json"
_GLUE_TENSORS = ("input_ids", "token_type_ids", "lengths", "labels")
_SQUAD_TENSORS = ("input_ids", "token_type_ids", "lengths", "start_positions", "end_positions")
_SQUAD_LISTS = ("example_index", "offsets", "max_context")


def write_feature_cache(out: Path, data: TaskData) -> None:
    """`data`'s features as a directory: features.safetensors (every tensor) and features.json
    (the lists, SQuAD's dev examples, and the tensors file's sha256)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    parts: dict[str, Any] = {}
    for part in ("train", "dev", "dev_mm"):
        feats = getattr(data, part)
        if feats is None:
            parts[part] = None
            continue
        qa = isinstance(feats, squad.SquadFeatures)
        for name in _SQUAD_TENSORS if qa else _GLUE_TENSORS:
            tensors[f"{part}.{name}"] = getattr(feats, name).contiguous()
        parts[part] = {"kind": "squad" if qa else "glue",
                       **({n: getattr(feats, n) for n in _SQUAD_LISTS} if qa else {})}
    save_file(tensors, str(out / CACHE_TENSORS))
    meta = {"version": FEATURES_VERSION, "num_labels": data.num_labels, "parts": parts,
            "dev_examples": [asdict(e) for e in data.dev_examples],
            "sha256": file_digest(out / CACHE_TENSORS)}
    (out / CACHE_META).write_text(json.dumps(meta), encoding="utf-8")


def read_feature_cache(path: Path, cfg: TaskConfig) -> TaskData:
    """The TaskData `write_feature_cache` wrote; ValueError if it is not intact."""
    from safetensors.torch import load_file

    meta = json.loads((path / CACHE_META).read_text(encoding="utf-8"))
    if meta.get("version") != FEATURES_VERSION:
        raise ValueError(f"features version {meta.get('version')}, not {FEATURES_VERSION}")
    if file_digest(path / CACHE_TENSORS) != meta["sha256"]:
        raise ValueError(f"{CACHE_TENSORS} does not match the checksum in {CACHE_META}")
    tensors = load_file(str(path / CACHE_TENSORS))
    parts = {}
    for part, spec in meta["parts"].items():
        if spec is None:
            parts[part] = None
            continue
        qa = spec["kind"] == "squad"
        values = {n: tensors[f"{part}.{n}"] for n in (_SQUAD_TENSORS if qa else _GLUE_TENSORS)}
        if qa:
            values["example_index"] = [int(i) for i in spec["example_index"]]
            values["offsets"] = [[None if o is None else (int(o[0]), int(o[1])) for o in row]
                                 for row in spec["offsets"]]
            values["max_context"] = [[bool(b) for b in row] for row in spec["max_context"]]
        feats = (squad.SquadFeatures if qa else glue.Features)(**values)
        rows = {len(v) for v in values.values() if isinstance(v, (torch.Tensor, list)) and
                (not isinstance(v, list) or v)}
        if len(rows) != 1:
            raise ValueError(f"{part}: fields of different lengths {sorted(rows)}")
        parts[part] = feats
    examples = [squad.SquadExample(**{**e, "answers": tuple(e["answers"])})
                for e in meta["dev_examples"]]
    return TaskData(cfg, parts["train"], parts["dev"], int(meta["num_labels"]),
                    dev_examples=examples, dev_mm=parts["dev_mm"])


def _read_task_data(cfg: TaskConfig, tokenizer) -> TaskData:
    data_dir = Path(cfg.data_dir)
    if is_squad(cfg.task):
        v2 = cfg.version_2
        train_ex = squad.read_squad(data_dir / squad.TRAIN_FILES[cfg.task], True, v2,
                                    cfg.max_train_examples)
        dev_ex = squad.read_squad(data_dir / squad.DEV_FILES[cfg.task], False, v2,
                                  cfg.max_eval_examples)
        common = (tokenizer, cfg.max_seq_length, cfg.doc_stride, cfg.max_query_length)
        train = squad.convert_examples_to_features(train_ex, *common, is_training=True)
        dev = squad.convert_examples_to_features(dev_ex, *common, is_training=False)
        return TaskData(cfg, train, dev, 2, dev_examples=dev_ex)
    spec = glue.GLUE[cfg.task]
    train_ex = glue.read_examples(spec, data_dir, "train", cfg.max_train_examples)
    dev_ex = glue.read_examples(spec, data_dir, "dev", cfg.max_eval_examples)
    convert = lambda ex: glue.convert_examples_to_features(ex, spec, tokenizer, cfg.max_seq_length)  # noqa: E731
    data = TaskData(cfg, convert(train_ex), convert(dev_ex), spec.num_labels)
    if cfg.task == "mnli":
        mm = glue.read_examples(glue.GLUE["mnli-mm"], data_dir, "dev", cfg.max_eval_examples)
        data.dev_mm = convert(mm)
    return data


def batch_of(features: Any, index: torch.Tensor, device: torch.device, with_labels: bool) -> dict[str, torch.Tensor]:
    """Rows `index` cut to their longest sequence, on `device`."""
    T = int(features.lengths[index].max())
    batch = {"input_ids": features.input_ids[index, :T].long(),
             "token_type_ids": features.token_type_ids[index, :T].long(),
             "attention_mask": (torch.arange(T)[None, :] < features.lengths[index][:, None]).long()}
    if with_labels:
        if isinstance(features, squad.SquadFeatures):
            batch["start_positions"] = features.start_positions[index]
            batch["end_positions"] = features.end_positions[index]
        else:
            batch["labels"] = features.labels[index]
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
