"""The engine with a scripted backend: bulk polling of active jobs only, retries, bounded failures."""
import io
import time

import gevent
import pytest

import grid
from helpers import PATH, Crash, ScriptedBackend, make_engine

pytestmark = pytest.mark.usefixtures("fast_backoff")


def test_every_job_is_submitted_once_and_ends_downloaded(batch):
    backend = ScriptedBackend(end=lambda i: grid.FAILED if i % 10 == 0 else grid.DONE)
    engine = make_engine(batch, 50, backend)
    jobs = engine.run()
    engine.batch.store.close()
    assert sorted(backend.submitted) == sorted(f"grid-test.{n}.1" for n in range(1, 51))
    assert all(grid.is_final(j.status) and j.output for j in jobs.values())
    assert len(list((batch / "succeeded").iterdir())) == 45
    assert len(list((batch / "failed").iterdir())) == 5
    assert all(count == 1 for count in backend.fetches.values())


def test_status_calls_ask_only_active_jobs_in_chunks_of_at_most_1000(batch):
    backend = ScriptedBackend()
    engine = make_engine(batch, 2500, backend, parallel=64)
    engine.run()
    engine.batch.store.close()
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
    engine = grid.Engine(engine.batch.store, backend, grid.Display(io.StringIO()), batch, interval=0.001)
    engine.run()
    engine.batch.store.close()
    assert len(backend.status_calls) == calls


def test_server_outage_is_one_line_and_watch_recovers(batch):
    backend = ScriptedBackend(status_failures=5)
    engine = make_engine(batch, 3, backend)
    out = engine.display.out
    jobs = engine.run()
    engine.batch.store.close()
    text = out.getvalue()
    assert text.count("server unreachable since") == 1
    assert "server reachable again" in text
    assert all(j.status == grid.DONE for j in jobs.values())


def test_submission_is_retried_after_errors(batch):
    backend = ScriptedBackend(submit_failures=3)
    engine = make_engine(batch, 2, backend, parallel=1)
    jobs = engine.run()
    engine.batch.store.close()
    assert all(j.attempts == 1 and j.status == grid.DONE for j in jobs.values())


def test_one_bad_download_does_not_stop_the_others_and_is_reported(batch):
    backend = ScriptedBackend(fetch_failures=lambda i: 99 if i == 1001 else 0)
    engine = make_engine(batch, 4, backend)
    jobs = engine.run()
    engine.batch.store.close()
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
    engine.batch.store.close()
    assert elapsed < 16 * 0.2 / 3                   # the 16 submissions overlapped
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert max(gaps) < 0.15                          # and the loop never stalled for a whole call


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
            engine.batch.store.close()
            store = grid.Store.open(batch, "watch")          # a restart, from what is on disk
            engine = grid.Engine(store, backend, grid.Display(io.StringIO()), batch,
                                 interval=0.001, parallel=1)
    engine.batch.store.close()
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
    engine.batch.store.close()
    assert len(backend.server) == 3
    assert sorted(j.dirac_id for j in jobs.values()) == sorted(backend.server)


# -- faults the real server cannot produce on demand: an expiring proxy, outages of every call --------

class ProxyBackend(ScriptedBackend):
    """A backend with a grid proxy the test lets expire and renews; calls with an expired one fail."""

    def __init__(self, left=86400.0, expire_after_submissions=None, **kw):
        super().__init__(**kw)
        self.left, self.expire_after = left, expire_after_submissions
        self.refused = 0                                    # calls that met the expired proxy

    def proxy_seconds_left(self):
        return self.left

    def _check(self):
        if self.left <= grid.PROXY_MIN_LEFT:
            self.refused += 1
            raise grid.ProxyExpired("the grid proxy has expired")

    def submit(self, spec, tag):
        self._check()
        job_id = super().submit(spec, tag)
        if self.expire_after is not None and len(self.server) == self.expire_after:
            self.left = 0.0
        return job_id

    def status(self, ids):
        self._check()
        return super().status(ids)

    def fetch_output(self, job_id, dest):
        self._check()
        super().fetch_output(job_id, dest)


@pytest.fixture
def fast_proxy_poll(monkeypatch):
    monkeypatch.setattr(grid, "PROXY_POLL", 0.01)


def renew_later(backend, seconds=0.3):
    def renew():
        backend.left = 86400.0
    return gevent.spawn_later(seconds, renew)


def test_an_expired_proxy_pauses_everything_in_one_line_and_a_fresh_one_resumes(batch, fast_proxy_poll):
    backend = ProxyBackend(expire_after_submissions=5)
    engine = make_engine(batch, 30, backend, parallel=4)
    renew_later(backend)
    jobs = engine.run()
    engine.batch.store.close()
    text = engine.display.out.getvalue()
    assert text.count("grid proxy expired: paused") == 1
    assert "dirac-proxy-init -v 24:00" in text
    assert text.count("grid proxy renewed") == 1
    assert "server unreachable" not in text and "(try" not in text
    assert sorted(backend.submitted) == sorted(f"grid-test.{n}.1" for n in range(1, 31))   # once each
    assert all(j.status == grid.DONE and j.output and j.attempts == 1 for j in jobs.values())
    assert backend.refused <= 4                 # the calls already on their way, then nothing until renewed


def test_a_proxy_expiring_while_watching_pauses_status_and_downloads(batch, fast_proxy_poll):
    class SlowFetch(ProxyBackend):
        def fetch_output(self, job_id, dest):
            gevent.sleep(0.01)                           # downloads take a while, as real ones do
            super().fetch_output(job_id, dest)

    backend = SlowFetch()
    engine = make_engine(batch, 40, backend)

    def expire_when_some_are_done():
        while not any(j.output for j in engine.batch.jobs.values()):
            gevent.sleep(0.001)
        backend.left = 0.0
        renew_later(backend, 0.2)

    gevent.spawn(expire_when_some_are_done)
    jobs = engine.run()
    engine.batch.store.close()
    text = engine.display.out.getvalue()
    assert text.count("grid proxy expired: paused") == 1 and text.count("grid proxy renewed") == 1
    assert all(j.output and j.download_tries == 0 for j in jobs.values())
    assert backend.refused <= 1 + grid.DOWNLOAD_PARALLEL


def test_a_proxy_about_to_expire_is_warned_about_once(batch, fast_proxy_poll):
    backend = ProxyBackend(left=1800.0)
    engine = make_engine(batch, 3, backend, interval=0.02)
    engine.run()
    engine.batch.store.close()
    text = engine.display.out.getvalue()
    assert text.count("grid proxy expires in 30 min") == 1
    assert "paused" not in text


def test_submission_refused_when_the_proxy_would_expire_before_the_last_job_is_sent():
    short = ProxyBackend(left=1000.0)
    with pytest.raises(grid.BackendError) as refused:
        grid.ensure_proxy_lasts(short, pending=3000, parallel=16)
    assert "16 min left" in refused.value.message and "3000 job(s)" in refused.value.message
    assert "nothing was submitted" in refused.value.message
    assert refused.value.fix.startswith("renew it first: `dirac-proxy-init -v 24:00`")
    grid.ensure_proxy_lasts(short, pending=10, parallel=16)          # a few jobs fit in 16 minutes
    grid.ensure_proxy_lasts(short, pending=0, parallel=16)           # nothing left to submit
    grid.ensure_proxy_lasts(ScriptedBackend(), pending=10 ** 6, parallel=1)   # no proxy at all


class Unreachable(ScriptedBackend):
    """The first `down` calls of each kind find no server at all."""

    def __init__(self, down=12, **kw):
        super().__init__(**kw)
        self.down = {"submit": down, "fetch": down}

    def _outage(self, kind):
        if self.down[kind]:
            self.down[kind] -= 1
            raise grid.ServerUnreachable("[Errno 111] Connection refused")

    def submit(self, spec, tag):
        self._outage("submit")
        return super().submit(spec, tag)

    def fetch_output(self, job_id, dest):
        self._outage("fetch")
        super().fetch_output(job_id, dest)


def test_an_outage_costs_no_submission_or_download_tries_and_is_one_line(batch):
    backend = Unreachable(down=3 * grid.SUBMIT_ATTEMPTS)
    engine = make_engine(batch, 4, backend, parallel=1)
    jobs = engine.run()
    engine.batch.store.close()
    text = engine.display.out.getvalue()
    assert all(j.status == grid.DONE and j.output and j.download_tries == 0 for j in jobs.values())
    assert sorted(backend.submitted) == sorted(f"grid-test.{n}.1" for n in range(1, 5))
    assert "(try" not in text                                   # no line per job and try
    assert text.count("server unreachable since") == 2          # the submission outage, the download one
    assert text.count("server reachable again") == 2


class Ended(ScriptedBackend):
    """Final jobs ended `age` seconds ago on the server; their outputs cannot be fetched."""

    name = "cleaning"

    def __init__(self, age, **kw):
        super().__init__(fetch_failures=lambda job_id: 99, **kw)
        self.age = age

    def status(self, ids):
        states = super().status(ids)
        for state in states.values():
            if grid.is_final(state.status):
                state.ended = time.time() - self.age
        return states


def test_outputs_about_to_be_cleaned_on_the_server_are_warned_about_loudly_once(batch, monkeypatch):
    monkeypatch.setattr(grid, "CLEANED_AFTER", {"cleaning": 7 * 86400.0})
    engine = make_engine(batch, 5, Ended(age=6 * 86400.0), interval=0.005)
    jobs = engine.run()
    text = engine.display.out.getvalue()
    assert all(not j.output for j in jobs.values())
    warnings = [line for line in text.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, warnings         # once, though the count was checked every sweep
    assert "outputs of 5 job(s) not downloaded yet" in warnings[0]
    assert "about 7 days after the job ends, the first in 1.0 day(s)" in warnings[0]
    # the next watch warns again at once, and tries every missing output again
    engine.backend.fetch_failures = lambda job_id: 0
    engine = grid.Engine(engine.batch.store, engine.backend, grid.Display(io.StringIO()), batch, interval=0.005)
    jobs = engine.run()
    engine.batch.store.close()
    assert "WARNING: outputs of 5 job(s)" in engine.display.out.getvalue()
    assert all(j.output for j in jobs.values())


def test_recent_or_downloaded_outputs_and_backends_that_keep_them_are_not_warned_about(batch, monkeypatch):
    monkeypatch.setattr(grid, "CLEANED_AFTER", {**grid.CLEANED_AFTER, "cleaning": 7 * 86400.0})
    engine = make_engine(batch, 3, Ended(age=2 * 86400.0), interval=0.005)
    engine.run()
    engine.batch.store.close()
    assert "WARNING" not in engine.display.out.getvalue()
    jobs = [grid.Job(num=1, name="a", status=grid.DONE, dirac_id=7, ended=time.time() - 6 * 86400)]
    assert grid.outputs_at_risk(jobs, "local", time.time()) == (0, 0.0)
    assert grid.outputs_at_risk(jobs, "dirac", time.time())[0] == 1
    jobs[0].output = "succeeded/00001_a"
    assert grid.outputs_at_risk(jobs, "dirac", time.time())[0] == 0


def test_failed_calls_in_the_threadpool_print_no_tracebacks(batch, capfd):
    class Threaded(ScriptedBackend):
        threaded = True

    engine = make_engine(batch, 3, Threaded(status_failures=3, submit_failures=2))
    jobs = engine.run()
    engine.batch.store.close()
    assert all(j.status == grid.DONE for j in jobs.values())
    assert "Traceback" not in capfd.readouterr().err


class SlowThreadedBackend(ScriptedBackend):
    """Submission calls run in the threadpool and take a while, as DIRAC's do."""

    threaded = True

    def submit(self, spec, tag):
        import time
        time.sleep(0.05)
        return super().submit(spec, tag)


def test_a_resubmitted_job_is_submitted_once_even_when_calls_overlap(batch):
    backend = SlowThreadedBackend(end=lambda i: grid.FAILED if backend.server[i] == "grid-test.1.1" else grid.DONE)
    engine = make_engine(batch, 4, backend)             # (the 4 calls overlap: which comes first varies)
    engine.run()
    assert engine.batch.jobs[1].failed
    engine = grid.Engine(engine.batch.store, backend, grid.Display(io.StringIO()), batch, interval=0.001)
    engine.batch.resubmit(engine.batch.jobs[1])                 # as `grid resubmit 1` does, before the run
    jobs = engine.run()
    engine.batch.store.close()
    assert backend.submitted.count("grid-test.1.2") == 1
    first = next(job_id for job_id, tag in backend.server.items() if tag == "grid-test.1.1")
    assert jobs[1].ids == [first, 1005] and jobs[1].attempts == 2 and jobs[1].status == grid.DONE


class SyncedWrites:
    """The engine's database, counting its synced writes and keeping what each last wrote per key:
    what would be left on disk if the machine went down now."""

    def __init__(self, db):
        self.db, self.syncs, self.on_disk = db, 0, {}

    def __getattr__(self, name):
        return getattr(self.db, name)

    def put(self, key, value, sync=False):
        self.db.put(key, value, sync=sync)
        self.synced({key: value}, sync)

    def write_batch(self, transaction=False, sync=False):
        return RecordedBatch(self, sync)

    def synced(self, pairs, sync):
        if sync:
            self.syncs += 1
            self.on_disk.update(pairs)

    def record(self, num):
        return grid.Job.from_record(self.on_disk[grid.job_key(num)])


class RecordedBatch(dict):
    def __init__(self, db, sync):
        super().__init__()
        self.db, self.sync = db, sync

    put = dict.__setitem__

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        if kind is None:
            with self.db.db.write_batch(transaction=True, sync=self.sync) as batch:
                for key, value in self.items():
                    batch.put(key, value)
            self.db.synced(self, self.sync)


class DiskCheckingBackend(SlowThreadedBackend):
    """Notes every submission whose tag was not on disk, synced, when its call was sent."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.disk, self.unsynced = None, []

    def submit(self, spec, tag):
        num = int(tag.split(".")[-2])
        if grid.job_key(num) not in self.disk.on_disk or self.disk.record(num).intent != tag:
            self.unsynced.append(tag)
        return super().submit(spec, tag)


def test_concurrent_submissions_share_syncs_and_each_tag_is_on_disk_before_its_call(batch):
    backend = DiskCheckingBackend()
    engine = make_engine(batch, 200, backend, parallel=64)
    backend.disk = engine.batch.store.db = SyncedWrites(engine.batch.store.db)
    jobs = engine.run(watch=False)
    engine.batch.store.close()
    assert len(backend.server) == 200 and backend.unsynced == []
    # one sync per job and call before; now the tags of a wave share one, and the ids that come back
    # while the loop is busy share one (how many come together depends on the threads' timing)
    assert backend.disk.syncs < 2 * 200 / 4
    assert all(backend.disk.record(num).dirac_id == job.dirac_id > 0 for num, job in jobs.items())


def test_a_submission_counted_as_done_has_its_id_on_disk(batch):
    backend = DiskCheckingBackend()
    engine = make_engine(batch, 20, backend, parallel=8)
    disk = backend.disk = engine.batch.store.db = SyncedWrites(engine.batch.store.db)
    record = engine.batch.record_submission
    unsynced_ids = []

    def recorded_then_checked(job, job_id, save=True):
        record(job, job_id, save)
        if save and disk.record(job.num).dirac_id != job_id:
            unsynced_ids.append(job.num)

    engine.batch.record_submission = recorded_then_checked
    engine.run(watch=False)
    engine.batch.store.close()
    assert len(backend.server) == 20 and backend.unsynced == [] and unsynced_ids == []


def test_retries_stop_at_n_and_keep_every_attempt(batch):
    backend = ScriptedBackend(end=lambda i: grid.FAILED)
    engine = make_engine(batch, 1, backend, retries=2)
    jobs = engine.run()
    engine.batch.store.close()
    assert jobs[1].attempts == 3 and len(jobs[1].ids) == 3 and len(jobs[1].past) == 2
    assert [p["output"] for p in jobs[1].past] == ["retried/00001_job-1.1", "retried/00001_job-1.2"]
    assert all((batch / p["output"] / "std.out").is_file() for p in jobs[1].past)
    assert jobs[1].failed and (batch / jobs[1].output / "std.out").is_file()


def test_live_footer_figures_follow_the_jobs_through_failures_retries_and_downloads(batch):
    backend = ScriptedBackend(end=lambda i: grid.FAILED if i == 1001 else grid.DONE)
    engine = make_engine(batch, 4, backend, retries=1)
    jobs = engine.run()
    engine.batch.store.close()
    shown = engine.progress()
    assert shown.total == 4 and shown.final == sum(grid.is_final(j.status) for j in jobs.values()) == 4
    assert shown.failed == sum(j.failed for j in jobs.values())
    assert shown.submitted == 4 and shown.downloaded == sum(bool(j.output) for j in jobs.values()) == 4
    assert shown.counts == grid.column_counts(j.status for j in jobs.values())
