"""The bash wrappers: valid bash, clean under shellcheck, and every flag they pass exists.

Flags are checked against the real argument parsers twice: statically (every `--flag` written
after a script's name is among the options its `--help` lists; torchrun's come from
`torch.distributed.run`'s parser), and by running each cluster wrapper with stand-ins for
python / torchrun / srun / scontrol that record their argv, which the scripts' own parsers must
then accept (values, arity and types included).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WRAPPERS = sorted([*(ROOT / "experiments" / "cluster").glob("*.sh"),
                   *(ROOT / "experiments" / "cluster").glob("*.sbatch"),
                   *(ROOT / "experiments").glob("*.sh"), ROOT / "setup_superbert_model.sh"])
SCRIPTS = {name: name for name in (
    "generate_data.py", "pre_training.py", "inference_time_evaluation.py", "latency_predictor.py",
    "searcher.py", "superbert_run_en_classifier.py", "submodel_extractor.py", "make_book_tasks.py")}
SCRIPTS["summarize.py"] = "experiments/summarize.py"
_FLAG = re.compile(r"^--[A-Za-z0-9][A-Za-z0-9_-]*")
_ARRAY = re.compile(r"\b([A-Za-z_]\w*)\+?=\(([^()]*)\)")


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    return out


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote inside e.g. a case pattern: fall back to spaces
        return line.split()


def script_calls(path: Path) -> list[tuple[str, list[str], list[str]]]:
    """(script, flags passed to it, flags passed to torchrun before it) for every call in a wrapper.

    Flags held in bash arrays (`args=(--x 1)` ... `"${args[@]}"`) count for the call that
    expands the array.
    """
    text = path.read_text()
    arrays: dict[str, list[str]] = {}
    for name, body in _ARRAY.findall(text.replace("\\\n", " ")):
        arrays.setdefault(name, []).extend(w for w in _words(body) if _FLAG.match(w))
    calls = []
    for line in _logical_lines(text):
        words = _words(line)
        for i, w in enumerate(words):
            name = Path(w).name
            if name not in SCRIPTS:
                continue
            flags = [_FLAG.match(x).group() for x in words[i + 1:] if _FLAG.match(x)]
            for x in words[i + 1:]:
                m = re.fullmatch(r"\$\{(\w+)\[@\]\}", x)
                if m:
                    flags += arrays.get(m.group(1), [])
            launcher = []
            if "torchrun" in words[:i]:
                j = words.index("torchrun")
                launcher = [_FLAG.match(x).group() for x in words[j + 1:i] if _FLAG.match(x)]
            calls.append((name, flags, launcher))
            break
    return calls


@lru_cache(maxsize=None)
def script_options(script: str) -> frozenset[str]:
    assert (ROOT / SCRIPTS[script]).exists(), f"{SCRIPTS[script]} is missing"
    r = subprocess.run([sys.executable, SCRIPTS[script], "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"{script} --help failed: {r.stderr[-500:]}"
    return frozenset(re.findall(r"(?<![\w-])--[A-Za-z0-9][A-Za-z0-9_-]*", r.stdout))


@lru_cache(maxsize=None)
def torchrun_options() -> frozenset[str]:
    from torch.distributed.run import get_args_parser
    return frozenset(s for a in get_args_parser()._actions for s in a.option_strings)


def test_wrappers_found():
    names = {p.name for p in WRAPPERS}
    assert {"single_gpu.sh", "torchrun_8gpu.sh", "multinode.sh", "slurm.sbatch",
            "evolve_loop.sh", "quickstart.sh", "slurm_eval_array.sbatch"} <= names


@pytest.mark.parametrize("path", WRAPPERS, ids=lambda p: p.name)
def test_bash_syntax(path):
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("path", WRAPPERS, ids=lambda p: p.name)
def test_shellcheck(path):
    if shutil.which("shellcheck") is None:
        # CI sets SHELLCHECK_REQUIRED: there a missing linter is a failure, not a skip.
        if os.environ.get("SHELLCHECK_REQUIRED"):
            pytest.fail("shellcheck is required here but not installed")
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", "-s", "bash", "-x", str(path)], capture_output=True,
                       text=True, cwd=path.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_flag_parser_sees_arrays_and_launchers(tmp_path):
    w = tmp_path / "w.sh"
    w.write_text('x=(--mlm_loss --seed "$S")\n# python pre_training.py --commented\n'
                 'torchrun --nnodes=2 --rdzv_endpoint="$A:$P" pre_training.py \\\n'
                 '    --epochs 3 "${x[@]}"\n')
    assert script_calls(w) == [("pre_training.py", ["--epochs", "--mlm_loss", "--seed"],
                                ["--nnodes", "--rdzv_endpoint"])]


@pytest.mark.parametrize("path", [p for p in WRAPPERS if p.name != "setup_superbert_model.sh"],
                         ids=lambda p: p.name)
def test_wrapper_flags_exist_in_the_scripts(path):
    calls = script_calls(path)
    assert calls, f"{path.name} calls no top-level script"
    problems = []
    for script, flags, launcher in calls:
        known = script_options(script)
        problems += [f"{script} has no {f}" for f in flags if f not in known]
        problems += [f"torchrun has no {f}" for f in launcher if f not in torchrun_options()]
    assert not problems, f"{path.name}: " + "; ".join(sorted(set(problems)))


# --- run the cluster wrappers with recording stand-ins -----------------------------------------

CLUSTER_RUNS = [
    ("single_gpu.sh", ["mlm"]), ("single_gpu.sh", ["kd"]), ("single_gpu.sh", ["further"]),
    ("torchrun_8gpu.sh", ["mlm"]), ("torchrun_8gpu.sh", ["kd"]),
    ("multinode.sh", ["mlm"]), ("slurm.sbatch", ["mlm"]), ("slurm.sbatch", ["further"]),
    ("evolve_loop.sh", []),
]
# The evaluation on a cluster: wrapper, arguments, environment.
EVAL_RUNS = {
    "evolve 1 node x 4 GPUs": ("evolve_loop.sh", [], {"NPROC": "4"}),
    "evolve node 0 of 2": ("evolve_loop.sh", [], {"NPROC": "2", "NNODES": "2", "NODE_RANK": "0",
                                                  "MASTER_ADDR": "node001", "MASTER_PORT": "29600"}),
    "evolve node 1 of 2": ("evolve_loop.sh", [], {"NPROC": "2", "NNODES": "2", "NODE_RANK": "1",
                                                  "MASTER_ADDR": "node001"}),
    "eval array": ("slurm_eval_array.sbatch", ["cands/gen_2.cands"],
                   {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "3",
                    "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"}),
}


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def _record_calls(wrapper: str, args: list[str], tmp: Path,
                  extra_env: dict[str, str] | None = None) -> list[list[str]]:
    bin_dir, log = tmp / "bin", tmp / "calls.jsonl"
    bin_dir.mkdir()
    record = (f'"{sys.executable}" -c "import json, sys; print(json.dumps(sys.argv[1:]))" '
              f'"$(basename "$0")" "$@" >> "{log}"\n')
    _stub(bin_dir / "python", record)
    _stub(bin_dir / "torchrun", record)
    _stub(bin_dir / "srun", 'exec "$@"\n')
    _stub(bin_dir / "scontrol", "echo node001\necho node002\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": "python",
           "MASTER_ADDR": "node001", "SLURM_JOB_NODELIST": "node[001-002]",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "1234", "SLURM_SUBMIT_DIR": str(ROOT),
           "CANDS_DIR": str(tmp / "cands"), "OUT_DIR": str(tmp / "search"), "GENERATIONS": "3",
           "POLL_SECONDS": "0.1", **(extra_env or {})}
    path = ROOT / "experiments" / "cluster" / wrapper
    r = subprocess.run(["bash", str(path), *args], env=env, capture_output=True, text=True,
                       cwd=tmp, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    # the output rule for the folders a wrapper makes itself (python -m superbert.outputs
    # NAME=PATH ..., tested in test_outputs.py) is not a pipeline step
    return [c for c in calls if c[1:3] != ["-m", "superbert.outputs"]]


@lru_cache(maxsize=None)
def _parser(script: str):
    spec = importlib.util.spec_from_file_location(f"_wrapped_{script[:-3]}", ROOT / SCRIPTS[script])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (summarize.py's) look their module up by name
    spec.loader.exec_module(module)
    return module.build_parser()


def _check_script_argv(script: str, argv: list[str]) -> None:
    try:
        _parser(script).parse_args(argv)
    except SystemExit:
        pytest.fail(f"{script} rejects the wrapper's arguments: {shlex.join(argv)}")


@pytest.mark.parametrize("wrapper, args", CLUSTER_RUNS, ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_cluster_wrapper_arguments_parse(tmp_path, wrapper, args):
    calls = _record_calls(wrapper, args, tmp_path)
    assert calls, f"{wrapper} ran nothing"
    from torch.distributed.run import get_args_parser
    seen = []
    for call in calls:
        tool, argv = call[0], call[1:]
        if tool == "torchrun":
            ns = get_args_parser().parse_args(argv)
            script, argv = Path(ns.training_script).name, ns.training_script_args
            if wrapper == "multinode.sh" or wrapper == "slurm.sbatch":
                assert ns.rdzv_backend == "c10d" and ns.rdzv_endpoint.startswith("node001:")
        else:
            script, argv = Path(argv[0]).name, argv[1:]
        assert script in SCRIPTS
        _check_script_argv(script, argv)
        seen.append(script)
    if wrapper == "evolve_loop.sh":
        # Candidate, Random, then evaluate/evolve for 3 generations (no evolve after the last)
        assert seen == ["searcher.py"] * 2 + ["superbert_run_en_classifier.py", "searcher.py"] * 2 \
            + ["superbert_run_en_classifier.py", "summarize.py"]
        ev = [c for c in calls if Path(c[1]).name == "searcher.py" and "Evolved" in c]
        assert len(ev) == 2
    else:
        assert seen == ["pre_training.py"]


def _prepare_other_nodes(tmp: Path, env: dict[str, str]) -> None:
    """What the other nodes of a multi-node evolve loop leave on the shared filesystem (the
    stand-ins write nothing): node 0's .cands files for node 1, node 1's stamps for node 0."""
    (tmp / "cands").mkdir()
    (tmp / "search").mkdir()
    for gen in (1, 2, 3):
        if env.get("NODE_RANK") == "1":
            (tmp / "cands" / f"gen_{gen}.cands").write_text("{}\n")
        else:
            (tmp / "search" / f".gen_{gen}.node_1.evaluated").touch()


@pytest.mark.parametrize("name", list(EVAL_RUNS))
def test_cluster_evaluation_wrappers(tmp_path, name):
    """The evaluation under torchrun (one or several nodes) and as a SLURM array: the launcher
    arguments and the evaluator's parse, each node's part of the loop."""
    wrapper, args, env = EVAL_RUNS[name]
    if env.get("NNODES"):
        _prepare_other_nodes(tmp_path, env)
    calls = _record_calls(wrapper, args, tmp_path, env)
    from torch.distributed.run import get_args_parser
    seen = []
    for call in calls:
        tool, argv = call[0], call[1:]
        if tool == "torchrun":
            ns = get_args_parser().parse_args(argv)
            assert ns.nproc_per_node == env["NPROC"]
            if "NNODES" in env:
                assert (ns.nnodes, ns.node_rank) == (env["NNODES"], int(env["NODE_RANK"]))
                assert ns.master_addr == env["MASTER_ADDR"] and not ns.standalone
                assert ns.master_port == int(env.get("MASTER_PORT", "29500"))
            else:
                assert ns.standalone and ns.nnodes == "1:1"
            script, argv = Path(ns.training_script).name, ns.training_script_args
            assert script == "superbert_run_en_classifier.py"
        else:
            script, argv = Path(argv[0]).name, argv[1:]
        _check_script_argv(script, argv)
        seen.append((tool, script))
        if script == "superbert_run_en_classifier.py":
            cfg = _parser(script).parse_args(argv)
            if wrapper == "slurm_eval_array.sbatch":
                assert cfg.shard == "2/4" and cfg.arches_file == "cands/gen_2.cands"
            else:
                assert not cfg.shard  # torchrun's ranks pick their shares
    evals = [s for s in seen if s[1] == "superbert_run_en_classifier.py"]
    if wrapper == "slurm_eval_array.sbatch":
        assert seen == [("python", "superbert_run_en_classifier.py")]
        return
    assert evals == [("torchrun", "superbert_run_en_classifier.py")] * 3
    searches = [s for s in seen if s[1] == "searcher.py"]
    if env.get("NODE_RANK") == "1":
        assert seen == evals  # node 1 only evaluates
        assert sorted(p.name for p in (tmp_path / "search").glob(".gen_*")) == [
            f".gen_{g}.node_1.evaluated" for g in (1, 2, 3)]
    else:
        assert len(searches) == 4 and seen[-1][1] == "summarize.py"
        assert sorted(p.name for p in (tmp_path / "search").glob(".gen_*.evaluated")
                      if "node" not in p.name) == [f".gen_{g}.evaluated" for g in (1, 2, 3)]


# ---- the quickstart's options: --dry_run runs no stage ------------------------------------------
def _quickstart(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "experiments" / "quickstart.sh"), *args], cwd=ROOT,
                          env={**os.environ, "QUICKSTART_DIR": str(tmp / "qs"),
                               "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=120)


def test_quickstart_runtime_option_and_its_stamp(tmp_path):
    r = _quickstart(tmp_path, "--smoke", "--runtime", "onnxruntime-int8", "--dry_run")
    assert r.returncode == 0, r.stderr
    assert "a grown-kd-smoke-onnxruntime-int8-supernet0 run" in r.stdout
    assert not (tmp_path / "qs").exists()  # a dry run writes nothing
    r = _quickstart(tmp_path, "--smoke", "--dry_run", QUICKSTART_RUNTIME="onnxruntime")
    assert "a grown-kd-smoke-onnxruntime-supernet0 run" in r.stdout
    assert "a scratch-mlm-default-torch run" in _quickstart(tmp_path, "--scratch",
                                                            "--dry_run").stdout  # the default
    for bad in (["--runtime"], ["--runtime", "tensorrt"], ["--runtime=openvino"]):
        r = _quickstart(tmp_path, *bad, "--dry_run")
        assert r.returncode == 2 and r.stderr.startswith("error: --runtime"), r.stderr
    # a directory holds one runtime's run: another is refused before any stage runs
    stamps = tmp_path / "qs" / ".stamps"
    stamps.mkdir(parents=True)
    (stamps / "size").write_text("grown-kd-smoke-torch-supernet0\n")
    r = _quickstart(tmp_path, "--smoke", "--runtime", "onnxruntime")
    assert r.returncode == 2 and "holds a grown-kd-smoke-torch-supernet0 run" in r.stderr
    assert "--fresh" in r.stderr and [p.name for p in stamps.iterdir()] == ["size"]
    # a stamp written before --runtime and --supernet_steps existed is a torch run's whose
    # grown supernet had its light stage (smoke: 10 steps)
    (stamps / "size").write_text("grown-kd-smoke\n")
    r = _quickstart(tmp_path, "--smoke", "--supernet_steps", "10", "--dry_run")
    assert "resuming the one there" in r.stdout, r.stderr
    assert _quickstart(tmp_path, "--smoke", "--dry_run").returncode == 2  # default: no stage
    assert _quickstart(tmp_path, "--smoke", "--supernet_steps=10", "--runtime=onnxruntime",
                       "--dry_run").returncode == 2
    r = _quickstart(tmp_path, "--smoke", "--runtime=onnxruntime", "--dry_run", "--fresh")
    assert r.returncode == 0 and (stamps / "size").read_text() == "grown-kd-smoke\n"


def test_quickstart_supernet_steps_option(tmp_path):
    r = _quickstart(tmp_path, "--smoke", "--dry_run", QUICKSTART_SUPERNET_STEPS="25")
    assert "a grown-kd-smoke-torch-supernet25 run" in r.stdout, r.stderr
    assert "a scratch-mlm-smoke-torch run" in _quickstart(
        tmp_path, "--scratch", "--smoke", "--supernet_steps=40", "--dry_run").stdout
    for bad in (["--supernet_steps"], ["--supernet_steps", "ten"], ["--supernet_steps=-5"],
                ["--scratch", "--supernet_steps", "0"]):
        r = _quickstart(tmp_path, *bad, "--dry_run")
        assert r.returncode == 2 and r.stderr.startswith("error: ")
        assert "--supernet_steps" in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)
    assert not (tmp_path / "qs").exists()


def test_quickstart_times_its_latency_dataset_with_the_runtime():
    text = (ROOT / "experiments" / "quickstart.sh").read_text().replace("\\\n", " ")
    [call] = [line for line in _logical_lines(text) if "inference_time_evaluation.py" in line]
    assert '--backend "$RUNTIME"' in call
