"""The dirac backend against DIRAC's real client classes (no server needed for these)."""
import grid
from helpers import EXAMPLES


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
