"""The store: reopens, says who holds it, reads while held, survives SIGKILL mid-write."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import plyvel
import pytest

import grid
from helpers import EXAMPLES, ROOT, ScriptedBackend, make_engine, new_batch

HOLD = """
import sys, time
sys.path.insert(0, {root!r})
import grid
from pathlib import Path
store = grid.Store.open(Path({batch!r}), "watch")
print("held", flush=True)
time.sleep(60)
"""


def make_batch(batch: Path, n: int = 3) -> None:
    jobs = [grid.Job(num=i, name=f"job-{i}") for i in range(1, n + 1)]
    new_batch(batch, jobs, {"tag": "t", "backend": "local"}).close()


def test_reopen_keeps_jobs_and_specs(batch):
    make_batch(batch)
    store = grid.Store.open(batch, "watch")
    jobs = store.jobs()
    jobs[2].status, jobs[2].dirac_id = "Running", 42
    store.save(jobs[2])
    store.close()
    store = grid.Store.open(batch, "watch")
    assert [j.name for j in store.jobs().values()] == ["job-1", "job-2", "job-3"]
    assert store.jobs()[2].dirac_id == 42 and store.spec(3).name == "job-3"
    store.close()


def test_directory_without_batch_is_a_clear_error(run_grid):
    for command in ("watch", "status"):
        result = run_grid(command)
        assert result.returncode == 4
        assert result.stderr.startswith("grid: error: no batch in ")
        assert "Traceback" not in result.stderr


@pytest.fixture
def held_batch(batch):
    make_batch(batch)
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), batch=str(batch))],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield batch, holder
    holder.kill()
    holder.wait()


def test_second_process_is_told_who_holds_the_batch(held_batch, run_grid):
    batch, holder = held_batch
    result = run_grid("watch")
    assert result.returncode == 4
    assert f"in use by `grid watch` (pid {holder.pid}" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_works_while_another_command_holds_the_batch(held_batch, run_grid):
    result = run_grid("status", "--json")
    assert result.returncode == 0, result.stderr
    assert [j["name"] for j in json.loads(result.stdout)["jobs"]] == ["job-1", "job-2", "job-3"]


WRITER = """
import sys
sys.path.insert(0, {root!r})
import grid
from pathlib import Path
store = grid.Store.open(Path({batch!r}), "watch")
jobs = list(store.jobs().values())
round = 0
while True:
    round += 1
    for job in jobs:
        job.attempts = round
    store.save(*jobs)
    if round == 1:
        print("writing", flush=True)
"""


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.5])
def test_a_write_batch_cut_by_sigkill_leaves_a_consistent_store(batch, delay):
    make_batch(batch, n=200)
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), batch=str(batch))],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    time.sleep(delay)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    store = grid.Store.open(batch, "watch")      # the lock of the killed process is gone
    rounds = {job.attempts for job in store.jobs().values()}
    store.close()
    assert len(rounds) == 1 and rounds.pop() >= 1   # all 200 jobs from the same write batch


def test_a_damaged_database_is_an_error_with_the_repair_command(batch, run_grid):
    make_batch(batch)
    db = batch / ".grid" / "db"
    for manifest in db.glob("MANIFEST-*"):
        manifest.write_bytes(b"garbage" * 10)
    result = run_grid("watch")
    assert result.returncode == 4
    assert "the batch database is damaged: Corruption" in result.stderr
    assert "plyvel.repair_db(" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_submit_killed_before_it_stored_its_jobs_leaves_no_batch(run_grid, batch):
    (batch / ".grid").mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()                                                 # a pid whose process is gone
    plyvel.DB(str(batch / ".grid" / f"{grid.NEW_DB_PREFIX}{dead.pid}"), create_if_missing=True).close()
    result = run_grid("watch")
    assert result.returncode == 4
    assert "was stopped before it stored the jobs" in result.stderr and "Traceback" not in result.stderr
    result = run_grid("submit", "--backend", "local", "--no-watch", EXAMPLES / "hello.py")
    assert result.returncode == 0, result.stderr
    assert "1 of 1 job(s) submitted" in result.stdout


def test_a_batch_is_left_with_its_job_records_compacted_so_status_has_nothing_to_redo(batch):
    """LevelDB compacts in the thread of the process holding the batch: whatever a writer left undone,
    every `status` would redo on its snapshot's copy while reading the records."""
    jobs = [grid.Job(num=i, name=f"job-{i}", history=[[grid.RECEIVED, 1.0]] * 20) for i in range(1, 20001)]
    specs = [grid.JobSpec.to_bytes(grid.JobSpec(name=f"job-{i}", jdl="x" * 300, xml="", steps=[], input_sandbox=[],
                                                output_sandbox=[])) for i in range(1, 20001)]
    new_batch(batch, jobs, {"tag": "t", "backend": "dirac"}, specs).close()
    store = grid.Store.open(batch, "watch")
    for job in store.jobs().values():
        job.minor = "changed"
        store.save(job)
    store.close()
    db = plyvel.DB(str(batch / ".grid" / "db"))
    try:
        assert db.get_property(b"leveldb.num-files-at-level0") == b"0"
        assert all(job.minor == "changed" for job in map(grid.Job.from_record, db.iterator(prefix=b"job/",
                                                                                         include_key=False)))
    finally:
        db.close()


def test_the_status_line_beside_each_record_stays_in_step_with_it_through_a_run(batch, run_grid):
    """`status` prints the lines the store keeps beside the records: after every kind of change a run
    makes (statuses, sites, folders, download errors, a name with a tab), each is the record's line."""
    backend = ScriptedBackend(end=lambda i: grid.FAILED if i % 3 == 0 else grid.DONE,
                              fetch_failures=lambda i: 99 if i == 1002 else 0)
    engine = make_engine(batch, ["plain", "tab\there", "new\nline", "ünïcode", "five", "six"], backend)
    jobs = engine.run()
    engine.batch.store.close()
    db = plyvel.DB(str(batch / ".grid" / "db"))
    try:
        records = [grid.Job.from_record(raw) for raw in db.iterator(prefix=b"job/", include_key=False)]
        entries = list(db.iterator(prefix=b"line/", include_key=False))
    finally:
        db.close()
    assert entries == [grid.status_entry(job) for job in records]
    assert {job.status for job in records} == {grid.DONE, grid.FAILED} and jobs[2].error
    lines = run_grid("status").stdout.splitlines()
    assert lines[0] == "S:   0\tR:   0\tW:   0\tM:   0\tR:   0\tD:   4\tF:   2"
    assert lines[1:] == [grid.status_line(job) for job in records]
    assert lines[2].split("\t")[2] == "tab\\there" and lines[3].split("\t")[2] == "new\\nline"
    assert lines[4].split("\t")[2] == "ünïcode"
    assert lines[2].endswith("\t" + grid.one_line(jobs[2].error))
