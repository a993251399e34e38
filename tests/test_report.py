"""`grid report`: one self-contained HTML page whose numbers are the batch's, drawn in a real browser."""
import collections
import html.parser
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import grid
from helpers import EXAMPLES, ROOT, ScriptedBackend, grid_cmd, make_engine, write

# Two reasons to fail (a step that exits 3, a program that does not exist), each retried once by
# --retries 1 and failing again; one job that fails with exit 3 the first time and is Done the second.
JOBS = """\
for i in range(2):
    j = Job()
    j.setName(f'exits-3-{{i}}')
    j.setExecutable('/bin/sh', arguments='-c "exit 3"')
    submit(j)
j = Job()
j.setName('missing')
j.setExecutable('no-such-program-xyz')
submit(j)
j = Job()
j.setName('flaky')
j.setExecutable('/bin/sh', arguments='-c "test -e {marker} || {{ touch {marker}; exit 3; }}"')
submit(j)
for i in range(2):
    j = Job()
    j.setName(f'fine-{{i}}')
    j.setExecutable('echo Hello')
    submit(j)
"""
EXIT_3 = "Failed: Application Finished With Errors / sh Exited With Status 3"


class PageData(html.parser.HTMLParser):
    """Every element of the page with data-* attributes, the page's elements by tag, and its text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.data: list[dict] = []
        self.tags: collections.Counter = collections.Counter()
        self.references: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags[tag] += 1
        attributes = dict(attrs)
        found = {name[5:]: value for name, value in attributes.items() if name.startswith("data-")}
        if found:
            self.data.append({"tag": tag, **found})
        self.references += [value for name, value in attributes.items()
                            if name in ("src", "href", "xlink:href", "srcset", "action", "poster")
                            and not value.startswith("#")]              # within the page is fine

    def having(self, key: str) -> list[dict]:
        return [item for item in self.data if key in item]


def run(batch: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(grid_cmd(*args), cwd=batch, capture_output=True, text=True, timeout=timeout)


def report(batch: Path) -> tuple[str, PageData]:
    result = run(batch, "report")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"report written to {batch / 'report.html'}\n"
    page = (batch / "report.html").read_text()
    return page, PageData(page)


def assert_valid_page(page: str, data: PageData) -> None:
    """One document, five plots drawn inline, nothing fetched from anywhere."""
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert data.tags["svg"] == 5 and data.tags["figure"] == 5 and data.tags["html"] == 1
    assert data.references == []                       # no src=, href= ... outside the page
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"url\((?!#)", page)          # clip paths point within the page only
    assert "<script" not in page and "<link" not in page and "<img" not in page


@pytest.fixture(scope="module")
def retried(tmp_path_factory) -> Path:
    """A finished local batch with two failure reasons and retried jobs, and its report."""
    batch = tmp_path_factory.mktemp("report") / "batch"
    batch.mkdir()
    write(batch / "jobs.py", JOBS.format(marker=batch / "flaky-ran-once"))
    result = run(batch, "submit", "--backend", "local", "--retries", "1", "jobs.py")
    assert result.returncode == grid.EXIT_JOBS_FAILED, result.stdout + result.stderr
    return batch


def cell_numbers(page: str, key: str) -> dict:
    """{value of data-KEY: the number the cell shows} for the summary's cells."""
    found = {}
    for chunk in page.split(f'data-{key}="')[1:]:
        name, rest = chunk.split('"', 1)
        found[name] = int(rest.split(">", 1)[1].split("<", 1)[0])
    return found


def test_the_page_holds_the_numbers_of_status_and_failures(retried):
    page, data = report(retried)
    assert_valid_page(page, data)
    status = json.loads(run(retried, "status", "--json").stdout)
    failures = json.loads(run(retried, "failures", "--json").stdout)
    jobs = status["jobs"]
    assert status["summary"]["Done"] == 3 and status["summary"]["Failed"] == 3     # the batch is as meant

    assert cell_numbers(page, "column") == status["summary"]
    facts = {item["fact"]: item for item in data.having("fact")}
    assert set(facts) >= {"tag", "backend", "created", "jobs", "attempts", "outputs", "size"}
    assert f'data-fact="jobs">{len(jobs)}<' in page
    assert f'data-fact="attempts">{sum(j["attempts"] for j in jobs)}<' in page
    assert f'data-fact="outputs">6 of 6 final<' in page and f'data-fact="backend">local<' in page

    sites = {item["site"]: (int(item["done"]), int(item["failed"])) for item in data.having("site")}
    expected = collections.Counter()
    for job in jobs:
        if job["status"] == "Done":
            expected[job["site"], "done"] += 1
        elif job["status"] in ("Failed", "Killed", "Deleted"):
            expected[job["site"], "failed"] += 1
    assert sites == {site: (expected[site, "done"], expected[site, "failed"]) for site, _ in expected}
    reasons = {item["reason"]: int(item["count"]) for item in data.having("reason") if item["tag"] == "li"}
    assert reasons == {group["reason"]: group["sites"]["Local"] for group in failures["groups"]}
    assert len(reasons) == 2 and reasons[EXIT_3] == 2

    attempts = {int(item["attempts"]): int(item["jobs"]) for item in data.having("attempts") if item["tag"] == "tr"
                and "jobs" in item}
    assert attempts == dict(collections.Counter(job["attempts"] for job in jobs)) == {1: 2, 2: 4}
    retried_reasons = {item["reason"]: (int(item["retried"]), int(item["stopped"]), int(item["recovered"]))
                       for item in data.having("retried")}
    past = collections.Counter(attempt["reason"] for job in jobs for attempt in job["past"])
    stopped = {group["reason"]: group["count"] for group in failures["groups"]}
    assert {reason: counts[:2] for reason, counts in retried_reasons.items()} == \
        {reason: (past[reason], stopped[reason]) for reason in past}
    assert retried_reasons[EXIT_3] == (3, 2, 1)          # the flaky job failed so once, and is Done now


def test_the_page_over_time_ends_with_the_summary_and_counts_every_ended_attempt(retried):
    page, data = report(retried)
    status = json.loads(run(retried, "status", "--json").stdout)
    times = data.having("counts")
    assert len(times) == grid.REPORT_TABLE_ROWS
    last = [int(n) for n in times[-1]["counts"].split()]
    assert last == [status["summary"][name] for name in grid.COLUMN_NAMES]
    assert all(sum(map(int, item["counts"].split())) == len(status["jobs"]) for item in times)
    ended = sum(int(item["done"]) + int(item["failed"]) for item in data.having("done") if item["tag"] == "tr"
                and "site" not in item and "attempts" not in item)
    assert ended == sum(job["attempts"] for job in status["jobs"])       # every attempt ended once
    throughput = data.having("running")[0]
    assert throughput["running"] == "0" and throughput["left"] == ""
    spans = {item["times"]: int(item["attempts"]) for item in data.having("times")}
    assert 0 < spans["running"] <= 10 and 0 < spans["waiting"] <= 10


def chromium(page: Path, out: Path) -> tuple[Path, list[str]]:
    """Open the page in headless Chromium, in a network namespace of its own (nothing can leave it);
    return its screenshot and every http(s) address the page asked for (Chromium's network log)."""
    shot, netlog = out / "shot.png", out / "net.json"
    command = ["unshare", "--net", "--", "chromium", "--headless", "--no-sandbox", "--disable-gpu",
               "--hide-scrollbars", "--no-first-run", "--disable-background-networking", "--disable-sync",
               "--disable-component-update", "--host-resolver-rules=MAP * ~NOTFOUND",
               f"--user-data-dir={out / 'profile'}", "--window-size=1100,1600", f"--screenshot={shot}",
               f"--log-net-log={netlog}", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    log = json.loads(netlog.read_text())
    kinds = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    asked = [event["params"]["url"] for event in log["events"]
             if kinds[event["type"]] == "URL_REQUEST_START_JOB"
             and "file://" in event["params"].get("network_isolation_key", "")]  # the page's, not the browser's
    return shot, asked


# In CI (where `bash setup.sh test` installs chromium) it always runs; elsewhere it needs chromium and root.
needs_chromium = pytest.mark.skipif(
    not os.environ.get("CI") and (not shutil.which("chromium") or not shutil.which("unshare") or os.geteuid()),
    reason="needs Debian's chromium and root for a network namespace (bash setup.sh test installs it)")


def pixels_like(shot: Path, color: str) -> int:
    from PIL import Image
    want = tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))
    image = Image.open(shot).convert("RGB")
    return sum(n for n, rgb in image.getcolors(1 << 24) if all(abs(a - b) < 12 for a, b in zip(rgb, want)))


@needs_chromium
def test_the_page_renders_in_a_real_browser_with_its_plots_and_asks_for_nothing(retried, tmp_path):
    report(retried)
    control = write(tmp_path / "control.html", '<!DOCTYPE html><img src="http://127.0.0.1:9/x.png">')
    (tmp_path / "control").mkdir()
    _, asked = chromium(control, tmp_path / "control")
    assert asked == ["http://127.0.0.1:9/x.png"]       # the log does show what a page asks for
    (tmp_path / "report").mkdir()
    shot, asked = chromium(retried / "report.html", tmp_path / "report")
    assert asked == []
    from PIL import Image
    image = Image.open(shot).convert("RGB")
    assert image.size == (1100, 1600)
    assert len(image.getcolors(1 << 24)) > 50             # not blank: text, axes, colours
    assert pixels_like(shot, grid.DONE_COLOR) > 2000      # the plots are drawn: green for Done ...
    assert pixels_like(shot, grid.FAILED_COLOR) > 100     # ... red for failed
    assert pixels_like(shot, grid.COLUMN_COLORS[2]) > 500  # ... and the Waiting area over time


def test_a_batch_of_one_job_makes_a_valid_page(batch):
    assert run(batch, "submit", "--backend", "local", EXAMPLES / "hello.py").returncode == 0
    page, data = report(batch)
    assert_valid_page(page, data)
    assert cell_numbers(page, "column")["Done"] == 1
    assert [(item["site"], item["done"], item["failed"]) for item in data.having("site")] == [("Local", "1", "0")]
    assert "no attempt has failed" in page


SLOW = """\
j = Job()
j.setName('quick')
j.setExecutable('echo quick')
submit(j)
for i in range(2):
    j = Job()
    j.setName(f'slow-{{i}}')
    j.setExecutable('/bin/sh', arguments='-c "while [ ! -e {release} ]; do sleep 0.1; done"')
    submit(j)
"""


def wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_running_batch_makes_a_valid_page_and_watch_report_keeps_it_to_the_end(batch, tmp_path):
    release = tmp_path / "release"
    write(batch / "jobs.py", SLOW.format(release=release))
    watch = subprocess.Popen(grid_cmd("submit", "--backend", "local", "--report", "jobs.py"), cwd=batch,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        page_file = batch / "report.html"
        wait_for(page_file.exists)                    # written once as the watch starts
        wait_for(lambda: json.loads(run(batch, "status", "--json").stdout)["summary"]["Done"] == 1)
        page, data = report(batch)                   # beside the running watch, from a snapshot
        assert_valid_page(page, data)
        assert data.having("running")[0]["running"] == "1"
        assert cell_numbers(page, "column")["Done"] == 1
        assert '<meta http-equiv="refresh" content="60">' in page        # the tab reloads itself
        release.touch()
        out, err = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, err
    assert f"report: {page_file}, rewritten every 60 s" in out
    page = page_file.read_text()                      # the watch's last page: every job Done
    data = PageData(page)
    assert_valid_page(page, data)
    assert cell_numbers(page, "column")["Done"] == 3
    assert data.having("running")[0]["running"] == "0" and "http-equiv" not in page


def test_watch_report_rewrites_the_page_every_interval_and_at_the_end(batch, monkeypatch):
    monkeypatch.setattr(grid, "REPORT_EVERY", 0.005)       # far shorter than the run, however fast
    calls = []

    def final_jobs() -> None:
        calls.append(sum(1 for job in engine.batch.jobs.values() if grid.is_final(job.status)))
    engine = make_engine(batch, 20, ScriptedBackend(), interval=0.02, on_tick=final_jobs)
    engine.run()
    engine.batch.store.close()
    assert len(calls) >= 4                               # at the start, while running, at the end
    assert calls[0] == 0 and calls[-1] == 20


def test_a_report_that_cannot_be_written_is_said_once_and_the_watch_goes_on(batch):
    out = io.StringIO()
    writer = grid.report_writer(batch / "no-batch-here", grid.Display(out))
    for _ in range(3):
        writer()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "report not written: grid: error: no batch in" in lines[0]


def test_a_batch_of_100k_jobs_makes_a_small_page(tmp_path):
    """The scale bench's instant backend takes 100,000 jobs to Done; the page stays small."""
    batch = tmp_path / "big"
    batch.mkdir()
    n, now = 100_000, time.time()
    store = grid.Store.open(batch, "submit", create=True)
    jobs = (grid.Job(num=i, name=f"job-{i}", status=grid.RECEIVED, dirac_id=i, ids=[i], attempts=1,
                     history=[[grid.SUBMITTING, now], [grid.RECEIVED, now]]) for i in range(1, n + 1))
    store.create_batch({"tag": "grid-big", "backend": "instant", "created": now}, jobs, [b""] * n)
    store.close()
    watched = subprocess.run([sys.executable, str(ROOT / "bench" / "instant.py"), "watch", "--interval", "0.05"],
                             cwd=batch, capture_output=True, text=True, timeout=900)
    assert watched.returncode == 0, watched.stderr[-2000:]
    page, data = report(batch)
    assert_valid_page(page, data)
    assert cell_numbers(page, "column")["Done"] == n
    assert len(page.encode()) < 5_000_000
    spans = {item["times"]: int(item["attempts"]) for item in data.having("times")}
    assert spans == {"waiting": n, "running": n}
