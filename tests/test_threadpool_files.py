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
