"""Every value read from config.json and metadata.json is type-checked: a wrong type or range is
one UserError naming the file and the field, never a traceback deep inside a model or a shard."""
from __future__ import annotations

import json
import math
import shutil

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from superbert.data.generate import generate_pretraining_data
from superbert.data.shards import PretrainingDataset
from superbert.errors import UserError
from superbert.hf import CONFIG_KINDS, load_config
from superbert.io import FIELD_KINDS
from tests.helpers import VOCAB, make_tiny_supernet

# values that are wrong for every kind of field below (a kind's own test decides which)
WRONG = st.one_of(st.sampled_from(["", "x", "12", [], [3], {}, True, False, -1, 0, -0.5, 1.5,
                                   math.nan, math.inf, "../shard.bin", "a/b"]),
                  st.integers(max_value=-1), st.text(max_size=5))


def _wrong_for(kind: str, value) -> bool:
    return not FIELD_KINDS[kind][0](value)


@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    return make_tiny_supernet(tmp_path_factory.mktemp("fields") / "m", layers=2, hidden=32,
                              heads=2, ffn=64)


@given(field=st.sampled_from(sorted(CONFIG_KINDS)), value=WRONG)
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_config_fields_are_type_checked(supernet, tmp_path_factory, field, value):
    if not _wrong_for(CONFIG_KINDS[field], value):
        return  # e.g. "x" is a fine hidden_act *type*; its value is checked elsewhere
    d = tmp_path_factory.mktemp("cfg")
    for name in ("config.json", "vocab.txt"):
        shutil.copy(supernet / name, d / name)
    data = json.loads((d / "config.json").read_text())
    data[field] = value
    (d / "config.json").write_text(json.dumps(data))
    with pytest.raises(UserError) as err:
        load_config(d)
    assert f"{d}/config.json" in str(err.value) and repr(field) in str(err.value), str(err.value)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("meta")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(f"sentence {d} {i} of the book ." for i in range(6))
                                  for d in range(4)) + "\n")
    from superbert.data.config import DataConfig
    generate_pretraining_data(DataConfig(train_corpus=str(corpus), output_dir=str(tmp / "data"),
                                         bert_model=str(VOCAB.parent), do_lower_case=True,
                                         max_seq_len=32))
    return tmp / "data"


META_FIELDS = {"vocab_size": "positive int", "max_seq_len": "positive int",
               "vocab_md5": "string", "dtype": "string", "shards": "list"}
SHARD_FIELDS = {"tokens_file": "file name", "offsets_file": "file name", "instances": "count",
                "tokens": "count"}


@given(field=st.sampled_from(sorted(META_FIELDS) + [f"shards.{k}" for k in SHARD_FIELDS]),
       value=WRONG)
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_metadata_fields_are_type_checked(shards, tmp_path_factory, field, value):
    kind = SHARD_FIELDS[field.split(".")[1]] if "." in field else META_FIELDS[field]
    if not _wrong_for(kind, value):
        return
    d = tmp_path_factory.mktemp("data")
    shutil.rmtree(d)
    shutil.copytree(shards, d)
    meta = json.loads((d / "metadata.json").read_text())
    if "." in field:
        meta["shards"][0][field.split(".")[1]] = value
        name = field.split(".")[1]
    else:
        meta[field] = value
        name = field
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UserError) as err:
        PretrainingDataset(d, 32, vocab_file=str(VOCAB))
    assert "metadata.json" in str(err.value) and repr(name) in str(err.value), str(err.value)


def test_untouched_files_load(supernet, shards):
    assert load_config(supernet).hidden_size == 32
    assert len(PretrainingDataset(shards, 32, vocab_file=str(VOCAB))) > 0
