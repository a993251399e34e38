"""Monitoring cost: server calls per status sweep for batches of 1 to 10,000 jobs, part of them final."""
import io
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

import grid
from helpers import new_batch

ACTIVE = [grid.RECEIVED, grid.WAITING, grid.MATCHED, grid.RUNNING, grid.STALLED, grid.COMPLETED]
ENDED = [grid.DONE, grid.FAILED, grid.KILLED, grid.DELETED]


class CountingBackend(grid.Backend):
    """Counts status calls and the ids in each; jobs in `ending` answer Done, the others Running."""

    name = "counting"

    def __init__(self, ending: frozenset = frozenset()) -> None:
        self.calls: list[list[int]] = []
        self.ending = ending

    def status(self, ids):
        self.calls.append(list(ids))
        return {i: grid.JobState(grid.DONE if i in self.ending else grid.RUNNING, "") for i in ids}


def batch_with(batch: Path, statuses: list) -> grid.Store:
    """A submitted batch whose job i has DIRAC id 5000 + i and status statuses[i - 1]."""
    jobs = [grid.Job(num=i, name=f"j{i}", status=status, dirac_id=5000 + i, ids=[5000 + i], attempts=1)
            for i, status in enumerate(statuses, 1)]
    return new_batch(batch, jobs, {"tag": "grid-count", "backend": "counting"}, [b""] * len(jobs), "watch")


def mixed_statuses(total: int) -> list:
    """Every third job final, the others spread over the statuses that are still watched."""
    return [ENDED[i % len(ENDED)] if i % 3 == 2 else ACTIVE[i % len(ACTIVE)] for i in range(total)]


@pytest.mark.parametrize("total", [1, 1000, 2500, 10_000])
def test_a_sweep_asks_each_open_job_once_in_calls_of_at_most_1000(batch, total):
    statuses = mixed_statuses(total)
    open_ids = {5000 + i for i, s in enumerate(statuses, 1) if not grid.is_final(s)}
    store = batch_with(batch, statuses)
    backend = CountingBackend()
    engine = grid.Engine(store, backend, grid.Display(io.StringIO()), batch)
    engine.sweep()
    store.close()
    asked = [job_id for call in backend.calls for job_id in call]
    assert len(backend.calls) == math.ceil(len(open_ids) / grid.BULK_STATUS_MAX)
    assert all(len(call) <= grid.BULK_STATUS_MAX for call in backend.calls)
    assert sorted(asked) == sorted(open_ids)            # each open job once; no final job at all


def test_jobs_that_end_in_a_sweep_are_not_asked_about_in_the_next(batch):
    statuses = mixed_statuses(2500)                     # 1667 open: two calls
    open_ids = sorted(5000 + i for i, s in enumerate(statuses, 1) if not grid.is_final(s))
    store = batch_with(batch, statuses)
    backend = CountingBackend(ending=frozenset(open_ids[:1000]))
    engine = grid.Engine(store, backend, grid.Display(io.StringIO()), batch)
    engine.sweep()
    first = len(backend.calls)
    engine.sweep()
    store.close()
    assert first == 2
    assert backend.calls[first:] == [open_ids[1000:]]   # 667 left: one call, only them


def test_a_sweep_with_nothing_open_makes_no_call(batch):
    store = batch_with(batch, [ENDED[i % len(ENDED)] for i in range(2500)])
    backend = CountingBackend()
    engine = grid.Engine(store, backend, grid.Display(io.StringIO()), batch)
    engine.sweep()
    store.close()
    assert backend.calls == []


class FakeMonitoring:
    """DIRAC's JobMonitoringClient as the dirac backend uses it, with a server's answers in `jobs`."""

    def __init__(self, jobs: dict) -> None:
        self.jobs, self.calls = jobs, []

    def getJobsStates(self, ids):
        self.calls.append(("getJobsStates", list(ids)))
        return {"OK": True, "Value": {i: {"Status": self.jobs[i][0], "MinorStatus": "m", "ApplicationStatus": "a"}
                                      for i in ids if i in self.jobs}}

    def getJobsSites(self, ids):
        self.calls.append(("getJobsSites", list(ids)))
        return {"OK": True, "Value": {i: {"Site": self.jobs[i][1]} for i in ids}}

    def getJobsSummary(self, ids):
        self.calls.append(("getJobsSummary", list(ids)))
        return {"OK": True, "Value": {i: {"Status": self.jobs[i][0], "Site": self.jobs[i][1],
                                          "LastUpdateTime": "2026-01-02 03:04:05"} for i in ids}}


def dirac_backend(monkeypatch, fake: FakeMonitoring) -> "grid.DiracBackend":
    """The dirac backend talking to a fake JobMonitoring, with a valid proxy."""
    backend = grid.DiracBackend()
    backend._clients = lambda: SimpleNamespace(monitoring=fake)           # in every thread of the pool
    monkeypatch.setattr(backend, "proxy_seconds_left", lambda: 3600.0)
    return backend


def test_the_dirac_backend_asks_sites_only_of_jobs_that_were_just_matched_or_later(monkeypatch):
    server = {i: (grid.WAITING, "ANY") for i in range(1, 1001)}
    fake = FakeMonitoring(server)
    backend = dirac_backend(monkeypatch, fake)
    first = backend.status(list(range(1, 1001)))
    assert [name for name, _ in fake.calls] == ["getJobsStates"]           # all Waiting: no site to ask
    assert {s.site for s in first.values()} == {None}                      # not asked: unchanged
    for i in range(1, 11):
        server[i] = (grid.RUNNING, "LCG.CERN.cern")
    server[11] = (grid.DONE, "LCG.RAL.uk")
    del server[12]                                                         # cleaned away on the server
    server[13] = (grid.KILLED, "ANY")                                      # killed before it ran
    fake.calls.clear()
    second = backend.status(list(range(1, 1001)))
    assert fake.calls[1] == ("getJobsSites", list(range(1, 11)))            # not 12 (gone), not 13 (killed)
    assert fake.calls[2] == ("getJobsSummary", [11])                        # ended: once, with its end time
    assert [second[i].site for i in (1, 10, 11)] == ["LCG.CERN.cern"] * 2 + ["LCG.RAL.uk"]
    assert second[11].ended == grid.utc_timestamp("2026-01-02 03:04:05") and second[1].ended == 0
    assert second[12].status == grid.DELETED
    fake.calls.clear()
    third = backend.status(list(range(1, 11)) + list(range(14, 1001)))     # nothing moved since
    assert [name for name, _ in fake.calls] == ["getJobsStates"]
    assert third[1].site == "LCG.CERN.cern"                                # the site it was told before


def test_a_job_caught_between_the_updates_of_its_end_gets_how_it_ended(monkeypatch):
    """Seen on the lab's real WMS: getJobsStates said Done with the minor status of the step before
    ("Output Sandbox Uploaded"); the record read next has the last word, and a Done job is never
    asked about again."""
    class Racing(FakeMonitoring):
        def getJobsStates(self, ids):
            self.calls.append(("getJobsStates", list(ids)))
            return {"OK": True, "Value": {7: {"Status": grid.DONE, "MinorStatus": "Output Sandbox Uploaded",
                                              "ApplicationStatus": "echo successful"}}}

        def getJobsSummary(self, ids):
            summary = super().getJobsSummary(ids)
            summary["Value"][7].update(MinorStatus="Execution Complete", ApplicationStatus="echo successful")
            return summary

    backend = dirac_backend(monkeypatch, Racing({7: (grid.DONE, "DIRAC.Lab.local")}))
    state = backend.status([7])[7]
    assert (state.status, state.minor, state.app) == (grid.DONE, "Execution Complete", "echo successful")


def test_a_job_killed_on_the_server_keeps_the_site_it_ran_at(batch, monkeypatch):
    store = batch_with(batch, [grid.RUNNING, grid.WAITING])
    jobs = store.jobs()
    jobs[1].site = "LCG.CERN.cern"
    store.save(jobs[1])
    fake = FakeMonitoring({5001: (grid.KILLED, "ANY"), 5002: (grid.KILLED, "ANY")})
    backend = dirac_backend(monkeypatch, fake)                             # a new process: knows nothing yet
    engine = grid.Engine(store, backend, grid.Display(io.StringIO()), batch)
    engine.sweep()
    store.close()
    assert [name for name, _ in fake.calls] == ["getJobsStates"]
    assert [(j.status, j.site) for j in engine.batch.jobs.values()] == [(grid.KILLED, "LCG.CERN.cern"), (grid.KILLED, "")]
