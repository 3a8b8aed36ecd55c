"""Latency: the CPU timing protocol, the latency dataset (`lat.tmp` + sidecar), the predictor.

- `timing`: the protocol, `Timer`, the machine record, drift correction, and
  `time_against_reference` (the one way a speedup is measured).
- `dataset`: `lat.tmp` and its JSON sidecar, the arch sample, `DatasetRun`, and
  inference_time_evaluation.py's `LatencyConfig` / `collect_latency_dataset`.
- `predictors`: the cost model (the default), the original MLP, `LatencyPredictor` (time.pt)
  and the FLOPs baseline.
- `fit`: training, the split, metrics, the plot, and latency_predictor.py's `PredictorConfig`.
- `checks`: positive finite flags, output paths that may not replace a directory or an input,
  type-checked fields of the sidecar and time.pt.
"""
from .checks import check_output, check_positive
from .dataset import (DATASET_FORMAT, DatasetRun, LatencyConfig, collect_latency_dataset,
                      dataset_arrays, format_latency_line, load_supernet_config,
                      read_latency_dataset, read_sidecar, sample_archs, sidecar_backend,
                      sidecar_path, write_sidecar)
from .fit import (EarlyStop, Metrics, PredictorConfig, TrainConfig, TrainReport,
                  plot_predictions, read_datasets, regression_metrics, split_indices,
                  train_from_dataset, train_predictor)
from .predictors import (COST_TERMS, ORIGINAL_BASE_LATENCY_MS, PREDICTOR_FORMAT, PREDICTOR_KINDS,
                         CostModel, FlopsBaseline, LatencyMLP, LatencyPredictor, mlp_shape)
from .timing import (BERT_BASE, DRIFT_REF, NOISY_REFERENCE, Drift, Speedups, Timer, cpu_model,
                     machine_info, set_threads, time_against_reference)

__all__ = [
    "BERT_BASE", "COST_TERMS", "DATASET_FORMAT", "DRIFT_REF", "NOISY_REFERENCE",
    "ORIGINAL_BASE_LATENCY_MS", "PREDICTOR_FORMAT", "PREDICTOR_KINDS",
    "CostModel", "DatasetRun", "Drift", "EarlyStop", "FlopsBaseline", "LatencyConfig",
    "LatencyMLP", "LatencyPredictor", "Metrics", "PredictorConfig", "Speedups", "Timer",
    "TrainConfig", "TrainReport", "check_output",
    "check_positive", "collect_latency_dataset", "cpu_model", "dataset_arrays",
    "format_latency_line", "load_supernet_config", "machine_info", "mlp_shape",
    "plot_predictions", "read_datasets", "read_latency_dataset", "read_sidecar",
    "regression_metrics", "sample_archs", "set_threads", "sidecar_backend", "sidecar_path",
    "split_indices", "time_against_reference", "train_from_dataset", "train_predictor",
    "write_sidecar",
]
