"""Start-up: every command pays for gevent's monkey patching, so it reads package metadata once."""
import subprocess
import sys

from helpers import ROOT

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
