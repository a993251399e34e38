"""The DIRAC lab of tests/lab for the benchmarks that need a real WMS (monitor.py, downloads.py).

Uses the test tier's own handle (tests/integration/conftest.py: DiracLab) so that a benchmark runs its
clients exactly as the integration tests do: inside the lab's network namespace, with its client
environment. Needs root and `bash setup.sh test` done once. Honours NS, DBPREFIX and LAB like lab.sh.
"""
import contextlib
import importlib.util
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "grid.py"
LAB_SH = ROOT / "tests" / "lab" / "lab.sh"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("grid_lab_fixture", ROOT / "tests" / "integration" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def lab_up(keep: bool = False) -> Iterator:
    """The lab, up, JobAgent stopped, WAN delay off; taken down afterwards unless it was up already
    or keep is set (then its JobAgent is as it was, and the jobs still waiting are killed)."""
    fixture = _fixture_module()
    reason = fixture._unavailable()
    if reason:
        raise SystemExit(f"no DIRAC lab here: {reason}")
    started = time.monotonic()
    up = subprocess.run(["bash", str(LAB_SH), "up"], capture_output=True, text=True, timeout=900,
                        env={**os.environ, "LAB_JOBAGENT": "off"})
    if up.returncode != 0:
        raise SystemExit(f"lab.sh up failed:\n{up.stdout}\n{up.stderr}")
    was_up = "already up" in up.stdout
    env = fixture._client_env(subprocess.run(["bash", str(LAB_SH), "env"], capture_output=True, text=True,
                                             check=True).stdout)
    lab = fixture.DiracLab(env, env["GRID_LAB_NS"], env["GRID_LAB_DIR"])
    jobagent_was_on = subprocess.run(["bash", str(LAB_SH), "jobagent", "status"], capture_output=True).returncode == 0
    lab.jobagent(False)
    lab.wan(False)
    print(f"lab {lab.ns} {'was already up' if was_up else 'up'} ({time.monotonic() - started:.0f} s)", flush=True)
    try:
        yield lab
    finally:
        lab.wan(False)
        if was_up or keep:                   # left as it was found, without our jobs
            lab.kill_waiting()
            lab.jobagent(jobagent_was_on)
        else:
            subprocess.run(["bash", str(LAB_SH), "down"], capture_output=True, text=True, timeout=300)
            print(f"lab {lab.ns} down", flush=True)


def run_grid(lab, batch: Path, *args, timeout: float = 3600) -> subprocess.CompletedProcess:
    """grid.py ARGS in the batch directory, inside the lab."""
    result = lab.run([lab.python, str(GRID), *map(str, args)], cwd=batch, capture_output=True, text=True,
                     timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"grid {' '.join(map(str, args))} failed ({result.returncode}):\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def submit_batch(lab, batch: Path, n: int, parallel: int = 32) -> list:
    """Submit n trivial jobs with grid.py (JobAgent stopped: they stay Waiting); their DIRAC ids."""
    batch.mkdir(parents=True)
    (batch / "jobs.py").write_text(f"for i in range({n}):\n    j = Job()\n    j.setName(f'bench-{{i}}')\n"
                                   "    j.setExecutable('echo', arguments=str(i))\n    submit(j)\n")
    started = time.monotonic()
    run_grid(lab, batch, "submit", "--no-watch", "--parallel", parallel, "jobs.py")
    data = json.loads(run_grid(lab, batch, "status", "--json").stdout)
    ids = [job["id"] for job in data["jobs"]]
    print(f"submitted {n} jobs in {time.monotonic() - started:.0f} s", flush=True)
    return ids


def client(lab, script: Path, *args, timeout: float = 3600) -> dict:
    """Run a benchmark's client part inside the lab; it prints one line `RESULT {json}`."""
    result = lab.run([lab.python, str(script), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{script.name} {' '.join(map(str, args))} failed ({result.returncode}):\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


class CallCounter:
    """Counts the DISET calls this process makes, where DIRAC makes them: RPC calls
    (InnerRPCClient.executeRPC, retries included) and file transfers (TransferClient), whatever client
    class asked for them. Each call is (name, number of ids when its first argument is a list)."""

    def __init__(self) -> None:
        import threading

        from DIRAC.Core.DISET.private.InnerRPCClient import InnerRPCClient
        from DIRAC.Core.DISET.TransferClient import TransferClient
        self.calls: list = []
        self.lock = threading.Lock()
        rpc, transfer = InnerRPCClient.executeRPC, TransferClient._sendTransferHeader
        counter = self

        def counted_rpc(client, function, args):
            first = args[0] if args else None
            counter.add(function, len(first) if isinstance(first, (list, tuple)) else None)
            return rpc(client, function, args)

        def counted_transfer(client, action, file_info):
            counter.add(f"transfer:{action}", None)
            return transfer(client, action, file_info)

        InnerRPCClient.executeRPC = counted_rpc
        TransferClient._sendTransferHeader = counted_transfer

    def add(self, name: str, size) -> None:
        with self.lock:
            self.calls.append((name, size))

    def take(self) -> list:
        with self.lock:
            calls, self.calls = self.calls, []
        return calls
