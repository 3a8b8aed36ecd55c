"""The benches' way of running one pipeline script: as a subprocess from the repository root,
its output appended to a log, a failure stopping the bench with one line that names the log."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(cmd: list[str], log: Path) -> float:
    """Run `cmd` (e.g. [python, "pre_training.py", ...]) in the repository root, the command line
    and its output appended to `log`; seconds taken. A failure exits the bench."""
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        res = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                             env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if res.returncode != 0:
        sys.exit(f"error: {Path(cmd[1]).name} failed (exit {res.returncode}); see {log}")
    return time.perf_counter() - t0
