"""Paths, small helpers, fake backends and batch builders shared by the test modules (importable
from any tests/ folder; no test module imports from another)."""
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "grid.py"
EXAMPLES = ROOT / "examples"

sys.path.insert(0, str(ROOT))                                      # grid.py itself
import grid  # noqa: E402


def grid_cmd(*args) -> list:
    """The command line of `grid ARGS`, run with this interpreter."""
    return [sys.executable, str(GRID), *map(str, args)]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def parametric_job_file(arguments: str = "%(args)s") -> str:
    """A job file of one parametric job over the values 1, 2, 3: jobs p-1, p-2, p-3 that echo
    `arguments` with %(args)s standing for their value."""
    return ("j = Job()\n"
            'j.setName("p-%(args)s")\n'
            f'j.setExecutable("echo", arguments="{arguments}")\n'
            'j.setParameterSequence("args", ["1", "2", "3"], addToWorkflow=True)\n'
            "submit(j)\n")


def step_stdout(folder: Path, step: int = 1) -> str:
    """What step N of a job printed on stdout, from its application log (Script<N>_<name>.log) as
    DIRAC's Script module writes it: a header, the output, a space, then any stderr section."""
    [log] = folder.glob(f"Script{step}_*.log")
    body = log.read_text().split(" Standard Output >>>>>>>>>>\n\n", 1)[1]
    return body.split(" <<<<<<<<<< ", 1)[0].removesuffix(" ")


# -- batches and engines made directly, without a job file --------------------------------------------

def blank_spec(name: str) -> grid.JobSpec:
    return grid.JobSpec(name=name, jdl="[]", xml="", steps=[], input_sandbox=[], output_sandbox=[])


def new_batch(batch: Path, jobs: list, meta: dict, specs: list = None, command: str = "submit") -> grid.Store:
    """A stored batch of these jobs (blank specs unless given), held open by `command`."""
    store = grid.Store.open(batch, command, create=True)
    store.create_batch(meta, jobs, specs if specs is not None else [blank_spec(job.name) for job in jobs])
    return store


def make_engine(batch: Path, jobs, backend: grid.Backend, bulk: bool = False, **kw) -> grid.Engine:
    """An engine over a new batch of `jobs` (a number: job-1 ... job-N; or a list of names) whose
    display writes into a StringIO (engine.display.out)."""
    names = [f"job-{i}" for i in range(1, jobs + 1)] if isinstance(jobs, int) else jobs
    meta = {"tag": "grid-test", "backend": "scripted", **({"bulk": True} if bulk else {})}
    store = new_batch(batch, [grid.Job(num=i, name=name) for i, name in enumerate(names, 1)], meta)
    return grid.Engine(store, backend, grid.Display(io.StringIO()), batch,
                       interval=kw.pop("interval", 0.001), **kw)


# -- fake backends, for fault injection (the real DIRAC is tested in tests/integration) ---------------

PATH = [grid.RECEIVED, grid.WAITING, grid.MATCHED, grid.RUNNING]


class ScriptedBackend(grid.Backend):
    """Accepts every job; each status call moves each asked job one step towards its end status."""

    name = "scripted"

    def __init__(self, end=lambda job_id: grid.DONE, submit_failures=0, status_failures=0,
                 fetch_failures=lambda job_id: 0):
        self.end, self.submit_failures, self.status_failures = end, submit_failures, status_failures
        self.fetch_failures = fetch_failures
        self.next_id, self.step, self.status_calls, self.fetches = 1000, {}, [], {}
        self.submitted = []
        self.final, self.asked_after_final = set(), set()
        self.server = {}                                   # every job the "server" accepted: {id: tag}

    def submit(self, spec, tag):
        if self.submit_failures:
            self.submit_failures -= 1
            raise grid.CallFailed("JobManager unreachable")
        self.next_id += 1
        self.step[self.next_id] = 0
        self.submitted.append(tag)
        self.server[self.next_id] = tag
        return self.next_id

    def find(self, tags, groups, known, since=0.0):
        return {tag: job_id for job_id, tag in self.server.items() if tag in tags and job_id not in known}

    def status(self, ids):
        self.status_calls.append(list(ids))
        if self.status_failures:
            self.status_failures -= 1
            raise grid.CallFailed("connection refused")
        self.asked_after_final |= self.final & set(ids)
        states = {}
        for job_id in ids:
            self.step[job_id] += 1
            step = self.step[job_id]
            states[job_id] = grid.JobState(PATH[step] if step < len(PATH) else self.end(job_id), "minor")
            if grid.is_final(states[job_id].status):
                self.final.add(job_id)
        return states

    def fetch_output(self, job_id, dest: Path):
        self.fetches[job_id] = self.fetches.get(job_id, 0) + 1
        if self.fetches[job_id] <= self.fetch_failures(job_id):
            raise grid.CallFailed("sandbox store down")
        (dest / "std.out").write_text(f"output of {job_id}\n")


class BundlingBackend(ScriptedBackend):
    """Takes bundles of at most `accepts` jobs while announcing `announces`; keys come from the spec."""

    def __init__(self, announces=100, accepts=None, bundle_failures=0, **kw):
        super().__init__(**kw)
        self.announces, self.accepts = announces, accepts or announces
        self.bundle_failures = bundle_failures
        self.bundles = []                                  # sizes of the bundles accepted

    def bundle_limit(self):
        return self.announces

    def bundle_key(self, spec):
        return None if spec.name.startswith("alone") else spec.jdl

    def submit_bundle(self, specs, tags):
        if len(specs) > self.accepts:
            raise grid.BundleTooLarge(f"Number of parametric jobs exceeds the limit of {self.accepts}",
                                      self.accepts)
        if self.bundle_failures:
            self.bundle_failures -= 1
            raise grid.CallFailed("JobManager unreachable")
        self.bundles.append(len(specs))
        return [self.submit(spec, tag) for spec, tag in zip(specs, tags)]


class Crash(BaseException):
    """Stands for SIGKILL inside a call: nothing after it runs."""


def wait_until(condition, timeout: float, what: str, process=None, step=0.02) -> bool:
    """True once condition() holds; False if `process` ended first."""
    end = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            return False
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(step)
    return True


def lab_grid(lab, batch: Path, *args, timeout: float = 600):
    """grid.py run in the batch as a user of the DIRAC lab would (its environment, its network)."""
    return lab.run([sys.executable, str(GRID), *map(str, args)], cwd=batch, capture_output=True,
                   text=True, timeout=timeout)


def lab_status(lab, batch: Path) -> dict:
    """`grid status --json` in the lab, parsed."""
    result = lab_grid(lab, batch, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
