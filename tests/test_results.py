"""The subbert.results block: byte format of the original, robust reading, fitness."""
import pytest

from superbert.arch import Arch
from superbert.errors import UserError
from superbert.results import (TaskResult, fitness, format_results_block, parse_results,
                               read_results)

A = Arch(layers=5, hidden=564, heads=8, qkv=512, ffn=1054)
B = Arch(layers=4, hidden=256, heads=12, qkv=192, ffn=480)

# A block as the original evaluator writes it (its own key order for the arch).
ORIGINAL_MNLI = (
    "**************S*************\n"
    "task_name = mnli\n"
    "architecture = {'sample_layer_num': 5, 'sample_hidden_size': 564, "
    "'sample_intermediate_sizes': [1054, 1054, 1054, 1054, 1054], "
    "'sample_num_attention_heads': [8, 8, 8, 8, 8], 'sample_qkv_sizes': [512, 512, 512, 512, 512]}\n"
    "parameter size = 29573882\n"
    "best_acc = 0.8123456\n"
    "time_per_batch_infer = 12.345 ms\n"
    "infer_cnt = 1234\n"
    "**************E*************\n"
    "\n")
ORIGINAL_SQUAD = (
    "**************S*************\n"
    "task_name = squad1\n"
    "architecture = {'sample_layer_num': 5, 'sample_num_attention_heads': [8, 8, 8, 8, 8], "
    "'sample_hidden_size': 564, 'sample_intermediate_sizes': [1054, 1054, 1054, 1054, 1054], "
    "'sample_qkv_sizes': [512, 512, 512, 512, 512]}\n"
    "parameter size = 29573882\n"
    "best_acc = f1: 85.12345678901234; em: 77.01234\n"
    "time_per_batch_infer = 40.100 ms\n"
    "infer_cnt = 10570\n"
    "**************E*************\n"
    "\n")


def test_format_is_byte_compatible():
    r = TaskResult("mnli", A, 29573882, 0.8123456, None, 12.345, 1234)
    text = format_results_block(r)
    assert text.startswith("**************S*************\ntask_name = mnli\narchitecture = {")
    assert text.endswith("parameter size = 29573882\nbest_acc = 0.8123456\n"
                         "time_per_batch_infer = 12.345 ms\ninfer_cnt = 1234\n"
                         "**************E*************\n\n")
    q = TaskResult("squad1", A, 29573882, 85.1234567, 77.0123, 40.1, 10570)
    assert "best_acc = f1: 85.1234567; em: 77.0123\n" in format_results_block(q)
    empty = TaskResult("mnli", A, 1, None, None, 0.0, 0)
    assert "best_acc = \n" in format_results_block(empty)


def test_roundtrip_and_original_blocks(tmp_path):
    path = tmp_path / "subbert.results"
    ours = [TaskResult("mnli", B, B.param_count(), 0.70, None, 5.0, 10),
            TaskResult("squad1", B, B.param_count(), 60.0, 50.0, 9.0, 10),
            TaskResult("sst-2", B, B.param_count(), 0.80, None, 5.0, 10)]
    path.write_text("log noise\n" + ORIGINAL_MNLI + ORIGINAL_SQUAD
                    + "".join(format_results_block(r) for r in ours))
    assert [r.task for r in read_results(path)] == ["mnli", "squad1", "mnli", "squad1", "sst-2"]
    scores = parse_results(path)
    assert list(scores) == [A, B]  # the two key orders of A are one arch
    assert scores[A] == pytest.approx({"mnli": 81.23456, "squad1": 85.12345678901234})
    assert fitness(scores[A]) == pytest.approx((81.23456 + 85.12345678901234) / 2)
    assert fitness(scores[B]) == pytest.approx((70 + 60 + 80) / 3)  # any number of tasks


def test_repeats_are_averaged_and_empty_is_zero(tmp_path):
    path = tmp_path / "r"
    path.write_text(ORIGINAL_MNLI + ORIGINAL_MNLI.replace("0.8123456", "0.7123456")
                    + ORIGINAL_SQUAD.replace("f1: 85.12345678901234; em: 77.01234", ""))
    scores = parse_results(path)[A]
    assert scores["mnli"] == pytest.approx(76.23456)
    assert scores["squad1"] == 0.0


@pytest.mark.parametrize("text, where", [
    (ORIGINAL_MNLI + ORIGINAL_SQUAD[:200], ":10:"),                       # cut mid-block
    (ORIGINAL_MNLI[:150] + ORIGINAL_SQUAD, ":3:"),       # cut, next block appended
    (ORIGINAL_MNLI[:-30] + "\n" + ORIGINAL_SQUAD, ":1:"),                  # no end marker
    (ORIGINAL_MNLI.replace("best_acc = 0.8123456", "best_acc = abc"), ":5:"),
    (ORIGINAL_MNLI.replace("'sample_layer_num': 5", "'sample_layer_num': 4"), ":3:"),
])
def test_bad_blocks_name_the_line(tmp_path, text, where):
    path = tmp_path / "r"
    path.write_text(text)
    with pytest.raises(UserError, match=where):
        parse_results(path)


def test_missing_file_and_empty_scores(tmp_path):
    with pytest.raises(UserError, match="not found"):
        parse_results(tmp_path / "nope")
    with pytest.raises(UserError):
        fitness({})
