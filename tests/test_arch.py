import json
import random

import pytest

from superbert.arch import (Arch, SearchSpace, format_arch_lines, read_arch_file, unique,
                            validate_arch, write_arch_file)
from superbert.errors import UserError
from tests.helpers import tiny_config

S1 = ("{'sample_layer_num': 5, 'sample_num_attention_heads': [8, 8, 8, 8, 8], "
      "'sample_qkv_sizes': [512, 512, 512, 512, 512], 'sample_hidden_size': 564, "
      "'sample_intermediate_sizes': [1054, 1054, 1054, 1054, 1054]}")


def test_parse_and_canonical_format_round_trip():
    a = Arch.parse(S1)
    assert a == Arch(layers=5, hidden=564, heads=8, qkv=512, ffn=1054)
    assert str(a) == S1  # the seed README's example is already canonical
    assert Arch.parse(str(a)) == a


def test_key_orders_and_json_are_the_same_arch():
    kd_candidate = ("{'sample_layer_num': 2, 'sample_num_attention_heads': [12, 12], "
                    "'sample_hidden_size': 256, 'sample_intermediate_sizes': [480, 480], "
                    "'sample_qkv_sizes': [192, 192]}")
    mutant = ("{'sample_layer_num': 2, 'sample_hidden_size': 256, 'sample_intermediate_sizes': "
              "[480, 480], 'sample_num_attention_heads': [12, 12], 'sample_qkv_sizes': [192, 192]}")
    as_json = json.dumps(Arch(2, 256, 12, 192, 480).to_dict())
    archs = [Arch.parse(t) for t in (kd_candidate, mutant, as_json)]
    assert len(set(archs)) == 1
    assert unique(archs) == [archs[0]]


def test_paper_parameter_counts():
    # S1: embeddings + encoder + pooler, the original's `parameter size` line.
    assert Arch.parse(S1).param_count() == 29_573_882
    # S2 (4/396/6 heads/384/624): 16.87 M, matching the released checkpoint size.
    assert round(Arch(4, 396, 6, 384, 624).param_count() / 1e6, 2) == 16.87


def test_flops_grow_with_each_dimension():
    base = Arch(4, 256, 4, 256, 512)
    for bigger in (Arch(5, 256, 4, 256, 512), Arch(4, 260, 4, 256, 512),
                   Arch(4, 256, 5, 320, 512), Arch(4, 256, 4, 256, 516)):
        assert bigger.flops() > base.flops()


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("{'sample_layer_num': 2,", "cannot parse"),
    ("[1, 2]", "not a dict"),
    ("{'sample_layer_num': 2}", "missing"),
    (S1.replace("'sample_hidden_size'", "'hidden'"), "unknown hidden"),
    (S1.replace("[8, 8, 8, 8, 8]", "[8, 8, 8, 8]"), "list of 5 values"),
    (S1.replace("[8, 8, 8, 8, 8]", "[8, 8, 8, 8, 4]"), "homogeneous"),
    (S1.replace("[8, 8, 8, 8, 8]", "[7, 7, 7, 7, 7]"), "not divisible"),
    (S1.replace("'sample_hidden_size': 564", "'sample_hidden_size': -3"), "positive"),
    ("__import__('os').system('true')", "cannot parse"),
    ("{[1]: 2}", "cannot parse"),  # a key that is not a name (literal_eval: TypeError)
    ("{{1}: 2}", "cannot parse"),
    ("{1: 2}", "unknown 1"),
    (S1.replace("[8, 8, 8, 8, 8]", "[[8], [8], [8], [8], [8]]"), "list of integers"),
    (S1.replace("[8, 8, 8, 8, 8]", "['8', '8', '8', '8', '8']"), "list of integers"),
    (S1.replace("'sample_hidden_size': 564", "'sample_hidden_size': '564'"), "positive integer"),
    (S1.replace("'sample_layer_num': 5", "'sample_layer_num': [5]"), "positive integer"),
])
def test_bad_arch_strings_are_user_errors(text, message):
    with pytest.raises(UserError, match=message):
        Arch.parse(text)


def test_grid_sizes_match_the_original():
    # searcher.py grids (hidden step 16, FFN step 32) and the paper's step-4 training grid.
    assert SearchSpace("mlm", hidden_step=16, ffn_step=32).size() == 366_048
    assert SearchSpace("kd", hidden_step=16, ffn_step=32).size() == 1_525_200
    assert SearchSpace("kd").size() == 8 * 161 * 737 * 50
    assert SearchSpace("mlm").size() == 8 * 12 * 161 * 737
    g = SearchSpace("mlm", hidden_step=64, ffn_step=512).grid()
    assert len(g["layers"]) == SearchSpace("mlm", hidden_step=64, ffn_step=512).size()
    assert set(g["qkv"] // g["heads"]) == {64}


@pytest.mark.parametrize("scheme", ["mlm", "kd"])
def test_samples_stay_in_space_and_are_seeded(scheme):
    space = SearchSpace(scheme)
    a = [space.sample(random.Random(s)) for s in range(200)]
    b = [space.sample(random.Random(s)) for s in range(200)]
    assert a == b
    for arch in a:
        space.check(arch, on_grid=True)
    assert {x.layers for x in a} == set(range(1, 9))
    if scheme == "kd":
        assert {x.heads for x in a} == {12} and len({x.qkv for x in a}) > 20
    else:
        assert all(x.qkv == 64 * x.heads for x in a)


def test_space_fits_a_tiny_supernet_and_validation_names_the_field():
    config = tiny_config("kd", layers=3, hidden=64, heads=4, qkv=64, ffn=128)
    space = SearchSpace.for_supernet(config, hidden=(32, 64), ffn=(64, 128), qkv=(16, 64))
    assert space.scheme == "kd" and space.kd_heads == 4 and space.qkv_step == 4
    for s in range(50):
        validate_arch(space.sample(random.Random(s)), config)
    with pytest.raises(UserError, match="hidden size 65 exceeds the supernet's 64"):
        validate_arch(Arch(2, 65, 4, 32, 64), config)
    with pytest.raises(UserError, match="keeps all 4 heads"):
        validate_arch(Arch(2, 64, 2, 32, 64), config)
    mlm = tiny_config("mlm", heads=4, hidden=64)
    with pytest.raises(UserError, match="qkv must be 16 x heads"):
        validate_arch(Arch(2, 64, 2, 24, 64), mlm)
    with pytest.raises(UserError, match="layers 9 is outside"):
        SearchSpace("mlm").check(Arch(9, 128, 2, 128, 512))


def test_arch_file_round_trip_and_errors(tmp_path):
    archs = [Arch(1, 128, 2, 128, 256), Arch(3, 256, 4, 256, 512)]
    path = tmp_path / "gen.cands"
    path.write_text(format_arch_lines(archs) + "\n")
    assert read_arch_file(str(path)) == archs
    path.write_text(format_arch_lines(archs) + "{'oops'\n")
    with pytest.raises(UserError, match=r"gen.cands:3: cannot parse"):
        read_arch_file(str(path))
    with pytest.raises(UserError, match="not found"):
        read_arch_file(str(tmp_path / "missing"))


def test_arch_file_reader_takes_every_form_and_writer_round_trips(tmp_path):
    """One reader for candidate and evaluation files: canonical lines (the fast path), JSON,
    other key orders, a tab-separated suffix; anything else is read by Arch.parse's rules."""
    a, b = Arch(2, 128, 2, 128, 256), Arch(4, 256, 4, 256, 1024)
    path = tmp_path / "mixed.cands"
    reordered = "{" + ", ".join(f"{k!r}: {v!r}" for k, v in reversed(b.to_dict().items())) + "}"
    path.write_text(f"{a}\n\n{json.dumps(b.to_dict())}\t3.5\n{reordered}\n{a}\n")
    assert read_arch_file(path) == [a, b, b, a]  # duplicates kept; `unique` drops them
    extra = str(a)[:-1] + ", 'extra': 1}"
    path.write_text(f"{a}\n{extra}\n")
    with pytest.raises(UserError, match=r"mixed.cands:2: .*unknown extra"):
        read_arch_file(path)
    out = tmp_path / "out" / "gen.cands"
    write_arch_file(out, [a, b])
    assert out.read_text() == format_arch_lines([a, b]) and read_arch_file(out) == [a, b]
    with pytest.raises(UserError, match=r"candidate file not found: .*\(make it\)"):
        read_arch_file(tmp_path / "none", "candidate file", missing_hint="make it")
    (tmp_path / "bad").write_bytes(b"\xff\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_arch_file(tmp_path / "bad")
