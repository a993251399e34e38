"""The local backend as a site: a detached per-batch process runs the jobs to the end with no grid.py
command running; sandboxes, outputs and grid-only settings as DIRAC treats them."""
import json
import os
import signal
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

import grid
from helpers import grid_cmd, step_stdout, write


def run(batch: Path, *args, timeout: float = 180, env: dict = None) -> subprocess.CompletedProcess:
    return subprocess.run(grid_cmd(*args), cwd=batch, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def job_file(batch: Path, jobs: list[tuple[str, str]], extra: str = "") -> Path:
    """One job per (name, shell command), each with `extra` lines (using j) before submit(j)."""
    body = "".join(f"j = Job()\nj.setName({name!r})\nj.setExecutable('/bin/sh', arguments={'-c ' + repr(cmd)!r})\n"
                   f"{extra}submit(j)\n" for name, cmd in jobs)
    return write(batch / "jobs.py", body)


def local_states(batch: Path) -> dict[int, dict]:
    """The states the local site wrote, read from its files (no grid command involved)."""
    root = batch / ".grid" / "local"
    return {int(p.name): json.loads((p / "state.json").read_text())
            for p in root.iterdir() if p.name.isdigit() and (p / "spec.json").exists()}


def wait_for(predicate, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def all_final(batch: Path, count: int) -> bool:
    states = local_states(batch)
    return len(states) == count and all(grid.is_final(s["status"]) for s in states.values())


def site_pid(batch: Path) -> int:
    return json.loads((batch / ".grid" / "local" / "site.json").read_text())["pid"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def status(batch: Path) -> dict:
    result = run(batch, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- the site runs jobs on its own ----------------------------------------------------------------

def test_jobs_run_to_the_end_after_submit_no_watch_and_status_shows_it(batch):
    job_file(batch, [(f"quick-{i}", f"echo job {i}") for i in range(3)])
    assert run(batch, "submit", "--backend", "local", "--no-watch", "jobs.py").returncode == 0
    wait_for(lambda: all_final(batch, 3), what="the site to run every job")   # no grid command runs meanwhile
    assert {s["status"] for s in local_states(batch).values()} == {"Done"}
    with grid.Store.snapshot(batch) as store:                 # the store has not been told yet ...
        assert {job.status for job in store.jobs().values()} == {"Received"}
    shown = status(batch)                                     # ... `status` shows what the site did
    assert shown["summary"]["Done"] == 3 and {j["status"] for j in shown["jobs"]} == {"Done"}
    wait_for(lambda: not alive(site_pid(batch)), timeout=30, what="the site to exit once nothing is left")
    assert not grid.site_running(batch / ".grid" / "local")
    result = run(batch, "watch", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    assert step_stdout(batch / "succeeded" / "00002_quick-1") == "job 1\n"


def test_the_site_survives_sigkill_of_grid_and_a_new_command_finds_its_work(batch):
    job_file(batch, [(f"slow-{i}", f"sleep 2; echo slow {i}") for i in range(3)])
    watch = subprocess.Popen(grid_cmd("submit", "--backend", "local", "--interval", "0.2", "jobs.py"), cwd=batch,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (batch / ".grid" / "local").is_dir() and any(
            s["status"] == "Running" for s in local_states(batch).values()), what="a job to run")
    finally:
        os.killpg(watch.pid, signal.SIGKILL)     # grid.py and its whole terminal session, as a closed window
        watch.wait()
    wait_for(lambda: all_final(batch, 3), what="the site to finish the jobs alone")
    assert {s["status"] for s in local_states(batch).values()} == {"Done"}
    result = run(batch, "watch", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    assert [step_stdout(batch / "succeeded" / f"{n:05d}_slow-{n - 1}") for n in (1, 2, 3)] == \
        ["slow 0\n", "slow 1\n", "slow 2\n"]


def test_a_killed_site_is_restarted_by_the_next_command_and_its_running_job_reported_stalled(batch):
    job_file(batch, [("long", "sleep 60"), ("after", "echo after")])
    env = {"GRID_LOCAL_SLOTS": "1"}
    assert run(batch, "submit", "--backend", "local", "--no-watch", "jobs.py", env=env).returncode == 0
    wait_for(lambda: local_states(batch).get(1, {}).get("status") == "Running", what="the first job to run")
    payload = local_states(batch)[1]["pgid"]
    os.kill(site_pid(batch), signal.SIGKILL)
    shown = status(batch)                    # finds work and no site: starts one
    assert shown["jobs"][1]["status"] in ("Waiting", "Matched", "Running", "Done")
    wait_for(lambda: all_final(batch, 2), what="the new site to end both jobs")
    states = local_states(batch)
    assert states[1]["status"] == "Failed" and states[1]["minor"] == "Job stalled: local site not running"
    assert states[2]["status"] == "Done"
    wait_for(lambda: not group_alive(payload), timeout=30, what="the orphaned step to be stopped")


def test_a_job_that_ends_before_its_start_is_recorded_never_keeps_its_slot(batch):
    """The race of a 200-job batch that stalled at W: 196 D: 4: a job ending before the scheduler
    recorded its start kept its CPU slot for good. Here every start is recorded late."""
    job_file(batch, [(f"instant-{i}", "true") for i in range(6)])
    result = run(batch, "submit", "--backend", "local", "--interval", "0.2", "jobs.py", timeout=240,
                 env={"GRID_LOCAL_SLOTS": "1", grid.START_DELAY_HOOK: "0.5"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert status(batch)["summary"]["Done"] == 6


def test_at_most_one_job_per_slot_at_once(batch):
    log = batch.parent / "overlap"
    job_file(batch, [(f"s-{i}", f"echo start $(date +%s.%N) >> {log}; sleep 0.5; echo end $(date +%s.%N) >> {log}")
                     for i in range(4)])
    result = run(batch, "submit", "--backend", "local", "--interval", "0.2", "jobs.py", env={"GRID_LOCAL_SLOTS": "2"})
    assert result.returncode == 0, result.stderr
    running, most = 0, 0
    for line in sorted(log.read_text().splitlines(), key=lambda line: float(line.split()[1])):
        running += 1 if line.startswith("start") else -1
        most = max(most, running)
    assert most == 2


# -- output streamed, stored once, kept when killed ---------------------------------------------

def test_a_job_printing_a_lot_costs_the_site_no_memory_and_is_stored_once(batch):
    size = 150_000_000
    job_file(batch, [("loud", f"yes 0123456789abcdefghij | head -c {size}; sleep 3")])   # then time to look
    assert run(batch, "submit", "--backend", "local", "--no-watch", "jobs.py").returncode == 0
    wait_for(lambda: (batch / ".grid" / "local" / "site.json").exists(), what="the site")
    pid, peak = site_pid(batch), 0
    while not all_final(batch, 1):
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
            peak = max(peak, int(fields["VmHWM"].split()[0]) * 1024)
        except (OSError, KeyError):
            pass
        time.sleep(0.05)
    assert 0 < peak < 100_000_000, f"the site's peak RSS was {peak / 1e6:.0f} MB"
    assert run(batch, "watch", "--interval", "0.2").returncode == 0
    log = batch / "succeeded" / "00001_loud" / "Script1_sh.log"
    assert size < log.stat().st_size < size + 200
    on_disk = sum(p.stat().st_size for p in batch.rglob("*") if p.is_file())
    assert on_disk < size * 1.05, "the output is on disk once"
    assert not (batch / ".grid" / "local" / "1" / "work").exists()


def test_a_killed_job_keeps_what_it_printed(batch):
    job_file(batch, [("killed", "echo started; sleep 60")])
    assert run(batch, "submit", "--backend", "local", "--no-watch", "jobs.py").returncode == 0
    log = batch / ".grid" / "local" / "1" / "work" / "Script1_sh.log"
    wait_for(lambda: log.exists() and "started" in log.read_text(), what="the job to print")
    assert run(batch, "kill", "1", "--yes").returncode == 0
    assert status(batch)["jobs"][0]["status"] == "Killed"
    assert run(batch, "watch", "--interval", "0.2").returncode == grid.EXIT_JOBS_FAILED
    assert step_stdout(batch / "failed" / "00001_killed") == "started\n"


# -- sandboxes -----------------------------------------------------------------------------------

SANDBOX_JOBS = """\
import os
j = Job()
j.setName('archives')
j.setInputSandbox([os.path.abspath('mydir'), 'packed.tgz', 'kept.zip'])
j.setExecutable('/bin/sh', arguments='-c "sh mydir/run.sh; cat inner/note.txt; ls"')
submit(j)
j = Job()
j.setName('outputs')
j.setExecutable('/bin/sh', arguments='-c "echo a > a.txt; echo b > b.txt; echo h > .h.txt; mkdir -p plots sub; '
                'echo p > plots/p.txt; echo c > sub/c.txt; echo n > ntuple.root; echo m > hist.root"')
j.setOutputSandbox(['*.txt', 'plots', 'sub/c.txt', 'result.txt', '*.none'])
j.setOutputData(['ntuple.root', 'LFN:/vo/user/u/user/hist.root', 'missing.root'], 'SE-X')
submit(j)
j = Job()
j.setName('failed-data')
j.setExecutable('/bin/sh', arguments='-c "echo n > ntuple.root; exit 2"')
j.setOutputData(['ntuple.root'])
submit(j)
"""


@pytest.fixture(scope="module")
def sandboxes(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    batch = tmp_path_factory.mktemp("sandboxes") / "batch"
    (batch / "mydir").mkdir(parents=True)
    write(batch / "mydir" / "run.sh", "echo run from the directory\n")
    (batch / "inner").mkdir()
    write(batch / "inner" / "note.txt", "from the tgz\n")
    with tarfile.open(batch / "packed.tgz", "w:gz") as tar:
        tar.add(batch / "inner", arcname="inner")
    (batch / "inner" / "note.txt").unlink()
    (batch / "inner").rmdir()
    with zipfile.ZipFile(batch / "kept.zip", "w") as z:
        z.writestr("zipped.txt", "not unpacked\n")
    write(batch / "jobs.py", SANDBOX_JOBS)
    result = run(batch, "submit", "--backend", "local", "--interval", "0.2", "jobs.py")
    assert result.returncode == grid.EXIT_JOBS_FAILED, result.stdout + result.stderr
    return batch, result


def test_directories_and_tar_archives_in_the_input_sandbox_are_unpacked_as_the_jobwrapper_does(sandboxes):
    batch, _ = sandboxes
    out = step_stdout(batch / "succeeded" / "00001_archives")
    assert out.startswith("run from the directory\nfrom the tgz\n")
    listing = out.split("\n", 2)[2].split()
    assert {"mydir", "mydir.tar.gz", "inner", "packed.tgz", "kept.zip"} <= set(listing)
    assert "zipped.txt" not in listing                         # DIRAC unpacks tar archives only


def test_output_sandbox_patterns_match_as_on_the_grid(sandboxes):
    batch, _ = sandboxes
    folder = batch / "succeeded" / "00002_outputs"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["Script1_sh.log", "a.txt", "b.txt", "c.txt", "hist.root", "ntuple.root", "plots.tar",
                     "std.err", "std.out"]                 # no .h.txt: `*` skips hidden files, as glob does
    with tarfile.open(folder / "plots.tar") as tar:
        assert tar.getnames() == ["plots", "plots/p.txt"]
    assert (folder / "c.txt").read_text() == "c\n"


def test_missing_declared_outputs_are_reported_and_the_job_is_done_as_on_the_grid(sandboxes):
    batch, result = sandboxes
    line = ("#2 outputs: declared output not produced: result.txt (output sandbox), missing.root (output data)")
    assert line in result.stdout
    jobs = {job["num"]: job for job in status(batch)["jobs"]}
    assert jobs[2]["status"] == "Done"
    assert jobs[2]["missing"] == [{"name": "result.txt", "kind": "sandbox"}, {"name": "missing.root", "kind": "data"}]
    assert jobs[1]["missing"] == []
    why = run(batch, "why", "2", "--offline")
    assert "  outputs:     declared output not produced: result.txt (output sandbox)" in why.stdout


def test_output_data_of_a_failed_job_is_not_collected_as_it_is_not_uploaded_on_the_grid(sandboxes):
    batch, _ = sandboxes
    assert sorted(p.name for p in (batch / "failed" / "00003_failed-data").iterdir()) == \
        ["Script1_sh.log", "std.err", "std.out"]


def test_input_files_are_captured_at_submission(batch):
    write(batch / "data.txt", "as submitted\n")
    job_file(batch, [("blocker", "sleep 3"), ("reader", "cat data.txt")], extra="j.setInputSandbox(['data.txt'])\n")
    result = run(batch, "submit", "--backend", "local", "--no-watch", "jobs.py", env={"GRID_LOCAL_SLOTS": "1"})
    assert result.returncode == 0
    write(batch / "data.txt", "edited after submit\n")
    assert run(batch, "watch", "--interval", "0.2").returncode == 0
    assert step_stdout(batch / "succeeded" / "00002_reader") == "as submitted\n"
    assert len(list((batch / ".grid" / "local" / "inputs").iterdir())) == 1     # two jobs, one stored copy


# -- the same job file for both backends ---------------------------------------------------------

GRID_SETTINGS = """\
from DIRAC.Interfaces.API.Job import Job as ImportedJob
for make in (Job, ImportedJob):
    j = make()
    j.setExecutable('echo hi')
    j.setDestination('LCG.CERN.cern')
    j.setBannedSites(['LCG.RAL.uk'])
    j.setPlatform('x86_64-el9')
    j.setTag(['GPU'])
    j.setCPUTime(3600)
    j.setDestinationCE('ce.cern.ch')
    submit(j)
"""


def test_grid_only_settings_load_locally_and_dry_run_lists_them_as_ignored(batch):
    write(batch / "jobs.py", GRID_SETTINGS)
    dry = run(batch, "submit", "--backend", "local", "--dry-run", "jobs.py")
    assert dry.returncode == 0, dry.stderr
    ignored = [line.strip() for line in dry.stdout.splitlines() if "ignored on this machine" in line]
    assert ignored == ["ignored on this machine: BannedSites = LCG.RAL.uk; CPUTime = 3600; GridCE = ce.cern.ch; "
                       "Platform = x86_64-el9; Site = LCG.CERN.cern; Tags = GPU"] * 2
    result = run(batch, "submit", "--backend", "local", "--interval", "0.2", "jobs.py")
    assert result.returncode == 0, result.stderr
    assert status(batch)["summary"]["Done"] == 2


def test_without_a_dirac_configuration_the_grid_backend_says_why_and_how_to_fix_it(batch):
    write(batch / "jobs.py", GRID_SETTINGS)
    result = run(batch, "submit", "--dry-run", "jobs.py")
    assert result.returncode == grid.EXIT_JOBFILE
    error, fix = result.stderr.splitlines()
    assert "setDestination: Specified site {'LCG.CERN.cern'} is not in list of defined sites" in error
    assert fix.startswith("grid: fix: DIRAC checks sites, CEs and platforms against its configuration")
