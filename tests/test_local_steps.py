"""Local jobs end as DIRAC's workflow and job wrapper end them (each checked against the lab's real
JobAgent by tests/conformance): every step runs even after one failed, the application status and
the application logs are the Script module's, output sandbox files arrive as DIRAC sends them."""
import json
import tarfile

from helpers import write

FAST = ("--interval", "0.1")


def run_jobs(batch, run_grid, text: str) -> list:
    write(batch / "jobs.py", text)
    run_grid("submit", "--backend", "local", *FAST, "jobs.py")
    result = run_grid("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["jobs"]


def test_a_failed_step_does_not_stop_the_later_ones_and_the_first_failure_is_the_reason(batch, run_grid):
    [job] = run_jobs(batch, run_grid, """
j = Job()
j.setExecutable("sh", arguments="-c 'exit 3'")
j.setExecutable("sh", arguments="-c 'exit 4'")
j.setExecutable("echo", arguments="still runs")
submit(j)
""")
    assert (job["status"], job["minor"], job["application"]) == \
        ("Failed", "Application Finished With Errors", "sh Exited With Status 3")
    folder = batch / job["output"]
    assert "still runs" in (folder / "Script3_CodeOutput.log").read_text()
    assert (folder / "Script2_CodeOutput.log").exists()


def test_a_done_job_names_its_last_step_and_its_logs_are_the_script_modules(batch, run_grid):
    [job] = run_jobs(batch, run_grid, """
j = Job()
j.setExecutable("sh", arguments="-c 'echo out; echo err >&2'")
j.setExecutable("printf", arguments="no-newline")
submit(j)
""")
    assert (job["status"], job["minor"], job["application"]) == ("Done", "Execution Complete", "printf successful")
    folder = batch / job["output"]
    assert (folder / "Script1_CodeOutput.log").read_bytes() == \
        b"<<<<<<<<<< sh Standard Output >>>>>>>>>>\n\nout\n <<<<<<<<<< sh Standard Error >>>>>>>>>>\n\nerr\n "
    assert (folder / "Script2_CodeOutput.log").read_bytes() == \
        b"<<<<<<<<<< printf Standard Output >>>>>>>>>>\n\nno-newline "


def test_output_files_arrive_without_their_folders_and_folders_as_tars(batch, run_grid):
    [job] = run_jobs(batch, run_grid, """
j = Job()
j.setExecutable("sh", arguments="-c 'mkdir -p sub keep; echo x > sub/x.dat; echo k > keep/k.txt; echo 1 > out1.txt'")
j.setOutputSandbox(["out*.txt", "sub/x.dat", "keep", "never-made.txt"])
submit(j)
""")
    assert job["status"] == "Done" and job["output"], job
    folder = batch / job["output"]
    assert sorted(p.name for p in folder.iterdir()) == \
        ["Script1_CodeOutput.log", "keep.tar", "out1.txt", "std.err", "std.out", "x.dat"]
    assert (folder / "x.dat").read_text() == "x\n"
    with tarfile.open(folder / "keep.tar") as tar:
        assert sorted(tar.getnames()) == ["keep", "keep/k.txt"]
        assert tar.extractfile("keep/k.txt").read() == b"k\n"
