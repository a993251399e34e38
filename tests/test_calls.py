"""One way to call a backend from a command that calls the server once: outages waited out, then one clear error."""
import io
import time

import pytest

import grid


class OneCall(grid.Backend):
    """A threaded backend (calls run in gevent's threadpool, as DIRAC's do) whose logging info fails
    `failures` times with `error`, then answers."""

    name = "one-call"
    threaded = True

    def __init__(self, error: Exception, failures: int = 1):
        self.error, self.failures, self.calls = error, failures, 0

    def logging_info(self, job_id):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return [grid.LoggingRecord("Received", "Job accepted", "Unknown", 1.0e9, "JobManager")]


pytestmark = pytest.mark.usefixtures("fast_backoff")


def test_a_failed_logging_info_call_is_one_error_with_its_fix_and_no_traceback(batch, monkeypatch, capfd):
    backend = OneCall(grid.CallFailed("logging info: job 7 not found"), failures=99)
    monkeypatch.setattr(grid, "make_backend", lambda name, batch_dir: backend)
    monkeypatch.setattr(backend, "connect", lambda: None)
    job = grid.Job(num=1, name="a", dirac_id=7)
    with pytest.raises(grid.BackendError) as error:
        grid.print_logging_info("one-call", job, batch)
    assert error.value.message == "cannot fetch the logging info of job 7: logging info: job 7 not found"
    assert error.value.fix == "try again later, or add --offline to leave it out"
    assert backend.calls == 1                           # an error reply is not tried again
    assert "Traceback" not in capfd.readouterr().err


def test_a_command_waits_out_a_short_outage_in_one_line_and_then_answers():
    backend = OneCall(grid.ServerUnreachable("[Errno 111] Connection refused"), failures=3)
    out = io.StringIO()
    records = grid.BackendCalls(backend, grid.Display(out)).once(backend.logging_info, 7, fix="the fix")
    assert [r.status for r in records] == ["Received"] and backend.calls == 4
    text = out.getvalue()
    assert text.count("server unreachable since") == 1 and text.count("server reachable again") == 1


def test_a_command_gives_up_on_a_long_outage_at_its_deadline_with_the_commands_fix(monkeypatch):
    monkeypatch.setattr(grid, "ONCE_DEADLINE", 0.2)
    backend = OneCall(grid.ServerUnreachable("[Errno 111] Connection refused"), failures=10 ** 6)
    start = time.monotonic()
    with pytest.raises(grid.BackendError) as error:
        grid.BackendCalls(backend, grid.Display(io.StringIO())).once(
            backend.logging_info, 7, failure="cannot fetch it: ", fix="try again later")
    assert time.monotonic() - start < 5
    assert error.value.message == "cannot fetch it: [Errno 111] Connection refused"
    assert error.value.fix == "try again later" and backend.calls > 1
