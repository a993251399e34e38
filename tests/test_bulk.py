"""submit --bulk: which jobs can share one parametric DIRAC job, the JDL that carries them, and the
engine's bundles (exactly once, one record and one output folder per job, fallbacks)."""
import io
from pathlib import Path

import pytest

import grid
from helpers import BundlingBackend, Crash, make_engine, write


def load(batch: Path, text: str, name: str = "jobs.py") -> list:
    path = write(batch / name, text)
    return grid.load_job_files([str(path)], "grid-bulk-1")


LOOP = """
for i in range(6):
    j = Job()
    j.setName(f"n{i}")
    j.setExecutable("echo", arguments=f"hello {i}")
    j.setInputSandbox(["data.txt"])
    j.setCPUTime(100 + i)
    submit(j)
"""


@pytest.fixture
def data(batch):
    return write(batch / "data.txt", "shared input\n")


# -- which jobs go together ------------------------------------------------------------------------

def test_jobs_of_a_loop_differing_in_arguments_and_simple_values_share_a_key(batch, data):
    keys = {grid.parametric_key(spec) for spec in load(batch, LOOP)}
    assert len(keys) == 1 and None not in keys


def test_what_a_parametric_job_cannot_vary_separates_jobs(batch, data):
    specs = load(batch, """
def job(name, inputs=("data.txt",), data=None, level=None):
    j = Job()
    j.setName(name)
    j.setExecutable("echo", arguments=name)
    j.setInputSandbox(list(inputs))
    if data:
        j.setInputData([data])
    if level:
        j.setLogLevel(level)
    submit(j)
job("a")
job("b")
job("with space 1")                  # names with spaces: DIRAC strips them from parameter values
job("with space 2")
job("c", inputs=["data.txt", "jobs.py"])                     # another input sandbox
job("d", data="/vo/user/file")                               # an attribute the others lack
job("e", level="DEBUG")                                      # other Arguments (-o LogLevel=DEBUG)
job("f%n")                                                   # DIRAC would substitute %n
""")
    keys = [grid.parametric_key(spec) for spec in specs]
    assert keys[0] == keys[1]
    assert keys[2] != keys[3] and keys[2] != keys[0]
    assert keys[0] not in keys[4:7] and len(set(keys[4:7])) == 3
    assert keys[7] is None


def test_jobs_of_different_job_files_are_not_bundled_together(batch, data):
    one = load(batch, LOOP, "one.py")
    two = load(batch, LOOP, "two.py")
    assert grid.parametric_key(one[0]) != grid.parametric_key(two[0])


def test_a_parametric_jdl_expands_on_the_server_into_exactly_the_jobs_it_carries(batch, data):
    """DIRAC's own server-side expansion gives back each job's JDL, with its tag and its workflow."""
    from DIRAC.WorkloadManagementSystem.Utilities.ParametricJob import (
        generateParametricJobs, getParameterVectorLength)
    specs = load(batch, LOOP)
    tags = [f"grid-bulk-1.{n}.1" for n in range(1, 7)]
    descriptions = [f"gridpy-{n:04d}.xml" for n in range(6)]
    jdl = grid.parametric_jdl(specs, tags, descriptions, ["SB:SandboxSE|/S/bundle.tar.bz2"])
    classad = grid.jdl_classad(jdl)
    assert getParameterVectorLength(classad)["Value"] == 6
    expanded = generateParametricJobs(classad)["Value"]
    assert len(expanded) == 6
    for spec, tag, description, job_jdl in zip(specs, tags, descriptions, expanded):
        mine = grid.jdl_attributes(job_jdl)
        original = grid.jdl_attributes(spec.jdl)
        for name in ("JobName", "CPUTime", "JobGroup", "OutputSandbox", "StdOutput", "Executable"):
            assert mine[name] == original[name], name
        assert grid.TAG_PATTERN.search(job_jdl).group(1) == tag
        assert mine["Arguments"] == f'"{description} -o LogLevel=INFO"'
        assert grid.jdl_classad(job_jdl).getListFromExpression("InputSandbox") == ["SB:SandboxSE|/S/bundle.tar.bz2"]


def test_split_evenly_makes_few_parts_of_nearly_equal_size():
    assert [len(p) for p in grid.split_evenly(list(range(250)), 100)] == [84, 83, 83]
    assert [len(p) for p in grid.split_evenly(list(range(200)), 100)] == [100, 100]
    assert grid.split_evenly([1, 2, 3], 1) == [[1], [2], [3]]
    assert sum(grid.split_evenly(list(range(37)), 10), []) == list(range(37))


# -- the engine's bundles --------------------------------------------------------------------------

def bulk_engine(batch: Path, names: list, backend: grid.Backend, **kw) -> grid.Engine:
    return make_engine(batch, names, backend, bulk=True, **kw)


pytestmark = pytest.mark.usefixtures("fast_backoff")


def assert_each_job_once(backend, jobs, n):
    assert sorted(backend.server.values()) == sorted(f"grid-test.{k}.1" for k in range(1, n + 1))
    assert sorted(j.dirac_id for j in jobs.values()) == sorted(backend.server)
    assert all(backend.server[j.dirac_id] == f"grid-test.{j.num}.1" for j in jobs.values())


def test_bundles_of_at_most_the_limit_and_every_job_recorded_and_downloaded_on_its_own(batch):
    backend = BundlingBackend(announces=100)
    names = [f"job-{i}" for i in range(250)] + ["alone-1", "alone-2"]
    engine = bulk_engine(batch, names, backend)
    jobs = engine.run()
    engine.batch.store.close()
    assert sorted(backend.bundles) == [83, 83, 84]
    assert_each_job_once(backend, jobs, 252)
    assert all(j.status == grid.DONE and j.output for j in jobs.values())
    folders = {j.output for j in jobs.values()}
    assert len(folders) == 252 and len(list((batch / "succeeded").iterdir())) == 252
    assert "bulk: 250 job(s) in 3 bundle(s) (at most 100 each), 2 one by one" in engine.display.out.getvalue()


def test_a_bundle_larger_than_the_server_takes_is_split(batch):
    backend = BundlingBackend(announces=100, accepts=30)
    engine = bulk_engine(batch, [f"job-{i}" for i in range(100)], backend)
    jobs = engine.run(watch=False)
    engine.batch.store.close()
    assert max(backend.bundles) <= 30 and sum(backend.bundles) == 100
    assert_each_job_once(backend, jobs, 100)


def test_a_bundle_that_keeps_failing_goes_one_by_one(batch):
    backend = BundlingBackend(bundle_failures=grid.SUBMIT_ATTEMPTS)
    engine = bulk_engine(batch, [f"job-{i}" for i in range(10)], backend)
    jobs = engine.run(watch=False)
    engine.batch.store.close()
    assert backend.bundles == []
    assert_each_job_once(backend, jobs, 10)
    assert "one by one" in engine.display.out.getvalue()


def test_a_bundle_whose_reply_was_lost_is_not_sent_again(batch):
    class LostReply(BundlingBackend):
        def submit_bundle(self, specs, tags):
            ids = super().submit_bundle(specs, tags)
            if len(self.bundles) == 1:
                raise grid.CallFailed("timeout")          # accepted, but the reply was lost
            return ids

    backend = LostReply()
    engine = bulk_engine(batch, [f"job-{i}" for i in range(20)], backend)
    jobs = engine.run(watch=False)
    engine.batch.store.close()
    assert backend.bundles == [20]
    assert_each_job_once(backend, jobs, 20)


def test_a_crash_after_the_server_accepted_a_bundle_neither_loses_nor_duplicates(batch):
    class CrashAfterBundle(BundlingBackend):
        def submit_bundle(self, specs, tags):
            ids = super().submit_bundle(specs, tags)
            if len(self.bundles) == 2:
                raise Crash()          # SIGKILL between the server's reply and the ids being stored
            return ids

    backend = CrashAfterBundle(announces=10)
    engine = bulk_engine(batch, [f"job-{i}" for i in range(40)], backend, parallel=1)
    with pytest.raises(Crash):
        engine.run(watch=False)
    engine.batch.store.close()
    store = grid.Store.open(batch, "watch")                    # a restart, from what is on disk
    engine = grid.Engine(store, backend, grid.Display(io.StringIO()), batch, interval=0.001, parallel=1)
    jobs = engine.run()
    engine.batch.store.close()
    assert backend.bundles == [10, 10, 10, 10]
    assert_each_job_once(backend, jobs, 40)
    assert "10 submission(s) cut short earlier: 10 found on the server" in engine.display.out.getvalue()
    assert all(j.status == grid.DONE for j in jobs.values())


def test_bulk_on_the_local_backend_submits_one_by_one(run_grid, batch):
    write(batch / "jobs.py", "for i in range(3):\n    j = Job()\n    j.setExecutable('echo', arguments=str(i))\n"
          "    submit(j)\n")
    result = run_grid("submit", "--backend", "local", "--bulk", "jobs.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bulk: the local backend submits one job at a time" in result.stdout
    assert len(list((batch / "succeeded").iterdir())) == 3


def test_an_outage_costs_a_bundle_none_of_its_tries_and_it_stays_one_bundle(batch):
    class Outage(BundlingBackend):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.down = 3 * grid.SUBMIT_ATTEMPTS

        def submit_bundle(self, specs, tags):
            if self.down:
                self.down -= 1
                raise grid.ServerUnreachable("[Errno 111] Connection refused")
            return super().submit_bundle(specs, tags)

    backend = Outage()
    engine = bulk_engine(batch, [f"n{i}" for i in range(6)], backend)
    jobs = engine.run()
    engine.batch.store.close()
    text = engine.display.out.getvalue()
    assert backend.bundles == [6]                          # not broken up into single jobs
    assert "(try" not in text and "not accepted" not in text
    assert text.count("server unreachable since") == 1 and text.count("server reachable again") == 1
    assert_each_job_once(backend, jobs, 6)
