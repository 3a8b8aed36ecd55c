"""Train the latency predictor on a latency dataset and save `time.pt` (or list candidates).

Training (default): a non-negative per-layer cost model on [hidden, layers, mean FFN, mean qkv],
fitted in milliseconds into a 4 KB time.pt, shrunk toward the FLOPs-proportional fit by a penalty
chosen by cross-validation on the training + validation archs, or that FLOPs fit itself when
its cross-validated MAPE is lower (the CV MAPEs and the choice are printed and recorded in
time.pt; `--predictor mlp`: the original's MLP on the same
features, 4-2000x4-1, minutes on 2 cores and a 48 MB time.pt, stopped early on the validation
split); seeded 80/10/10 split; prints RMSE (ms), MAPE and Kendall tau on the test split beside a
FLOPs-proportional baseline fitted on the training split. Several datasets of one backend and protocol can be given (`--lat_dataset_path A B`);
the backend they were timed with (torch / onnxruntime / onnxruntime-int8) is saved in time.pt,
and datasets of different backends are refused. `--get_candidates` lists the archs whose
predicted latency meets `--latency_constraint` (the original's candidate mode; searcher.py
--method Candidate does the same on the searcher's grid).
"""
from __future__ import annotations

import argparse

from superbert.cli import add_flags, config_from_args, run_main, setup_logging
from superbert.latency import PredictorConfig, train_from_dataset
from superbert.search import SearchConfig, search_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_flags(p, PredictorConfig)
    return p


def main(argv: list[str] | None = None) -> None:
    cfg = config_from_args(PredictorConfig, build_parser().parse_args(argv))
    setup_logging()
    if cfg.get_candidates:
        search_command(SearchConfig.candidates_of(cfg))
        return
    predictor, report = train_from_dataset(cfg.lat_dataset_path, cfg.ckpt_path,
                                           cfg.train_config(), cfg.base_latency, cfg.scheme,
                                           cfg.plot, progress=not cfg.no_progress)
    print(f"split train/valid/test: {report.train.n}/{report.valid.n}/{report.test.n} archs; "
          f"trained in {report.seconds:.1f} s")
    if report.early_stop is not None:
        print(f"MLP {report.early_stop.line()}")
    name = "MLP predictor " if cfg.predictor == "mlp" else "cost model    "
    print(f"predictor: {predictor.describe()}")
    if report.selection is not None:
        for line in report.selection.lines():
            print(f"selection: {line}")
    print(f"test  {name}: {report.test.line()}")
    print(f"test  FLOPs baseline: {report.flops_test.line()}  "
          f"[ms = {report.flops.a:.4g} * FLOPs + {report.flops.b:.4g}]")
    if report.selection is None:  # the cost model's validation archs are in its fit (and CV)
        print(f"valid {name}: {report.valid.line()}")
    print(f"saved {cfg.ckpt_path} (base latency {predictor.base_latency_ms:.2f} ms, scheme "
          f"{predictor.scheme.name if predictor.scheme else 'UNKNOWN'}, {predictor.backend} "
          f"timings)" + (f"; plot {cfg.plot}" if cfg.plot else ""))


if __name__ == "__main__":
    run_main(main)
