"""Parametric jobs (Job.setParameterSequence): one submit() is N jobs, each with its own number, record,
output folder, tag and resubmission, with the values DIRAC's own expansion gives; on a backend that
bundles, each sequence goes as one parametric job, exactly once, in parameter order."""
import io
import json
from pathlib import Path

import pytest

import grid
from helpers import EXAMPLES, BundlingBackend, Crash, parametric_job_file, write

FAST = ("--interval", "0.1")

ECHO = parametric_job_file()


def load(batch: Path, text: str) -> grid.SpecSpool:
    return grid.load_job_files([str(write(batch / "jobs.py", text))], "grid-par-1")


def status(run_grid) -> dict:
    result = run_grid("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def log_of(batch: Path, job: dict) -> str:
    return (batch / job["output"] / "Script1_CodeOutput.log").read_text()


# -- loading: DIRAC's expansion, each job a plain job ----------------------------------------------

def test_a_parameter_sequence_is_one_job_per_value_in_order(batch):
    specs = load(batch, ECHO)
    assert [spec.name for spec in specs] == ["p-1", "p-2", "p-3"]
    assert [spec.steps[0][:2] for spec in specs] == [["echo", "1"], ["echo", "2"], ["echo", "3"]]
    assert specs.sequences == [[1, 3]]
    for spec in specs:                       # plain jobs: nothing left for the server to expand
        assert "%" not in spec.jdl and "Parameters" not in grid.jdl_attributes(spec.jdl)
        assert grid.jdl_attributes(spec.jdl)["Arguments"] == '"jobDescription.xml -o LogLevel=INFO"'


def test_every_job_carries_what_dirac_would_give_it(batch):
    """The JDL attributes of each job are those of DIRAC's own server-side expansion, and its workflow
    holds the values that dirac-jobexec's -p switches would set there."""
    from DIRAC.Core.Workflow.Workflow import fromXMLString
    from DIRAC.Interfaces.API.Job import Job
    from DIRAC.WorkloadManagementSystem.Utilities.ParametricJob import generateParametricJobs
    text = """
j = Job()
j.setName("n%n-%(a)s")
j.setExecutable("echo", arguments="%(a)s %(b)s %n %s")
j.setExecutable("true")
j.setOutputSandbox(["out-%(b)s.txt"])
j.setParameterSequence("a", [str(i) for i in range(11)])
j.setParameterSequence("b", ["x y", 'q"uote', "é", "-", "+", "a.b", "c:d", "/p", "@", "~t", "z"])
submit(j)
"""
    specs = list(load(batch, text))
    namespace = {"Job": Job, "submit": lambda job: namespace.setdefault("job", job)}
    exec(text, namespace)
    original = namespace["job"]
    original.setJobGroup("grid-par-1")
    expected = generateParametricJobs(grid.jdl_classad(original._toJDL(jobDescriptionObject=io.StringIO(""))))
    assert len(specs) == 11 and expected["OK"]
    for n, (spec, theirs) in enumerate(zip(specs, expected["Value"])):
        mine, dirac = grid.jdl_attributes(spec.jdl), grid.jdl_attributes(theirs)
        for name in ("JobName", "OutputSandbox", "JobGroup", "Executable", "StdOutput"):
            assert mine[name] == dirac[name], name
        arguments = grid.jdl_classad(theirs).getAttributeString("Arguments")
        value = arguments.split("-p arguments='")[1].split("'")[0]          # what the job wrapper passes
        assert fromXMLString(spec.xml).findParameter("arguments").getValue() == value
        assert spec.steps[0][1] == value and value.split()[2] == f"{n:02d}" and value.split()[3] == "1"
    # DIRAC's lists keep no spaces or double quotes inside values
    assert [spec.steps[0][1].split()[1] for spec in specs[:2]] == ["xy", "quote"]
    assert specs[0].output_sandbox == ["out-xy.txt"] and specs[2].output_sandbox == ["out-é.txt"]
    # as DIRAC's Script module: a step without arguments of its own takes the workflow's
    assert specs[4].steps[1][:2] == ["true", specs[4].steps[0][1]]


def test_a_jdl_made_parametric_by_hand_is_expanded_too(batch):
    specs = load(batch, "j = Job()\nj.setExecutable('echo', arguments='%n')\n"
                        "j._addParameter(j.workflow, 'Parameters', 'JDL', 3, 'three jobs')\nsubmit(j)\n")
    assert [spec.steps[0][1] for spec in specs] == ["0", "1", "2"] and specs.sequences == [[1, 3]]


def test_jobs_without_parameters_are_unchanged(batch):
    specs = load(batch, "j = Job()\nj.setExecutable('echo', arguments='a %s b')\nsubmit(j)\n"
                        "k = Job()\nk.setExecutable('ls')\nsubmit(k)\n")
    assert [spec.steps for spec in specs] == [[["echo", "a %s b", "Script1_CodeOutput.log"]],
                                             [["ls", "", "Script1_CodeOutput.log"]]]
    assert specs.sequences == []


def test_parametric_input_sandbox_entries_are_found_like_any_other(batch):
    for name in ("a.txt", "b.txt"):
        write(batch / name, name)
    specs = load(batch, "j = Job()\nj.setExecutable('cat', arguments='%(InputSandbox)s')\n"
                        "j.setParameterSequence('InputSandbox', ['a.txt', 'b.txt'])\nsubmit(j)\n")
    assert [spec.input_sandbox for spec in specs] == [[str(batch / "a.txt")], [str(batch / "b.txt")]]
    assert grid.sandbox_entries(specs[1].jdl) == [str(batch / "b.txt")]


@pytest.mark.parametrize("values, extra, message", [
    (["--n=1", "--n=2"], "", "has a '=', which DIRAC's dirac-jobexec cannot read"),
    (["it's", "fine"], "", "the DIRAC job wrapper's shell would act on"),
    (["a|b", "c"], ", addToWorkflow=True", "the DIRAC job wrapper's shell would act on"),
    (["a;b", "c"], "", "DIRAC cannot expand this parametric job"),
    (["$HOME", "c"], ", addToWorkflow=True", "the DIRAC job wrapper's shell would act on"),
    (["x,y", "z"], "", "DIRAC cannot expand this parametric job"),
])
def test_values_that_fail_on_the_grid_are_refused_at_load_time(batch, run_grid, values, extra, message):
    write(batch / "jobs.py", f"j = Job()\nj.setExecutable('echo', arguments='%(v)s')\n"
                             f"j.setParameterSequence('v', {values!r}{extra})\nsubmit(j)\n")
    for backend in ("local", "dirac"):
        result = run_grid("submit", "--dry-run", "--backend", backend, "jobs.py")
        assert result.returncode == grid.EXIT_JOBFILE, result.stdout + result.stderr
        assert "jobs.py:4" in result.stderr and message in result.stderr and "Traceback" not in result.stderr
        assert "grid: fix:" in result.stderr


def test_sequences_of_different_lengths_are_a_job_file_error(batch, run_grid):
    write(batch / "jobs.py", "j = Job()\nj.setExecutable('echo', arguments='%(a)s')\n"
                             "j.setParameterSequence('a', ['1', '2'])\nj.setParameterSequence('b', ['1'])\n"
                             "submit(j)\n")
    result = run_grid("submit", "--dry-run", "jobs.py")
    assert result.returncode == grid.EXIT_JOBFILE and "Parameter sequences of different length" in result.stderr


# -- the local backend, end to end -----------------------------------------------------------------

def test_dry_run_lists_every_job_of_the_sequence(batch, run_grid):
    """Each job is listed with the line of its submit() (the fifth of the file) and its value."""
    write(batch / "jobs.py", ECHO)
    result = run_grid("submit", "--dry-run", "--backend", "local", "jobs.py")
    assert result.returncode == 0, result.stderr
    assert "dry run: 3 job(s) would be submitted" in result.stdout
    for n in (1, 2, 3):
        assert f"#{n} p-{n}  [jobs.py:5, parameter set {n} of 3]\n    run: echo {n}\n" in result.stdout


def test_the_parametric_example_is_three_jobs(run_grid):
    result = run_grid("submit", "--dry-run", "--backend", "local", EXAMPLES / "params.py")
    assert result.returncode == 0, result.stderr
    assert "dry run: 3 job(s)" in result.stdout
    assert "#2 greet-Bob" in result.stdout and "run: echo Hello Bob, you are number 1" in result.stdout


def test_local_jobs_each_run_with_their_own_value_and_resubmit_alone(batch, run_grid):
    write(batch / "jobs.py", """
j = Job()
j.setName("p-%(v)s")
j.setExecutable("expr", arguments="%(v)s - 2")         # prints 0 and exits 1 for #2
j.setParameterSequence("v", ["1", "2", "3"])
submit(j)
""")
    result = run_grid("submit", "--backend", "local", *FAST, "jobs.py")
    assert result.returncode == grid.EXIT_JOBS_FAILED, result.stdout + result.stderr     # #2 fails
    jobs = status(run_grid)["jobs"]
    assert [job["output"] for job in jobs] == ["succeeded/00001_p-1", "failed/00002_p-2", "succeeded/00003_p-3"]
    assert [log_of(batch, job).split("\n\n", 1)[1].strip() for job in jobs] == ["-1", "0", "1"]
    assert len({job["id"] for job in jobs}) == 3

    result = run_grid("resubmit", *FAST, "2")
    assert result.returncode == grid.EXIT_JOBS_FAILED, result.stdout + result.stderr
    after = status(run_grid)["jobs"]
    assert [job["attempts"] for job in after] == [1, 2, 1]
    assert [job["id"] for job in after][::2] == [job["id"] for job in jobs][::2]
    assert after[1]["id"] not in {job["id"] for job in jobs}
    assert log_of(batch, after[1]).split("\n\n", 1)[1].strip() == "0"       # its own value, alone
    assert len([p for p in (batch / ".grid" / "local").iterdir() if p.name.isdigit()]) == 4


# -- the engine: a sequence is one bundle, exactly once --------------------------------------------

def sequence_engine(batch: Path, sequences: list, n: int, backend: grid.Backend, bulk=False, **kw) -> grid.Engine:
    store = grid.Store.open(batch, "submit", create=True)
    jobs = [grid.Job(num=i, name=f"job-{i}") for i in range(1, n + 1)]
    specs = [grid.JobSpec(name=j.name, jdl="[]", xml="", steps=[], input_sandbox=[], output_sandbox=[])
             for j in jobs]
    store.create_batch({"tag": "grid-test", "backend": "scripted", "bulk": bulk, "sequences": sequences},
                       jobs, specs)
    return grid.Engine(store, backend, grid.Display(io.StringIO()), batch, interval=0.001, **kw)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(grid, "backoff", lambda attempt, base=1.0: 0.001)


def ids_in_order(jobs: dict) -> bool:
    return [jobs[num].dirac_id for num in sorted(jobs)] == sorted(job.dirac_id for job in jobs.values())


def test_without_bulk_each_sequence_is_one_bundle_and_the_rest_go_one_by_one(batch):
    backend = BundlingBackend(announces=100)
    engine = sequence_engine(batch, [[2, 4], [6, 9]], 10, backend, parallel=1)
    jobs = engine.run()
    engine.batch.store.close()
    assert backend.bundles == [3, 4]                      # two sequences, never merged with each other
    assert sorted(backend.server.values()) == sorted(f"grid-test.{k}.1" for k in range(1, 11))
    assert all(backend.server[job.dirac_id] == f"grid-test.{job.num}.1" for job in jobs.values())
    assert ids_in_order({num: jobs[num] for num in range(2, 5)})     # the server's order is parameter order
    assert all(job.status == grid.DONE and job.output for job in jobs.values())
    assert "parametric: 7 job(s) in 2 bundle(s) (at most 100 each), 0 one by one" in engine.display.out.getvalue()


def test_a_sequence_longer_than_the_servers_limit_is_split_in_order(batch):
    backend = BundlingBackend(announces=10)
    engine = sequence_engine(batch, [[1, 25]], 25, backend, parallel=1)
    jobs = engine.run(watch=False)
    engine.batch.store.close()
    assert backend.bundles == [9, 8, 8]
    assert ids_in_order(jobs)


def test_a_crash_after_the_server_made_the_sequence_neither_loses_nor_duplicates(batch):
    class CrashAfterBundle(BundlingBackend):
        def submit_bundle(self, specs, tags):
            ids = super().submit_bundle(specs, tags)
            raise Crash()                        # SIGKILL between the server's reply and the ids being stored

    backend = CrashAfterBundle()
    engine = sequence_engine(batch, [[1, 5]], 5, backend)
    with pytest.raises(Crash):
        engine.run(watch=False)
    engine.batch.store.close()
    store = grid.Store.open(batch, "watch")                    # a restart, from what is on disk
    engine = grid.Engine(store, BundlingBackend(), grid.Display(io.StringIO()), batch, interval=0.001)
    engine.backend.server, engine.backend.next_id = backend.server, backend.next_id
    engine.backend.step = backend.step
    jobs = engine.run()
    engine.batch.store.close()
    assert backend.bundles == [5] and engine.backend.bundles == [] and engine.backend.submitted == []
    assert all(backend.server[job.dirac_id] == f"grid-test.{job.num}.1" for job in jobs.values())
    assert "5 submission(s) cut short earlier: 5 found on the server" in engine.display.out.getvalue()


def test_resubmitting_one_job_of_a_sequence_submits_that_job_alone(batch):
    backend = BundlingBackend(end=lambda job_id: grid.FAILED if job_id == 1002 else grid.DONE)
    engine = sequence_engine(batch, [[1, 3]], 3, backend, retries=1)
    jobs = engine.run()
    engine.batch.store.close()
    assert backend.bundles == [3]                          # the sequence once, as one bundle ...
    assert backend.submitted[-1] == "grid-test.2.2" and len(backend.server) == 4   # ... then #2 alone
    assert jobs[2].ids == [1002, 1004] and jobs[1].ids == [1001] and jobs[3].ids == [1003]
