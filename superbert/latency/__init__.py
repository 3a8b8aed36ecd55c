"""Latency: the CPU timing protocol, the latency dataset (`lat.tmp` + sidecar), the predictor.

- `timing`: the protocol, `Timer`, the machine record, drift correction, and
  `time_against_reference` (the one way a speedup is measured).
- `dataset`: `lat.tmp` and its JSON sidecar, the arch sample, `DatasetRun`, and
  inference_time_evaluation.py's `LatencyConfig` / `collect_latency_dataset`.
- `predictors`: the original MLP, the cost model, `LatencyPredictor` (time.pt) and the FLOPs
  baseline.
- `fit`: training, the split, metrics, the plot, and latency_predictor.py's `PredictorConfig`.
"""
from .dataset import (DATASET_FORMAT, DatasetRun, LatencyConfig, collect_latency_dataset,
                      dataset_arrays, format_latency_line, load_supernet_config,
                      read_latency_dataset, read_sidecar, sample_archs, sidecar_path,
                      write_sidecar)
from .fit import (Metrics, PredictorConfig, TrainConfig, TrainReport, plot_predictions,
                  regression_metrics, split_indices, train_from_dataset, train_predictor)
from .predictors import (COST_TERMS, ORIGINAL_BASE_LATENCY_MS, PREDICTOR_FORMAT, PREDICTOR_KINDS,
                         CostModel, FlopsBaseline, LatencyMLP, LatencyPredictor, mlp_shape)
from .timing import (BERT_BASE, DRIFT_REF, TIMING_TOKEN_ID, Drift, Speedups, Timer, Timing,
                     TimingProtocol, cpu_model, machine_info, set_threads,
                     time_against_reference)

__all__ = [
    "BERT_BASE", "COST_TERMS", "DATASET_FORMAT", "DRIFT_REF", "ORIGINAL_BASE_LATENCY_MS",
    "PREDICTOR_FORMAT", "PREDICTOR_KINDS", "TIMING_TOKEN_ID", "CostModel", "DatasetRun", "Drift",
    "FlopsBaseline", "LatencyConfig", "LatencyMLP", "LatencyPredictor", "Metrics",
    "PredictorConfig", "Speedups", "Timer", "Timing", "TimingProtocol", "TrainConfig",
    "TrainReport", "collect_latency_dataset", "cpu_model", "dataset_arrays",
    "format_latency_line", "load_supernet_config", "machine_info", "mlp_shape",
    "plot_predictions", "read_latency_dataset", "read_sidecar", "regression_metrics",
    "sample_archs", "set_threads", "sidecar_path", "split_indices", "time_against_reference",
    "train_from_dataset", "train_predictor", "write_sidecar",
]
