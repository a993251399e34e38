"""What keeps 100,000 jobs cheap: compact records (older batches still read), a batch written in
chunks that exists whole or not at all, counts kept as jobs change, downloads that all finish."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import plyvel

import grid
from helpers import ROOT, ScriptedBackend, make_engine, write


def write_format_1_batch(batch: Path) -> None:
    """A batch as grid.py 0.1.0 wrote it: job records as JSON objects, no format in meta."""
    db = plyvel.DB(str(batch / ".grid" / "db"), create_if_missing=True)
    db.put(b"meta", json.dumps({"tag": "grid-old", "backend": "local"}).encode())
    for num, status in ((1, "Running"), (2, "Done")):
        job = grid.Job(num=num, name=f"old-{num}", status=status, dirac_id=70 + num, ids=[70 + num],
                       history=[["Submitting", 1.0], [status, 2.0]], output="succeeded/x" if num == 2 else "")
        db.put(grid.job_key(num), json.dumps(job.to_dict()).encode())
        db.put(grid.spec_key(num), grid.JobSpec(job.name, "[]", "", [], [], []).to_bytes())
    db.close()


def test_a_batch_written_by_an_older_grid_py_is_read_and_kept(batch, run_grid):
    (batch / ".grid").mkdir()
    write_format_1_batch(batch)
    result = run_grid("status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["#1\t71\told-1\tRunning\t-\t-\t-",
                                              "#2\t72\told-2\tDone\t-\t-\tsucceeded/x"]
    store = grid.Store.open(batch, "watch")
    jobs = store.jobs()
    jobs[1].status = "Done"
    store.save(jobs[1])                                   # written in today's format, beside an old record
    store.close()
    data = json.loads(run_grid("status", "--json").stdout)
    assert [(j["name"], j["status"], j["ids"], j["history"][0]) for j in data["jobs"]] == \
        [("old-1", "Done", [71], ["Submitting", 1.0]), ("old-2", "Done", [72], ["Submitting", 1.0])]


def test_a_batch_from_a_newer_grid_py_is_refused_in_one_line(batch, run_grid):
    (batch / ".grid").mkdir()
    write_format_1_batch(batch)
    db = plyvel.DB(str(batch / ".grid" / "db"))
    db.put(b"meta", json.dumps({"tag": "grid-new", "backend": "local", "format": 99}).encode())
    db.close()
    for command in ("status", "watch"):
        result = run_grid(command)
        assert result.returncode == 4, result.stderr
        assert result.stderr.startswith("grid: error: this batch was written by a newer grid.py (store format 99")
        assert "Traceback" not in result.stderr
    assert not (batch / ".grid" / "owner").exists()       # refused before anything was held


KILLED_WHILE_CREATING = """
import os, sys
sys.path.insert(0, {root!r})
import grid
from pathlib import Path
store = grid.Store.open(Path({batch!r}), "submit", create=True)
jobs = (grid.Job(num=i, name=f"j{{i}}") for i in range(1, 3001))
specs = (grid.JobSpec(f"j{{i}}", "[]", "", [], [], []) for i in range(1, 3001))
def killed_half_way(specs):
    for i, spec in enumerate(specs):
        if i == 2500:
            os.kill(os.getpid(), 9)
        yield spec
store.create_batch({{"tag": "t", "backend": "local"}}, jobs, killed_half_way(specs))
"""


def test_a_submit_killed_while_writing_its_batch_leaves_no_batch(batch, run_grid):
    code = KILLED_WHILE_CREATING.format(root=str(ROOT), batch=str(batch))
    killed = subprocess.run([sys.executable, "-c", code])
    assert killed.returncode == -signal.SIGKILL
    assert list((batch / ".grid").glob("new-db-*"))      # two full chunks were written, out of sight
    status = run_grid("status")
    assert status.returncode == 4 and "no batch in" in status.stderr
    write(batch / "jobs.py", "j = Job()\nj.setExecutable('true')\nsubmit(j)\n")
    result = run_grid("submit", "--backend", "local", "jobs.py")
    assert result.returncode == 0, result.stderr
    assert not list((batch / ".grid").glob("new-db-*"))  # the remains were cleaned away
    assert run_grid("status").stdout.splitlines()[1].startswith("#1\t")


def test_a_batch_whose_creation_stops_with_an_error_is_not_left_behind(batch):
    store = grid.Store.open(batch, "submit", create=True)
    store.close()                                          # e.g. Ctrl-C before create_batch finished
    assert os.listdir(batch / ".grid") == []


def test_summary_lines_follow_every_change_of_every_job(batch):
    backend = ScriptedBackend(end=lambda i: grid.FAILED if i % 3 == 0 else grid.DONE)
    engine = make_engine(batch, 300, backend, parallel=8)
    jobs = engine.run()
    engine.batch.store.close()
    summaries = [line for line in engine.display.out.getvalue().splitlines() if line.startswith("S:")]
    totals = [sum(int(field.split(":")[1]) for field in line.split("\t")) for line in summaries]
    assert set(totals) == {300}                            # every job in exactly one column, always
    expected = grid.summary_line(grid.column_counts(j.status for j in jobs.values()))
    assert summaries[-1] == expected == "S:   0\tR:   0\tW:   0\tM:   0\tR:   0\tD: 200\tF: 100"
    assert len(summaries) >= 300 * 5                       # one per change: the counts were never stale


def test_every_output_is_downloaded_with_one_download_at_a_time(batch):
    backend = ScriptedBackend()
    engine = make_engine(batch, 20, backend, download_parallel=1)
    jobs = engine.run()
    engine.batch.store.close()
    assert all(job.output for job in jobs.values())
    assert len(list((batch / "succeeded").iterdir())) == 20


def test_job_files_submitting_thousands_of_jobs_are_read_back_in_order(batch):
    write(batch / "jobs.py", "for i in range(3000):\n    j = Job()\n    j.setName(f'n{i}')\n"
          "    j.setExecutable('echo', arguments=str(i))\n    submit(j)\n")
    specs = grid.load_job_files([str(batch / "jobs.py")], "grid-many")
    assert len(specs) == 3000
    assert [specs[0].name, specs[-1].name] == ["n0", "n2999"]
    assert [spec.steps[0][1] for spec in specs] == [str(i) for i in range(3000)]
    assert specs.names == [f"n{i}" for i in range(3000)]


def test_records_of_every_store_format_show_the_same_in_status_and_warn_from_their_history(batch, run_grid):
    """Store format 3 keeps a job's lists apart (status decodes only the rest); format 2 records (some
    from before `ended` existed) and JSON ones of format 1 are read alike, side by side."""
    (batch / ".grid").mkdir()
    write_format_1_batch(batch)
    long_ago = 1.0                                            # ended (by its history) long ago
    jobs = [grid.Job(num=3, name="two", status="Failed", minor="Job stalled", site="LCG.X.ch", dirac_id=73,
                     ids=[70, 73], attempts=2, history=[["Submitting", 1.0], ["Failed", long_ago]]),
            grid.Job(num=4, name="three", status="Waiting", dirac_id=74, ids=[74], history=[["Waiting", 5.0]],
                     past=[{"id": 9, "status": "Failed"}])]
    db = plyvel.DB(str(batch / ".grid" / "db"))
    db.put(grid.job_key(3), grid.marshal.dumps(tuple(getattr(jobs[0], f) for f in grid.Job.FIELDS[:-1]), 4))
    db.put(grid.job_key(4), jobs[1].to_record())
    for job in jobs:
        db.put(grid.spec_key(job.num), grid.JobSpec(job.name, "[]", "", [], [], []).to_bytes())
    db.put(b"meta", json.dumps({"tag": "grid-old", "backend": "dirac", "format": 2}).encode())
    db.close()
    result = run_grid("status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["S:   0\tR:   0\tW:   1\tM:   0\tR:   1\tD:   1\tF:   1",
                                          "#1\t71\told-1\tRunning\t-\t-\t-",
                                          "#2\t72\told-2\tDone\t-\t-\tsucceeded/x",
                                          "#3\t73\ttwo\tFailed\tJob stalled\tLCG.X.ch\t-",
                                          "#4\t74\tthree\tWaiting\t-\t-\t-"]
    assert "outputs of 1 job(s) not downloaded yet" in result.stderr and "may be gone already" in result.stderr
    data = json.loads(run_grid("status", "--json").stdout)["jobs"]
    assert [(j["ids"], j["history"], j["past"]) for j in data[2:]] == \
        [([70, 73], [["Submitting", 1.0], ["Failed", 1.0]], []), ([74], [["Waiting", 5.0]], [{"id": 9, "status": "Failed"}])]
    assert grid.Job.from_record(jobs[1].to_record()) == jobs[1]


def test_a_format_3_batch_shows_the_same_status_before_and_after_a_writer_adds_its_status_lines(batch, run_grid):
    """Format 4 keeps each job's status line beside its record. A format 3 batch has none: `status`
    makes them from the records until a writer (any command that opens the batch) adds them."""
    (batch / ".grid").mkdir()
    jobs = [grid.Job(num=1, name="a", status="Running", site="LCG.A.ch", dirac_id=81, ids=[81]),
            grid.Job(num=2, name="b\tc", status="Failed", minor="Job stalled", dirac_id=82, ids=[82],
                     output="failed/00002_b_c", error="exit code 3")]
    db = plyvel.DB(str(batch / ".grid" / "db"), create_if_missing=True)
    for job in jobs:
        db.put(grid.job_key(job.num), job.to_record())
        db.put(grid.spec_key(job.num), grid.JobSpec(job.name, "[]", "", [], [], []).to_bytes())
    db.put(b"meta", json.dumps({"tag": "grid-old", "backend": "dirac", "format": 3}).encode())
    db.close()
    expected = ["S:   0\tR:   0\tW:   0\tM:   0\tR:   1\tD:   0\tF:   1",
                "#1\t81\ta\tRunning\t-\tLCG.A.ch\t-",
                "#2\t82\tb\\tc\tFailed\tJob stalled\t-\tfailed/00002_b_c\texit code 3"]
    before = run_grid("status")
    assert before.returncode == 0, before.stderr
    assert before.stdout.splitlines() == expected
    grid.Store.open(batch, "watch").close()
    db = plyvel.DB(str(batch / ".grid" / "db"))
    try:
        assert json.loads(db.get(b"meta"))["format"] == grid.STORE_FORMAT == 4
        assert list(db.iterator(prefix=b"line/", include_key=False)) == [grid.status_entry(job) for job in jobs]
    finally:
        db.close()
    assert run_grid("status").stdout.splitlines() == expected
