"""Job files: the seed's example as written, ordering, and every mistake as one clear line."""
import json
from pathlib import Path

import pytest

from helpers import EXAMPLES, step_stdout, write


def assert_one_line_error(result, *fragments):
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("grid: error: ")
    for fragment in fragments:
        assert fragment in first


def assert_nothing_submitted(batch: Path):
    assert not (batch / ".grid").exists()


def test_seed_example_runs_without_import(run_grid):
    result = run_grid("submit", "--dry-run", EXAMPLES / "hello.py")
    assert result.returncode == 0, result.stderr
    assert "1 job(s) would be submitted" in result.stdout
    assert "echo Hello World" in result.stdout


def test_a_file_that_imports_job_itself_works(run_grid):
    result = run_grid("submit", "--dry-run", EXAMPLES / "fail.py")
    assert result.returncode == 0, result.stderr
    assert "fails-on-purpose" in result.stdout


def test_jobs_keep_the_order_of_their_submit_calls(run_grid, batch):
    result = run_grid("submit", "--dry-run", EXAMPLES / "many.py")
    assert result.returncode == 0, result.stderr
    names = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("#")]
    assert names == [f"square-{i:03d}" for i in range(1, 101)]
    assert_nothing_submitted(batch)


@pytest.mark.parametrize("body, fragments", [
    ("j = Job()\nsubmit(j)\nraise ValueError('half way')\n", ["jobs.py:3", "ValueError: half way"]),
    ("j = Job(\n", ["jobs.py:", "is it a Python file"]),
    ("submit('not a job')\n", ["jobs.py:1", "submit() takes a DIRAC Job, not str"]),
    ("j = Job()\nsubmit(j)\nsubmit(j)\n", ["jobs.py:3", "same Job object is submitted twice"]),
    ("x = 1\n", ["submitted no job"]),
    ("j = Job()\nj.setInputSandbox(['missing.txt'])\nsubmit(j)\n", ["jobs.py:3", "'missing.txt' does not exist"]),
    ("import sys\nsys.exit(2)\n", ["exited with 2"]),
])
def test_bad_job_files_give_one_line_and_submit_nothing(run_grid, batch, body, fragments):
    write(batch / "jobs.py", body)
    result = run_grid("submit", "--backend", "local", "jobs.py")
    assert_one_line_error(result, *fragments)
    assert_nothing_submitted(batch)


def test_missing_job_file(run_grid, batch):
    result = run_grid("submit", "--backend", "local", "nope.py")
    assert_one_line_error(result, "nope.py: no such file")
    assert_nothing_submitted(batch)


def test_binary_file_is_not_python(run_grid, batch):
    (batch / "data.bin").write_bytes(b"\x00\x01\x02\xff")
    result = run_grid("submit", "--backend", "local", "data.bin")
    assert_one_line_error(result, "data.bin")
    assert_nothing_submitted(batch)


def test_a_bad_second_file_submits_nothing_from_the_first(run_grid, batch):
    write(batch / "bad.py", "raise RuntimeError('boom')\n")
    result = run_grid("submit", "--backend", "local", EXAMPLES / "hello.py", "bad.py")
    assert_one_line_error(result, "bad.py:1", "boom")
    assert_nothing_submitted(batch)


def test_input_sandbox_found_next_to_the_job_file(batch):
    import grid
    specs = grid.load_job_files([str(EXAMPLES / "many.py")], "grid-test-1")
    assert specs[0].input_sandbox == [str(EXAMPLES / "square.sh")]
    assert str(EXAMPLES / "square.sh") in specs[0].jdl         # absolute, so resubmission works anywhere


def test_jdl_comes_from_dirac_job_with_batch_group_and_tag():
    import grid
    [spec] = grid.load_job_files([str(EXAMPLES / "hello.py")], "grid-test-2")
    assert "JobGroup = grid-test-2;" in spec.jdl
    assert "JobName = Test job;" in spec.jdl
    assert spec.steps == [["echo Hello World", "", "Script1_CodeOutput.log"]]
    tagged = grid.tagged_jdl(spec.jdl, "grid-test-2.1.1")
    from DIRAC.Core.Utilities.ClassAd.ClassAdLight import ClassAd
    classad = ClassAd("[" + tagged + "]" if not tagged.strip().startswith("[") else tagged)
    assert classad.isOK()
    assert classad.getAttributeString("GridPyJob") == "grid-test-2.1.1"
    assert classad.getAttributeString("JobGroup") == "grid-test-2"


def test_a_users_own_job_group_is_kept(batch):
    import grid
    write(batch / "jobs.py", "j = Job()\nj.setJobGroup('mine')\nj.setExecutable('true')\nsubmit(j)\n")
    [spec] = grid.load_job_files([str(batch / "jobs.py")], "grid-test-3")
    assert "JobGroup = mine;" in spec.jdl


def test_non_ascii_names_and_arguments_work_end_to_end(run_grid, batch):
    write(batch / "jobs.py", "j = Job()\nj.setName('Zerfall-μ→eγ')\n"
          "j.setExecutable('echo', arguments='Grüße')\nsubmit(j)\n")
    result = run_grid("submit", "--backend", "local", "--interval", "0.2", "jobs.py")
    assert result.returncode == 0, result.stderr
    status = json.loads(run_grid("status", "--json").stdout)
    [job] = status["jobs"]
    assert job["name"] == "Zerfall-μ→eγ" and job["status"] == "Done"
    assert step_stdout(batch / job["output"]) == "Grüße\n"
