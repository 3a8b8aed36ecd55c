"""Numeric flags of pre-training and of the evaluator are checked when the config is built:
zero, negative, NaN and infinite values are one UserError naming the flag (a bare `x <= 0`
test lets NaN through), valid values pass."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from superbert.errors import UserError
from superbert.finetuning.config import RunConfig
from superbert.pretraining.config import PretrainConfig

NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan])
NOT_POSITIVE = st.one_of(NON_FINITE, st.sampled_from([0, 0.0, -0.0]),
                         st.floats(max_value=0.0, allow_nan=False),
                         st.integers(max_value=0))
NEGATIVE = st.one_of(NON_FINITE, st.floats(max_value=-1e-12, allow_nan=False),
                     st.integers(max_value=-1))

PRETRAIN_BASE = dict(pregenerated_data="d", student_model="m", cache_dir="c", mlm_loss=True,
                     masked_lm_prob=0.15)
PRETRAIN_POSITIVE = ("epochs", "train_batch_size", "gradient_accumulation_steps",
                     "learning_rate", "max_seq_length", "sample_times_per_batch", "logging_steps")
PRETRAIN_NON_NEGATIVE = ("adam_epsilon", "weight_decay", "max_grad_norm", "warmup_steps")

RUN_BASE = dict(data_dir="a", model="m", task_name="sst-2", output_dir="o")
RUN_POSITIVE = ("eval_batch_size", "gradient_accumulation_steps", "doc_stride",
                "max_query_length", "n_best_size", "max_answer_length",
                "max_train_examples", "max_eval_examples")
RUN_PER_TASK = ("max_seq_length", "train_batch_size", "learning_rate", "num_train_epochs",
                "eval_step", "max_steps")


@given(name=st.sampled_from(PRETRAIN_POSITIVE), value=NOT_POSITIVE)
@settings(max_examples=80, deadline=None)
def test_pretraining_positive_flags(name, value):
    with pytest.raises(UserError, match=f"--{name} must be a positive finite number"):
        PretrainConfig(**PRETRAIN_BASE, **{name: value})


@given(name=st.sampled_from(PRETRAIN_NON_NEGATIVE), value=NEGATIVE)
@settings(max_examples=60, deadline=None)
def test_pretraining_non_negative_flags(name, value):
    with pytest.raises(UserError, match=f"--{name} must be a finite number >= 0"):
        PretrainConfig(**PRETRAIN_BASE, **{name: value})


@given(value=st.one_of(NON_FINITE, st.floats(max_value=-1e-12, allow_nan=False),
                       st.floats(min_value=1.0, allow_nan=False)))
@settings(max_examples=30, deadline=None)
def test_pretraining_warmup_proportion(value):
    with pytest.raises(UserError, match="--warmup_proportion must be in"):
        PretrainConfig(**PRETRAIN_BASE, warmup_proportion=value)


def test_valid_pretraining_numbers_pass():
    cfg = PretrainConfig(**PRETRAIN_BASE, learning_rate=1e-4, weight_decay=0.0, warmup_steps=0,
                         warmup_proportion=0.0, max_grad_norm=0.0)
    assert cfg.learning_rate == 1e-4


@given(name=st.sampled_from(RUN_POSITIVE + RUN_PER_TASK), value=NOT_POSITIVE)
@settings(max_examples=100, deadline=None)
def test_evaluator_positive_flags(name, value):
    with pytest.raises(UserError, match=f"--{name} must be a positive finite number"):
        RunConfig(**RUN_BASE, **{name: value})


@given(name=st.sampled_from(RUN_PER_TASK), value=NOT_POSITIVE)
@settings(max_examples=40, deadline=None)
def test_evaluator_per_task_values_are_checked_one_by_one(name, value):
    """One bad value in a per-task list is caught, wherever it stands."""
    good = 1e-4 if name == "learning_rate" else 8
    with pytest.raises(UserError, match=f"--{name} must be a positive finite number"):
        RunConfig(**{**RUN_BASE, "data_dir": "a b", "task_name": "sst-2 mnli"},
                  **{name: (good, value)})


@given(value=NEGATIVE)
@settings(max_examples=30, deadline=None)
def test_evaluator_weight_decay(value):
    with pytest.raises(UserError, match="--weight_decay must be a finite number >= 0"):
        RunConfig(**RUN_BASE, weight_decay=value)


@given(value=st.one_of(NON_FINITE, st.floats(max_value=-1e-12, allow_nan=False),
                       st.floats(min_value=1.0, allow_nan=False)))
@settings(max_examples=30, deadline=None)
def test_evaluator_warmup_proportion(value):
    with pytest.raises(UserError, match="--warmup_proportion must be in"):
        RunConfig(**RUN_BASE, warmup_proportion=value)


def test_evaluator_null_score_threshold_must_be_finite():
    for value in (math.nan, math.inf):
        with pytest.raises(UserError, match="--null_score_diff_threshold must be finite"):
            RunConfig(**RUN_BASE, null_score_diff_threshold=value)
    assert RunConfig(**RUN_BASE, null_score_diff_threshold=-1.5).tasks[0].task == "sst-2"
