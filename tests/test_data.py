"""Output data and oversized sandboxes on grid storage: found, downloaded, verified, placed whole.

DIRAC's own classes where they exist offline (adler32, JDL parsing, Job); a storage fake for the faults
(bad checksum, missing replica, a good second replica, a storage element down, a full disk, SIGKILL).
The same behaviours against the real lab: tests/integration/test_data_dirac.py.
"""
import bz2
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import gevent
import pytest

import grid

TESTS = Path(__file__).resolve().parent
BASE = "/vo/user/a/alice"


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


class GridStorage(grid.Backend):
    """Jobs end at once (Done, or Failed for ids in `failing`); each job left files on storage.

    files: {job_id: {name: payload}}; copies: {lfn: {storage element: payload}} overrides what each
    storage element holds (a corrupt or missing replica). `down` lists storage elements that do not answer.
    """

    name = "storage"

    def __init__(self, files: dict, copies: dict = None, failing=(), sandbox_on_storage=()):
        self.files, self.copies, self.failing = files, copies or {}, set(failing)
        self.sandbox_on_storage = set(sandbox_on_storage)
        self.next_id, self.fetched, self.down, self.lookups = 100, [], set(), 0
        self.slow = 0.0

    def lfn(self, job_id, name):
        return f"{BASE}/{job_id // 1000}/{job_id}/{name}"

    def submit(self, spec, tag):
        self.next_id += 1
        return self.next_id

    def find(self, tags, groups, known):
        return {}

    def status(self, ids):
        return {i: grid.JobState(grid.FAILED if i in self.failing else grid.DONE, "done") for i in ids}

    def fetch_output(self, job_id, dest: Path):
        if job_id in self.sandbox_on_storage:
            return False
        (dest / "std.out").write_text(f"sandbox of {job_id}\n")
        return True

    def job_outputs(self, job_id, done):
        self.lookups += 1
        return [grid.OutputFile(self.lfn(job_id, name), len(data), adler(data))
                for name, data in self.files.get(job_id, {}).items()]

    def grid_sandbox(self, job_id):
        if job_id not in self.sandbox_on_storage:
            return None
        data = self.tarball(job_id)
        return grid.OutputFile(self.lfn(job_id, "LDSB.x1y2z3w4"), len(data), adler(data), kind="sandbox")

    def tarball(self, job_id) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:bz2") as tar:
            for name, payload in ((f"std.out", f"sandbox of {job_id}\n".encode()), ("big.bin", b"\x07" * 5000),
                                  ("../escape", b"evil")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        return buffer.getvalue()

    def held(self, lfn) -> dict:
        """What each storage element holds of a file: {se: payload}."""
        if lfn in self.copies:
            return self.copies[lfn]
        job_id, name = int(lfn.split("/")[-2]), lfn.split("/")[-1]
        if name.startswith("LDSB."):
            return {"SE-1": self.tarball(job_id)}
        return {"SE-1": self.files[job_id][name]}

    def replicas(self, lfn):
        return sorted(self.held(lfn))

    def fetch_file(self, lfn, dest: Path, replica=None):
        held = self.held(lfn)
        replica = replica or (sorted(held) or ["SE-1"])[0]
        if replica in self.down:
            raise grid.ServerUnreachable(f"download of {lfn} from {replica}: [Errno 111] Connection refused")
        if replica not in held:
            raise grid.CallFailed(f"download of {lfn}: No such file or directory at {replica}")
        path = dest / lfn.rsplit("/", 1)[-1]
        data = held[replica]
        if self.slow:
            with open(path, "wb") as f:
                f.write(data[:len(data) // 2])
                f.flush()
                time.sleep(self.slow)
                f.write(data[len(data) // 2:])
        else:
            path.write_bytes(data)               # bad or not: DataManager leaves what it got
        self.fetched.append((lfn, replica))
        return path


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def make_engine(batch: Path, n: int, backend: grid.Backend, meta: dict = None, out=None) -> grid.Engine:
    store = grid.Store.open(batch, "submit", create=True)
    jobs = [grid.Job(num=i, name=f"job-{i}") for i in range(1, n + 1)]
    specs = [grid.JobSpec(name=j.name, jdl="[]", xml="", steps=[], input_sandbox=[], output_sandbox=[])
             for j in jobs]
    store.create_batch({"tag": "grid-test", "backend": "storage", **(meta or {})}, jobs, specs)
    return grid.Engine(store, backend, grid.Display(out or io.StringIO()), batch, interval=0.001)


def rerun(engine: grid.Engine, backend: grid.Backend, out=None) -> grid.Engine:
    """A later `grid watch` of the same batch."""
    return grid.Engine(engine.batch.store, backend, grid.Display(out or io.StringIO()), engine.batch_dir, interval=0.001)


def files_outside_tmp(batch: Path) -> list[str]:
    """Everything in the batch that is not .grid/ or a job folder's content."""
    found = []
    for root, dirs, files in os.walk(batch):
        rel = Path(root).relative_to(batch)
        if rel.parts[:1] == (".grid",):
            continue
        found += [str(rel / name) for name in files]
    return sorted(found)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(grid, "backoff", lambda attempt, base=1.0: 0.001)


# -- checksums and DIRAC's conventions --------------------------------------------------------------

def test_adler32_is_the_one_dirac_computes_and_compares(tmp_path):
    from DIRAC.Core.Utilities.Adler import compareAdler, fileAdler
    for size in (0, 1, 5, 65521, 2**20 + 17, 3 * 2**20):
        path = tmp_path / f"f{size}"
        path.write_bytes(payload(size, size))
        ours = grid.file_adler32(path)
        assert compareAdler(ours, fileAdler(str(path)))
        assert len(ours) == 8
    assert grid.same_adler32("00a1b2c3", "A1B2C3") and not grid.same_adler32("00a1b2c3", "00a1b2c4")


def test_lfns_follow_the_jobwrappers_convention_for_user_jobs():
    assert grid.user_lfn("out.dat", BASE, "", 12345) == f"{BASE}/12/12345/out.dat"
    assert grid.user_lfn("sub/out.dat", BASE, "", 7) == f"{BASE}/0/7/out.dat"
    assert grid.user_lfn("out.dat", BASE, "run7/v2", 12345) == f"{BASE}/run7/v2/out.dat"
    assert grid.user_lfn("out.dat", BASE, "/run7", 12345) == f"{BASE}/run7/out.dat"
    assert grid.user_lfn("out.dat", BASE, "LFN:/vo/data/x", 1) == "/vo/data/x/out.dat"
    assert grid.user_lfn("LFN:/vo/user/a/alice/mine.dat", BASE, "p", 1) == "/vo/user/a/alice/mine.dat"


def test_the_output_plan_is_read_from_a_jdl_made_by_diracs_job():
    from DIRAC.Interfaces.API.Job import Job
    job = Job()
    job.setExecutable("/bin/true")
    job.setOutputData(["out.dat", "*.root"], outputSE="SE-1", outputPath="run7")
    jdl = job._toJDL().strip()
    jdl = jdl[:-1] + '\n    Owner = "alice";\n    OwnerGroup = "vo_user";\n]' if jdl.endswith("]") else \
        jdl + '\nOwner = "alice";\nOwnerGroup = "vo_user";'
    plan = grid.OutputPlan.from_jdl(jdl)
    assert (plan.owner, plan.group, plan.path) == ("alice", "vo_user", "run7")
    assert sorted(plan.data) == ["*.root", "out.dat"]


def logging(*minors, status=grid.COMPLETING):
    return [grid.LoggingRecord(status, minor, "", n, "JobWrapper") for n, minor in enumerate(minors)]


def test_an_oversized_sandbox_is_told_by_the_logging_info():
    oversized = logging("Application Finished Successfully", "Uploading Output Sandbox", "Uploading Output Data",
                        "Output Data Uploaded")
    normal = logging("Uploading Output Sandbox", "Output Sandbox Uploaded", "Uploading Output Data")
    failed_oversized = logging("Application Finished With Errors", "Uploading Output Data")
    failed_small = logging("Application Finished With Errors", "Output Sandbox Uploaded")
    rescheduled = oversized + [grid.LoggingRecord(grid.RESCHEDULED, "Job Rescheduled", "", 9, "x")] + normal
    assert grid.sandbox_went_to_storage(oversized)
    assert grid.sandbox_went_to_storage(failed_oversized)
    assert not grid.sandbox_went_to_storage(normal)
    assert not grid.sandbox_went_to_storage(failed_small)
    assert not grid.sandbox_went_to_storage(rescheduled)


# -- downloading ----------------------------------------------------------------------------------

def test_data_files_land_in_the_jobs_folder_with_its_sandbox_verified(batch):
    files = {101: {"a.dat": payload(3000, 1), "b.root": payload(5000, 2)}, 102: {"a.dat": payload(10, 3)}}
    backend = GridStorage(files)
    engine = make_engine(batch, 2, backend)
    jobs = engine.run()
    engine.batch.store.close()
    folder = batch / "succeeded" / "00001_job-1"
    assert sorted(p.name for p in folder.iterdir()) == ["a.dat", "b.root", "std.out"]
    assert (folder / "b.root").read_bytes() == files[101]["b.root"]
    assert (batch / "succeeded" / "00002_job-2" / "a.dat").read_bytes() == files[102]["a.dat"]
    assert all(r["downloaded"] and not r["problem"] for j in jobs.values() for r in j.outputs)
    assert len(backend.fetched) == 3 and not (batch / ".grid" / "tmp").exists() or \
        not any((batch / ".grid" / "tmp").iterdir())


def test_a_bad_checksum_keeps_the_folder_out_and_says_why_while_the_rest_goes_on(batch):
    files = {101: {"good.dat": payload(100, 1), "bad.dat": payload(100, 2)}, 102: {"other.dat": payload(50, 3)}}
    corrupt = bytearray(files[101]["bad.dat"])
    corrupt[10] ^= 0xFF                                       # same size, other content
    backend = GridStorage(files, copies={f"{BASE}/0/101/bad.dat": {"SE-1": bytes(corrupt)}})
    engine = make_engine(batch, 2, backend)
    jobs = engine.run()
    assert not (batch / "succeeded" / "00001_job-1").exists()
    assert (batch / "succeeded" / "00002_job-2" / "other.dat").exists()        # nothing else disturbed
    bad = next(r for r in jobs[1].outputs if r["lfn"].endswith("bad.dat"))
    assert "bad checksum" in bad["problem"] and not bad["downloaded"]
    assert "bad.dat" in jobs[1].error and jobs[1].download_tries == grid.DOWNLOAD_ATTEMPTS
    assert files_outside_tmp(batch) == ["succeeded/00002_job-2/other.dat", "succeeded/00002_job-2/std.out"]
    engine.batch.store.close()
    capsys_status = subprocess.run([sys.executable, str(TESTS.parent / "grid.py"), "status", "--json"],
                                   cwd=batch, capture_output=True, text=True)
    record = json.loads(capsys_status.stdout)["jobs"][0]
    assert record["output"] is None and "bad checksum" in record["error"]
    assert {r["lfn"].rsplit("/", 1)[1]: r["downloaded"] for r in record["outputs"]} == \
        {"good.dat": True, "bad.dat": False}
    why = subprocess.run([sys.executable, str(TESTS.parent / "grid.py"), "why", "1", "--offline"],
                         cwd=batch, capture_output=True, text=True).stdout
    assert f"{BASE}/0/101/bad.dat" in why and "not downloaded: bad checksum" in why
    assert f"{BASE}/0/101/good.dat" in why and "downloaded" in why


def test_a_second_replica_replaces_a_bad_first_one(batch):
    data = payload(400, 7)
    lfn = f"{BASE}/0/101/x.dat"
    backend = GridStorage({101: {"x.dat": data}}, copies={lfn: {"SE-1": b"\0" * 400, "SE-2": data}})
    engine = make_engine(batch, 1, backend)
    jobs = engine.run()
    engine.batch.store.close()
    assert (batch / "succeeded" / "00001_job-1" / "x.dat").read_bytes() == data
    assert (lfn, "SE-2") in backend.fetched and jobs[1].error == ""


def test_a_file_missing_from_storage_is_reported_and_retried_by_the_next_watch(batch):
    data = payload(400, 8)
    lfn = f"{BASE}/0/101/x.dat"
    backend = GridStorage({101: {"x.dat": data}}, copies={lfn: {}})
    engine = make_engine(batch, 1, backend)
    jobs = engine.run()
    assert not (batch / "succeeded" / "00001_job-1").exists()
    assert "x.dat" in jobs[1].error and "No such file" in jobs[1].outputs[0]["problem"]
    backend.copies.clear()                                   # the replica is back
    jobs = rerun(engine, backend).run()
    engine.batch.store.close()
    assert (batch / "succeeded" / "00001_job-1" / "x.dat").read_bytes() == data
    assert jobs[1].error == "" and jobs[1].outputs[0]["downloaded"]


def test_verified_files_are_never_downloaded_twice(batch):
    files = {101: {"a.dat": payload(100, 1), "b.dat": payload(100, 2)}}
    backend = GridStorage(files, copies={f"{BASE}/0/101/b.dat": {}})
    engine = make_engine(batch, 1, backend)
    engine.run()
    assert [lfn for lfn, _ in backend.fetched] == [f"{BASE}/0/101/a.dat"]
    backend.copies.clear()
    backend.fetched.clear()
    rerun(engine, backend).run()
    engine.batch.store.close()
    assert [lfn for lfn, _ in backend.fetched] == [f"{BASE}/0/101/b.dat"]
    assert sorted(p.name for p in (batch / "succeeded" / "00001_job-1").iterdir()) == ["a.dat", "b.dat", "std.out"]


def test_a_storage_element_down_is_one_line_costs_no_try_and_recovers(batch):
    files = {101 + n: {"x.dat": payload(100, n)} for n in range(4)}
    backend = GridStorage(files)
    backend.down.add("SE-1")
    out = io.StringIO()
    engine = make_engine(batch, 4, backend, out=out)
    worker = gevent.spawn(engine.run)
    gevent.sleep(0.5)
    assert not (batch / "succeeded").exists() or not any((batch / "succeeded").iterdir())
    assert all(job.download_tries == 0 for job in engine.batch.jobs.values())
    backend.down.clear()
    jobs = worker.get(timeout=30)
    engine.batch.store.close()
    lines = out.getvalue().splitlines()
    assert sum("server unreachable since" in line for line in lines) == 1
    assert sum("reachable again" in line for line in lines) == 1
    assert all(job.output and job.error == "" for job in jobs.values())


def test_an_oversized_sandbox_comes_from_storage_extracted_safely(batch):
    backend = GridStorage({101: {"x.dat": payload(10, 1)}, 102: {}}, failing={102}, sandbox_on_storage={101, 102})
    engine = make_engine(batch, 2, backend)
    jobs = engine.run()
    engine.batch.store.close()
    done, failed = batch / "succeeded" / "00001_job-1", batch / "failed" / "00002_job-2"
    assert sorted(p.name for p in done.iterdir()) == ["big.bin", "std.out", "x.dat"]
    assert (done / "std.out").read_text() == "sandbox of 101\n"
    assert sorted(p.name for p in failed.iterdir()) == ["big.bin", "std.out"]
    assert not (batch / "escape").exists() and not (batch / "succeeded" / "escape").exists()
    kinds = [(r["kind"], r["downloaded"]) for r in jobs[1].outputs]
    assert sorted(kinds) == [("data", True), ("sandbox", True)]


def test_data_none_then_a_pattern_on_watch_adds_the_chosen_files_each_verified(batch, capsys):
    files = {101: {"a.root": payload(100, 1), "b.txt": payload(100, 2), "c.root": payload(100, 3)}}
    backend = GridStorage(files)
    engine = make_engine(batch, 1, backend, meta={"data": "none"})
    jobs = engine.run()
    folder = batch / "succeeded" / "00001_job-1"
    assert sorted(p.name for p in folder.iterdir()) == ["std.out"]
    assert len(jobs[1].outputs) == 3 and backend.fetched == []       # looked up, not downloaded
    engine.batch.store.update_meta(data="all", data_pattern="*.root")
    jobs = rerun(engine, backend).run()
    engine.batch.store.close()
    assert sorted(p.name for p in folder.iterdir()) == ["a.root", "c.root", "std.out"]
    assert (folder / "c.root").read_bytes() == files[101]["c.root"]
    assert grid.main(["-C", str(batch), "lfns"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{BASE}/0/101/{n}" for n in ("a.root", "b.txt", "c.root")]


def test_watch_keeps_data_options_in_the_batch(batch, monkeypatch):
    backend = GridStorage({101: {"a.root": payload(10, 1)}})
    engine = make_engine(batch, 1, backend)
    engine.batch.store.close()
    monkeypatch.setattr(grid, "make_backend", lambda name, batch_dir: backend)
    assert grid.main(["-C", str(batch), "watch", "--data", "none", "--data-pattern", "*.root"]) == 0
    with grid.Store.snapshot(batch) as store:
        meta = store.meta()
    assert (meta["data"], meta["data_pattern"]) == ("none", "*.root")
    assert not (batch / "succeeded" / "00001_job-1" / "a.root").exists()


def test_a_full_disk_pauses_downloads_with_one_line_and_they_resume(batch, monkeypatch):
    free = {"bytes": 10 * 2**20}
    monkeypatch.setattr(grid, "free_bytes", lambda folder: (free["bytes"], 100 * 2**30))
    monkeypatch.setattr(grid, "DISK_POLL", 0.02)
    files = {101 + n: {"x.dat": payload(1000, n)} for n in range(3)}
    backend = GridStorage(files)
    out = io.StringIO()
    engine = make_engine(batch, 3, backend, out=out)
    engine.downloader.disk.poll = 0.02
    worker = gevent.spawn(engine.run)
    gevent.sleep(0.5)
    assert backend.fetched == [] and not worker.ready()
    free["bytes"] = 2 * 2**30
    jobs = worker.get(timeout=30)
    engine.batch.store.close()
    lines = out.getvalue().splitlines()
    assert sum("downloads paused" in line for line in lines) == 1
    assert sum("downloads resume" in line for line in lines) == 1
    assert all(job.output for job in jobs.values()) and len(backend.fetched) == 3


KILLED_RUN = """
import sys, time
sys.path[:0] = [{tests!r}, {root!r}]
import grid, test_data
files = {{101 + n: {{f"f{{k}}.dat": test_data.payload(200_000, 10 * n + k) for k in range(6)}} for n in range(3)}}
backend = test_data.GridStorage(files)
backend.slow = 0.3
engine = test_data.make_engine(__import__("pathlib").Path({batch!r}), 3, backend)
engine.downloader.files_parallel = 2
engine.run()
"""


@pytest.mark.parametrize("kill_after", [0.1, 0.5, 0.8, 1.2])
def test_sigkill_mid_download_leaves_nothing_outside_tmp_and_the_next_watch_completes(batch, kill_after):
    root = str(TESTS.parent)
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN.format(tests=str(TESTS), root=root, batch=str(batch))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tmp = batch / ".grid" / "tmp"
    deadline = time.monotonic() + 60
    while not list(tmp.glob("*.part")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)                          # until the first file is downloading
    assert child.poll() is None, child.stderr.read().decode()
    time.sleep(kill_after)
    child.send_signal(signal.SIGKILL)
    child.wait()
    verified = {(int(stage.name.split(".")[1]), p.name) for stage in tmp.glob("*.job")
                for p in stage.iterdir() if p.name != "std.out"} if tmp.exists() else set()
    complete = {p.name for p in (batch / "succeeded").iterdir()} if (batch / "succeeded").exists() else set()
    for folder in complete:                      # a folder that exists is complete, even after SIGKILL
        assert len(list((batch / "succeeded" / folder).iterdir())) == 7
    files = {101 + n: {f"f{k}.dat": payload(200_000, 10 * n + k) for k in range(6)} for n in range(3)}
    backend = GridStorage(files)
    store = grid.Store.open(batch, "watch")
    engine = grid.Engine(store, backend, grid.Display(io.StringIO()), batch, interval=0.001)
    jobs = engine.run()
    store.close()
    again = [lfn.rsplit("/", 2) for lfn, _ in backend.fetched]
    for job_id in range(101, 104):
        folder = batch / "succeeded" / f"{job_id - 100:05d}_job-{job_id - 100}"
        assert sorted(p.name for p in folder.iterdir()) == [f"f{k}.dat" for k in range(6)] + ["std.out"]
        for name, data in files[job_id].items():
            assert (folder / name).read_bytes() == data
    assert all(job.output for job in jobs.values())
    fetched_again = {(int(job), name) for _, job, name in again}
    for folder in complete:                       # complete folders: nothing fetched again
        assert not any(job - 100 == int(folder[:5]) for job, _ in fetched_again)
    assert not verified & fetched_again           # files verified before the kill: not fetched again
    assert len(again) == 18 - 6 * len(complete) - len(verified)
    assert files_outside_tmp(batch) == sorted(
        f"succeeded/{n:05d}_job-{n}/{name}" for n in range(1, 4) for name in [f"f{k}.dat" for k in range(6)] + ["std.out"])


# -- the DIRAC backend's look-ups, with DIRAC's replies scripted (the lab has no job parameters) --------

class Reply:
    """A DIRAC client whose every method answers from a table: {method: function(*args) -> S_OK/S_ERROR}."""

    def __init__(self, **answers):
        self.answers, self.calls = answers, []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append(name)
            return self.answers[name](*args)
        return call


def ok(value):
    return {"OK": True, "Value": value}


def dirac_backend(monitoring, catalogue):
    backend = grid.DiracBackend()
    clients = type("Clients", (), {})()
    clients.monitoring = monitoring
    clients.data_manager = type("DM", (), {"fileCatalog": catalogue})()
    backend._clients = lambda: clients
    backend._require_proxy = lambda: None
    return backend


JDL = '[ Owner = "alice"; OwnerGroup = "dirac_user"; OutputData = {"out.dat", "*.root"}; Executable = "x"; ]'


def test_without_job_parameters_the_jdl_and_one_listing_find_the_files_and_parameters_are_asked_once():
    directory = "/dirac/user/a/alice/0/42"
    listing = {f"{directory}/out.dat": {"MetaData": {"Size": 5, "Checksum": "0a0b0c0d"}},
               f"{directory}/h.root": {"MetaData": {"Size": 7, "Checksum": "01"}},
               f"{directory}/LDSB.abcdefgh": {"MetaData": {"Size": 9, "Checksum": "02"}},
               f"{directory}/other.txt": {"MetaData": {"Size": 1, "Checksum": "03"}}}
    monitoring = Reply(getJobParameters=lambda *a: {"OK": False, "Message": "Not connected"},
                       getJobJDL=lambda job_id, original: ok(JDL))
    catalogue = Reply(listDirectory=lambda path: ok({"Successful": {path: {"Files": listing}}, "Failed": {}}))
    backend = dirac_backend(monitoring, catalogue)
    files = backend.job_outputs(42, True)
    assert [(f.name, f.size, f.adler32, f.kind) for f in files] == \
        [("out.dat", 5, "0a0b0c0d", "data"), ("h.root", 7, "01", "data")]
    backend.job_outputs(42, True)
    assert monitoring.calls.count("getJobParameters") == 1 and catalogue.calls == ["listDirectory"] * 2


def test_uploaded_output_data_is_used_where_the_server_keeps_job_parameters():
    lfns = "/vo/user/a/alice/x/a.dat, /vo/user/a/alice/x/b.dat"
    monitoring = Reply(getJobParameters=lambda *a: ok({42: {"UploadedOutputData": lfns}}))
    catalogue = Reply(getFileMetadata=lambda names: ok({"Successful": {
        "/vo/user/a/alice/x/a.dat": {"Size": 3, "Checksum": "0f"}}, "Failed": {}}))
    files = dirac_backend(monitoring, catalogue).job_outputs(42, True)
    assert [(f.lfn, f.size, f.registered) for f in files] == \
        [("/vo/user/a/alice/x/a.dat", 3, True), ("/vo/user/a/alice/x/b.dat", 0, False)]
    assert "getJobJDL" not in monitoring.calls


def test_a_catalogue_that_does_not_answer_is_an_outage():
    monitoring = Reply(getJobParameters=lambda *a: {"OK": False, "Message": "Not connected"},
                       getJobJDL=lambda job_id, original: ok(JDL))
    catalogue = Reply(listDirectory=lambda path: {"OK": False, "Message": "Cannot get URL for "
                                                  "DataManagement/FileCatalog: [Errno 111] Connection refused"})
    backend = dirac_backend(monitoring, catalogue)
    backend.proxy_seconds_left = lambda: 3600.0
    with pytest.raises(grid.ServerUnreachable):
        backend.job_outputs(42, True)
