"""Train the latency predictor on a latency dataset and save `time.pt` (or list candidates).

Training (default): the original MLP on [hidden, layers, mean FFN, mean qkv] (`--predictor
cost`: a non-negative per-layer cost model on the same features, fitted in milliseconds, usually
more accurate on a few hundred archs); seeded 80/10/10 split; prints RMSE (ms), MAPE and
Kendall tau on the test split beside a FLOPs-proportional baseline fitted on the training
split. `--get_candidates` lists the archs whose predicted latency meets `--latency_constraint`
(the original's candidate mode; searcher.py --method Candidate does the same on the searcher's
grid).
"""
from __future__ import annotations

import argparse
import logging

from superbert.arch import FEATURE_NORM, LATENCY_NORM, add_space_args
from superbert.latency import PREDICTOR_KINDS, TrainConfig, train_from_dataset
from superbert.cli import run_main, setup_logging

logger = logging.getLogger("latency_predictor")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lat_dataset_path", default="./latency_dataset/lat.tmp",
                   help="latency dataset written by inference_time_evaluation.py")
    p.add_argument("--ckpt_path", default="latency_dataset/ckpts/time.pt",
                   help="where time.pt is saved (training) or read (--get_candidates)")
    p.add_argument("--feature_norm", nargs=4, type=float, default=None,
                   metavar=("D", "L", "F", "Q"), help=f"feature divisors (default {list(FEATURE_NORM)})")
    p.add_argument("--lat_norm", type=float, default=None,
                   help=f"latency divisor in ms (default {LATENCY_NORM:g})")
    p.add_argument("--predictor", default="mlp", choices=list(PREDICTOR_KINDS),
                   help="mlp: the original's MLP; cost: least squares on per-layer cost terms "
                        "(L*d*f, L*d*q, L*d, L*f, L*q, L, d, 1), exact enumeration on any grid")
    p.add_argument("--feature_dim", type=int, default=None, help="default 4")
    p.add_argument("--hidden_dim", type=int, default=None, help="default 2000")
    p.add_argument("--hidden_layer_num", type=int, default=None, help="default 3")
    p.add_argument("--train_steps", type=int, default=None, help="MLP only (default 5000)")
    p.add_argument("--bsz", type=int, default=None, help="MLP only (default 128)")
    p.add_argument("--lr", type=float, default=None, help="MLP only (default 1e-5)")
    p.add_argument("--seed", type=int, default=0, help="split, initialisation and batches")
    p.add_argument("--base_latency", type=float, default=None,
                   help="BERT-base latency (ms) to record (default: the one measured in the "
                        "dataset's sidecar)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="write a predicted-vs-measured plot of the test split")
    p.add_argument("--get_candidates", action="store_true",
                   help="list candidates instead of training")
    p.add_argument("--model", default=None, type=str.upper, choices=["MLM", "KD"],
                   help="attention scheme (default: the one recorded in the dataset / time.pt)")
    p.add_argument("--candidate_file", default="", help="output of --get_candidates")
    p.add_argument("--latency_constraint", type=float, default=7, help="target speedup vs BERT-base")
    p.add_argument("--lat_min_ratio", type=float, default=0.85)
    p.add_argument("--lat_max_ratio", type=float, default=1.1)
    add_space_args(p, original_defaults=True)
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    scheme = args.model.lower() if args.model else None
    if args.get_candidates:
        from superbert.errors import UserError
        from superbert.search import candidates_command

        if not args.candidate_file:
            raise UserError("--get_candidates needs --candidate_file")
        # The original's candidate grid in this script: hidden step 32, FFN step 64, qkv 12.
        candidates_command(args, scheme, hidden_step=32, ffn_step=64, qkv_step=12)
        return
    mlp_only = ("hidden_dim", "hidden_layer_num", "train_steps", "bsz", "lr")
    given = [f"--{k}" for k in mlp_only if getattr(args, k) is not None]
    if args.predictor == "cost" and given:
        from superbert.errors import UserError

        raise UserError(f"{', '.join(given)}: for --predictor mlp only (the cost model is "
                        f"fitted in closed form)")
    # flags left unset take TrainConfig's defaults (the original's recipe)
    given_cfg = {k: getattr(args, k) for k in ("feature_dim", *mlp_only)
                 if getattr(args, k) is not None}
    cfg = TrainConfig(predictor=args.predictor,
                      feature_norm=tuple(args.feature_norm or FEATURE_NORM),
                      lat_norm=args.lat_norm or LATENCY_NORM, seed=args.seed, **given_cfg)
    predictor, report = train_from_dataset(args.lat_dataset_path, args.ckpt_path, cfg,
                                           args.base_latency, scheme, args.plot,
                                           progress=not args.no_progress)
    print(f"split train/valid/test: {report.train.n}/{report.valid.n}/{report.test.n} archs; "
          f"trained in {report.seconds:.1f} s")
    name = "MLP predictor " if args.predictor == "mlp" else "cost model    "
    print(f"predictor: {predictor.describe()}")
    print(f"test  {name}: {report.test.line()}")
    print(f"test  FLOPs baseline: {report.flops_test.line()}  "
          f"[ms = {report.flops.a:.4g} * FLOPs + {report.flops.b:.4g}]")
    print(f"valid {name}: {report.valid.line()}")
    print(f"saved {args.ckpt_path} (base latency {predictor.base_latency_ms:.2f} ms, scheme "
          f"{(predictor.scheme or 'unknown').upper()})" + (f"; plot {args.plot}" if args.plot else ""))


if __name__ == "__main__":
    run_main(main)
