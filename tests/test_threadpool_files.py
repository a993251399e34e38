"""File work inside gevent's threadpool, where the dirac backend runs (sandbox folders, downloads)."""
import os
import tempfile

import gevent

import grid  # noqa: F401  (its monkey patching is what is tested)


def make_and_remove_folders(rounds: int) -> None:
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "file"), "w") as f:
                f.write("x")
        gevent.sleep(0)            # this thread's own loop runs, as it does inside DIRAC's socket calls


def test_threads_remove_folders_at_once_without_errors_or_leaked_descriptors():
    pool = gevent.get_hub().threadpool
    pool.maxsize = max(pool.maxsize, 8)
    counts = []
    for _ in range(2):
        for result in [pool.spawn(make_and_remove_folders, 150) for _ in range(8)]:
            result.get()           # an EBADF from shutil.rmtree would be raised here
        counts.append(len(os.listdir("/proc/self/fd")))
    assert counts[1] == counts[0]  # a second round leaves no more descriptors open than the first


MANY_FOLDERS = """
import os, resource, shutil, sys, tempfile
sys.path.insert(0, sys.argv[1])
import grid
grid.use_gevent()
import gevent
gevent.get_hub()                   # the loop exists, as in every engine command
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
root = tempfile.mkdtemp()
for i in range(400):               # more folders than descriptors may be open
    os.makedirs(os.path.join(root, str(i), "sub"))
shutil.rmtree(root)
print(os.path.exists(root), len(os.listdir("/proc/self/fd")))
"""


def test_the_loops_thread_removes_a_tree_of_more_folders_than_open_files_allowed():
    """gevent defers closing directories to its loop; pytest's own clean-up of old test folders (and
    any large shutil.rmtree in the engine's thread) ran out of descriptors before."""
    import subprocess
    import sys
    from helpers import ROOT
    done = subprocess.run([sys.executable, "-c", MANY_FOLDERS, str(ROOT)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]
    exists, descriptors = done.stdout.split()
    assert exists == "False" and int(descriptors) < 64
