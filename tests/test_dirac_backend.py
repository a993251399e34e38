"""The dirac backend against DIRAC's real client classes (no server needed for these)."""
import json
import time

import pytest

import grid
from helpers import EXAMPLES, new_batch


def test_no_proxy_is_one_line_with_the_command_to_run(run_grid, batch, tmp_path):
    env = {"X509_USER_PROXY": str(tmp_path / "no-proxy.pem"), "HOME": str(tmp_path)}
    result = run_grid("submit", EXAMPLES / "hello.py", env=env)
    assert result.returncode == 5, result.stderr
    assert result.stderr.startswith("grid: error: no grid proxy")
    assert "dirac-proxy-init" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (batch / ".grid" / "db").exists()          # nothing submitted, no batch made


def test_status_and_help_do_not_import_dirac(run_grid, batch):
    probe = ("import sys, runpy; sys.argv = ['grid', '--help']\n"
             "try:\n    runpy.run_path({grid!r}, run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('DIRAC' in sys.modules)\n").format(grid=str(EXAMPLES.parent / "grid.py"))
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=batch)
    assert out.stdout.strip().endswith("False"), out.stdout + out.stderr
    assert run_grid("submit", "--backend", "local", "--no-watch", EXAMPLES / "hello.py").returncode == 0
    probe = probe.replace("'--help'", "'status'")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=batch)
    assert "#1\t" in out.stdout and out.stdout.strip().endswith("False"), out.stdout + out.stderr


def test_tagged_jdl_is_accepted_by_diracs_own_parser():
    from DIRAC.Core.Utilities.ClassAd.ClassAdLight import ClassAd
    [spec] = grid.load_job_files([str(EXAMPLES / "fail.py")], "grid-b-1")
    classad = ClassAd("[" + grid.tagged_jdl(spec.jdl, "grid-b-1.1.2") + "]")
    assert classad.isOK()
    assert classad.getAttributeString("GridPyJob") == "grid-b-1.1.2"
    assert classad.getAttributeString("Executable") == "dirac-jobexec"
    assert "std.out" in classad.getListFromExpression("OutputSandbox")


def test_each_thread_makes_new_clients_when_the_proxy_file_is_renewed(monkeypatch, tmp_path):
    proxy = tmp_path / "proxy.pem"
    proxy.write_text("first proxy")
    monkeypatch.setenv("X509_USER_PROXY", str(proxy))
    made = []

    class Clients(grid.DiracClients):
        def __init__(self, credentials, reuse_clients):
            self.credentials, self.born = credentials, 0.0
            made.append(credentials)

    monkeypatch.setattr(grid, "DiracClients", Clients)
    monkeypatch.setattr(grid.time, "monotonic", lambda: 10.0)
    backend = grid.DiracBackend()
    first = backend._clients()
    assert backend._clients() is first                            # kept between calls
    renewed = tmp_path / "new.pem"
    renewed.write_text("second proxy, renewed")
    renewed.replace(proxy)                                        # as dirac-proxy-init does
    assert backend._clients() is not first and len(made) == 2
    monkeypatch.setattr(grid.time, "monotonic", lambda: 10.0 + grid.CLIENTS_MAX_AGE + 1)
    backend._clients()
    assert len(made) == 3                                         # and after CLIENTS_MAX_AGE


# What DIRAC 9 returns when a service is down (captured from the lab with its services stopped).
REFUSED = {"OK": False, "Errno": 0, "Message": "('127.0.0.1', 9130) [Errno 111] Connection refused:"
           "ConnectionRefusedError(111, 'Connection refused')"}


def test_failures_are_told_apart_outage_expired_proxy_or_error_reply(monkeypatch):
    backend = grid.DiracBackend()
    monkeypatch.setattr(backend, "proxy_seconds_left", lambda: 3600.0)
    with pytest.raises(grid.ServerUnreachable, match="status query: .*Connection refused"):
        backend._value(REFUSED, "status query")
    with pytest.raises(grid.CallFailed) as reply:
        backend._value({"OK": False, "Message": "Job 12 is not in a valid state\nmore"}, "kill")
    assert type(reply.value) is grid.CallFailed and str(reply.value) == "kill: Job 12 is not in a valid state"
    assert backend._value({"OK": True, "Value": [3]}, "x") == [3]
    monkeypatch.setattr(backend, "proxy_seconds_left", lambda: 0.0)
    with pytest.raises(grid.ProxyExpired):
        backend._value(REFUSED, "status query")
    with pytest.raises(grid.ProxyExpired):             # and no call reaches DIRAC meanwhile
        backend.status([1, 2])


def test_server_times_are_utc_and_init_errors_read_as_one_line():
    import datetime
    stamp = datetime.datetime(2026, 1, 2, 3, 4, 5)             # DIRAC: naive, UTC
    assert grid.utc_timestamp(stamp) == 1767323045.0
    assert grid.utc_timestamp("2026-01-02 03:04:05") == 1767323045.0
    assert grid.utc_timestamp(None) == 0.0
    error = Exception({"OK": False, "Message": "Reason(s):\n\t('127.0.0.1', 9135) [Errno 111] Connection refused"})
    assert grid.dirac_message(error) == "('127.0.0.1', 9135) [Errno 111] Connection refused"


def test_status_warns_loudly_about_outputs_the_server_will_soon_delete(run_grid, batch):
    now = time.time()
    jobs = [grid.Job(num=1, name="old", status=grid.DONE, dirac_id=11, ended=now - 6.5 * 86400),
            grid.Job(num=2, name="older", status=grid.FAILED, dirac_id=12, ended=now - 5.5 * 86400),
            grid.Job(num=3, name="fresh", status=grid.DONE, dirac_id=13, ended=now - 86400),
            grid.Job(num=4, name="fetched", status=grid.DONE, dirac_id=14, ended=now - 6 * 86400,
                     output="succeeded/00004_fetched")]
    new_batch(batch, jobs, {"tag": "grid-t", "backend": "dirac"}).close()
    result = run_grid("status")
    assert result.returncode == 0
    assert result.stderr == ("grid: warning: outputs of 2 job(s) not downloaded yet: DIRAC deletes them about "
                             "7 days after the job ends, the first in 0.5 day(s); fetch them now with "
                             "`grid watch`\n")
    assert result.stdout.splitlines()[0].startswith("S:   0")
    data = json.loads(run_grid("status", "--json").stdout)
    assert abs(data["jobs"][0]["ended"] - (now - 6.5 * 86400)) < 1


def test_dirac_8_is_refused_at_connect_time_with_what_to_install():
    for version in ("8.0.86", "v8r0p86", "7.3.2"):
        with pytest.raises(grid.BackendError) as refused:
            grid.require_dirac_version(version)
        assert f"DIRAC {version} is installed; the dirac backend needs DIRAC 9" in refused.value.message
        assert "pip install 'DIRAC>=9'" in refused.value.fix and refused.value.exit_code == grid.EXIT_BACKEND
    for version in ("9.1.22", "10.0.0", ""):
        grid.require_dirac_version(version)                  # the version tested, a newer one, unknown



def test_the_batch_tag_replaces_diracs_default_job_group_but_not_the_users_own():
    """DIRAC's Job() puts the proxy's VO in JobGroup: left there, finding a batch's cut submissions would
    read the description of every job of the VO on the server."""
    job_class = grid.import_dirac_job()
    default, own = job_class(), job_class()
    for job in (default, own):
        job.group = "labvo"                              # what Job() takes from a proxy of the VO labvo
        job.setJobGroup("labvo")
        job.setExecutable("true")
    own.setJobGroup("my-analysis")
    specs = [spec for job in (default, own) for spec in grid.job_specs(job, grid.Path("jobs.py"), 1, "grid-b-1234")]
    assert [grid.GROUP_PATTERN.search(spec.jdl).group(1) for spec in specs] == ["grid-b-1234", "my-analysis"]
def test_a_configuration_server_answer_lost_at_start_is_tried_again_not_called_a_misconfiguration(monkeypatch):
    """Seen in the lab after SIGKILLs under load: DIRAC.initialize() found the list of configuration
    servers empty for a moment, and the resuming `watch` stopped with "DIRAC is not configured"."""
    from DIRAC.Core.Utilities.exceptions import DIRACInitError
    monkeypatch.setattr(grid.time, "sleep", lambda seconds: None)
    lost = "Failed to contact the Configuration Server: No configuration servers found"

    calls: list = []

    def initialize_failing(times: int, message: str) -> list:
        """Runs grid.initialize_dirac on an initialize() that fails `times` times; returns its calls."""
        calls.clear()

        def initialize() -> None:
            calls.append(1)
            if len(calls) <= times:
                raise DIRACInitError(message)

        grid.initialize_dirac(initialize)
        return calls

    assert len(initialize_failing(2, lost)) == 3
    with pytest.raises(DIRACInitError):
        initialize_failing(grid.INIT_TRIES, lost)          # a real misconfiguration fails every try
    assert len(calls) == grid.INIT_TRIES
    with pytest.raises(DIRACInitError):
        initialize_failing(grid.INIT_TRIES, "cannot read dirac.cfg")
    assert len(calls) == 1                                  # not the lost answer: no second try
    tries = []
    monkeypatch.setattr(grid.time, "sleep", tries.append)
    with pytest.raises(DIRACInitError):
        initialize_failing(1, "cannot read dirac.cfg")
    assert tries == []
