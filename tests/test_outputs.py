"""Every output flag of every script, under the one output rule (superbert/outputs.py).

The table below lists each script's output flags with the arguments that reach the check; the
flags themselves come from the scripts' parsers (`action.output`, set by `cli.add_flags`), so a
script or an output flag added without a row fails `test_table_covers_every_output_flag`.

Cases (a flag gets those that apply to its kind):
  read_only       the output inside a read-only mount (tmpfs mounted ro: as root, chmod'ed
                  folders stay writable)
  file_for_dir    a file where a folder goes        (folder flags)
  dir_for_file    a folder where a file goes        (file flags)
  blocked_parent  a missing parent that cannot be created: a file on the way up
  users_file      a folder holding a user's file (folder flags), a user's file at the path
                  (file flags), a user's file where the run appends (results, datasets)
each: exit 2, one `error:` line naming the flag and the path, no traceback, the user's file
untouched and nothing written. And
  new_parent      a missing parent that can be created: the check passes and creates nothing
                  (the run creates it; the pipeline tests run every script into new folders).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from superbert.cli import config_flags, config_from_args, run_main
from superbert.outputs import Kind, output_specs

ROOT = Path(__file__).resolve().parents[1]
ARCH = ("{'sample_layer_num': 1, 'sample_num_attention_heads': [2], 'sample_qkv_sizes': [128], "
        "'sample_hidden_size': 128, 'sample_intermediate_sizes': [512]}")
USER_TEXT = "a user's file: keep me\n"


# ---- the scripts and their parsers --------------------------------------------------------------
def script_files() -> list[str]:
    """Every script a user runs: the top-level *.py, experiments/*.py, and the Python side of
    setup_superbert_model.sh."""
    found = sorted(p.name for p in ROOT.glob("*.py"))
    found += sorted(f"experiments/{p.name}" for p in (ROOT / "experiments").glob("*.py"))
    return found + ["superbert/setup_model.py"]


_MODULES: dict[str, object] = {}


def load(script: str):
    if script not in _MODULES:
        if script == "superbert/setup_model.py":
            import superbert.setup_model as module
        else:
            name = "_script_" + script.replace("/", "_")[:-3]
            spec = importlib.util.spec_from_file_location(name, ROOT / script)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses look their module up by name
            spec.loader.exec_module(module)
        _MODULES[script] = module
    return _MODULES[script]


def output_actions(script: str) -> dict[str, object]:
    """--flag -> its Output, from the script's parser."""
    parser = load(script).build_parser()
    return {a.option_strings[0]: a.output for a in parser._actions
            if getattr(a, "output", None) is not None}


# ---- the table: script -> output flag -> the rest of a command line that reaches the check ------
@dataclass(frozen=True)
class Row:
    args: Callable[[Path], list[str]]  # given a folder of (missing) inputs
    shared: bool = False               # a run's root: other files there are allowed
    users_file_at: str | None = None   # shared folders: where a user's file is in the way


def _inputs(tmp: Path, *names: str) -> list[str]:
    return [str(tmp / n) for n in names]


TABLE: dict[str, dict[str, Row]] = {
    "generate_data.py": {
        "--output_dir": Row(lambda t: ["--train_corpus", str(t / "corpus.txt"),
                                       "--bert_model", str(t / "model")]),
    },
    "submodel_extractor.py": {
        "--output": Row(lambda t: ["--model", str(t / "supernet"), "--arch", ARCH]),
    },
    "pre_training.py": {
        "--cache_dir": Row(lambda t: ["--pregenerated_data", str(t / "data"), "--student_model",
                                      str(t / "student"), "--mlm_loss",
                                      "--masked_lm_prob", "0.15"],
                           shared=True, users_file_at="output"),
        "--reorder_only": Row(lambda t: ["--pregenerated_data", str(t / "data"),
                                         "--student_model", str(t / "student"), "--mlm_loss",
                                         "--masked_lm_prob", "0.15"]),
    },
    "superbert_run_en_classifier.py": {
        "--output_dir": Row(lambda t: ["--data_dir", str(t / "MNLI"), "--model", str(t / "m"),
                                       "--task_name", "mnli"],
                            shared=True, users_file_at="subbert.results"),
        "--cache_dir": Row(lambda t: ["--data_dir", str(t / "MNLI"), "--model", str(t / "m"),
                                      "--task_name", "mnli", "--output_dir", str(t / "results")],
                           shared=True),
    },
    "inference_time_evaluation.py": {
        "--output": Row(lambda t: ["--bert_model", str(t / "supernet")]),
    },
    "latency_predictor.py": {
        "--ckpt_path": Row(lambda t: ["--lat_dataset_path", str(t / "lat.tmp")]),
        "--plot": Row(lambda t: ["--lat_dataset_path", str(t / "lat.tmp"),
                                 "--ckpt_path", str(t / "time.pt")]),
        "--candidate_file": Row(lambda t: ["--get_candidates", "--ckpt_path", str(t / "time.pt")]),
    },
    "searcher.py": {
        "--candidate_file": Row(lambda t: ["--method", "Candidate",
                                           "--ckpt_path", str(t / "time.pt")]),
        "--output_file": Row(lambda t: ["--method", "Random", "--ckpt_path", str(t / "time.pt"),
                                        "--candidate_file", str(t / "cands")]),
        "--plot": Row(lambda t: ["--method", "Random", "--ckpt_path", str(t / "time.pt"),
                                 "--candidate_file", str(t / "cands"),
                                 "--output_file", str(t / "gen.cands")]),
    },
    "make_book_tasks.py": {
        "--output_dir": Row(lambda t: ["--books_dir", str(t / "books")]),
    },
    "experiments/summarize.py": {
        "--output_dir": Row(lambda t: ["--results", str(t / "subbert.results"),
                                       "--supernet", str(t / "supernet"),
                                       "--time_pt", str(t / "time.pt")]),
    },
    "superbert/setup_model.py": {  # setup_superbert_model.sh
        "--output": Row(lambda t: []),
    },
}
def test_table_covers_every_output_flag():
    """The table is the scripts' parsers' outputs, exactly: a new script, or a new output
    flag, must get a row (and a flag that names a path written must be declared an output)."""
    assert sorted(TABLE) == sorted(s for s in script_files() if output_actions(s)), \
        "a script with output flags is missing from TABLE (or TABLE lists one without)"
    for script in script_files():
        declared = output_actions(script)
        assert sorted(TABLE.get(script, {})) == sorted(declared), script
        # a flag named like an output but not declared as one would escape the rule
        parser = load(script).build_parser()
        for action in parser._actions:
            name = action.option_strings[0] if action.option_strings else ""
            looks = any(w in name for w in ("output", "cache_dir", "plot", "reorder_only")) \
                and not name.startswith("--overwrite")
            if looks and name not in declared:
                assert name in NOT_OUTPUTS.get(script, ()), f"{script} {name} is not declared"


# flags whose name suggests an output but that only read (or switch something)
NOT_OUTPUTS = {
    "experiments/summarize.py": ("--plots",),  # plots made elsewhere, listed in the summary
    "pre_training.py": ("--s3_output_dir",),   # a removed flag: an error if given
}


# ---- the cases -----------------------------------------------------------------------------------
@contextlib.contextmanager
def read_only_folder(tmp: Path):
    """A folder no one can write into, as root too: a read-only tmpfs mount. Where mounting is
    not allowed, an unprivileged user's chmod does the same; root without mount rights gets a
    folder under a file (the check's other refusal), named in the test output."""
    ro = tmp / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                             capture_output=True).returncode == 0
    try:
        if mounted:
            yield ro
        elif os.geteuid() != 0:
            ro.chmod(0o555)
            yield ro
        else:  # pragma: no cover - a root CI without CAP_SYS_ADMIN
            blocker = tmp / "ro_file"
            blocker.write_text("")
            yield blocker
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=True)
        else:
            ro.chmod(0o755)


def rows():
    out = []
    for script, flags in TABLE.items():
        for flag, row in flags.items():
            for case in ("read_only", "wrong_kind", "blocked_parent", "users_file", "new_parent"):
                out.append(pytest.param(script, flag, case, id=f"{script}{flag}-{case}"))
    return out


def tree(root: Path) -> dict[str, str | None]:
    """Every path under `root` with its text (None for folders): what the test compares."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes().decode("utf-8", "replace")
    return out


def run_script(script: str, argv: list[str], capsys) -> tuple[int, str]:
    """The script's main under the real entry guard, in this process (the scripts are
    imported once; `test_through_the_command_line` runs them as a user does)."""
    module = load(script)
    try:
        run_main(module.main, argv)
        code = 0
    except SystemExit as err:
        code = err.code
    return code, capsys.readouterr().err


def check_config(script: str, argv: list[str]) -> None:
    """Build the script's config as its main does (parser -> config_from_args): the output
    checks run, and no stage's work."""
    module = load(script)
    args = module.build_parser().parse_args(argv)
    if hasattr(module, "pretrain_config"):
        module.pretrain_config(args)
        return
    dests = vars(args)
    configs = [v for v in vars(module).values()
               if isinstance(v, type) and dataclasses.is_dataclass(v) and output_specs(v)
               and all(f.name in dests for f in config_flags(v))]
    assert len(configs) == 1, configs
    extra = {k: getattr(args, k) for k in ("results", "time_pt", "supernet")
             if configs[0].__name__ == "SummaryOutput"}
    config_from_args(configs[0], args, **extra)


@pytest.mark.parametrize("script, flag, case", rows())
def test_output_error(script, flag, case, tmp_path, capsys):
    spec = output_actions(script)[flag]
    row = TABLE[script][flag]
    folder = spec.kind in (Kind.DIR, Kind.CACHE)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    users = None
    expect = None  # a piece of the error line; None: the check passes
    with contextlib.ExitStack() as stack:
        if case == "read_only":
            ro = stack.enter_context(read_only_folder(work))
            out = ro / "out"
            expect = "read-only" if ro.is_dir() else "cannot be created"
        elif case == "wrong_kind":
            out = work / "out"
            if folder:
                out.write_text(USER_TEXT)
                users, expect = out, "is a file; this flag takes a folder"
            else:
                out.mkdir()
                (out / "keep.txt").write_text(USER_TEXT)
                users, expect = out / "keep.txt", "is a folder; this flag takes a file path"
        elif case == "blocked_parent":
            blocker = work / "a_file"
            blocker.write_text(USER_TEXT)
            users, out = blocker, blocker / "sub" / "out"
            expect = "cannot be created"
        elif case == "users_file":
            out = work / "out"
            if folder:
                out.mkdir()
                users = out / (row.users_file_at or "notes.txt")
                expect = {None: f"holds {users.name}" if not row.shared else None,
                          "output": "cannot be created: " + str(users),  # where its runs go
                          "subbert.results": "subbert.results exists and is not a results file",
                          }[row.users_file_at]
            else:
                users, expect = out, "exists and is not"
            users.write_text(USER_TEXT)
        else:  # new_parent
            out = work / "new" / "deeper" / "out"
        argv = [*row.args(inputs), flag, str(out)]
        before = tree(tmp_path)
        if expect is None:
            check_config(script, argv)  # passes, and writes nothing
        else:
            code, err = run_script(script, argv, capsys)
            assert code == 2, err
            assert err.count("\n") == 1 and err.startswith("error: "), err
            assert "Traceback" not in err and flag in err and str(out) in err, err
            assert expect in err, err
        assert tree(tmp_path) == before  # nothing written; the user's file as it was
        if users is not None:
            assert users.read_text() == USER_TEXT


def test_row_count():
    """scripts x flags x cases: the number the issue asks to see."""
    n_flags = sum(len(f) for f in TABLE.values())
    assert (len(TABLE), n_flags, len(rows())) == (10, 16, 16 * 5)


@pytest.mark.parametrize("script, flag", [
    ("generate_data.py", "--output_dir"), ("searcher.py", "--output_file"),
    ("experiments/summarize.py", "--output_dir"), ("setup_superbert_model.sh", "--output"),
])
def test_through_the_command_line(script, flag, tmp_path):
    """As a user runs them (a fresh interpreter; the shell wrapper through bash): one line."""
    blocker = tmp_path / "a_file"
    blocker.write_text(USER_TEXT)
    key = "superbert/setup_model.py" if script.endswith(".sh") else script
    argv = [*TABLE[key][flag].args(tmp_path), flag, str(blocker / "out")]
    cmd = ["bash", str(ROOT / script)] if script.endswith(".sh") else [sys.executable,
                                                                      str(ROOT / script)]
    r = subprocess.run([*cmd, *argv], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {flag} {blocker / 'out'} cannot be created: {blocker} "
                               f"is a file"), r.stderr
    assert blocker.read_text() == USER_TEXT and sorted(os.listdir(tmp_path)) == ["a_file"]


def test_cluster_loop_checks_its_folders_first(tmp_path):
    """evolve_loop.sh makes its run folders itself: the same rule, before it makes them."""
    blocker = tmp_path / "a_file"
    blocker.write_text(USER_TEXT)
    r = subprocess.run(["bash", str(ROOT / "experiments/cluster/evolve_loop.sh")],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHON": sys.executable,
                            "OUT_DIR": str(blocker / "search"),
                            "CANDS_DIR": str(tmp_path / "cands")})
    assert r.returncode == 2 and r.stderr == (f"error: OUT_DIR {blocker / 'search'} cannot be "
                                              f"created: {blocker} is a file, not a folder\n")
    assert sorted(os.listdir(tmp_path)) == ["a_file"] and blocker.read_text() == USER_TEXT
