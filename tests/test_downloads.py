"""Downloads: a folder that exists is complete, archives never escape, nothing is fetched twice."""
import io
import tarfile
from pathlib import Path

import pytest

import grid


def archive(members: list) -> tarfile.TarFile:
    """A tar archive in memory from (name, kind, payload) entries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tar.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
                tar.addfile(info)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
    buffer.seek(0)
    return tarfile.open(fileobj=buffer)


def test_extraction_never_writes_outside_the_job_folder(tmp_path):
    dest = tmp_path / "job"
    dest.mkdir()
    tar = archive([
        ("std.out", "file", b"fine\n"),
        ("sub/result.txt", "file", b"42\n"),
        ("../escaped.txt", "file", b"evil"),
        ("sub/../../escaped2.txt", "file", b"evil"),
        (str(tmp_path / "absolute.txt"), "file", b"evil"),
        ("link", "symlink", str(tmp_path)),
        ("hard", "hardlink", "/etc/passwd"),
        ("emptydir", "dir", None),
    ])
    grid.safe_extract(tar, dest)
    assert (dest / "std.out").read_text() == "fine\n"
    assert (dest / "sub" / "result.txt").read_text() == "42\n"
    assert (dest / "emptydir").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]      # nothing escaped
    assert not (dest / "link").exists() and not (dest / "hard").exists()


def test_a_file_written_through_a_symlinked_folder_stays_inside(tmp_path):
    dest = tmp_path / "job"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    tar = archive([("d", "symlink", str(outside)), ("d/x.txt", "file", b"evil")])
    grid.safe_extract(tar, dest)
    assert list(outside.iterdir()) == []


class FlakyBackend(grid.Backend):
    """Writes part of an output, then fails: the first `failures` calls."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def fetch_output(self, job_id, dest: Path) -> None:
        self.calls += 1
        (dest / "std.out").write_text("partial")
        if self.calls <= self.failures:
            raise grid.CallFailed("connection reset")
        (dest / "result.txt").write_text("complete")


def done_job() -> grid.Job:
    return grid.Job(num=7, name="seven", status=grid.DONE, dirac_id=1007)


def test_a_failed_download_leaves_no_folder_and_the_retry_completes(batch):
    backend, job = FlakyBackend(failures=1), done_job()
    with pytest.raises(grid.CallFailed):
        grid.download_output(backend, job, batch)
    assert not (batch / "succeeded").exists() or not any((batch / "succeeded").iterdir())
    folder = grid.download_output(backend, job, batch)
    assert folder == "succeeded/00007_seven"
    assert sorted(p.name for p in (batch / folder).iterdir()) == ["result.txt", "std.out"]


def test_an_existing_folder_is_never_downloaded_again(batch):
    backend, job = FlakyBackend(failures=0), done_job()
    grid.download_output(backend, job, batch)
    grid.download_output(backend, job, batch)
    assert backend.calls == 1


def test_failed_and_done_jobs_get_separate_folders_named_by_number():
    done = grid.Job(num=3, name="a/b c", status=grid.DONE)
    failed = grid.Job(num=4, name="a/b c", status=grid.FAILED)
    killed = grid.Job(num=5, name="", status=grid.KILLED)
    assert done.output_folder() == "succeeded/00003_a_b_c"
    assert failed.output_folder() == "failed/00004_a_b_c"
    assert killed.output_folder() == "failed/00005"


def test_temporary_folders_are_removed_from_worker_threads_without_leaking_descriptors(tmp_path):
    """DIRAC's retries give the threadpool's threads a gevent hub; shutil.rmtree there leaves every
    folder's descriptor open (gevent defers closing it to that hub), and thousands of downloads run out."""
    import os
    import time

    import gevent

    def fetch_like_a_download(n):
        time.sleep(0.001)                         # patched: this worker thread now has a hub
        for i in range(40):
            folder = tmp_path / f"{n}.{i}"
            (folder / "a" / "b").mkdir(parents=True)
            (folder / "a" / "b" / "f").write_text("x")
            (folder / "link").symlink_to(tmp_path)
            grid.remove_tree(folder)

    before = len(os.listdir("/proc/self/fd"))
    pool = gevent.get_hub().threadpool
    gevent.joinall([gevent.spawn(lambda n=n: pool.spawn(fetch_like_a_download, n).get()) for n in range(4)])
    assert list(tmp_path.iterdir()) == []
    # the workers' own hubs take a few descriptors; rmtree would have left at least one per folder (160)
    assert len(os.listdir("/proc/self/fd")) < before + 40
