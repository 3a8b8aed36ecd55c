"""What every evaluator run does before training: the device, the archs and their checks, the
precision, every task's data; and the names of the files it appends to."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..arch import Arch, arch_of_config, read_arch_file, unique, validate_arch
from ..errors import UserError
from ..hf import file_md5, load_tokenizer
from ..tasks import is_squad
from .config import RunConfig, TaskConfig
from .features import TaskData, load_task_data

logger = logging.getLogger(__name__)


RESULTS_FILE = "subbert.results"
EVAL_RESULTS_FILE = "eval_results.txt"

def pick_device(no_cuda: bool, local_rank: int | None = None) -> torch.device:
    """The GPU (under torchrun: this node's GPU LOCAL_RANK), else the CPU."""
    if no_cuda or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank is None:
        return torch.device("cuda")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} "
                        f"GPU(s): start at most that many processes per node")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def torchrun_local_rank() -> int | None:
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value and value.isdigit() else None


def format_kv(record: dict[str, Any]) -> str:
    return "".join(f"{k} = {record[k]}\n" for k in sorted(record))


def load_archs(cfg: RunConfig, config: Any) -> list[Arch]:
    """The archs to evaluate (--arches_file, de-duplicated, else the model's full arch), each
    checked to fit the supernet."""
    if cfg.arches_file:
        archs = read_arch_file(cfg.arches_file)
        if not archs:
            raise UserError(f"{cfg.arches_file} holds no architectures")
        if len(unique(archs)) != len(archs):
            logger.warning("%s lists %d duplicate archs; each is evaluated once",
                           cfg.arches_file, len(archs) - len(unique(archs)))
            archs = unique(archs)
    else:
        archs = [arch_of_config(config)]
    for arch in archs:
        try:
            validate_arch(arch, config)
        except UserError as err:
            where = f"{cfg.arches_file}: " if cfg.arches_file else ""
            raise UserError(f"{where}{err}") from None
    return archs


def check_sequence_lengths(tasks: tuple[TaskConfig, ...], config: Any) -> None:
    for t in tasks:
        if t.max_seq_length > config.max_position_embeddings:
            raise UserError(f"{t.task}: max_seq_length {t.max_seq_length} exceeds the model's "
                            f"max_position_embeddings {config.max_position_embeddings} (pass "
                            f"--max_seq_length)")


def resolve_precision(device: torch.device, fp16: bool) -> bool:
    """float16 only on a GPU; asked for on the CPU, it is warned about and dropped."""
    if fp16 and device.type != "cuda":
        warnings.warn("--fp16 needs a GPU: running in float32 on the CPU")
        logger.warning("--fp16 needs a GPU: running in float32 on the CPU")
        return False
    return fp16


def load_all_task_data(cfg: RunConfig, model_dir: Path,
                       tasks: tuple[TaskConfig, ...] | None = None) -> list[TaskData]:
    """Every task's files (of `tasks`, default all) read and tokenized before any training, so
    bad data fails fast."""
    tokenizer = load_tokenizer(model_dir, cfg.do_lower_case)
    vocab = model_dir / "vocab.txt"
    tok_id = f"{file_md5(vocab) if vocab.is_file() else 'bundled'}-lower{int(cfg.do_lower_case)}"
    datas = [load_task_data(t, tokenizer, cfg.cache_dir or None, tok_id)
             for t in (cfg.tasks if tasks is None else tasks)]
    for data in datas:
        logger.info("%s: %d train / %d dev %s", data.task, len(data.train), len(data.dev),
                    "windows" if is_squad(data.task) else "examples")
    return datas

def param_count(arch: Arch, config: Any) -> int:
    return arch.param_count(config.vocab_size, config.max_position_embeddings,
                            config.type_vocab_size)
