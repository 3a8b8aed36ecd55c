"""Log lines name files relative to the run directory, and installed packages briefly."""
from __future__ import annotations

import logging
import subprocess
import sys

from superbert.cli import ShortPathFormatter


def _format(formatter: logging.Formatter, msg: str) -> str:
    return formatter.format(logging.LogRecord("x", logging.INFO, "p", 1, msg, None, None))


def test_paths_shortened_only_where_a_path_starts():
    f = ShortPathFormatter("%(message)s", "%H", cwd="/work/run", site_dirs=["/py/site-packages"])
    assert (_format(f, "wrote /work/run/exp/a.txt, kept /tmp/work/run/b and /work/runs/c; "
                       "teacher /py/site-packages/gt/model; '/work/run/d'")
            == "wrote exp/a.txt, kept /tmp/work/run/b and /work/runs/c; "
               "teacher <site-packages>/gt/model; 'd'")
    # the root directory as the working directory shortens nothing
    assert _format(ShortPathFormatter("%(message)s", "%H", cwd="/", site_dirs=[]),
                   "/etc/x") == "/etc/x"


def test_scripts_log_relative_paths(tmp_path):
    """A script run in a directory logs the files it writes there relative to it."""
    out = subprocess.run([sys.executable, "-c", "import logging, os; from superbert.cli import "
                          "setup_logging; setup_logging(); "
                          "logging.getLogger('t').info('wrote %s', os.path.join(os.getcwd(), "
                          "'out', 'x.txt'))"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr.rstrip().endswith("t: wrote out/x.txt"), out.stderr
