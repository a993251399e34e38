"""Start-up: commands that only read the batch import neither gevent nor DIRAC; the commands that run
the engine patch for gevent as before, reading the installed packages' metadata once; only `report`
imports matplotlib."""
import os
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
imported_at_first = "gevent" in sys.modules
grid.make_backend("local", __import__("pathlib").Path("."))     # what every engine command does first
from gevent import monkey
print(imported_at_first, len(reads), monkey.is_module_patched("socket"), monkey.is_module_patched("time"),
      monkey.is_module_patched("threading"), importlib.metadata.entry_points.__module__)
"""


def imported_modules(args: list, cwd) -> set:
    done = subprocess.run([sys.executable, "-X", "importtime", *grid_cmd(*args)[1:]], cwd=cwd,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}


def test_help_and_status_import_neither_gevent_nor_dirac(run_grid, batch):
    (batch / "jobs.py").write_text("j = Job()\nj.setExecutable('true')\nsubmit(j)\n")
    assert run_grid("submit", "--backend", "local", "--no-watch", "jobs.py").returncode == 0
    for args in (["--help"], ["status"], ["status", "--json"]):
        modules = imported_modules(args, batch)
        assert "plyvel" in modules or args == ["--help"]
        heavy = {name for name in modules if name.split(".")[0] in ("gevent", "DIRAC", "zope")}
        assert not heavy, f"grid {' '.join(args)} imports {sorted(heavy)[:5]}"


def test_engine_commands_patch_threads_stay_real_and_metadata_is_read_once():
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT))], capture_output=True, text=True,
                         cwd=os.environ.get("TMPDIR", "/tmp"))
    assert out.returncode == 0, out.stderr
    at_first, reads, socket, time, threading, where = out.stdout.split()
    assert at_first == "False"                          # importing grid alone patches nothing
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
        assert "matplotlib" not in packages and "DIRAC" not in packages, command
    assert "matplotlib" in imported(grid_cmd("report"), batch)
