"""pre_training.py as one torchrun rank where the ranks outnumber the GPUs (bench_gpu.py's NCCL smoke
test on a one-GPU machine).

pre_training.py puts rank LOCAL_RANK on cuda:LOCAL_RANK and refuses a rank without a GPU of its
own ("local rank 1 has no GPU"). Here LOCAL_RANK is taken modulo the visible GPUs first, so two
ranks share cuda:0. With BENCH_DIST_BACKEND set (gloo), the process group is joined with that
backend before pre_training.py runs: it keeps a group that already exists instead of joining
with NCCL. Everything after that is pre_training.py itself, with the arguments given here.

    python -m torch.distributed.run --standalone --nproc_per_node 2 bench/_one_gpu_rank.py \\
        --pregenerated_data DATA --student_model DIR ...      (pre_training.py's flags)
"""
from __future__ import annotations

import datetime
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import torch

    gpus = torch.cuda.device_count()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if gpus and local >= gpus:
        os.environ["LOCAL_RANK"] = str(local % gpus)
    backend = os.environ.get("BENCH_DIST_BACKEND")
    if backend:
        import torch.distributed as dist

        if gpus and "--no_cuda" not in sys.argv:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend, init_method="env://",
                                timeout=datetime.timedelta(seconds=300))
    script = ROOT / "pre_training.py"
    sys.argv = [str(script), *sys.argv[1:]]
    sys.path.insert(0, str(ROOT))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
