"""Integration tier: a real DIRAC WMS (tests/lab/lab.sh) in a network namespace.

Fixture `dirac_lab` (session scope) brings the lab up once (`lab.sh up`, quick when it is already up) and
tears it down at the end of the session unless GRID_LAB_KEEP=1. It needs root and `ip netns`; without them
the tests are skipped, except on CI (CI=true), where that is a failure. Every test in this folder is marked
`integration` (deselect with -m "not integration").

    def test_x(dirac_lab):
        dirac_lab.run([dirac_lab.python, "-c", "..."], check=True)   # a client inside the netns
        dirac_lab.jobagent(False)        # jobs stay Waiting (after the test: unmatched jobs killed, JobAgent on)
        dirac_lab.drive([1, 2], "Done")  # fast Waiting -> Done with an output sandbox, no JobAgent
        dirac_lab.wan(True)              # 50 ms round trip (restored after the test)

Data Management (storage element SE-1 and the DIRAC File Catalog):

        ids = ...                                             # jobs that declare setOutputData([...])
        res = dirac_lab.drive(ids, "Done", data_size=3 << 20)  # their files uploaded and registered, as a job does
        res["data"]   # {job_id: {lfn: sha256}}
        dirac_lab.put_files({lfn: b"bytes"})                  # upload + register any file
        dirac_lab.replica(lfn)                                # the replica's file on SE-1's disk
        with dirac_lab.corrupt_replica(lfn): ...              # one byte flipped, same size; restored after
        dirac_lab.se(False)                                   # StorageElement service down (up after the test)
        dirac_lab.catalog(False)                              # FileCatalog service down (up after the test)
        with dirac_lab.sandbox_limit(1 << 20): ...            # OutputSandboxLimit on the running CS
        dirac_lab.kick_jobagent()                             # fresh JobAgent once no job runs
"""
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LAB_DIR = REPO / "tests" / "lab"
LAB_SH = LAB_DIR / "lab.sh"
DRIVE_PY = LAB_DIR / "drive.py"
SANDBOX_LIMIT = "/Systems/WorkloadManagement/JobWrapper/OutputSandboxLimit"
PUT_FILES = r'''
import json, sys
import DIRAC
DIRAC.initialize()
from DIRAC.DataManagementSystem.Client.DataManager import DataManager
failed = {}
for lfn, path, se in json.load(sys.stdin):
    res = DataManager().putAndRegister(lfn, path, se)
    if not res["OK"] or lfn not in res["Value"]["Successful"]:
        failed[lfn] = res.get("Message") or str(res["Value"]["Failed"].get(lfn))
print("RESULT " + json.dumps(failed))
'''
_DROP = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "DIRACSYSCONFIG", "DIRAC_USE_TORNADO_IOLOOP",
         "X509_USER_CERT", "X509_USER_KEY")
_timings = {}
_state = {"lab": None}


def _on_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _lab_state_dir():
    return Path(os.environ.get("LAB", LAB_DIR / ".lab"))


class DiracLab:
    """Handle on the running lab. Clients run inside the netns with `env` (the lab's client environment:
    DIRAC_ROOT_PATH -> client dirac.cfg, X509_CERT_DIR, X509_USER_PROXY, PATH with the venv first,
    GRID_LAB_NS / GRID_LAB_DIR / GRID_LAB_DBPREFIX; REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, DIRACSYSCONFIG unset)."""

    def __init__(self, env, ns, lab_dir):
        self.env = env
        self.ns = ns
        self.lab_dir = Path(lab_dir)
        self.logs_dir = self.lab_dir / "logs"
        self.repo = REPO
        self.python = str(Path(os.environ.get("VENV", REPO / ".venv")) / "bin" / "python")
        self.lab_sh = str(LAB_SH)
        self.wan_on = False
        self.jobagent_on = True
        self.se_on = True
        self.catalog_on = True
        self.se_path = self.lab_dir / "storage" / "SE-1"   # SE-1's BasePath: LFN /a/b is se_path/a/b
        self.timings = _timings  # name -> seconds, printed in the terminal summary

    # ------------------------------------------------------------------ processes inside the netns
    def _argv(self, argv):
        if isinstance(argv, (str, os.PathLike)):
            argv = [argv]
        return ["ip", "netns", "exec", self.ns, "env", *[str(a) for a in argv]]

    def _env(self, kw):
        env = dict(self.env)
        env.update(kw.pop("env", None) or {})
        return env

    def run(self, argv, **kw):
        """subprocess.run(argv) inside the netns with the lab's client environment (kw env= adds to it)."""
        env = self._env(kw)
        return subprocess.run(self._argv(argv), env=env, **kw)

    def popen(self, argv, **kw):
        """subprocess.Popen(argv) inside the netns with the lab's client environment."""
        env = self._env(kw)
        return subprocess.Popen(self._argv(argv), env=env, **kw)

    def run_python(self, code, *args, timeout=300, check=True, **kw):
        """Run `code` with the venv's python inside the netns; returns the CompletedProcess (text)."""
        kw.setdefault("capture_output", True)
        p = self.run([self.python, "-c", code, *map(str, args)], text=True, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"client script failed (rc {p.returncode}); lab logs: {self.logs_dir}\n"
                                 f"--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}")
        return p

    # ------------------------------------------------------------------ lab controls
    def lab(self, *args, timeout=600):
        """Run `lab.sh ARGS...`; raise with its output if it fails."""
        p = subprocess.run(["bash", self.lab_sh, *args], capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"lab.sh {' '.join(args)} failed (rc {p.returncode}); logs: {self.logs_dir}\n"
                               f"{p.stdout}\n{p.stderr}")
        return p.stdout

    def wan(self, on: bool):
        """50 ms round trip on the namespace's loopback (on) or none (off)."""
        self.lab("wan", "on" if on else "off")
        self.wan_on = bool(on)

    def jobagent(self, on: bool):
        """Start or stop the lab's JobAgent (the local pilot). Stopped, submitted jobs stay Waiting."""
        self.lab("jobagent", "start" if on else "stop")
        self.jobagent_on = bool(on)

    def se(self, on: bool):
        """Start or stop the StorageElement service of SE-1 (stopped: connection refused)."""
        self.lab("service", "StorageElement", "start" if on else "stop")
        self.se_on = bool(on)

    def catalog(self, on: bool):
        """Start or stop the FileCatalog service (stopped: connection refused)."""
        self.lab("service", "FileCatalog", "start" if on else "stop")
        self.catalog_on = bool(on)

    def kick_jobagent(self):
        """Restart the JobAgent once it runs no job: a fresh agent, without any idle back-off."""
        self.lab("jobagent", "kick")
        self.jobagent_on = True

    def cs_get(self, path: str) -> str:
        """An option's value as a new process gets it from the running Configuration Server ('' unset)."""
        out = self.lab("cs-get", path)
        return out.strip().partition(" = ")[2]

    def cs_set(self, path: str, value) -> None:
        """Set an option on the running Configuration Server ('' deletes it); new processes see it."""
        self.lab("cs-set", f"{path}={value}")

    @contextlib.contextmanager
    def sandbox_limit(self, nbytes: int):
        """OutputSandboxLimit (bytes of the bz2-compressed sandbox) for jobs started inside the block:
        a larger sandbox goes to grid storage as an LDSB.* file. Restored afterwards."""
        old = self.cs_get(SANDBOX_LIMIT)
        self.cs_set(SANDBOX_LIMIT, int(nbytes))
        try:
            yield
        finally:
            self.cs_set(SANDBOX_LIMIT, old)

    def replica(self, lfn: str) -> Path:
        """The file of an LFN's replica on SE-1's disk."""
        return self.se_path / lfn.lstrip("/")

    @contextlib.contextmanager
    def corrupt_replica(self, lfn: str):
        """One byte of the replica flipped (size unchanged, adler32 no longer the catalogue's); restored after."""
        path = self.replica(lfn)
        original = path.read_bytes()
        bad = bytearray(original)
        bad[len(bad) // 2] ^= 0xFF
        path.write_bytes(bytes(bad))
        try:
            yield path
        finally:
            path.write_bytes(original)

    def put_files(self, files: dict, se: str = "SE-1", tmp_dir=None) -> dict:
        """Upload and register {lfn: bytes} on `se` (DataManager.putAndRegister); returns {lfn: sha256}."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="put.", dir=tmp_dir) as tmp:
            todo = []
            for i, (lfn, data) in enumerate(files.items()):
                path = Path(tmp) / f"{i}_{Path(lfn).name}"
                path.write_bytes(data)
                todo.append([lfn, str(path), se])
            p = self.run_python(PUT_FILES, input=json.dumps(todo))
        failed = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
        if failed:
            raise AssertionError(f"putAndRegister failed: {failed}")
        return {lfn: hashlib.sha256(data).hexdigest() for lfn, data in files.items()}

    def kill_waiting(self):
        """Kill every job not matched yet (Received/Checking/Waiting); returns lab.sh's message."""
        return self.lab("kill-waiting").strip()

    def drive(self, job_ids, status="Done", files=None, check=True, timeout=600, data_size=None):
        """Drive Waiting jobs to `status` ('Done'/'Failed') with an output sandbox, through the real
        JobStateUpdate and SandboxStore services (tests/lab/drive.py). files: {name: text} where text may
        use {job_id} and {status}; default std.out "job <id> <status> (driven by drive.py)".
        data_size: each OutputData file of a job's JDL uploaded and registered (that many random bytes)
        where the job wrapper would put it. Returns {"ok": [...], "errors": {id: msg}, "warnings": [...],
        "seconds": s, "data": {id: {lfn: sha256}}}."""
        argv = [self.python, str(DRIVE_PY), "--status", status]
        if data_size is not None:
            argv += ["--data-size", str(int(data_size))]
        if files is not None:
            argv += ["--no-sandbox"] if not files else [a for k, v in files.items() for a in ("--file", f"{k}={v}")]
        argv.append("-")
        p = self.run(argv, input=" ".join(str(int(j)) for j in job_ids), capture_output=True, text=True,
                     timeout=timeout)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            raise RuntimeError(f"drive.py failed (rc {p.returncode}); logs: {self.logs_dir}\n{p.stdout[-3000:]}\n"
                               f"{p.stderr[-3000:]}")
        res = json.loads(lines[-1][len("RESULT "):])
        res["errors"] = {int(k): v for k, v in res["errors"].items()}
        res["data"] = {int(k): v for k, v in res.get("data", {}).items()}
        if check and res["errors"]:
            raise AssertionError(f"drive.py: {len(res['errors'])} job(s) not driven: "
                                 f"{dict(list(res['errors'].items())[:10])}; logs: {self.logs_dir}")
        return res


def _client_env(stdout):
    """Environment from `lab.sh env` output (export/unset lines) applied to ours."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            if key == "PATH":
                value = value.replace("$PATH", os.environ.get("PATH", "/usr/bin:/bin"))
            env[key] = shlex.split(value)[0] if value else ""
        elif line.startswith("unset "):
            for key in line.split()[1:]:
                env.pop(key, None)
    return env


def _unavailable():
    """Reason the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the DIRAC lab needs root (network namespace, MariaDB, iptables)"
    if not shutil.which("ip"):
        return "the DIRAC lab needs 'ip' (iproute2)"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "'ip netns' does not work here"
    return None


@pytest.fixture(scope="session")
def dirac_lab():
    reason = _unavailable()
    if reason:
        if _on_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    logs = _lab_state_dir() / "logs"
    t0 = time.monotonic()
    try:
        p = subprocess.run(["bash", str(LAB_SH), "up"], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"lab.sh up timed out; logs in {logs}\n{exc.stdout}\n{exc.stderr}", pytrace=False)
    _timings["lab up"] = time.monotonic() - t0
    if p.returncode != 0:
        pytest.fail(f"lab.sh up failed (rc {p.returncode}); logs in {logs}\n{p.stdout}\n{p.stderr}", pytrace=False)
    out = subprocess.run(["bash", str(LAB_SH), "env"], capture_output=True, text=True, check=True).stdout
    env = _client_env(out)
    lab = DiracLab(env, env["GRID_LAB_NS"], env["GRID_LAB_DIR"])
    lab.wan(False)  # a lab left up by an earlier session (GRID_LAB_KEEP=1) may still have it on
    _state["lab"] = lab
    # sessions using this lab: the last one to finish takes it down
    sessions = lab.lab_dir / "run" / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    mine = sessions / str(os.getpid())
    mine.touch()
    try:
        yield lab
    finally:
        _state["lab"] = None
        mine.unlink(missing_ok=True)
        others = [p for p in sessions.iterdir() if p.name.isdigit() and Path(f"/proc/{p.name}").exists()]
        if os.environ.get("GRID_LAB_KEEP") != "1" and not others:
            subprocess.run(["bash", str(LAB_SH), "down"], capture_output=True, text=True, timeout=300)


@pytest.fixture(autouse=True)
def _dirac_lab_restore(request):
    """After each test that used the lab: WAN delay off, storage element and catalogue up and JobAgent
    running again, if the test changed them.
    A test that stopped the JobAgent owns the jobs still unmatched at its end: they are killed first, or the
    one JobAgent would spend the next tests running them (about 8 s each)."""
    yield
    lab = _state["lab"]
    if lab is None or "dirac_lab" not in request.fixturenames:
        return
    if lab.wan_on:
        lab.wan(False)
    if not lab.se_on:
        lab.se(True)
    if not lab.catalog_on:
        lab.catalog(True)
    if not lab.jobagent_on:
        lab.kill_waiting()
        lab.jobagent(True)


# ---------------------------------------------------------------------------------------------- hooks
def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs the real DIRAC lab (tests/lab/lab.sh; root, ip netns)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def pytest_report_header(config):
    return f"grid lab: bash {LAB_SH.relative_to(REPO)} up|down|status; logs in {_lab_state_dir() / 'logs'}" \
           f" (GRID_LAB_KEEP=1 leaves it up)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and "dirac_lab" in getattr(item, "fixturenames", ()):
        logs = _lab_state_dir() / "logs"
        started = time.time() - (call.duration or 0) - 5
        recent = sorted(p.name for p in logs.glob("*.log") if p.stat().st_mtime >= started) if logs.is_dir() else []
        rep.sections.append(("grid lab logs", f"{logs}\nwritten during this test: {', '.join(recent) or '-'}\n"
                             f"status: bash {LAB_SH} status"))


def pytest_terminal_summary(terminalreporter):
    if _timings:
        terminalreporter.write_sep("-", "grid lab timings")
        for name, seconds in _timings.items():
            terminalreporter.write_line(f"{name}: {seconds:.3f} s" if seconds < 1 else f"{name}: {seconds:.1f} s")
