"""Start-up: every command pays for gevent's monkey patching, so it reads package metadata once;
only the commands that need DIRAC or matplotlib import them."""
import subprocess
import sys

import grid
from helpers import ROOT, grid_cmd

PROBE = """
import importlib.metadata, sys
reads = []
read_all = importlib.metadata.distributions
def counted(**kwargs):
    reads.append(1)
    return read_all(**kwargs)
importlib.metadata.distributions = counted
sys.path.insert(0, {root!r})
import grid
from gevent import monkey
print(len(reads), monkey.is_module_patched("socket"), monkey.is_module_patched("time"),
      monkey.is_module_patched("threading"), importlib.metadata.entry_points.__module__)
"""


def test_patching_reads_the_installed_packages_once_and_patches_as_before():
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT))], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    reads, socket, time, threading, where = out.stdout.split()
    assert int(reads) == 1                              # gevent asks 21 times; one read answers them all
    assert (socket, time, threading) == ("True", "True", "False")   # threads stay real for DIRAC
    assert where == "importlib.metadata"                # the look-up is the standard one again


def imported(argv: list, cwd) -> set:
    """Every top-level package a command imports (python -X importtime names each module)."""
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=cwd, capture_output=True, text=True)
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}


def test_only_report_imports_matplotlib_and_none_of_these_imports_dirac(batch):
    store = grid.Store.open(batch, "submit", create=True)
    store.create_batch({"tag": "grid-startup", "backend": "local"}, [grid.Job(num=1, name="one")], [b""])
    store.close()
    for command in (["--help"], ["status"], ["status", "--json"], ["failures"], ["list"]):
        packages = imported(grid_cmd(*command), batch)
        assert "gevent" in packages and "matplotlib" not in packages and "DIRAC" not in packages, command
    assert "matplotlib" in imported(grid_cmd("report"), batch)
