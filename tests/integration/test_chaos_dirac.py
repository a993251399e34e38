"""Chaos against the real DIRAC WMS on loopback.

SIGKILL `submit` at many points of a few hundred submissions, SIGKILL `watch` in the middle of downloads,
stop the DIRAC services in the middle of a `watch`, let a short proxy expire; then check against the
server's own database (JobDB) that every job of the job file exists there exactly once, that the store
agrees, and that every output folder is complete and single.

Each test prints a `CHAOS ...` line with its figures (pytest -s shows them). Kill points are random:
GRID_CHAOS_SEED=<n> replays a run (the seed is in the CHAOS line).

Resuming after a SIGKILLed `submit --no-watch` with submissions in flight: the resuming `watch` says at
once what it is doing and settles the cut submissions in bounded time, even with other jobs of the same
VO on the server.
"""
import base64
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest

from helpers import grid_cmd, wait_until, write

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("GRID_CHAOS_SEED", int(time.time())))
SUBMIT_JOBS = 300
SUBMIT_KILLS = 20                # kill points during submission (the issue asks for at least 20)
DOWNLOAD_JOBS = 120
DOWNLOAD_KILLS = 8
BIG = "job {job_id}\n" + "0123456789abcdef" * 7500     # 120 KB per output (one argument of drive.py)
MYSQL_SOCKET = os.environ.get("GRID_LAB_MYSQL_SOCKET", "/run/mysqld/mysqld.sock")


# -- the server's side: its own database ---------------------------------------------------------------

class JobDB:
    """The lab's JobDB, read directly: what the server holds, whatever any client believes."""

    def __init__(self, lab):
        self.database = lab.env.get("GRID_LAB_DBPREFIX", "gridlab_") + "JobDB"
        self.conn = self._connect()

    def _connect(self):
        import MySQLdb

        return MySQLdb.connect(user="root", unix_socket=MYSQL_SOCKET, autocommit=True, database=self.database)

    def _rows(self, sql, *args):
        """The rows of one query; once more on a new connection if MariaDB, shared by every lab on
        the machine, was restarted under us."""
        import MySQLdb

        for attempt in range(2):
            try:
                cursor = self.conn.cursor()
                cursor.execute(sql, args)
                return cursor.fetchall()
            except MySQLdb.OperationalError:
                if attempt:
                    raise
                time.sleep(2)
                self.conn = self._connect()

    def last_id(self) -> int:
        return self._rows("SELECT COALESCE(MAX(JobID), 0) FROM Jobs")[0][0]

    def count(self, since: int) -> int:
        return self._rows("SELECT COUNT(*) FROM Jobs WHERE JobID > %s", since)[0][0]

    def tags(self, since: int) -> dict:
        """{job id: its GridPyJob tag ('' if none)} for every job above `since`, from the JDL as submitted."""
        rows = self._rows("SELECT j.JobID, d.OriginalJDL FROM Jobs j LEFT JOIN JobJDLs d USING (JobID) "
                          "WHERE j.JobID > %s", since)
        tags = {}
        for job_id, jdl in rows:
            text = jdl or ""
            if text and "[" not in text:                       # JobDB stores JDLs compressed
                text = zlib.decompress(base64.b64decode(text)).decode()
            match = re.search(r'GridPyJob\s*=\s*"([^"]+)"', text)
            tags[int(job_id)] = match.group(1) if match else ""
        return tags

    def close(self):
        self.conn.close()


@pytest.fixture
def jobdb(dirac_lab):
    db = JobDB(dirac_lab)
    yield db
    db.close()


# -- the client's side ----------------------------------------------------------------------------------

def start(lab, batch: Path, log: Path, *args, env=None) -> subprocess.Popen:
    """`grid ARGS` inside the lab's namespace; its output to `log`. The Popen pid is grid.py itself
    (ip netns exec and env exec), so kill() is a SIGKILL of grid.py."""
    with open(log, "w") as out:
        return lab.popen(grid_cmd(*args), cwd=batch, stdout=out, stderr=subprocess.STDOUT, env=env)


def run(lab, batch: Path, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return lab.run(grid_cmd(*args), cwd=batch, capture_output=True, text=True, env=env, timeout=timeout)


def status(batch: Path) -> dict:
    """`grid status --json`: needs neither DIRAC nor the server, works while another command runs."""
    result = subprocess.run(grid_cmd("status", "--json"), cwd=batch, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def job_file(batch: Path, n: int) -> None:
    write(batch / "jobs.py", f"for i in range({n}):\n    j = Job()\n    j.setName(f'c{{i}}')\n"
          "    j.setExecutable('echo', arguments=str(i))\n    submit(j)\n")


def submitted(lab, batch: Path, n: int) -> list:
    job_file(batch, n)
    result = run(lab, batch, "submit", "--no-watch", "--parallel", "16", "jobs.py")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    ids = [job["id"] for job in status(batch)["jobs"]]
    assert None not in ids and len(set(ids)) == n
    return ids


def wait_waiting(lab, ids: list) -> None:
    """Until the optimizers have made every job Waiting. Under bursts DIRAC's optimizers sometimes lose
    a job's notification (see LoadJobPeriod in tests/lab/lab_cfg.sh) or are stopped in the middle of
    one: it stays Received until the server looks again, a minute later (its recovery, not ours)."""
    lab.run_python("import sys\nsys.path.insert(0, sys.argv[1])\nfrom drive import wait_until_optimised\n"
                   "ids = [int(i) for i in sys.argv[2:]]\n"
                   "left = [j for j, s in wait_until_optimised(ids, 150).items() if s != 'Waiting']\n"
                   "assert not left, left\n", lab.repo / "tests" / "lab", *ids)


def drive(lab, ids: list, status: str, files=None) -> None:
    wait_waiting(lab, ids)
    lab.drive(ids, status, files)


def output_folders(batch: Path) -> list:
    return [p for d in ("succeeded", "failed") if (batch / d).is_dir() for p in (batch / d).iterdir()]


def check_outputs(batch: Path, expected_files: dict) -> None:
    """Every job's folder is there once, holds exactly the expected files with its own content, and
    nothing half-downloaded is left anywhere."""
    data = status(batch)
    folders = output_folders(batch)
    assert len(folders) == len(data["jobs"]), "a job without a folder, or one with two"
    for job in data["jobs"]:
        folder = batch / job["output"]
        assert folder.is_dir(), job
        assert sorted(p.name for p in folder.iterdir()) == sorted(expected_files), (job, list(folder.iterdir()))
        for name, text in expected_files.items():
            assert (folder / name).read_text() == text.format(job_id=job["id"], status=job["status"]), (job, name)
    leftovers = [p for p in (batch / ".grid" / "tmp").rglob("*")] if (batch / ".grid" / "tmp").exists() else []
    assert leftovers == []
    assert not list(batch.glob("**/grid-sandbox-*"))


def make_proxy(lab, path: Path, seconds: int) -> None:
    """A user proxy valid for `seconds`, as dirac-proxy-init makes it (DIRAC's X509Chain), written
    next to `path` and moved into place, as a renewal does."""
    pki = lab.lab_dir / "pki"
    lab.run_python(
        "import os, sys\n"
        "from DIRAC.Core.Security.X509Chain import X509Chain\n"
        "chain = X509Chain()\n"
        "assert chain.loadChainFromFile(sys.argv[1])['OK'] and chain.loadKeyFromFile(sys.argv[2])['OK']\n"
        "result = chain.generateProxyToFile(sys.argv[3] + '.new', int(sys.argv[4]), diracGroup='labvo_user')\n"
        "assert result['OK'], result\n"
        "os.replace(sys.argv[3] + '.new', sys.argv[3])\n",
        pki / "usercert.pem", pki / "userkey.pem", path, seconds)


def count(log: Path, text: str) -> int:
    return log.read_text().count(text)


# -- SIGKILL submit -------------------------------------------------------------------------------------

def test_sigkill_submit_at_20_points_leaves_every_job_exactly_once_on_the_server(dirac_lab, jobdb, tmp_path):
    rng = random.Random(SEED)
    dirac_lab.jobagent(False)          # jobs stay Waiting: nothing moves but what grid.py does
    dirac_lab.wan(True)                # 50 ms round trip: every kill finds calls in flight
    batch = tmp_path / "batch"
    batch.mkdir()
    job_file(batch, SUBMIT_JOBS)
    since = jobdb.last_id()
    points, logs = [], []
    while len(points) < SUBMIT_KILLS:
        resume = (batch / ".grid" / "db").is_dir() and status(batch)["tag"]
        args = ("watch", "--interval", "60", "--parallel", "16") if resume else \
            ("submit", "--no-watch", "--parallel", "16", "jobs.py")
        log = tmp_path / f"run{len(logs):02d}.log"
        logs.append(log)
        accepted, started = jobdb.count(since), time.monotonic()
        process = start(dirac_lab, batch, log, *args)
        if rng.random() < 0.25:        # early: DIRAC starting, job file loading, batch creation, reconcile
            point = ("s after start", round(rng.uniform(0.5, 6.0), 2))
            wait_until(lambda: time.monotonic() - started >= point[1], 60, "the kill time", process)
        else:                          # in the middle of submitting, 16 calls in flight
            point = ("more jobs on the server", rng.randint(1, 20))
            wait_until(lambda: jobdb.count(since) >= min(accepted + point[1], SUBMIT_JOBS), 120,
                       "submissions", process)
        if process.poll() is not None:
            break                      # everything was submitted before this kill point
        process.kill()
        process.wait()
        points.append((*point, jobdb.count(since)))
        if points[-1][2] >= SUBMIT_JOBS:
            break
    # resume once more, until the store has an id for every job; then Ctrl-C
    log = tmp_path / "final.log"
    logs.append(log)
    process = start(dirac_lab, batch, log, "watch", "--interval", "60", "--parallel", "16")
    wait_until(lambda: all(j["id"] for j in status(batch)["jobs"]), 300, "every job submitted", process, 1.0)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, log.read_text()[-2000:]

    data = status(batch)
    server = jobdb.tags(since)
    on_server = collections.defaultdict(list)
    for job_id, tag in server.items():
        assert tag.startswith(data["tag"] + "."), f"job {job_id} on the server is not from this batch: {tag!r}"
        on_server[int(tag.split(".")[-2])].append(job_id)
    lost = [n for n in range(1, SUBMIT_JOBS + 1) if n not in on_server]
    doubled = {n: ids for n, ids in on_server.items() if len(ids) > 1}
    in_doubt = [tuple(map(int, m)) for log in logs for m in re.findall(
        r"(\d+) submission\(s\) cut short earlier: (\d+) found on the server", log.read_text())]
    print(f"\nCHAOS submit: seed {SEED}, {SUBMIT_JOBS} jobs, {len(points)} SIGKILLs at "
          f"{[f'{p[1]} {p[0]} (server {p[2]})' for p in points]}; submissions in doubt after a kill "
          f"{sum(d for d, _ in in_doubt)}, of which found on the server {sum(f for _, f in in_doubt)}; "
          f"lost {len(lost)}, duplicated {len(doubled)}")
    assert lost == [] and doubled == {}
    assert {job["num"]: job["id"] for job in data["jobs"]} == {n: ids[0] for n, ids in on_server.items()}
    assert all(job["attempts"] == 1 and job["ids"] == [job["id"]] for job in data["jobs"])
    assert len(points) >= SUBMIT_KILLS, f"only {len(points)} kills landed before the end of submission"


# -- SIGKILL watch during downloads ---------------------------------------------------------------------

def test_sigkill_watch_during_downloads_leaves_every_output_folder_complete_and_single(dirac_lab, tmp_path):
    rng = random.Random(SEED + 1)
    dirac_lab.jobagent(False)
    batch = tmp_path / "batch"
    batch.mkdir()
    ids = submitted(dirac_lab, batch, DOWNLOAD_JOBS)
    files = {"std.out": "job {job_id} {status}\n", "data.txt": BIG}
    drive(dirac_lab, ids[:100], "Done", files)
    drive(dirac_lab, ids[100:], "Failed", files)
    dirac_lab.wan(True)
    plan = [("more outputs in place", rng.randint(2, 12)) for _ in range(DOWNLOAD_KILLS - 2)]
    for _ in range(2):                 # and two while it starts up (its first status sweep, the first fetches)
        plan.insert(rng.randrange(len(plan) + 1), ("s after start", round(rng.uniform(1.0, 6.0), 2)))
    kills = []
    for n, (kind, value) in enumerate(plan):
        started, done = time.time(), len(output_folders(batch))
        process = start(dirac_lab, batch, tmp_path / f"watch{n}.log", "watch", "--interval", "1")
        if kind == "s after start":
            wait_until(lambda: time.time() - started >= value, 60, "the kill time", process)
        else:
            wait_until(lambda: len(output_folders(batch)) >= min(done + value, DOWNLOAD_JOBS), 120,
                       "downloads", process)
        if process.poll() is not None:
            break
        process.kill()
        process.wait()
        cut = [p for p in (batch / ".grid" / "tmp").glob("*")
               if re.match(r"\d+\.", p.name) and p.stat().st_mtime >= started]
        kills.append((value, kind, len(output_folders(batch)), len(cut)))
    result = run(dirac_lab, batch, "watch", "--interval", "1")
    assert result.returncode == 6, result.stdout[-3000:] + result.stderr      # not every job is Done
    print(f"\nCHAOS watch: seed {SEED}, {DOWNLOAD_JOBS} outputs of 120 KB, {len(kills)} SIGKILLs "
          f"(point, folders in place, downloads cut short): {[(k[0], k[1], k[2], k[3]) for k in kills]}")
    check_outputs(batch, files)
    data = status(batch)
    assert data["summary"]["Done"] == 100 and data["summary"]["Failed"] == DOWNLOAD_JOBS - 100
    assert len(kills) >= DOWNLOAD_KILLS - 1
    assert sum(k[3] for k in kills) > 0, "no kill landed while a download was in flight"


# -- the DIRAC services stop and start again during a watch --------------------------------------------

def test_services_stopped_during_a_watch_make_one_line_and_it_recovers_by_itself(dirac_lab, tmp_path):
    dirac_lab.jobagent(False)
    batch, other = tmp_path / "batch", tmp_path / "other"
    batch.mkdir()
    other.mkdir()
    ids = submitted(dirac_lab, batch, 40)
    job_file(other, 1)
    files = {"std.out": "job {job_id} {status}\n", "data.txt": BIG}
    drive(dirac_lab, ids[:20], "Done", files)
    wait_waiting(dirac_lab, ids[20:])
    dirac_lab.wan(True)
    log = tmp_path / "watch.log"
    process = start(dirac_lab, batch, log, "watch", "--interval", "1")
    wait_until(lambda: len(output_folders(batch)) >= 3, 120, "the first downloads", process)
    dirac_lab.lab("services", "stop")
    stopped = time.monotonic()
    in_flight_at_stop = 20 - len(output_folders(batch))
    # a command started during the outage says so in one line, and makes no batch
    result = run(dirac_lab, other, "submit", "jobs.py", timeout=120)
    assert result.returncode == 5, result.stdout + result.stderr
    assert result.stderr.startswith("grid: error: cannot reach DIRAC's configuration server")
    assert "Traceback" not in result.stderr and not (other / ".grid" / "db").exists()
    time.sleep(max(0.0, 12 - (time.monotonic() - stopped)))
    assert process.poll() is None, log.read_text()
    dirac_lab.lab("services", "start")
    outage = time.monotonic() - stopped
    drive(dirac_lab, ids[20:], "Done", files)
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    print(f"\nCHAOS outage: services down {outage:.0f} s during a watch with {in_flight_at_stop} downloads "
          f"to go; lines: {[l for l in text.splitlines() if 'reachable' in l or '(try' in l]}")
    assert text.count("server unreachable since") == 1
    assert text.count("server reachable again") == 1
    assert text.index("server unreachable since") < text.index("server reachable again")
    assert text.count("(try") <= 2      # a transfer cut in the middle may count as one failed try, no more
    check_outputs(batch, files)


# -- a short proxy ---------------------------------------------------------------------------------------

def test_a_short_proxy_refuses_submission_pauses_watch_once_and_a_fresh_one_resumes_it(dirac_lab, tmp_path):
    dirac_lab.jobagent(False)
    batch, other = tmp_path / "batch", tmp_path / "other"
    batch.mkdir()
    other.mkdir()
    ids = submitted(dirac_lab, batch, 5)
    proxy = tmp_path / "proxy.pem"
    make_proxy(dirac_lab, proxy, 30)
    short = {"X509_USER_PROXY": str(proxy)}
    # too short to submit: refused before anything is sent, with the command that fixes it
    job_file(other, 50)
    result = run(dirac_lab, other, "submit", "jobs.py", env=short)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "left, and submitting 50 job(s) may take up to" in result.stderr
    assert "grid: fix: renew it first: `dirac-proxy-init -v 24:00`" in result.stderr
    assert not (other / ".grid" / "db").exists()
    # expires while watching: one line, no outage, no error per call; a fresh proxy resumes it
    log = tmp_path / "watch.log"
    process = start(dirac_lab, batch, log, "watch", "--interval", "1", env=short)
    wait_until(lambda: "grid proxy expired: paused" in log.read_text(), 90, "the pause", process, 0.2)
    paused = time.monotonic()
    drive(dirac_lab, ids, "Done")
    time.sleep(8)                      # longer than the proxy poll: no second line, nothing downloaded
    assert count(log, "grid proxy expired") == 1 and output_folders(batch) == []
    shutil.copyfile(dirac_lab.lab_dir / "pki" / "proxy.pem", str(proxy) + ".new")
    os.replace(str(proxy) + ".new", proxy)
    renewed = time.monotonic()
    assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    print(f"\nCHAOS proxy: paused {renewed - paused:.0f} s; lines: "
          f"{[l for l in text.splitlines() if 'proxy' in l or 'ERROR' in l or 'reachable' in l]}")
    assert text.count("grid proxy expires in") == 1
    assert text.count("grid proxy renewed") == 1
    assert "unreachable" not in text and "ERROR" not in text and "(try" not in text
    check_outputs(batch, {"std.out": "job {job_id} {status} (driven by drive.py)\n"})


# -- resuming after a SIGKILL with submissions in flight ------------------------------------------------

RESUME_JOBS = 100
RESUME_KILL_AFTER = 20                  # jobs on the server when submit is killed (64 in flight by default)
RESUME_OTHERS = 60                      # jobs of an earlier batch of the same user and VO on the server


class Lines:
    """A process's output lines, each with the seconds since it started."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.started, self.lines = time.monotonic(), []
        self.reader = threading.Thread(target=self._read, args=(process.stdout.fileno(),), daemon=True)
        self.reader.start()

    def _read(self, fd: int) -> None:
        """Plain blocking reads: in a process gevent has patched, the pipe's file object is gevent's,
        which a second thread cannot wait on."""
        os.set_blocking(fd, True)
        pending = b""
        while chunk := os.read(fd, 65536):
            *whole, pending = (pending + chunk).split(b"\n")
            now = time.monotonic() - self.started
            self.lines.extend((now, line.decode(errors="replace")) for line in whole)

    def first(self, pattern: str):
        return next(((t, line) for t, line in self.lines if re.search(pattern, line)), None)

    def text(self) -> str:
        return "\n".join(f"{t:7.2f} {line}" for t, line in self.lines)


def test_resume_after_a_sigkill_with_submissions_in_flight_is_prompt_bounded_and_exactly_once(dirac_lab, tmp_path):
    dirac_lab.jobagent(False)                    # jobs stay Waiting: nothing moves but what grid.py does
    jobdb = JobDB(dirac_lab)
    earlier = tmp_path / "earlier"               # other jobs of the VO: an honest server is not empty
    earlier.mkdir()
    job_file(earlier, RESUME_OTHERS)
    assert dirac_lab.run(grid_cmd("submit", "--no-watch", "jobs.py"), cwd=earlier, capture_output=True,
                         timeout=600).returncode == 0
    batch = tmp_path / "batch"
    batch.mkdir()
    job_file(batch, RESUME_JOBS)
    since = jobdb.last_id()
    with open(tmp_path / "submit.log", "w") as log:
        submit = dirac_lab.popen(grid_cmd("submit", "--no-watch", "jobs.py"), cwd=batch, stdout=log,
                                 stderr=subprocess.STDOUT)
    wait_until(lambda: jobdb.count(since) >= RESUME_KILL_AFTER, 300, "submissions", submit, step=0.05)
    submit.kill()                                # SIGKILL with calls in flight
    submit.wait()
    in_doubt = sum(1 for job in status(batch)["jobs"] if not job["id"])

    watch = dirac_lab.popen(grid_cmd("watch", "--interval", "60"), cwd=batch, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = Lines(watch)
    try:
        done = wait_until(lambda: all(j["id"] for j in status(batch)["jobs"]), 900, "every job submitted",
                          watch, 1.0)
    except AssertionError:
        done = False
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=600)
    assert done, "not every job submitted:\n" + out.text()[-3000:]
    summary = out.first(r"^S:\s+\d+")
    resuming = out.first(r"resuming: \d+ submission\(s\) were cut short earlier")
    settled = out.first(r"\d+ submission\(s\) cut short earlier: \d+ found on the server")
    assert summary and resuming and settled, out.text()[-3000:]
    print(f"\nRESUME: {in_doubt} in doubt after the kill; first line {summary[0]:.1f} s, resuming line "
          f"{resuming[0]:.1f} s, settled {settled[0]:.1f} s: {settled[1]}")
    assert resuming[0] - summary[0] < 5, out.text()[-3000:]       # says what it does, at once
    assert settled[0] - resuming[0] < 60, out.text()[-3000:]      # and is done with it in bounded time

    data = status(batch)
    on_server = collections.defaultdict(list)
    for job_id, tag in jobdb.tags(since).items():
        if tag.startswith(data["tag"] + "."):
            on_server[int(tag.split(".")[-2])].append(job_id)
    assert sorted(on_server) == list(range(1, RESUME_JOBS + 1))                       # none lost
    assert {n: ids for n, ids in on_server.items() if len(ids) > 1} == {}       # none twice
    assert {job["num"]: job["id"] for job in data["jobs"]} == {n: ids[0] for n, ids in on_server.items()}
    jobdb.close()
