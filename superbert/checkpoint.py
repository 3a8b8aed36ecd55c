"""Pre-training checkpoints on disk: the manifest that marks one complete, finding the newest
intact one of a run, and the RNG state a bit-exact resume restores.

A checkpoint is a directory (`epoch_<e>` or `step_<n>`) holding the model directory's files,
`optimizer.pt`, `trainer_state.pt` and, written last, `checkpoint.json`: every other file with
its size and sha256, plus where the run stood. A directory without the manifest, or whose
files no longer match it, is never trusted.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .io import file_digest, read_text

logger = logging.getLogger(__name__)

CHECKPOINT_MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.pt"
OPTIMIZER_FILE = "optimizer.pt"


# ---- the manifest ------------------------------------------------------------------------------
def write_manifest(directory: Path, info: dict[str, Any]) -> None:
    """List every file with size and sha256; written last, it marks the checkpoint complete."""
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != CHECKPOINT_MANIFEST:
            rel = str(p.relative_to(directory))
            files[rel] = {"size": p.stat().st_size, "sha256": file_digest(p, "sha256")}
    data = {**info, "files": files, "complete": True}
    (directory / CHECKPOINT_MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """The manifest of a complete, intact checkpoint; UserError naming what is wrong."""
    manifest = directory / CHECKPOINT_MANIFEST
    if not directory.is_dir():
        raise UserError(f"checkpoint not found: {directory}")
    if not manifest.exists():
        raise UserError(f"{directory} is not a complete checkpoint (no {CHECKPOINT_MANIFEST}: "
                        f"the run was killed while writing it, or it is not a checkpoint)")
    try:
        info = json.loads(read_text(manifest, "checkpoint manifest"))
    except json.JSONDecodeError:
        raise UserError(f"{manifest} is damaged") from None
    if (not isinstance(info, dict) or not info.get("complete")
            or not isinstance(info.get("files"), dict)):
        raise UserError(f"{manifest} does not describe a complete checkpoint")
    for rel, meta in info["files"].items():
        path = directory / rel
        if not path.is_file():
            raise UserError(f"checkpoint {directory} is damaged: {rel} is missing")
        size = path.stat().st_size
        if size != meta["size"]:
            raise UserError(f"checkpoint {directory} is damaged: {rel} has {size} bytes, "
                            f"expected {meta['size']} (truncated?)")
        if file_digest(path, "sha256") != meta["sha256"]:
            raise UserError(f"checkpoint {directory} is damaged: {rel} fails its sha256 check")
    return info


# ---- the checkpoints of a run ------------------------------------------------------------------
def find_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run (epoch_* and step_*), newest step last."""
    found = []
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            if p.is_dir() and (p.name.startswith("epoch_") or p.name.startswith("step_")):
                found.append(p)

    def key(p: Path) -> tuple[int, int]:
        try:
            info = json.loads((p / CHECKPOINT_MANIFEST).read_text())
            return int(info.get("global_step", -1)), int(p.name.startswith("epoch_"))
        except (OSError, ValueError):
            return -1, 0
    return sorted(found, key=key)


def remove_staging(run_dir: Path) -> list[str]:
    """Remove what a killed run left half-written in `run_dir`: the `.<name>.<random>.tmp`
    directories `io.atomic_path` stages checkpoints (and the log) in. Returns their names."""
    removed = []
    if run_dir.is_dir():
        for p in sorted(run_dir.iterdir()):
            if p.is_dir() and not p.is_symlink() and p.name.startswith(".") \
                    and p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def latest_valid_checkpoint(run_dir: Path) -> Path | None:
    for p in reversed(find_checkpoints(run_dir)):
        try:
            verify_checkpoint(p)
            return p
        except UserError as err:
            logger.warning("skipping checkpoint: %s", err)
    return None


# ---- random state ------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    # NumPy's state as plain values and a tensor, so the trainer state loads with
    # torch.load(weights_only=True) (no unpickling of arbitrary objects from a checkpoint).
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos),
                       int(has_gauss), float(cached)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def load_state_file(path: Path, map_location: Any = "cpu") -> Any:
    """A checkpoint's optimizer or trainer state, loaded with `weights_only=True`: tensors,
    numbers, strings and containers only, never arbitrary pickled objects. NumPy arrays (the RNG
    state of checkpoints written before it was stored as a tensor) are allowed too."""
    core = getattr(np, "_core", None) or np.core  # renamed in NumPy 2
    allowed = [np.ndarray, np.dtype, core.multiarray._reconstruct, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location=map_location, weights_only=True)
