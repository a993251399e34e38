"""The engine with a scripted backend: bulk polling of active jobs only, retries, bounded failures."""
import io
from pathlib import Path

import gevent
import pytest

import grid

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

    def find(self, tags, groups, known):
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


def make_engine(batch: Path, n: int, backend: grid.Backend, **kw) -> grid.Engine:
    store = grid.Store.open(batch, "submit", create=True)
    jobs = [grid.Job(num=i, name=f"job-{i}") for i in range(1, n + 1)]
    specs = [grid.JobSpec(name=j.name, jdl="[]", xml="", steps=[], input_sandbox=[], output_sandbox=[])
             for j in jobs]
    store.create_batch({"tag": "grid-test", "backend": "scripted"}, jobs, specs)
    return grid.Engine(store, backend, grid.Display(io.StringIO()), batch,
                       interval=kw.pop("interval", 0.001), **kw)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(grid, "backoff", lambda attempt, base=1.0: 0.001)


def test_every_job_is_submitted_once_and_ends_downloaded(batch):
    backend = ScriptedBackend(end=lambda i: grid.FAILED if i % 10 == 0 else grid.DONE)
    engine = make_engine(batch, 50, backend)
    jobs = engine.run()
    engine.store.close()
    assert sorted(backend.submitted) == sorted(f"grid-test.{n}.1" for n in range(1, 51))
    assert all(grid.is_final(j.status) and j.output for j in jobs.values())
    assert len(list((batch / "succeeded").iterdir())) == 45
    assert len(list((batch / "failed").iterdir())) == 5
    assert all(count == 1 for count in backend.fetches.values())


def test_status_calls_ask_only_active_jobs_in_chunks_of_at_most_1000(batch):
    backend = ScriptedBackend()
    engine = make_engine(batch, 2500, backend, parallel=64)
    engine.run()
    engine.store.close()
    assert max(len(call) for call in backend.status_calls) <= grid.BULK_STATUS_MAX
    assert backend.asked_after_final == set()        # a final job is never asked about again
    polled = {}
    for call in backend.status_calls:
        for job_id in call:
            polled[job_id] = polled.get(job_id, 0) + 1
    assert set(polled.values()) == {len(PATH)}       # Received, Waiting, Matched, Running, then final


def test_no_status_call_when_nothing_is_active(batch):
    backend = ScriptedBackend()
    engine = make_engine(batch, 5, backend)
    engine.run()
    calls = len(backend.status_calls)
    engine = grid.Engine(engine.store, backend, grid.Display(io.StringIO()), batch, interval=0.001)
    engine.run()
    engine.store.close()
    assert len(backend.status_calls) == calls


def test_server_outage_is_one_line_and_watch_recovers(batch):
    backend = ScriptedBackend(status_failures=5)
    engine = make_engine(batch, 3, backend)
    out = engine.display.out
    jobs = engine.run()
    engine.store.close()
    text = out.getvalue()
    assert text.count("server unreachable since") == 1
    assert "server reachable again" in text
    assert all(j.status == grid.DONE for j in jobs.values())


def test_submission_is_retried_after_errors(batch):
    backend = ScriptedBackend(submit_failures=3)
    engine = make_engine(batch, 2, backend, parallel=1)
    jobs = engine.run()
    engine.store.close()
    assert all(j.attempts == 1 and j.status == grid.DONE for j in jobs.values())


def test_one_bad_download_does_not_stop_the_others_and_is_reported(batch):
    backend = ScriptedBackend(fetch_failures=lambda i: 99 if i == 1001 else 0)
    engine = make_engine(batch, 4, backend)
    jobs = engine.run()
    engine.store.close()
    bad = jobs[1]
    assert bad.output == "" and "sandbox store down" in bad.error
    assert bad.download_tries == grid.DOWNLOAD_ATTEMPTS
    assert all(j.output for j in list(jobs.values())[1:])


def test_the_loop_stays_responsive_while_threaded_calls_block(batch):
    """Backend calls marked threaded run in gevent's threadpool: greenlets keep running meanwhile."""
    import time

    class Slow(ScriptedBackend):
        threaded = True

        def submit(self, spec, tag):
            time.sleep(0.2)           # real blocking sleep (threads are not patched)
            return super().submit(spec, tag)

    backend = Slow()
    engine = make_engine(batch, 16, backend, parallel=16)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(time.monotonic()) or gevent.sleep(0.01) for _ in range(1000)])
    start = time.monotonic()
    engine.run(watch=False)
    elapsed = time.monotonic() - start
    ticker.kill()
    engine.store.close()
    assert elapsed < 16 * 0.2 / 3                   # the 16 submissions overlapped
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert max(gaps) < 0.15                          # and the loop never stalled for a whole call


class Crash(BaseException):
    """Stands for SIGKILL inside a call: nothing after it runs."""


class CrashingBackend(ScriptedBackend):
    """The server accepts the job, then the client dies before it learns the id (once per job in crash_on)."""

    def __init__(self, crash_on=(), **kw):
        super().__init__(**kw)
        self.crash_on = set(crash_on)

    def submit(self, spec, tag):
        job_id = super().submit(spec, tag)
        if self.crash_on and len(self.server) in self.crash_on:
            self.crash_on.discard(len(self.server))
            raise Crash()
        return job_id


def test_a_crash_after_the_server_accepted_neither_loses_nor_duplicates(batch):
    backend = CrashingBackend(crash_on={3, 7})
    engine, crashes = make_engine(batch, 10, backend, parallel=1), 0
    while True:
        try:
            jobs = engine.run()
            break
        except Crash:                  # the server accepted a job, the client died before the id was stored
            crashes += 1
            engine.store.close()
            store = grid.Store.open(batch, "watch")          # a restart, from what is on disk
            engine = grid.Engine(store, backend, grid.Display(io.StringIO()), batch,
                                 interval=0.001, parallel=1)
    engine.store.close()
    assert crashes == 2
    tags = sorted(backend.server.values())
    assert tags == sorted(f"grid-test.{n}.1" for n in range(1, 11))      # each job once on the server
    assert sorted(j.dirac_id for j in jobs.values()) == sorted(backend.server)
    assert all(j.status == grid.DONE and j.output for j in jobs.values())


def test_a_failed_call_that_did_reach_the_server_is_not_sent_again(batch):
    class LostReply(CrashingBackend):
        def submit(self, spec, tag):
            job_id = super().submit(spec, tag)
            if len(self.server) == 1:
                raise grid.CallFailed("timeout")          # accepted, but the reply was lost
            return job_id

    backend = LostReply()
    engine = make_engine(batch, 3, backend, parallel=1)
    jobs = engine.run()
    engine.store.close()
    assert len(backend.server) == 3
    assert sorted(j.dirac_id for j in jobs.values()) == sorted(backend.server)


class SlowThreadedBackend(ScriptedBackend):
    """Submission calls run in the threadpool and take a while, as DIRAC's do."""

    threaded = True

    def submit(self, spec, tag):
        import time
        time.sleep(0.05)
        return super().submit(spec, tag)


def test_a_resubmitted_job_is_submitted_once_even_when_calls_overlap(batch):
    backend = SlowThreadedBackend(end=lambda i: grid.FAILED if i == 1001 else grid.DONE)
    engine = make_engine(batch, 4, backend)
    engine.run()
    assert engine.jobs[1].failed
    engine = grid.Engine(engine.store, backend, grid.Display(io.StringIO()), batch, interval=0.001)
    engine.resubmit(engine.jobs[1])                 # as `grid resubmit 1` does, before the run
    jobs = engine.run()
    engine.store.close()
    assert backend.submitted.count("grid-test.1.2") == 1
    assert jobs[1].ids == [1001, 1005] and jobs[1].attempts == 2 and jobs[1].status == grid.DONE


def test_retries_stop_at_n_and_keep_every_attempt(batch):
    backend = ScriptedBackend(end=lambda i: grid.FAILED)
    engine = make_engine(batch, 1, backend, retries=2)
    jobs = engine.run()
    engine.store.close()
    assert jobs[1].attempts == 3 and len(jobs[1].ids) == 3 and len(jobs[1].past) == 2
    assert [p["output"] for p in jobs[1].past] == ["retried/00001_job-1.1", "retried/00001_job-1.2"]
    assert all((batch / p["output"] / "std.out").is_file() for p in jobs[1].past)
    assert jobs[1].failed and (batch / jobs[1].output / "std.out").is_file()
