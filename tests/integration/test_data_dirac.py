"""Output data and oversized sandboxes against the real DIRAC WMS, storage element and file catalogue.

The lab's SE-1 (DataManagement/StorageElement) and DIRAC File Catalog hold what jobs upload. A few jobs run
through the real JobAgent (setOutputData, an output sandbox over OutputSandboxLimit, a failing job's);
the rest are driven (tests/lab/drive.py): their declared output data files are uploaded and registered
where DIRAC's job wrapper puts them (/labvo/user/l/labuser/<id // 1000>/<id>/<name>), so the download
paths are tested in seconds. Checks: files byte for byte, `grid lfns`, a corrupted replica, the storage
element stopped in the middle of the downloads, SIGKILL of `watch` while data files download,
`--data none` and `--data-pattern`.
"""
import contextlib
import hashlib
import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

import pytest

from helpers import grid_cmd, wait_until, write

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("GRID_CHAOS_SEED", int(time.time())))
USER_DIR = "/labvo/user/l/labuser"
DATA = ["d0.dat", "d1.dat", "d2.dat"]


# -- helpers ---------------------------------------------------------------------------------------------

def run(lab, batch: Path, *args, timeout=600) -> subprocess.CompletedProcess:
    return lab.run(grid_cmd(*args), cwd=batch, capture_output=True, text=True, timeout=timeout)


def start(lab, batch: Path, log: Path, *args) -> subprocess.Popen:
    """`grid ARGS` inside the lab; the Popen pid is grid.py itself, so kill() is its SIGKILL."""
    with open(log, "w") as out:
        return lab.popen(grid_cmd(*args), cwd=batch, stdout=out, stderr=subprocess.STDOUT)


def status(batch: Path) -> dict:
    result = subprocess.run(grid_cmd("status", "--json"), cwd=batch, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lfn_of(job_id: int, name: str) -> str:
    """Where DIRAC's job wrapper puts a user job's output data file without an output path."""
    return f"{USER_DIR}/{job_id // 1000}/{job_id}/{name}"


def folders(batch: Path) -> list:
    return sorted(p for d in ("succeeded", "failed") if (batch / d).is_dir() for p in (batch / d).iterdir())


def tmp_files(batch: Path) -> list:
    """Files under .grid/tmp (a running grid.py may rename or remove them while we look)."""
    tmp = batch / ".grid" / "tmp"
    try:
        return [p for p in tmp.rglob("*") if p.is_file()] if tmp.is_dir() else []
    except FileNotFoundError:
        return tmp_files(batch)


def stray_files(batch: Path, allowed: set) -> list:
    """Files of the batch outside its job folders and .grid/ (a download never writes anywhere else)."""
    stray = []
    for path in batch.rglob("*"):
        relative = path.relative_to(batch)
        if relative.parts[0] in (".grid", "succeeded", "failed") or not path.is_file():
            continue
        if str(relative) not in allowed:
            stray.append(str(relative))
    return stray


def data_batch(lab, batch: Path, n: int, names=DATA, size=2 << 20) -> dict:
    """n jobs that declare `names` as output data, submitted by grid.py with the JobAgent stopped and
    driven to Done with their data uploaded and registered (size random bytes each).
    Returns {job id: {lfn: sha256}}."""
    lab.jobagent(False)
    batch.mkdir()
    write(batch / "jobs.py", f"for i in range({n}):\n    j = Job()\n    j.setName(f'data{{i}}')\n"
          "    j.setExecutable('echo', arguments=str(i))\n"
          f"    j.setOutputData({list(names)!r}, outputSE='SE-1')\n    submit(j)\n")
    result = run(lab, batch, "submit", "--no-watch", "jobs.py")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    ids = [job["id"] for job in status(batch)["jobs"]][:n]
    assert None not in ids
    driven = lab.drive(ids, "Done", data_size=size)
    assert sorted(driven["data"]) == sorted(ids) and all(len(v) == len(names) for v in driven["data"].values())
    return driven["data"]


def check_folder(batch: Path, job: dict, files: dict, sandbox=("std.out",)) -> None:
    """The job's folder holds its sandbox and exactly these data files ({lfn: sha256}), byte for byte."""
    folder = batch / job["output"]
    assert folder.is_dir(), job
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([*sandbox, *(Path(lfn).name for lfn in files)]), (job["num"], names)
    for lfn, digest in files.items():
        assert sha256(folder / Path(lfn).name) == digest, (job["num"], lfn)


def check_all(batch: Path, data: dict, sandbox=("std.out",)) -> None:
    """Every job's folder complete, each once, nothing half-written left anywhere."""
    jobs = status(batch)["jobs"]
    assert len(folders(batch)) == len(jobs), "a job without a folder, or one with two"
    for job in jobs:
        check_folder(batch, job, data[job["id"]], sandbox)
    assert tmp_files(batch) == []
    assert stray_files(batch, {"jobs.py"}) == []


def lfns(lab, batch: Path, *args) -> list:
    result = run(lab, batch, "lfns", *args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split()


def printed_sha256(folder: Path) -> dict:
    """{file name: sha256} as `sha256sum` printed them in the job (its application log is in the sandbox)."""
    found = {}
    for path in folder.iterdir():
        if path.is_file() and path.stat().st_size < 1 << 20:
            for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", path.read_text(errors="replace"), re.M):
                found[name] = digest
    return found


# -- through the real JobAgent ---------------------------------------------------------------------------

REAL_JOBS = r'''
def shell(name, script, **kw):
    j = Job()
    j.setName(name)
    j.setExecutable("/bin/sh", arguments=f'-c "{script}"')
    return j

j = shell("data", "head -c 1500000 /dev/urandom > a.dat; head -c 700000 /dev/urandom > b.dat; sha256sum a.dat b.dat")
j.setOutputData(["a.dat", "b.dat"], outputSE="SE-1")
submit(j)
j = shell("big", "head -c 1500000 /dev/urandom > big.bin; sha256sum big.bin")
j.setOutputSandbox(["std.out", "std.err", "big.bin"])
submit(j)
j = shell("bigfail", "head -c 1500000 /dev/urandom > big.bin; sha256sum big.bin; exit 3")
j.setOutputSandbox(["std.out", "std.err", "big.bin"])
submit(j)
'''


def test_output_data_and_oversized_sandboxes_through_the_jobagent(dirac_lab, tmp_path):
    dirac_lab.kick_jobagent()
    batch = tmp_path / "batch"
    batch.mkdir()
    write(batch / "jobs.py", REAL_JOBS)
    with dirac_lab.sandbox_limit(1 << 20):      # 1.5 MB of random bytes do not compress below 1 MiB
        t0 = time.monotonic()
        result = run(dirac_lab, batch, "submit", "--interval", "1", "jobs.py", timeout=900)
        dirac_lab.timings["3 data jobs through the JobAgent, submitted -> downloaded"] = time.monotonic() - t0
    assert result.returncode == 6, result.stdout[-3000:] + result.stderr        # bigfail fails on purpose
    jobs = {job["name"]: job for job in status(batch)["jobs"]}
    assert [jobs[n]["status"] for n in ("data", "big", "bigfail")] == ["Done", "Done", "Failed"]

    # output data: in succeeded/<job>/, byte for byte what the job wrote
    data = batch / jobs["data"]["output"]
    assert data.parent.name == "succeeded"
    printed = printed_sha256(data)
    assert set(printed) >= {"a.dat", "b.dat"}, sorted(p.name for p in data.iterdir())
    assert sha256(data / "a.dat") == printed["a.dat"] and sha256(data / "b.dat") == printed["b.dat"]
    expected = {lfn_of(jobs["data"]["id"], "a.dat"), lfn_of(jobs["data"]["id"], "b.dat")}
    assert set(lfns(dirac_lab, batch, str(jobs["data"]["num"]))) == expected
    assert expected <= set(lfns(dirac_lab, batch))
    assert expected <= set(lfns(dirac_lab, batch, "--status", "Done"))
    assert not expected & set(lfns(dirac_lab, batch, "--status", "Failed"))
    shown = run(dirac_lab, batch, "status", "--json").stdout + run(dirac_lab, batch, "why", str(jobs["data"]["num"])).stdout
    assert all(lfn in shown for lfn in expected)

    # oversized sandboxes: the tarball came from SE-1 and was extracted as if from the sandbox store
    for name, where in (("big", "succeeded"), ("bigfail", "failed")):
        folder = batch / jobs[name]["output"]
        assert folder.parent.name == where, folder
        printed = printed_sha256(folder)
        assert "big.bin" in printed, sorted(p.name for p in folder.iterdir())
        assert sha256(folder / "big.bin") == printed["big.bin"]
        assert (folder / "std.out").is_file()
        assert not any(p.name.startswith("LDSB.") for p in folder.iterdir())
    assert tmp_files(batch) == [] and stray_files(batch, {"jobs.py"}) == []


# -- driven jobs: the download paths --------------------------------------------------------------------

def test_a_corrupted_replica_is_never_renamed_into_place_and_why_says_so(dirac_lab, tmp_path):
    batch = tmp_path / "batch"
    data = data_batch(dirac_lab, batch, 3, size=1 << 20)
    victim_id = sorted(data)[1]
    victim = lfn_of(victim_id, "d1.dat")
    with dirac_lab.corrupt_replica(victim) as replica:
        corrupted = replica.read_bytes()
        result = run(dirac_lab, batch, "watch", "--interval", "1", timeout=300)
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
        jobs = {job["id"]: job for job in status(batch)["jobs"]}
        victim_job = jobs[victim_id]
        # not in succeeded/, and nothing of it anywhere but .grid/tmp
        assert not (victim_job.get("output") and (batch / victim_job["output"]).exists())
        assert not [p for p in folders(batch) if p.name.startswith(f"{victim_job['num']:05d}_")]
        assert stray_files(batch, {"jobs.py"}) == []
        # the others are complete
        for job_id, files in data.items():
            if job_id != victim_id:
                check_folder(batch, jobs[job_id], files)
        # the job says why: the file and what is wrong with it
        why = run(dirac_lab, batch, "why", str(victim_job["num"]), timeout=120).stdout
        assert "d1.dat" in why and re.search(r"checksum|adler32|corrupt", why, re.I), why
        assert re.search(r"checksum|adler32|corrupt", json.dumps(status(batch)), re.I)
        # grid.py neither removed nor changed the replica, nor the catalogue entry
        assert replica.read_bytes() == corrupted
        assert victim in lfns(dirac_lab, batch, str(victim_job["num"]))
    # the replica repaired: the next watch fetches what is missing, and only that
    result = run(dirac_lab, batch, "watch", "--interval", "1", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    check_all(batch, data)


def test_storage_element_stopped_mid_download_is_one_line_then_recovery(dirac_lab, tmp_path):
    batch = tmp_path / "batch"
    data = data_batch(dirac_lab, batch, 6, size=3 << 20)
    log = tmp_path / "watch.log"
    process = start(dirac_lab, batch, log, "watch", "--interval", "1")
    assert wait_until(lambda: any(p.suffix == ".dat" for p in tmp_files(batch)) or folders(batch), 180,
                      "the first data download", process, 0.01), log.read_text()
    dirac_lab.se(False)
    stopped = time.monotonic()
    time.sleep(15)
    assert process.poll() is None, log.read_text()[-3000:]
    during = log.read_text()
    assert len(folders(batch)) < 6, "every download ended before the storage element stopped"
    dirac_lab.se(True)
    outage = time.monotonic() - stopped
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    print(f"\nDATA outage: SE-1 down {outage:.0f} s; lines: "
          f"{[line for line in text.splitlines() if 'reachable' in line or '(try' in line]}")
    def outage_lines(log_text):
        lines = log_text.splitlines()
        return ([line for line in lines if "unreachable" in line and "reachable again" not in line],
                [line for line in lines if "reachable again" in line])
    assert [len(lines) for lines in outage_lines(during)] == [1, 0], during
    assert [len(lines) for lines in outage_lines(text)] == [1, 1], text
    assert "(try" not in text and "Traceback" not in text
    check_all(batch, data)


def test_sigkill_of_watch_while_data_files_download_leaves_every_folder_complete(dirac_lab, tmp_path):
    rng = random.Random(SEED)
    batch = tmp_path / "batch"
    data = data_batch(dirac_lab, batch, 5, names=["d0.dat", "d1.dat", "d2.dat", "d3.dat"], size=2 << 20)
    kills = []
    for n in range(6):
        started = time.monotonic()
        process = start(dirac_lab, batch, tmp_path / f"watch{n}.log", "watch", "--interval", "1")
        if n % 3 == 2:                               # a time after start: status sweep, first fetches
            # at most 3 s: the whole 40 MiB arrives about 4 s after start here, and a kill after the last
            # folder is in place lands on nothing
            point = ("s after start", round(rng.uniform(0.5, 3.0), 1))
            wait_until(lambda: time.monotonic() - started >= point[1], 60, "the kill time", process)
        else:                                        # a data file half written, 0 to 2 files later
            point = ("data files written", rng.randint(0, 2))
            seen = set()

            def writing():
                for path in tmp_files(batch):
                    with contextlib.suppress(FileNotFoundError):      # renamed meanwhile
                        if path.suffix == ".dat" and path.stat().st_size:
                            seen.add(path.name)
                return len(seen) > point[1]
            wait_until(writing, 180, "data files downloading", process, 0.005)
        if process.poll() is not None:
            break
        process.kill()
        process.wait()
        partial = [p for p in tmp_files(batch) if p.suffix == ".dat"]
        kills.append((point, len(folders(batch)), len(partial)))
        # whatever the kill cut, it is only under .grid/tmp, and every folder there is complete
        assert stray_files(batch, {"jobs.py"}) == []
        jobs = {job["num"]: job for job in status(batch)["jobs"]}
        for folder in folders(batch):
            job = jobs[int(folder.name.split("_")[0])]
            check_folder(batch, {**job, "output": str(folder.relative_to(batch))}, data[job["id"]])
    result = run(dirac_lab, batch, "watch", "--interval", "1", timeout=300)
    print(f"\nDATA sigkill: seed {SEED}, 5 jobs x 4 files of 2 MiB, kills (point, folders in place, "
          f"data files cut short): {kills}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    check_all(batch, data)
    assert len(kills) >= 4, f"only {len(kills)} kills landed before the downloads ended: {kills}"
    assert sum(k[2] for k in kills) > 0, "no kill landed while a data file was being written"


def test_data_none_and_data_pattern_select_the_files(dirac_lab, tmp_path):
    batch = tmp_path / "batch"
    data = data_batch(dirac_lab, batch, 2, size=200000)
    result = run(dirac_lab, batch, "watch", "--interval", "1", "--data", "none")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    check_all(batch, {job_id: {} for job_id in data})               # sandboxes only
    assert sorted(lfns(dirac_lab, batch)) == sorted(lfn for files in data.values() for lfn in files)

    other = tmp_path / "other"
    data = data_batch(dirac_lab, other, 2, size=200000)
    result = run(dirac_lab, other, "watch", "--interval", "1", "--data-pattern", "d1*")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    check_all(other, {job_id: {lfn: d for lfn, d in files.items() if lfn.endswith("/d1.dat")}
                      for job_id, files in data.items()})
