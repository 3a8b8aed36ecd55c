"""The bash wrappers: valid bash, clean under shellcheck, and every flag they pass exists.

Flags are checked against the real argument parsers: each top-level script's `--help` lists its
options, and torchrun's options come from `torch.distributed.run`'s parser.
"""
from __future__ import annotations

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
SCRIPTS = ("generate_data.py", "pre_training.py", "inference_time_evaluation.py",
           "latency_predictor.py", "searcher.py", "superbert_run_en_classifier.py",
           "submodel_extractor.py", "make_book_tasks.py")
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
    assert (ROOT / script).exists(), f"{script} is missing"
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
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
            "evolve_loop.sh", "quickstart.sh"} <= names


@pytest.mark.parametrize("path", WRAPPERS, ids=lambda p: p.name)
def test_bash_syntax(path):
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("path", WRAPPERS, ids=lambda p: p.name)
def test_shellcheck(path):
    if shutil.which("shellcheck") is None:
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
