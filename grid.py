#!/usr/bin/env python3
"""grid.py: submit, watch and download thousands of DIRAC grid jobs, concurrently, from one process.

Define jobs with DIRAC's Job API in a Python file; ``submit`` and ``Job`` are already defined there:

    j = Job()
    j.setExecutable('echo Hello World')
    j.setName('Test job')
    submit(j)

A directory is a batch. From a fresh one:

    python grid.py submit jobs.py            submit every job concurrently, then watch
    python grid.py submit --backend local jobs.py   run the same jobs on this machine first
    python grid.py watch                     resume watching and downloading
    python grid.py status [--json]           the summary and one line per job
    python grid.py resubmit --all            failed jobs again, as new DIRAC jobs (also: --retries N)
    python grid.py kill 3 7 | reschedule 3   kill jobs; run a job again under its DIRAC id
    python grid.py failures | why 3 | logs 3 failed jobs grouped by reason; one job; its stdout
    python grid.py export --csv - | list     every stored field per job; the batches under here
    python grid.py lfns --status Done        the output data LFNs, one per line (--data on submit/watch)
    python grid.py report                    the batch as one HTML page with plots (report.html)

Outputs of Done jobs land in ``succeeded/``, of Failed jobs in ``failed/``, one folder per job: the
output sandbox and the output data files (``setOutputData``), each verified against the catalogue.
Job state lives in a LevelDB database in ``.grid/`` inside the batch directory.

Sections, in dependency order, each using only those above it (``grep -n '^# ====' grid.py``):
Constants, Errors, Utilities, Statuses, Jobs, Store, Job files, Backends (the interface), DIRAC
backend, Local backend, Downloads, Batch (the jobs' state), Display (what grid.py prints while it
runs), Engine (greenlets, pools and every backend call), Report, Commands, main.
"""

import os
import signal
import sys


def interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C while Python imports gevent, plyvel and the rest (a few tenths of a second): nothing
    has been done yet, so say so in one line instead of a traceback of the import machinery."""
    sys.stderr.write("grid: interrupted while starting; nothing was done\n")
    sys.stderr.flush()
    os._exit(130)                              # EXIT_INTERRUPTED, defined below


IMPORT_TIME_SIGINT = signal.signal(signal.SIGINT, interrupted_while_starting)   # put back at the end

# Imports: only what every command needs. gevent and its monkey patching (most of a command's
# start-up in a DIRAC environment) come with the first command that runs the engine or calls a
# backend (use_gevent), DIRAC with the first call to it, the heavier standard modules where they
# are used: `grid --help` and `grid status` start in less than twice the time of `python -c pass`
# (bench/startup.py).
import argparse
import atexit
import bisect
import collections
import contextlib
import datetime
import fcntl
import fnmatch
import functools
import gc
import glob
import io
import itertools
import json
import marshal
import posixpath
import pwd
import random
import re
import shlex
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NoReturn, Optional

import plyvel

gevent: Any = None                   # the gevent package, once use_gevent() has run


def use_gevent() -> None:
    """Patch the standard library for gevent and import it: once per process, before DIRAC is imported.

    DIRAC's DISET client does its TLS I/O inside M2Crypto's C code, which no monkey patch can make
    cooperative: under a full patch_all() every DIRAC call would block the process. So threads stay
    real (thread=False): DIRAC calls run in gevent's threadpool and overlap, while greenlets
    orchestrate them and everything else (sockets, sleeps, subprocesses) cooperates.
    """
    global gevent
    if gevent is not None:
        return
    from gevent import monkey
    patch_all_once_looked_up(monkey)
    import gevent.event
    import gevent.pool
    import gevent.queue
    close_directly_outside_the_loop(monkey)
    quiet_interrupts()


def patch_all_once_looked_up(monkey: Any) -> None:
    """monkey.patch_all(thread=False), with gevent's plugin look-ups answered once.

    For every module it patches, gevent asks importlib.metadata for its plugins' entry points, and
    each answer reads the metadata of every installed package: 21 reads, 0.2 s in a DIRAC
    environment. Nothing is installed meanwhile: one read serves them all.
    """
    import importlib.metadata
    look_up, everything = importlib.metadata.entry_points, []

    def answered_once(**selection: str) -> object:
        if not everything:
            everything.append(look_up())
        return everything[0].select(**selection)

    importlib.metadata.entry_points = answered_once
    try:
        monkey.patch_all(thread=False)
    finally:
        importlib.metadata.entry_points = look_up


def close_directly_outside_the_loop(monkey: Any) -> None:
    """os.close at once for directories, and for every descriptor outside the loop's thread.

    gevent (25.8 and later) defers closing non-regular files to the closing thread's event loop,
    through one table shared by all threads, so that a descriptor it watches is not pulled from
    under it. Directories are never watched, yet their closing waits too: shutil.rmtree of a large
    tree in the loop's thread (which does not run the loop meanwhile) then keeps one descriptor per
    directory open and fails with "Too many open files". The threadpool's threads seldom run their
    loop and race on that table: shutil.rmtree there fails with EBADF and leaks descriptors. Neither
    watches raw descriptors, so they close at once, as Python does.
    """
    gevent_close, os_close = os.close, monkey.get_original("os", "close")

    def close_fd(fd: int) -> None:
        if threading.current_thread() is not threading.main_thread() or is_directory(fd):
            os_close(fd)
        else:
            gevent_close(fd)

    os.close = close_fd


def is_directory(fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.fstat(fd).st_mode)
    except OSError:                            # not open: gevent's close raises as Python's would
        return False


def quiet_interrupts() -> None:
    """Ctrl-C while gevent's loop runs outside the engine (a sleep, a wait for a thread) is raised in
    the loop first, which prints it as a crash before handing it on to main(): it is no crash."""
    from gevent.hub import Hub
    if not issubclass(KeyboardInterrupt, Hub.NOT_ERROR):
        Hub.NOT_ERROR = (*Hub.NOT_ERROR, KeyboardInterrupt)


__version__ = "0.1.0"


# ==================================================================================================
# Constants
# ==================================================================================================

STATE_DIR = ".grid"                  # inside the batch directory: database, local jobs, temp files
SUCCEEDED_DIR = "succeeded"          # outputs of Done jobs
FAILED_DIR = "failed"                # outputs of every other final status
RETRIED_DIR = "retried"              # outputs of earlier attempts of resubmitted jobs
BACKENDS = ("dirac", "local")
DEFAULT_BACKEND = "dirac"
DEFAULT_PARALLEL = 64                # concurrent submissions (bench/submit.py: 2x the rate of 16 at 50 ms)
DOWNLOAD_PARALLEL = 8                # concurrent output downloads
BULK_STATUS_MAX = 1000               # job ids per status call (DIRAC answers thousands cheaply)
SWEEP_PARALLEL = 10                  # status calls of one sweep in flight at once (a service has 15 threads)
INTERVAL = {"dirac": 20.0, "local": 0.2}   # seconds between status sweeps
BACKOFF_MAX = 300.0                  # longest wait between retries of a failing server
SUBMIT_ATTEMPTS = 5                  # tries per job before its submission is reported as failed
DOWNLOAD_ATTEMPTS = 5                # tries per output before the download is reported as failed
FILES_PARALLEL = 4                   # files of one job downloading at once (within the download pool)
DISK_RESERVE = 256 * 2**20           # bytes of the batch's disk that downloads leave free (at most
DISK_RESERVE_SHARE = 0.05            # this share of a small disk)
DISK_POLL = 10.0                     # seconds between looks at the free space while downloads pause
DATA_CHOICES = ("all", "none")       # --data: which output data files are downloaded
LOCAL_POLL = 0.05                    # seconds between the local site's looks at its running jobs
LOCAL_SCAN_EVERY = 5.0               # seconds between its looks at every job, when nothing says to look
LOCAL_SITE_IDLE = 1.0                # seconds the local site stays with nothing to do before it exits
LOCAL_KILL_GRACE = 5.0               # seconds a killed local job gets after SIGTERM, before SIGKILL
LOCAL_KILL_WAIT = 15.0               # seconds `kill` waits for the local site to record a job's end
ONCE_DEADLINE = 30.0                 # seconds a command that calls the server once waits out an outage
SNAPSHOT_TRIES = 5                   # copies of a busy database that `status` tries before giving up
WHY_TAIL_LINES = 20                  # lines of a job's stdout that `why` shows
TAIL_BYTES = 64 * 1024               # how much of the end of a file is read to find its last lines
LIST_DEPTH = 5                       # folder levels below FOLDER that `list` searches for batches
EXAMPLE_JOBS = 10                    # job numbers shown per group by `failures`
NOT_STARTED_STATUS = 1000            # exit status DIRAC's Script module gives a step it cannot start
JOB_TAG_ATTRIBUTE = "GridPyJob"      # JDL attribute "<batch tag>.<local number>.<attempt>"
CLEANING_CHECK_EVERY = 3600.0        # seconds between looks at every job's age (a batch may hold 100,000)
CLIENTS_MAX_AGE = 600.0              # seconds a thread reuses its DIRAC clients and SSL context
CALL_DEADLINE = 120.0                # seconds a DIRAC call may go unanswered (DISET's least; its default: 600)
CALL_DEADLINE_SPARE = 60.0           # ... then the engine gives up on it too (retries, connecting)
FIND_PARALLEL = 8                    # job descriptions read at once while looking for cut submissions
INIT_TRIES = 4                       # DIRAC.initialize() tries before the configuration server counts as gone
BUNDLE_LIMIT_FALLBACK = 20           # jobs per parametric job when the server's limit cannot be read
                                     # (DIRAC's own default for JobManager/MaxParametricJobs)
# Proxy: submitting starts only if the proxy outlasts the estimate below; watching pauses while it is
# expired. The estimate is deliberately pessimistic (measured: about 0.8 s per job and call slot at a
# 50 ms round trip; a busy server is several times slower).
SUBMIT_SECONDS_PER_JOB = 3.0         # per job and submission slot
PROXY_SUBMIT_MARGIN = 600.0          # seconds to spare on top of the estimate
PROXY_WARN_LEFT = 3600.0             # warn once when less than this is left while jobs are active
PROXY_MIN_LEFT = 10.0                # below this the proxy counts as expired: calls pause
PROXY_POLL = 5.0                     # seconds between looks at the proxy (a local file, no server call)
# DIRAC's JobCleaningAgent deletes final jobs, sandboxes included, this long after their last update
# (RemoveStatusDelay, 7 days by default); outputs still missing this long after the end are warned about.
CLEANED_AFTER = {"dirac": 7 * 86400.0}
CLEANING_WARN_AFTER = 5 * 86400.0
EXIT_WHEN = ("all-final", "all-done", "first-failure")   # when `watch` returns
SYSTEMATIC_SHARE = 0.5               # a reason failing more than this share of all attempts ...
SYSTEMATIC_MIN = 5                   # ... at least this often is not retried automatically
FOOTER_REFRESH = 0.5                 # seconds between redraws of the live footer
RATE_WINDOW = 300.0                  # seconds of finished jobs the live footer's rate looks at
CREATE_CHUNK = 1000                  # jobs per write while a new batch is written
STORE_FORMAT = 4                     # 1: job records as JSON objects (0.1.0); 2: marshal'd tuples;
                                     # 3: marshal'd tuples with the lists (history, ...) apart;
                                     # 4: and beside each record its line of `grid status`
NEW_DB_PREFIX = "new-db-"            # .grid/new-db-<pid>: a batch being created, moved to .grid/db when whole
REPORT_FILE = "report.html"          # `grid report`'s page, in the batch directory
REPORT_EVERY = 60.0                  # seconds between rewrites of the page by `watch --report`
REPORT_TIMEOUT = 600.0               # seconds `watch --report` gives one page before it stops waiting
REPORT_TIME_BINS = 120               # intervals of the plots over time
REPORT_TABLE_ROWS = 30               # rows of the table under the plot over time
REPORT_DURATION_BINS = 24            # bins of the waiting and running time distributions
REPORT_SHORTEST = 0.1                # seconds: shorter waits and runs are counted in the first bin
REPORT_SITES = 25                    # the busiest sites drawn (the table under the plot has every site)
REPORT_SITE_REASONS = 3              # failure reasons listed per site
REPORT_RATE_WINDOW = 3600.0          # seconds of ended attempts that the estimated time left looks at

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_JOBFILE, EXIT_BATCH, EXIT_BACKEND = 0, 1, 2, 3, 4, 5
EXIT_JOBS_FAILED = 6                 # watched to the end (or to --exit-when), and not every job is Done
EXIT_INTERRUPTED = 130


# ==================================================================================================
# Errors
# ==================================================================================================

class GridError(Exception):
    """A problem the user can fix: shown as one line and the fix, never as a traceback."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message, self.fix = message, fix


class JobFileError(GridError):
    """The job file cannot be run or submits something that is not a job; nothing is submitted."""

    exit_code = EXIT_JOBFILE


class BatchError(GridError):
    """The batch directory has no batch, holds one already, or is in use by another command."""

    exit_code = EXIT_BATCH


class BatchInUse(BatchError):
    """Another command holds the batch's database (LevelDB allows one process at a time)."""


class UsageError(GridError):
    """An argument names something the batch does not have (a job number, a folder), or the command
    needs a confirmation (--yes) it cannot ask for."""

    exit_code = EXIT_USAGE


class BackendError(GridError):
    """The backend cannot be used at all (no DIRAC configuration, no proxy)."""

    exit_code = EXIT_BACKEND


class CallFailed(GridError):
    """One backend call failed; the engine retries it later (server down, timeout, error reply).
    A command that calls the server once meets it through BackendCalls.once, which gives it the
    command's fix; it is a GridError so that none can reach the user as a traceback."""

    exit_code = EXIT_BACKEND


class BundleTooLarge(CallFailed):
    """The server refused a bundle for its size alone, before creating any job of it."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class ServerUnreachable(CallFailed):
    """The server did not answer at all (refused, timed out): an outage, not the job's fault, so it
    costs the job none of its tries."""


class ProxyExpired(CallFailed):
    """The grid proxy has expired or is gone: every call waits until a fresh one appears."""


class FileUnavailable(CallFailed):
    """A file on grid storage that cannot be had now (missing from storage, bad on every replica)."""


class DataIncomplete(CallFailed):
    """Some of a job's selected files could not be downloaded; the others are kept for the next try."""


# ==================================================================================================
# Utilities
# ==================================================================================================
# Small helpers that several layers below use: files written or removed safely, archives unpacked
# safely, calls whose failure is an answer, retries, lists in parts, times for people, the shell.

def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()                       # a disk full or a folder in the way leaves nothing behind
        raise


def remove_tree(path: Path) -> None:
    """shutil.rmtree without directory file descriptors, for the threadpool: gevent's os.close hands
    those to the calling thread's hub, which a worker thread does not run, so they leak or fail (EBADF).
    Whatever cannot be removed stays for the next run's clean-up."""
    with contextlib.suppress(OSError):
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, name))
            for name in dirs:
                entry = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    if os.path.islink(entry):
                        os.unlink(entry)
                    else:
                        os.rmdir(entry)
        os.rmdir(path)


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract regular files and folders only, each inside dest; anything else is skipped."""
    root = dest.resolve()
    for member in tar:
        target = (root / member.name).resolve()
        if not target.is_relative_to(root) or target == root:
            continue                         # absolute path or ../ escape
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif member.isfile():
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out)


def outcome(fn: Callable, *args: Any) -> tuple[bool, Any]:
    """(True, result) or (False, exception): gevent's threadpool prints a traceback for every
    exception a task raises, and a failed call is an everyday event here, not a bug."""
    try:
        return True, fn(*args)
    except Exception as e:                  # noqa: B902  handed back to the greenlet, raised there
        return False, e


def backoff(attempt: int, base: float = 1.0) -> float:
    """Exponential backoff with jitter, so that many clients do not retry in step."""
    return min(BACKOFF_MAX, base * 2 ** min(attempt, 12)) * random.uniform(0.5, 1.0)


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def split_evenly(items: list, most: int) -> list[list]:
    """As few parts of at most `most` items as possible, their sizes differing by one at most."""
    parts = -(-len(items) // most)
    size, extra = divmod(len(items), parts) if parts else (0, 0)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def duration(seconds: float) -> str:
    """'2 h 05 min', '9 min', '40 s': how long, for a person."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def clock(when: Optional[float]) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when or time.time()))


def when(stamp: float) -> str:
    """A unix time as local date and time, or '-' when unknown."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def iso_time(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="seconds")


def shell_quote(text: str) -> str:
    """Quote for the shell, readably: DIRAC's reasons often hold single quotes, rarely double ones."""
    if re.fullmatch(r"[\w@%+=:,./-]+", text):
        return text
    if "'" in text and not re.search(r'["$`\\!]', text):
        return f'"{text}"'
    return shlex.quote(text)


# ==================================================================================================
# Statuses
# ==================================================================================================
# DIRAC's job statuses (DIRAC.WorkloadManagementSystem.Client.JobStatus), each counted in exactly
# one column of the seed's summary line. A job that grid.py has not handed to the server yet counts
# as Submitting.

SUBMITTING, RECEIVED, CHECKING, SCOUTING, STAGING = "Submitting", "Received", "Checking", "Scouting", "Staging"
WAITING, MATCHED, RESCHEDULED, RUNNING, STALLED = "Waiting", "Matched", "Rescheduled", "Running", "Stalled"
COMPLETING, COMPLETED, DONE, FAILED, KILLED, DELETED = (
    "Completing", "Completed", "Done", "Failed", "Killed", "Deleted")

COLUMNS: list[tuple[str, tuple[str, ...]]] = [
    ("S", (SUBMITTING,)),
    ("R", (RECEIVED, CHECKING, SCOUTING, STAGING)),
    ("W", (WAITING, RESCHEDULED)),
    ("M", (MATCHED,)),
    ("R", (RUNNING, STALLED, COMPLETING)),
    ("D", (DONE, COMPLETED)),
    ("F", (FAILED, KILLED, DELETED)),
]
COLUMN_NAMES = ("Submitted", "Received", "Waiting", "Matched", "Running", "Done", "Failed")
COLUMN_OF = {status: i for i, (_, statuses) in enumerate(COLUMNS) for status in statuses}
ALL_STATUSES = frozenset(COLUMN_OF)
# DIRAC calls Completed final too, but a Completed job still moves on to Done or Failed: it is
# watched until then, so that its output goes to the right folder.
FINAL = frozenset({DONE, FAILED, KILLED, DELETED})
# Statuses that bring no new site: before DIRAC matches a job it has none ("ANY"), and a job
# killed or deleted keeps the one it had.
NO_NEW_SITE = frozenset({SUBMITTING, RECEIVED, CHECKING, SCOUTING, STAGING, WAITING, RESCHEDULED,
                         KILLED, DELETED})


def is_final(status: str) -> bool:
    return status in FINAL


def is_failed(status: str) -> bool:
    """Final and not Done: the F column's jobs, whose outputs go to failed/."""
    return is_final(status) and status != DONE


def column_of(status: str) -> int:
    """The summary column of a status; a status DIRAC adds one day lands in the Received column."""
    return COLUMN_OF.get(status, 1)


def column_counts(statuses: Iterable[str]) -> list[int]:
    counts = [0] * len(COLUMNS)
    for status in statuses:
        counts[column_of(status)] += 1
    return counts


def summary_line(counts: list[int]) -> str:
    """The seed's summary line: ``S:   0<TAB>R:   0<TAB>...<TAB>F:   0``."""
    return "\t".join(f"{letter}: {n:3d}" for (letter, _), n in zip(COLUMNS, counts))


# ==================================================================================================
# Jobs
# ==================================================================================================

@dataclass(slots=True)
class Job:
    """One job of the batch as the store keeps it; ``num`` is its local number, 1..N in file order."""

    num: int
    name: str
    status: str = SUBMITTING
    minor: str = ""
    app: str = ""
    site: str = ""
    dirac_id: int = 0
    ids: list = field(default_factory=list)          # every DIRAC id this job had, oldest first
    attempts: int = 0                                # submissions made (accepted by the server)
    history: list = field(default_factory=list)      # [status, unix time] per transition
    output: str = ""                                 # output folder, relative to the batch, once complete
    error: str = ""                                  # last problem with this job, for the user
    download_tries: int = 0
    intent: str = ""                                 # tag of a submission that may have reached the server
    past: list = field(default_factory=list)         # earlier attempts, oldest first (see retire_attempt)
    ended: float = 0.0                               # when it became final, by the server's clock if known
    missing: list = field(default_factory=list)      # declared outputs it did not produce: [name, kind]
    outputs: Optional[list] = None                   # files on grid storage (output_record); None: not looked up

    # The order of the stored record: a new field goes at the end (older records just lack it).
    FIELDS = ("num", "name", "status", "minor", "app", "site", "dirac_id", "ids", "attempts",
              "history", "output", "error", "download_tries", "intent", "past", "ended", "missing", "outputs")
    LISTS = ("ids", "history", "past", "outputs")    # stored apart, decoded only by who needs them

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_dict(cls, data: dict) -> "Job":
        return cls(**{f: data[f] for f in cls.FIELDS if f in data})

    def to_record(self) -> bytes:
        """The stored form (store formats 3 and 4): a tuple of plain values in FIELDS order, in Python's
        marshal format (version 4, read by every Python 3 since 3.4), with the lists in their places
        None and all of them marshal'd once more at the end. The readers of every job (`status
        --json`, `failures`, a resuming `watch`) decode a record several times faster than JSON."""
        values = tuple(None if f in self.LISTS else getattr(self, f) for f in self.FIELDS)
        return marshal.dumps(values + (marshal.dumps(tuple(getattr(self, f) for f in self.LISTS), 4),), 4)

    @classmethod
    def from_record(cls, raw: bytes) -> "Job":
        if raw[:1] == b"{":                  # store format 1: a JSON object
            return cls.from_dict(json.loads(raw))
        values = marshal.loads(raw)
        if not isinstance(values[-1], bytes):
            return cls(*values)              # store format 2: the lists in their places
        job = cls(*values[:-1])
        for name, value in zip(cls.LISTS, marshal.loads(values[-1])):   # older records: fewer lists
            setattr(job, name, value)
        return job

    @property
    def submitted(self) -> bool:
        return bool(self.dirac_id)

    @property
    def failed(self) -> bool:
        return is_failed(self.status)

    @property
    def in_progress(self) -> bool:
        """Still work for the engine: to be submitted, or submitted and not final yet."""
        return not is_final(self.status) if self.submitted else self.status == SUBMITTING

    @property
    def data_missing(self) -> list:
        """Its selected data files on grid storage that are not in its folder yet (see DataSelection)."""
        return [r for r in self.outputs or ()
                if r["kind"] == "data" and r.get("wanted", True) and not r["downloaded"]]

    @property
    def output_missing(self) -> bool:
        """Final, and its output folder is not there yet or lacks selected files (--data widened)."""
        return self.submitted and is_final(self.status) and (not self.output or bool(self.data_missing))

    @property
    def needs_download(self) -> bool:
        return self.output_missing and self.download_tries < DOWNLOAD_ATTEMPTS

    @property
    def ended_at(self) -> float:
        """When the job ended; for a job recorded before `ended` existed, when we saw it end."""
        return self.ended or (self.history[-1][1] if self.history else 0.0)

    def folder_name(self) -> str:
        """One folder per job, named by local number (unique) and a filesystem-safe job name."""
        slug = re.sub(r"[^\w.-]+", "_", self.name).strip("._")[:48]
        return f"{self.num:05d}_{slug}" if slug else f"{self.num:05d}"

    def output_folder(self) -> str:
        return os.path.join(SUCCEEDED_DIR if self.status == DONE else FAILED_DIR, self.folder_name())


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One file a job left on grid storage, as the catalogue knows it: the plain data a backend
    reports, so that finding, downloading and checking files stays backend-neutral."""

    lfn: str
    size: int
    adler32: str = ""                 # hex, as the catalogue keeps it; "" when it has none
    kind: str = "data"                # "data" (setOutputData) or "sandbox" (an output sandbox too big
                                      # for the sandbox store, as a tar archive)
    registered: bool = True           # False: declared by the job, but not in the catalogue

    @property
    def name(self) -> str:
        return self.lfn.rstrip("/").rsplit("/", 1)[-1]


def output_record(file: OutputFile) -> dict:
    """How a job's record keeps one of its files: what the catalogue says, and how its download went
    (`downloaded` once it is in the job's folder and verified, `problem` when it could not be)."""
    problem = "" if file.registered else "declared by the job but not in the catalogue: never uploaded"
    return {"lfn": file.lfn, "size": file.size, "adler32": file.adler32, "kind": file.kind,
            "registered": file.registered, "wanted": True, "downloaded": False, "problem": problem}


def record_name(record: dict) -> str:
    """The file's name in the job's folder: the last part of its LFN."""
    return record["lfn"].rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class DataSelection:
    """Which output data files are downloaded (--data, --data-pattern; kept in the batch's meta).
    Every file is looked up and listed (`grid lfns`) either way."""

    data: str = "all"
    pattern: str = ""                 # a glob on the file name, or on the whole LFN if it has a "/"

    @classmethod
    def from_meta(cls, meta: dict) -> "DataSelection":
        return cls(meta.get("data") or "all", meta.get("data_pattern") or "")

    def apply(self, jobs: Iterable[Job]) -> None:
        """Mark each known file wanted or not under this selection (it may have changed since)."""
        for job in jobs:
            for record in job.outputs or ():
                record["wanted"] = self.wants(record)

    def wants(self, record: dict) -> bool:
        if record["kind"] != "data":
            return True                          # an output sandbox is always fetched
        if self.data == "none" or not record.get("registered", True):
            return False
        if not self.pattern:
            return True
        return fnmatch.fnmatchcase(record["lfn"] if "/" in self.pattern else record_name(record), self.pattern)


@dataclass(slots=True)
class JobSpec:
    """What is needed to submit (and resubmit) a job, taken from DIRAC's Job object once."""

    name: str
    jdl: str
    xml: str                                   # the workflow (DIRAC's jobDescription.xml)
    steps: list                                # [executable, arguments, log file] per setExecutable
    input_sandbox: list                        # absolute local paths, or LFN:/SB: entries
    output_sandbox: list
    origin: str = ""                           # "jobs.py:12", where submit() was called

    def to_bytes(self) -> bytes:
        return zlib.compress(json.dumps({k: getattr(self, k) for k in self.__slots__}).encode(), 6)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "JobSpec":
        return cls(**json.loads(zlib.decompress(blob)))


@dataclass(slots=True)
class JobState:
    """What a backend reports about one job."""

    status: str
    minor: str = ""
    app: str = ""
    site: Optional[str] = ""          # None: not asked this time, the site the job had still holds
    ended: float = 0.0          # for a final job: its last update on the server (unix time), if known
    missing: Optional[list] = None    # for a final job: declared outputs it did not produce, if known


def outputs_at_risk(jobs: Iterable[Job], backend: str, now: float) -> tuple[int, float]:
    """Final jobs whose output is still missing and which the server deletes soon.

    Returns how many, and the seconds left before the first of them goes (0: may be gone already).
    """
    cleaned_after = CLEANED_AFTER.get(backend)
    if not cleaned_after:
        return 0, 0.0
    ages = [now - job.ended_at for job in jobs
            if job.submitted and is_final(job.status) and not job.output]
    risky = [age for age in ages if age > CLEANING_WARN_AFTER]
    return len(risky), max(0.0, cleaned_after - max(risky, default=0.0))


def cleaning_warning(count: int, left: float, backend: str,
                     fix: str = "fetch them now with `grid watch`") -> str:
    days = CLEANED_AFTER[backend] / 86400
    when = f"the first in {left / 86400:.1f} day(s)" if left > 0 else "the first may be gone already"
    return (f"outputs of {count} job(s) not downloaded yet: DIRAC deletes them about {days:g} days after "
            f"the job ends, {when}; {fix}")


class CleaningWatch:
    """When a watch warns that the server is about to delete outputs not downloaded yet. Ages change
    by the day: the jobs are looked at once an hour, or at once when a job that ended long ago became
    final; the warning is given again only when the number of outputs at risk changes."""

    def __init__(self) -> None:
        self.warned = 0                        # outputs about to be cleaned, as last warned about
        self.checked = 0.0                     # when the jobs were last looked at
        self.due = False                       # a job that ended long ago just became final

    def news(self, jobs: Iterable[Job], backend: str) -> Optional[str]:
        """The warning to give now, if any."""
        now = time.time()
        if now - self.checked < CLEANING_CHECK_EVERY and not self.due:
            return None
        self.checked, self.due = now, False
        count, left = outputs_at_risk(jobs, backend, now)
        changed, self.warned = count and count != self.warned, count
        return cleaning_warning(count, left, backend, "this `grid watch` is fetching them") if changed else None


@dataclass(slots=True)
class LoggingRecord:
    """One line of a job's history as the backend keeps it (DIRAC's JobLoggingDB), shown by `why`:
    it has the steps grid.py never sees between two status sweeps, and who made each."""

    status: str
    minor: str
    app: str
    time: float                                # unix time; 0 when the backend gave none we can read
    source: str                                # JobManager, Matcher, JobWrapper... (locally Scheduler, Runner)


# Control characters as the escapes a reader knows: a job name with a newline or a tab would break
# one-line-per-job output into two lines, or one column into two. JSON keeps them as they are.
ONE_LINE = str.maketrans({**{chr(c): f"\\x{c:02x}" for c in [*range(32), 127]},
                          "\n": "\\n", "\t": "\\t", "\r": "\\r"})


def one_line(text: str) -> str:
    """Text for a line of its own, or a column of one: control characters escaped (\\n, \\t, \\x1b).
    Most text has none: isprintable() says so ten times faster than translate() finds nothing."""
    return text if text.isprintable() else text.translate(ONE_LINE)


def status_line(job: Job) -> str:
    """The job's line in `grid status`: number, DIRAC id, name, status, minor status, site and
    folder, then the last problem if there is one; tab-separated, one line whatever the texts hold."""
    return (f"#{job.num}\t{job.dirac_id or '-'}\t{one_line(job.name)}\t{job.status}\t{one_line(job.minor) or '-'}"
            f"\t{one_line(job.site or '') or '-'}\t{job.output or '-'}" + (f"\t{one_line(job.error)}" if job.error else ""))


def status_entry(job: Job) -> bytes:
    """What the store keeps beside each job's record for `status`: the job's summary column, whether
    its outputs are still to fetch, then its line ready to print. `status` of 100,000 jobs reads
    these 90 bytes a job and decodes nothing, where the records would cost it 0.6 s more."""
    unfetched = bool(job.dirac_id and not job.output and job.status in FINAL)
    return bytes((column_of(job.status), unfetched)) + status_line(job).encode("utf-8", "backslashreplace")


def entry_num(entry: bytes) -> int:
    """The job number of a status entry (its line starts with #NUM and a tab)."""
    return int(entry[3:entry.index(b"\t")])


EXIT_STATUS_PATTERN = re.compile(r"Exited With Status (-?\d+)")


def not_produced(missing: list) -> str:
    """The declared outputs a job did not produce, in a line: what the grid notes of the same job
    (the output sandbox's OutputSandboxMissingFiles, the JobWrapper's "Missing specified output
    data file")."""
    kinds = {"sandbox": "output sandbox", "data": "output data"}
    return "declared output not produced: " + ", ".join(f"{name} ({kinds.get(kind, kind)})"
                                                        for name, kind in missing)


def failure_reason(job: Job) -> str:
    """The group key of a failed job: its status, minor and application status as DIRAC words them.

    DIRAC puts a step's exit code in the application status ("sh Exited With Status 3"), so the
    code is part of the key wherever it is known. The site is left out on purpose: one cause that
    fails jobs at many sites is one group (`failures` lists the sites of each group). `resubmit
    --reason TEXT` selects the failed jobs whose reason contains TEXT.
    """
    return f"{job.status}: {job.minor or '-'} / {job.app or '-'}"


def exit_code(job: Job) -> Optional[int]:
    """The exit status of the step that failed, when the application status tells it."""
    match = EXIT_STATUS_PATTERN.search(job.app)
    return int(match.group(1)) if match else None


def failure_groups(jobs: Iterable[Job]) -> list[tuple[str, list[Job]]]:
    """Failed jobs by failure_reason, the biggest group first."""
    groups: dict[str, list[Job]] = {}
    for job in sorted(jobs, key=lambda j: j.num):
        if is_failed(job.status):
            groups.setdefault(failure_reason(job), []).append(job)
    return sorted(groups.items(), key=lambda group: (-len(group[1]), group[0]))


def site_counts(jobs: list[Job]) -> dict[str, int]:
    """Jobs per site, the most frequent first ('-' for jobs that never reached one)."""
    counts = collections.Counter(job.site or "-" for job in jobs)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def exit_meaning(code: int) -> str:
    """An exit status as a person reads it: a negative one is the signal that ended the step
    (Python's and DIRAC's way of saying so: -11 is SIGSEGV)."""
    if code == NOT_STARTED_STATUS:
        return f"none: the step could not be started (DIRAC reports {code})"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return str(code)


# ==================================================================================================
# Store
# ==================================================================================================
# One LevelDB database per batch, in .grid/db. Keys: "meta" (the batch, JSON), "job/<num>" (a Job,
# Job.to_record()), "line/<num>" (its status_entry, written with the record), "spec/<num>" (its JobSpec,
# compressed). LevelDB allows one process at a time: the holder
# writes .grid/owner, so a second command can say who holds the batch; `status` reads a snapshot
# (hard links of the immutable tables plus copies of the log) and never needs the lock. A new batch
# is written in .grid/new-db-<pid> in chunks and renamed to .grid/db once whole, so that a batch of
# 100,000 jobs needs neither one huge write nor a half-written batch after a crash.

def job_key(num: int) -> bytes:
    return b"job/%09d" % num


def line_key(num: int) -> bytes:
    return b"line/%09d" % num


def spec_key(num: int) -> bytes:
    return b"spec/%09d" % num


def plyvel_errors_converted(method: Callable) -> Callable:
    """A Store method whose plyvel errors (a disk full, a folder made read-only meanwhile) become
    the program's own: the store is the only code that touches plyvel, so they are converted here."""

    @functools.wraps(method)
    def converted(store: "Store", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(store, *args, **kwargs)
        except plyvel.Error as e:
            raise database_error(e, store.state_dir) from None

    return converted


def database_error(error: Exception, state_dir: Path) -> GridError:
    """What a plyvel error means for the user, and the fix. LevelDB says "IO error: <file>:
    Permission denied" for a file it may not open, the LOCK file included, and "IO error: lock
    <file>: ..." when another process holds the lock."""
    text = plyvel_message(error)
    denied = re.search(r"IO error: (?:lock )?(.+): Permission denied", text)
    if denied:
        path = Path(denied.group(1))
        if not path.is_relative_to(state_dir):       # a snapshot's link to the batch's own file
            path = state_dir / "db" / path.name
        return BatchError(f"cannot use the batch database: permission denied on {path}",
                          permission_fix(path, state_dir))
    if re.search(r"IO error: lock |already held by process", text):
        return BatchInUse(f"the batch in {state_dir.parent} is in use by {describe_owner(state_dir)}",
                          "wait for it to finish or stop it (Ctrl-C); `grid status` works meanwhile")
    if isinstance(error, plyvel.CorruptionError):
        return BatchError(f"the batch database is damaged: {text}",
                          f"repair it with: python -c \"import plyvel; "
                          f"plyvel.repair_db('{state_dir / 'db'}')\"")
    return BatchError(f"cannot use the batch database in {state_dir / 'db'}: {text}",
                      f"check the disk and the permissions of {state_dir}")


def permission_fix(path: Path, state_dir: Path) -> str:
    """Whose the file is decides the fix: the owner makes it writable again, anyone else asks them."""
    try:
        uid = path.stat().st_uid
    except OSError:
        uid = state_dir.stat().st_uid if state_dir.exists() else os.getuid()
    try:
        owner = pwd.getpwuid(uid).pw_name
    except KeyError:
        owner = f"uid {uid}"
    if uid == os.geteuid():
        return f"give yourself access to the batch's state again: `chmod -R u+rwX {shlex.quote(str(state_dir))}`"
    return (f"the batch belongs to {owner}: run grid as {owner}, or work on a copy of the batch "
            "directory; `grid status` needs only read access")


class Store:
    """The batch's job database; the only code that touches plyvel."""

    def __init__(self, db: "plyvel.DB", state_dir: Path, owned: bool, path: Optional[Path] = None) -> None:
        self.db, self.state_dir, self.owned = db, state_dir, owned
        self.path = path or state_dir / "db"
        self.group_commit: Optional[GroupCommit] = None

    @property
    def creating(self) -> bool:
        """Opened with create=True and create_batch has not finished: not a batch yet."""
        return self.path != self.state_dir / "db"

    @classmethod
    def open(cls, batch_dir: Path, command: str, create: bool = False) -> "Store":
        """The batch's database, locked for this process; with create, a new one for create_batch."""
        state_dir = batch_dir / STATE_DIR
        path = state_dir / "db"
        if not create and not path.is_dir():
            if list(state_dir.glob(f"{NEW_DB_PREFIX}*")):
                raise BatchError(f"no batch in {batch_dir}: `grid submit` was stopped before it stored the "
                                 "jobs, so nothing was submitted", "run `grid submit JOBFILE` here again")
            raise BatchError(f"no batch in {batch_dir}",
                             "run `grid submit JOBFILE` here first, or cd to a batch directory")
        try:
            state_dir.mkdir(exist_ok=True)
            if create:
                remove_abandoned_creations(state_dir)
                path = state_dir / f"{NEW_DB_PREFIX}{os.getpid()}"
            db = plyvel.DB(str(path), create_if_missing=create)
        except PermissionError as e:
            raise BatchError(f"cannot write in {batch_dir}: {e.strerror}",
                             "submit from a directory you can write to") from None
        except plyvel.Error as e:
            raise database_error(e, state_dir) from None
        store = cls(db, state_dir, owned=False, path=path)
        try:
            if not create and not store.meta():  # a `submit` killed before it stored the jobs: none sent
                raise BatchError(f"no batch in {batch_dir}: `grid submit` was stopped before it stored the "
                                 "jobs, so nothing was submitted", "run `grid submit JOBFILE` here again")
            if not create:
                store.check_format(upgrade=True)
        except GridError:
            store.close()
            raise
        owner = {"pid": os.getpid(), "command": command, "since": time.time()}
        atomic_write(state_dir / "owner", json.dumps(owner).encode())
        store.owned = True
        return store

    @classmethod
    @contextlib.contextmanager
    def snapshot(cls, batch_dir: Path) -> Iterator["Store"]:
        """A read-only view of the batch as of now, even while another command holds it."""
        source = batch_dir / STATE_DIR / "db"
        if not source.is_dir():
            raise BatchError(f"no batch in {batch_dir}",
                             "run `grid submit JOBFILE` here first, or cd to a batch directory")
        with tempfile.TemporaryDirectory(prefix="grid-snapshot-") as tmp:
            for attempt in range(SNAPSHOT_TRIES):
                copy = Path(tmp) / f"db{attempt}"
                try:
                    copy_leveldb(source, copy)
                    db = plyvel.DB(str(copy))
                    break
                except PermissionError as e:
                    raise BatchError(f"cannot read the batch database: permission denied on {e.filename}",
                                     permission_fix(Path(e.filename), source.parent)) from None
                except (OSError, plyvel.Error):   # a compaction moved files under us: copy again
                    shutil.rmtree(copy, ignore_errors=True)
                    time.sleep(0.05 * (attempt + 1))
            else:
                raise BatchError("cannot read the batch database (it keeps changing or is damaged)",
                                 "try again; if it persists, stop the running command and retry")
            store = cls(db, batch_dir / STATE_DIR, owned=False)
            try:
                store.check_format()
                yield store
            finally:
                db.close()

    @plyvel_errors_converted
    def close(self) -> None:
        if self.owned and not self.creating and not self.db.closed:
            self.compact_jobs()
        if not self.db.closed:
            self.db.close()
        if self.creating:                      # stopped before the batch was whole: no batch at all
            shutil.rmtree(self.path, ignore_errors=True)
        if self.owned:
            with contextlib.suppress(OSError):
                (self.state_dir / "owner").unlink()

    def compact_jobs(self) -> None:
        """Leave the job records compacted for the readers of every job. LevelDB compacts in a thread
        of the process that holds the database, so a writer that ends leaves the work it had not
        done yet; each `status` then does it again on its snapshot's copy while reading the lines
        (0.4 s of CPU at 100,000 jobs), work thrown away with the copy. The records and lines sort
        before the specs, so this rewrites little more than what changed; a failure leaves the batch
        as it was."""
        with contextlib.suppress(plyvel.Error):
            self.db.compact_range(start=b"job/", stop=b"line0")

    @plyvel_errors_converted
    def check_format(self, upgrade: bool = False) -> None:
        """Refuse a batch written by a newer grid.py; with upgrade, mark an older one as now written
        in this format (its records are read either way, and rewritten as jobs change)."""
        meta = self.meta()
        found = meta.get("format", 1)
        if found > STORE_FORMAT:
            self.close()
            raise BatchError(f"this batch was written by a newer grid.py (store format {found}; "
                             f"grid.py {__version__} reads up to {STORE_FORMAT})",
                             "use the grid.py that made the batch, or a newer one")
        if upgrade and found < STORE_FORMAT:
            if found < 4:                    # each record's status line beside it, before the format says so
                self.add_status_lines()
            self.db.put(b"meta", json.dumps({**meta, "format": STORE_FORMAT}).encode(), sync=True)

    def add_status_lines(self) -> None:
        """Write each job's status_entry beside its record (a batch of format 3 or older has none)."""
        records = map(Job.from_record, self.db.iterator(prefix=b"job/", include_key=False, fill_cache=False))
        while chunk := list(itertools.islice(records, CREATE_CHUNK)):
            with self.db.write_batch() as batch:
                for job in chunk:
                    batch.put(line_key(job.num), status_entry(job))

    # -- reading ----------------------------------------------------------------------------------

    @plyvel_errors_converted
    def meta(self) -> dict:
        raw = self.db.get(b"meta")
        return json.loads(raw) if raw else {}

    @plyvel_errors_converted
    def jobs(self) -> dict[int, Job]:
        """Every job, by number; each record is read once, so without filling LevelDB's block cache."""
        with gc_paused():
            jobs = map(Job.from_record, self.db.iterator(prefix=b"job/", include_key=False, fill_cache=False))
            return {job.num: job for job in jobs}

    def job(self, num: int) -> Job:
        return Job.from_record(self.db.get(job_key(num)))

    def status_entries(self) -> Iterator[bytes]:
        """Every job's status_entry, by number. Each is read once, so LevelDB's block cache is not
        filled (a fifth of the iteration's time); a batch of an older format (read in a snapshot, never
        upgraded) has only its records, and they are decoded."""
        if self.meta().get("format", 1) < 4:
            return map(status_entry, map(Job.from_record, self.db.iterator(prefix=b"job/", include_key=False)))
        return self.db.iterator(prefix=b"line/", include_key=False, fill_cache=False)

    @plyvel_errors_converted
    def spec(self, num: int) -> JobSpec:
        return JobSpec.from_bytes(self.db.get(spec_key(num)))

    # -- writing: everything that belongs together goes in one write batch -----------------------

    @plyvel_errors_converted
    def create_batch(self, meta: dict, jobs: Iterable[Job], specs: Iterable["JobSpec | bytes"]) -> None:
        """Write a new batch (specs as JobSpec or as JobSpec.to_bytes()), then put it in place whole."""
        pairs = zip(jobs, specs)
        while chunk := list(itertools.islice(pairs, CREATE_CHUNK)):
            with self.db.write_batch() as batch:
                for job, spec in chunk:
                    batch.put(spec_key(job.num), spec if isinstance(spec, bytes) else spec.to_bytes())
                    batch.put(job_key(job.num), job.to_record())
                    batch.put(line_key(job.num), status_entry(job))
        self.db.put(b"meta", json.dumps({**meta, "format": STORE_FORMAT}).encode(), sync=True)
        if self.creating:
            self.db.close()
            try:
                os.rename(self.path, self.state_dir / "db")
            except OSError:                    # another submit made a batch here meanwhile
                raise BatchError(f"{self.state_dir.parent} already holds a batch",
                                 "resume it with `grid watch`, or submit from a new directory") from None
            self.path = self.state_dir / "db"
            self.db = plyvel.DB(str(self.path))

    @plyvel_errors_converted
    def update_meta(self, **changes: Any) -> None:
        self.db.put(b"meta", json.dumps({**self.meta(), **changes}).encode(), sync=True)

    @plyvel_errors_converted
    def save(self, *jobs: Job, sync: bool = False) -> None:
        """sync=True for what a crash of the machine must not take: a submission's tag before its call,
        a new DIRAC id; the rest the server can tell us again. It returns once the jobs are on disk;
        under an engine (commit_in_groups) one sync then covers every greenlet's synced saves."""
        if sync and self.group_commit:
            self.group_commit.save(jobs)
        else:
            self.write(jobs, sync)

    def write(self, jobs: Iterable[Job], sync: bool) -> None:
        with self.db.write_batch(transaction=True, sync=sync) as batch:
            for job in jobs:
                batch.put(job_key(job.num), job.to_record())
                batch.put(line_key(job.num), status_entry(job))

    def commit_in_groups(self) -> None:
        """From now on (in an engine: gevent is in use), synced saves wait for a shared sync."""
        self.group_commit = GroupCommit(self.write)


class GroupCommit:
    """Synced saves of many greenlets, written in one batch with one sync (group commit).

    A sync costs 0.4 ms or more (much more on a network file system) and exactly-once needs two per
    submission: the tag before the call, the id after it. Here a greenlet's synced save joins the
    pending group and waits; the group is written once every greenlet that is ready to run has
    run, so the 64 submissions of a pool that reach the same point together share one sync.

    What it keeps: save() returns only once its jobs are on disk, as a lone synced write would.
    So a submission's tag is durable before its call is sent (after a crash, `watch` finds a cut
    submission on the server by that tag), and an id is durable before record_submission returns:
    a job counted as submitted (the summary, the end of `submit --no-watch`, its status calls and
    download) never depends on being found by its tag again after the machine went down (a search
    that misses a job the server has since removed would submit it twice).

    Each job is serialized when the group is written, so the record on disk is its latest state;
    an unsynced save of the same job meanwhile writes the same or an older state, never a newer
    one that the group would overwrite. The write happens in the gevent loop: it pauses the other
    greenlets for one sync, not the threadpool's DIRAC calls, whose answers wait and form the next
    group. (In a thread, it could race with the unsynced saves of the same jobs.)
    """

    def __init__(self, write: Callable[[Iterable[Job], bool], None]) -> None:
        self.write = write
        self.pending: dict[int, Job] = {}
        self.written: Optional["gevent.event.AsyncResult"] = None     # the pending group's outcome
        self.syncs = 0

    def save(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            self.pending[job.num] = job
        if self.written is None:
            self.written = gevent.event.AsyncResult()
            gevent.get_hub().loop.run_callback(self.commit)   # after the greenlets ready to run now
        self.written.get()                                    # its error, if any, raised here

    def commit(self) -> None:
        jobs, written = self.pending.values(), self.written
        self.pending, self.written = {}, None
        try:
            self.write(jobs, True)
        except Exception as e:                 # every waiter raises it (converted in Store.save)
            written.set_exception(e)
        else:
            written.set(None)
        self.syncs += 1


def remove_abandoned_creations(state_dir: Path) -> None:
    """Batches whose creation was killed before they were whole (their process is gone)."""
    for path in state_dir.glob(f"{NEW_DB_PREFIX}*"):
        pid = path.name[len(NEW_DB_PREFIX):]
        if not pid.isdigit() or int(pid) == os.getpid() or not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                    # someone else's process
        return True
    return True


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Loading 100,000 records makes Python's collector walk everything loaded so far, again and again
    (about two thirds of the load time); the records hold no cycles, so it may rest meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def copy_leveldb(source: Path, dest: Path) -> None:
    """Copy a live LevelDB: table files never change once written, so hard links do; the rest is copied."""
    dest.mkdir()
    for entry in os.scandir(source):
        if entry.name == "LOCK":
            continue
        target = dest / entry.name
        if entry.name.endswith((".ldb", ".sst")):
            try:
                os.link(entry.path, target)
            except OSError:
                shutil.copy2(entry.path, target)
        else:
            shutil.copy2(entry.path, target)


def plyvel_message(error: Exception) -> str:
    text = error.args[0] if error.args else str(error)
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


def describe_owner(state_dir: Path) -> str:
    try:
        owner = json.loads((state_dir / "owner").read_text())
        since = time.strftime("%H:%M:%S", time.localtime(owner["since"]))
        if process_alive(int(owner["pid"])):         # a killed command leaves its file behind
            return f"`grid {owner['command']}` (pid {owner['pid']}, since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "another grid command"


# ==================================================================================================
# Job files
# ==================================================================================================
# A job file is plain Python run with `submit` and DIRAC's `Job` defined. The whole file runs
# before anything is submitted, so a mistake half way submits nothing.

class SpecSpool:
    """The specs a job file submits, compressed into an unnamed temporary file as they come.

    A job file may submit 100,000 jobs, and all of them are known before anything is submitted;
    each spec is 5 kB in memory, 1 kB compressed: on disk, they cost the memory of their names.
    Reads like a list of JobSpec; blobs() gives them compressed, as the store keeps them.
    """

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(prefix="grid-specs-")
        self.names: list[str] = []
        self.offsets: list[int] = []
        self.end = 0                           # appends are buffered: no seek, no write per spec
        self.sequences: list[list[int]] = []   # [first, last] local numbers of each parametric job

    def append(self, spec: JobSpec) -> None:
        record = spec.to_bytes()
        record = struct.pack(">I", len(record)) + record
        if self.file.tell() != self.end:       # read from since the last append
            self.file.seek(self.end)
        self.file.write(record)
        self.offsets.append(self.end)
        self.end += len(record)
        self.names.append(spec.name)

    def __len__(self) -> int:
        return len(self.names)

    def extend(self, specs: list[JobSpec]) -> None:
        """The jobs of one submit(): a parametric job's N jobs are remembered as one sequence."""
        if len(specs) > 1:
            self.sequences.append([len(self) + 1, len(self) + len(specs)])
        for spec in specs:
            self.append(spec)

    def blob(self, index: int) -> bytes:
        self.file.seek(self.offsets[index])
        (size,) = struct.unpack(">I", self.file.read(4))
        return self.file.read(size)

    def blobs(self) -> Iterator[bytes]:
        for index in range(len(self)):
            yield self.blob(index)

    def __getitem__(self, index: int) -> JobSpec:
        return JobSpec.from_bytes(self.blob(range(len(self))[index]))

    def __iter__(self) -> Iterator[JobSpec]:
        for index in range(len(self)):
            yield self[index]

    def close(self) -> None:
        """Once the store has them: the file goes, and the names with it."""
        self.file.close()
        self.names, self.offsets = [], []


def load_job_files(paths: list[str], batch_tag: str, backend: str = DEFAULT_BACKEND) -> SpecSpool:
    """Run the job files in order and return what they submitted, or raise JobFileError.

    For the local backend the files see DIRAC's Job with the checks that need DIRAC's
    configuration deferred to the grid (see local_job_class), so a file that loads for the grid
    loads here too."""
    job_class = import_dirac_job()
    defined = local_job_class(job_class) if backend == "local" else job_class
    specs = SpecSpool()
    for path in paths:
        run_job_file(Path(path), job_class, batch_tag, specs, defined)
    if not specs:
        raise JobFileError(f"{', '.join(paths)} submitted no job",
                           "call submit(j) for every Job j you want to run")
    return specs


def run_job_file(path: Path, job_class: type, batch_tag: str, specs: SpecSpool,
                 defined: Optional[type] = None) -> None:
    """Run one job file; `defined` is the Job it sees (a subclass of job_class), by name and by
    `from DIRAC.Interfaces.API.Job import Job` alike."""
    defined = defined or job_class
    try:
        source = path.read_bytes()
    except FileNotFoundError:
        raise JobFileError(f"{path}: no such file", "check the path of the job file") from None
    except OSError as e:
        raise JobFileError(f"{path}: cannot read it: {e.strerror}") from None
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as e:
        raise JobFileError(f"{path}:{e.lineno}: {e.msg} (is it a Python file?)",
                           "fix the job file; nothing was submitted") from None
    except ValueError as e:                          # e.g. null bytes: not a Python file
        raise JobFileError(f"{path}: not a Python file ({e})") from None

    def submit(job: Any) -> None:
        line = sys._getframe(1).f_lineno
        if not isinstance(job, job_class):
            raise JobFileError(f"{path}:{line}: submit() takes a DIRAC Job, not {type(job).__name__}",
                               "build the job with j = Job() and call submit(j)")
        if getattr(job, "_grid_submitted", False):
            raise JobFileError(f"{path}:{line}: the same Job object is submitted twice",
                               "create a new Job() for every job")
        job._grid_submitted = True          # marks the object without keeping it alive
        specs.extend(job_specs(job, path, line, batch_tag))

    namespace = {"__name__": "__main__", "__file__": str(path), "submit": submit, "Job": defined}
    if defined is not job_class:
        namespace["__builtins__"] = job_file_builtins(job_class, defined)
    try:
        exec(code, namespace)
    except (JobFileError, KeyboardInterrupt):
        raise                                        # Ctrl-C is no mistake in the job file
    except SystemExit as e:
        if e.code not in (None, 0):
            raise JobFileError(f"{path}: exited with {e.code}; nothing was submitted") from None
    except BaseException as e:                       # noqa: B902  the user's code may raise anything
        raise JobFileError(f"{where_in(path, e)}: {type(e).__name__}: {e}",
                           "fix the job file; nothing was submitted") from None


def where_in(path: Path, error: BaseException) -> str:
    """file:line of the deepest frame of the error inside the job file itself."""
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == str(path):
            line = frame.lineno
    return f"{path}:{line}" if line else str(path)


def job_specs(job: Any, path: Path, line: int, batch_tag: str) -> list[JobSpec]:
    """Freeze a DIRAC Job into JobSpecs: absolute input sandbox paths, tagged with the batch; one
    spec, or one per parameter set of a parametric job (see expand_parametric)."""
    origin = f"{path}:{line}"
    if job.errorDict:
        problems = "; ".join(f"{CALLER_OF.get(k, k)}: {', '.join(map(dirac_report_message, v))}"
                             for k, v in job.errorDict.items())
        raise JobFileError(f"{origin}: DIRAC rejects this job: {problems}", rejection_fix(job.errorDict))
    workflow = job.workflow
    sandbox = workflow.findParameter("InputSandbox")
    inputs = [resolve_sandbox_entry(entry, path, origin)
              for entry in (sandbox.getValue().split(";") if sandbox and sandbox.getValue() else [])
              if entry.strip()]
    if sandbox:
        sandbox.setValue(";".join(inputs))
    group = workflow.findParameter("JobGroup")
    if not group or group.getValue() in ("", getattr(job, "group", "")):   # unset, or DIRAC's default (the VO)
        job.setJobGroup(batch_tag)     # so the batch's jobs can be found on the server again
    outputs = workflow.findParameter("OutputSandbox")
    name_param = workflow.findParameter("JobName")
    name = name_param.getValue() if name_param else "Name"
    xml = job._toXML()
    jdl = job._toJDL(jobDescriptionObject=io.StringIO(xml))
    if job.numberOfParameters or PARAMETRIC_JDL.search(jdl):     # the server would make several jobs
        return expand_parametric(job, jdl, name, path, origin)
    return [JobSpec(name=name, jdl=jdl, xml=xml, steps=workflow_steps(workflow), input_sandbox=inputs,
                    output_sandbox=[o for o in (outputs.getValue().split(";") if outputs else []) if o],
                    origin=origin)]


def workflow_steps(workflow: Any) -> list[list[str]]:
    """[executable, arguments, log file] of each setExecutable step, as DIRAC's Script module takes
    them: a step without arguments of its own takes the workflow's `arguments` (a parametric job's)."""
    fallback = workflow.findParameter("arguments")
    fallback = str(fallback.getValue() or "") if fallback else ""
    steps = []
    for step in workflow.step_instances:
        params = {p.getName(): p.getValue() for p in step.parameters}
        if "executable" in params:
            arguments = str(params.get("arguments") or "")
            steps.append([str(params["executable"]), arguments if arguments.strip() else fallback,
                          str(params.get("applicationLog") or f"Script{len(steps) + 1}_CodeOutput.log")])
    return steps


# -- parametric jobs: one submit() of a job with parameter sequences is N jobs ---------------------
# j.setParameterSequence('args', [...]) makes a parametric job, which DIRAC's JobManager expands on
# the server (generateParametricJobs): in every JDL attribute "%n" becomes the job's index (zero
# padded), "%(name)s" the job's value of sequence `name` and "%s" that of the unnamed sequence (1
# for a Job API job); DIRAC's JDL lists keep no spaces or double quotes inside values. Arguments
# with parameters reach the job through the JDL, as `-p arguments='...'` switches of dirac-jobexec,
# which the job wrapper runs through a shell and which set the workflow parameter of that name.
# grid.py expands with DIRAC's own function when the job file is loaded and bakes each job's values
# into its workflow, as dirac-jobexec would: each of the N jobs is a plain job with its own record,
# folder, tag and resubmission, and the same on both backends. On DIRAC they go as one parametric
# job again (the engine bundles a sequence), so the server still creates them in one call.

# What the job wrapper's shell would act on outside quotes, and what ends a single-quoted word.
SHELL_SPECIAL = re.compile(r"[|&;<>()$`\\\"'*?\[]|(^|\s)[#~]")
PARAMETRIC_JDL = re.compile(r"^\s*Parameters\s*=", re.MULTILINE)
PARAMETER_ATTRIBUTE = re.compile(r"Parameters?(\..*)?$|Parameter(Number|Start|Step|Factor)(\..*)?$")


def expand_parametric(job: Any, jdl: str, name: str, path: Path, origin: str) -> list[JobSpec]:
    """The N plain jobs of a parametric job, in parameter order, as DIRAC's server makes them."""
    from DIRAC.WorkloadManagementSystem.Utilities.ParametricJob import generateParametricJobs
    expanded = generateParametricJobs(jdl_classad(jdl))
    if not expanded["OK"]:
        raise JobFileError(f"{origin}: DIRAC cannot expand this parametric job: {expanded['Message']}",
                           "give every parameter sequence the same number of values, none with a comma or a semicolon")
    workflow, specs = job.workflow, []
    original = {p.getName(): p.getValue() for p in workflow.parameters}
    added = set(job.addToOutputSandbox)
    try:
        for one in expanded["Value"]:
            classad = jdl_classad(one)
            arguments, values = jobexec_switches(classad.getAttributeString("Arguments"), origin)
            classad.insertAttributeString("Arguments", arguments)
            for attribute in classad.getAttributes():
                if PARAMETER_ATTRIBUTE.match(attribute):
                    classad.deleteAttribute(attribute)
            inputs = [resolve_sandbox_entry(entry, path, origin) for entry in list_attribute(classad, "InputSandbox")]
            if inputs:
                classad.insertAttributeVectorString("InputSandbox", inputs)
            set_workflow_values(workflow, values)
            specs.append(JobSpec(name=classad.getAttributeString("JobName") or name, jdl=classad.asJDL(),
                                 xml=workflow.toXML(), steps=workflow_steps(workflow), input_sandbox=inputs,
                                 output_sandbox=[o for o in list_attribute(classad, "OutputSandbox")
                                                 if o not in added],
                                 origin=origin))
    finally:
        set_workflow_values(workflow, original)
    return specs


def jobexec_switches(arguments: str, origin: str) -> tuple[str, dict[str, str]]:
    """dirac-jobexec's arguments of one job, without its `-p name=value` switches, and those values
    as dirac-jobexec reads them. What the job wrapper's shell would change, or dirac-jobexec cannot
    read (a second "="), fails on the grid: refused here, for both backends."""
    if SHELL_SPECIAL.search(re.sub(r"'[^']*'", "", arguments)):
        raise JobFileError(f"{origin}: a parameter value has a character the DIRAC job wrapper's shell would "
                           f"act on (it runs `dirac-jobexec {arguments}`)",
                           "use parameter values without quotes, $, `, \\, ;, &, |, <, >, (, ), *, ? or [")
    words, kept, values = shlex.split(arguments), [], {}
    while words:
        word = words.pop(0)
        if word != "-p" or not words:
            kept.append(word)
            continue
        key, _, value = words.pop(0).partition("=")
        if "=" in value:
            raise JobFileError(f"{origin}: the parameter value {value!r} has a '=', which DIRAC's "
                               f"dirac-jobexec cannot read (`-p {key}={value}`): the job would fail on the grid",
                               "use parameter values without '='")
        value = value.strip()
        if value.startswith("{"):                    # dirac-jobexec's lists
            value = ";".join(value[1:-1].replace('"', "").replace(" ", "").split(","))
        values[key] = value
    return shlex.join(kept), values


def set_workflow_values(workflow: Any, values: dict[str, str]) -> None:
    """What dirac-jobexec does with its `-p` switches: set the workflow's parameters of those names
    (a name the workflow lacks changes nothing), and those of its modules."""
    for key, value in values.items():
        if workflow.parameters.find(key):
            workflow.setValue(key, value)
        for definition in workflow.step_definitions.values():
            for module in definition.module_instances:
                if module.parameters.find(key):
                    module.parameters.setValue(key, value)


def jdl_classad(jdl: str) -> Any:
    from DIRAC.Core.Utilities.ClassAd.ClassAdLight import ClassAd
    text = jdl.strip()
    return ClassAd(text if text.startswith("[") else f"[{text}]")


def jdl_attributes(jdl: str) -> dict[str, str]:
    """A JDL's attributes as DIRAC's own parser reads them: {name: expression}; {} if it cannot."""
    classad = jdl_classad(jdl)
    return {name: classad.get_expression(name) for name in classad.getAttributes()} if classad.isOK() else {}


def list_attribute(classad: Any, name: str) -> list[str]:
    return [entry for entry in classad.getListFromExpression(name) if entry] if classad.lookupAttribute(name) else []


def resolve_sandbox_entry(entry: str, job_file: Path, origin: str) -> str:
    """Local input files are found from the current directory, then from the job file's folder."""
    entry = entry.strip()
    if entry.upper().startswith(("LFN:", "SB:")):
        return entry
    for base in (Path.cwd(), job_file.parent.resolve()):
        candidate = (base / entry).resolve()
        if candidate.exists():
            return str(candidate)
    raise JobFileError(f"{origin}: input sandbox file {entry!r} does not exist",
                       "give a path relative to the batch directory or to the job file")


# DIRAC's Job checks some settings against DIRAC's configuration (the CS) as they are made: sites
# (setDestination, through the site list API.__init__ reads), platforms (setPlatform) and CEs
# (setDestinationCE). Without a configuration each check fails. On this machine these settings
# mean nothing, so the local backend's Job records them unchecked and `--dry-run` lists them as
# ignored; the grid checks them when the job is submitted there.
CS_CHECKS = ("_checkSiteIsValid", "setPlatform", "setDestinationCE")


def local_job_class(job_class: type) -> type:
    """DIRAC's Job for job files run on this machine: checks that need the CS are left to the grid."""
    from DIRAC import S_OK

    class Job(job_class):
        __doc__ = job_class.__doc__

        def _checkSiteIsValid(self, site: Any) -> dict:
            return S_OK()

        def setPlatform(self, platform: Any) -> dict:
            if not isinstance(platform, str):
                return super().setPlatform(platform)      # DIRAC's own error
            if platform.lower() != "any":
                self._addParameter(self.workflow, "Platform", "JDL", platform, "Platform ( Operating System )")
            return S_OK()

        def setDestinationCE(self, ceName: str, diracSite: Optional[str] = None) -> dict:
            if diracSite:
                self.setDestination(diracSite)
            self._addJDLParameter("GridCE", ceName)
            return S_OK()

    Job.__module__ = job_class.__module__
    return Job


def job_file_builtins(job_class: type, defined: type) -> dict:
    """The builtins of a job file in which DIRAC's Job module, imported by the file, gives `defined`."""
    import builtins
    module_name = job_class.__module__
    view = type(sys)(module_name)
    view.__dict__.update(sys.modules[module_name].__dict__)
    view.Job = defined

    def job_file_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                        level: int = 0) -> Any:
        module = builtins.__import__(name, globals, locals, fromlist, level)
        return view if name == module_name and fromlist and level == 0 else module

    return {**builtins.__dict__, "__import__": job_file_import}


CALLER_OF = {"_checkSiteIsValid": "setDestination"}     # DIRAC files the error under its helper


def dirac_report_message(report: Any) -> str:
    """The "Message:" of one of DIRAC's multi-line API error reports, else the report in one line."""
    found = re.search(r"^Message: (.*)$", str(report), re.MULTILINE)
    return found.group(1).strip() if found else " ".join(str(report).split())


def rejection_fix(errors: dict) -> str:
    if any(check in errors for check in CS_CHECKS):
        return ("DIRAC checks sites, CEs and platforms against its configuration: run `dirac-configure` "
                "or source your experiment's DIRAC environment (`--backend local` ignores these settings)")
    return "fix the job file; nothing was submitted"


def import_dirac_job() -> type:
    try:
        from DIRAC import gLogger
        from DIRAC.Interfaces.API.Job import Job as DiracJob
    except ImportError as e:
        raise BackendError(f"cannot import DIRAC ({e})",
                           "install it (pip install DIRAC) or source your DIRAC environment, "
                           "e.g. `lb-dirac` or DIRACOS's diracosrc") from None
    quiet_dirac_logs(gLogger)
    return DiracJob


def quiet_dirac_logs(logger: Any) -> None:
    """DIRAC's own log lines would interleave with ours; its errors reach the user through ours. Even
    ERROR: DISET logs a traceback for every connection reset while a service stops or starts."""
    logger.setLevel(os.environ.get("GRID_DIRAC_LOGLEVEL", "FATAL"))


# ==================================================================================================
# Backends
# ==================================================================================================
# A backend does five things: submit a job, report the state of many jobs at once, fetch a job's
# output into an empty folder, kill jobs, and tell one job's detailed history. Calls block;
# `threaded` tells the engine to run them in its threadpool. Failures that may pass raise CallFailed.
# A backend with grid storage also names the files a job left there (OutputFile: output data, and an
# output sandbox too big for the sandbox store) and downloads one replica of a file; checking and
# placing them is the Downloads section's work, the same for every backend.

class Backend:
    name = "?"
    threaded = False

    def connect(self) -> None:
        """Check that the backend can be used at all; raise BackendError with the fix if not."""

    def proxy_seconds_left(self) -> Optional[float]:
        """Seconds the grid proxy is still valid (0: expired or missing); None: no proxy needed."""
        return None

    def submit(self, spec: JobSpec, tag: str) -> int:
        raise NotImplementedError

    def status(self, ids: list[int]) -> dict[int, JobState]:
        raise NotImplementedError

    def find(self, tags: list[str], groups: list[str], known: set[int], since: float = 0.0) -> dict[str, int]:
        """The ids of jobs the server accepted with these tags: {tag: id}; none was submitted before
        `since` (unix time: the batch's creation)."""
        raise NotImplementedError

    def bundle_limit(self) -> int:
        """Most jobs one submit_bundle() call may carry; below 2, the backend does not bundle."""
        return 0

    def bundle_key(self, spec: JobSpec) -> Optional[tuple]:
        """Jobs with equal keys can share one submit_bundle() call; None: this job goes alone."""
        return None

    def submit_bundle(self, specs: list[JobSpec], tags: list[str]) -> list[int]:
        """Submit several jobs in one call; their ids, in the order of specs."""
        raise NotImplementedError

    def fetch_output(self, job_id: int, dest: Path) -> Optional[bool]:
        """Fetch the job's output sandbox into the empty folder dest. False: the sandbox store has
        none for it, so it may be on grid storage (grid_sandbox); None or True: dest is the sandbox."""
        raise NotImplementedError

    def job_outputs(self, job_id: int, done: bool) -> list[OutputFile]:
        """The output data files the job left on grid storage (done: it ended Done, so every declared
        file should be there). A backend without grid storage has none."""
        return []

    def grid_sandbox(self, job_id: int) -> Optional[OutputFile]:
        """The job's output sandbox as a file on grid storage, when it was too big for the sandbox store."""
        return None

    def replicas(self, lfn: str) -> list[str]:
        """The storage elements that hold a copy of the file, each to be tried on its own."""
        return []

    def fetch_file(self, lfn: str, dest: Path, replica: Optional[str] = None) -> Path:
        """Download one copy of a file (from `replica`, or the backend's choice) into the empty folder
        dest; returns its path. The copy may be bad: the caller checks it against the catalogue."""
        raise NotImplementedError

    def ready_output(self, job_id: int) -> Optional[Path]:
        """A complete output folder on this file system, to be renamed into place as it is; None:
        fetch_output fills a temporary one instead."""
        return None

    def kill(self, ids: list[int]) -> None:
        raise NotImplementedError

    def reschedule(self, ids: list[int]) -> None:
        """Run the same jobs (same ids) again from the start."""
        raise BackendError(f"the {self.name} backend cannot reschedule jobs",
                           "use `grid resubmit`, which submits them again as new jobs")

    def logging_info(self, job_id: int) -> list[LoggingRecord]:
        """Every state the backend recorded for one job, oldest first (one call: `why` asks on demand)."""
        raise NotImplementedError


# ==================================================================================================
# DIRAC backend
# ==================================================================================================
# The real WMS through DIRAC's client API: the tag that finds a job again, bundles as parametric
# jobs, clients kept per thread, the version and the proxy, and the backend itself.

# How DIRAC says that a server did not answer at all (DISET retries the connection first).
UNREACHABLE_PATTERN = re.compile(
    r"Errno (32|101|104|110|111|113)\b|Connection (refused|reset|timed out)|timed out|No route to host|"
    r"Peer closed connection|Broken pipe|Name or service not known|Temporary failure in name resolution|"
    r"Can't connect", re.IGNORECASE)
TAG_PATTERN = re.compile(JOB_TAG_ATTRIBUTE + r'\s*=\s*"([^"]+)"')
GROUP_PATTERN = re.compile(r'^\s*JobGroup\s*=\s*"?([^";]+)"?\s*;', re.MULTILINE)


def tagged_jdl(jdl: str, tag: str) -> str:
    """Add grid.py's own attribute to a JDL, so the job can be recognised on the server."""
    text = jdl.strip()
    attribute = f'    {JOB_TAG_ATTRIBUTE} = "{tag}";'
    if text.endswith("]"):
        return f"{text[:-1].rstrip()}\n{attribute}\n]"
    return f"{text}\n{attribute}"


# -- bundles: several jobs of one job file as one parametric DIRAC job -----------------------------
# DIRAC expands a parametric job on the server: every "%(name)s" in the JDL takes the n-th value of
# the list "Parameters.name". grid.py varies the values that differ between the jobs of a bundle,
# the tag (GridPyJob) of each job, and the workflow it runs: each job keeps its own description,
# uploaded with the bundle's input sandbox as gridpy-<n>.xml. So a bundle is exactly its jobs, and
# each resulting DIRAC job can be found, watched and resubmitted on its own.

PARAMETER_PREFIX = "GridPy"
JOB_DESCRIPTION = "jobDescription.xml"
BUNDLE_FIXED = ("Arguments", "Executable", "InputSandbox")   # the same for every job of a bundle
BUNDLE_VALUE = re.compile(r"[A-Za-z0-9_.:/+=@~#-]+")         # what a parameter list carries intact
ATTRIBUTE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def parametric_key(spec: JobSpec) -> Optional[tuple]:
    """Jobs with equal keys can be one parametric job; None: this job cannot be in one.

    Within a key only the workflow (executables, arguments: each job keeps its own) and JDL values
    made of BUNDLE_VALUE characters differ. DIRAC strips spaces from parameter values and splits
    them at commas, so values with spaces, quotes or braces, lists and the input sandbox are part
    of the key. A job that is parametric itself, or whose JDL has "%" (DIRAC would substitute it),
    goes alone.
    """
    attributes = jdl_attributes(spec.jdl)
    arguments = attributes.get("Arguments", "").strip('"')
    if (not attributes or "%" in spec.jdl or not arguments.startswith(JOB_DESCRIPTION)
            or any(name.startswith("Parameter") or name == JOB_TAG_ATTRIBUTE for name in attributes)):
        return None
    fixed = tuple(sorted((name, value) for name, value in attributes.items()
                         if name in BUNDLE_FIXED or not ATTRIBUTE_NAME.fullmatch(name)
                         or not BUNDLE_VALUE.fullmatch(value)))
    job_file = spec.origin.rpartition(":")[0]
    return (job_file, tuple(sorted(attributes)), fixed)


def parametric_jdl(specs: list[JobSpec], tags: list[str], descriptions: list[str],
                   input_sandbox: list[str]) -> str:
    """One parametric JDL for jobs of one key: job n gets tags[n] and runs descriptions[n]."""
    classad = jdl_classad(specs[0].jdl)
    each = [jdl_attributes(spec.jdl) for spec in specs]
    for name in each[0]:
        values = [attributes[name] for attributes in each]
        if len(set(values)) > 1:
            classad.set_expression(name, f"%({PARAMETER_PREFIX}{name})s")
            classad.insertAttributeVectorString(f"Parameters.{PARAMETER_PREFIX}{name}", values)
    classad.insertAttributeString(JOB_TAG_ATTRIBUTE, f"%({PARAMETER_PREFIX}Tag)s")
    classad.insertAttributeVectorString(f"Parameters.{PARAMETER_PREFIX}Tag", tags)
    arguments = each[0]["Arguments"].strip('"')[len(JOB_DESCRIPTION):]
    classad.insertAttributeString("Arguments", f"%({PARAMETER_PREFIX}Description)s{arguments}")
    classad.insertAttributeVectorString(f"Parameters.{PARAMETER_PREFIX}Description", descriptions)
    if input_sandbox:
        classad.insertAttributeVectorString("InputSandbox", input_sandbox)
    else:
        classad.deleteAttribute("InputSandbox")
    classad.insertAttributeInt("Parameters", len(specs))      # DIRAC expands only with this one set
    return classad.asJDL()


def sandbox_entries(jdl: str) -> list[str]:
    classad = jdl_classad(jdl)
    return classad.getListFromExpression("InputSandbox") if classad.lookupAttribute("InputSandbox") else []


def is_remote_entry(entry: str) -> bool:
    """LFN: and SB: entries are on the grid already; anything else is a file to upload."""
    return entry.upper().startswith(("LFN:", "SB:"))


JOB_MANAGER = "WorkloadManagement/JobManager"
JOB_MONITORING = "WorkloadManagement/JobMonitoring"
SANDBOX_STORE = "WorkloadManagement/SandboxStore"


class DiracClients:
    """One thread's DIRAC client objects, made once and reused for every call of that thread.

    Left to itself, DIRAC makes a new client object for every call, and each new object reads and
    checks the proxy, then builds a new SSL context (certificate chain, CA directory) before it
    connects. With the objects kept and one SSL context made up front, a call costs the client
    about half the CPU. This needs DISET (dips://) services; with others (HTTPS, DiracX) DIRAC's
    usual client classes are used. A thread makes new clients after a failed call, when the proxy
    file changes (renewed) and after CLIENTS_MAX_AGE (CA and CRL updates, new service URLs).
    """

    def __init__(self, credentials: tuple, reuse_clients: bool) -> None:
        from DIRAC.WorkloadManagementSystem.Client.JobManagerClient import JobManagerClient
        from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient
        from DIRAC.WorkloadManagementSystem.Client.SandboxStoreClient import SandboxStoreClient
        from DIRAC.WorkloadManagementSystem.Client.WMSClient import WMSClient
        self.credentials, self.born = credentials, time.monotonic()
        if reuse_clients:
            from DIRAC.Core.DISET.private.Transports.SSL.M2Utils import getM2SSLContext
            from DIRAC.Core.DISET.RPCClient import RPCClient
            from DIRAC.Core.DISET.TransferClient import TransferClient
            probe = RPCClient(JOB_MANAGER)           # DIRAC settles the connection options (CA check, ...)
            context = getM2SSLContext(**probe.kwargs)
            # DIRAC's own client classes (they map keyword arguments to the service's), each
            # making every call through one kept RPCClient: Client._getRPC's `rpc`, always given.
            # Every call has a deadline (a DISET socket timeout): an answer that does not come is
            # an outage to wait out, never a hang.
            options = {"ctx": context, "timeout": CALL_DEADLINE}
            self.job_manager = kept_rpc(JobManagerClient, RPCClient(JOB_MANAGER, **options))
            self.monitoring = kept_rpc(JobMonitoringClient, RPCClient(JOB_MONITORING, **options))
            self.wms = WMSClient(jobManagerClient=self.job_manager,
                                 sbRPCClient=RPCClient(SANDBOX_STORE, **options),
                                 sbTransferClient=TransferClient(SANDBOX_STORE, **options))
            self.sandbox = self.wms.sandboxClient
        else:
            options = {"timeout": CALL_DEADLINE}
            self.job_manager, self.monitoring = JobManagerClient(**options), JobMonitoringClient(**options)
            self.wms = WMSClient(jobManagerClient=self.job_manager, **options)
            self.sandbox = SandboxStoreClient(**options)

    def stale(self, credentials: tuple) -> bool:
        return credentials != self.credentials or time.monotonic() - self.born > CLIENTS_MAX_AGE

    @property
    def data_manager(self) -> Any:
        """DIRAC's DataManager (with its file catalogue), made on a thread's first file."""
        if getattr(self, "_data_manager", None) is None:
            from DIRAC.DataManagementSystem.Client.DataManager import DataManager
            self._data_manager = DataManager()
        return self._data_manager


def kept_rpc(client_class: type, rpc: Any) -> Any:
    """An instance of one of DIRAC's Client classes whose calls all go through `rpc`."""

    class Kept(client_class):
        def _getRPC(self, rpc: Any = None, url: str = "", timeout: Any = None) -> Any:
            return rpc or self.kept

    client = Kept()
    client.kept = rpc
    return client


def speaks_dips(service: str) -> bool:
    """Whether DIRAC reaches this service over DISET (dips://) only, where clients can be reused."""
    from DIRAC.ConfigurationSystem.Client.PathFinder import getServiceURLs, useLegacyAdapter
    try:
        urls = getServiceURLs(service, failover=True)
        return bool(urls) and not useLegacyAdapter(service) and all(u.startswith("dips://") for u in urls)
    except Exception:                  # noqa: BLE001  any doubt: DIRAC's usual clients
        return False


DIRAC_TESTED = "9.1"                 # what the dirac backend is tested with (tests/lab); setup.cfg: DIRAC>=9


def require_dirac_version(version: str) -> None:
    """The dirac backend needs DIRAC 9 (ZstdCompatibleTarFile, getJobsStates, ...); with DIRAC 8 only the
    local backend works. Say so before the first call instead of failing at the first download."""
    major = re.match(r"v?(\d+)", version or "")
    if major and int(major.group(1)) < 9:
        raise BackendError(f"DIRAC {version} is installed; the dirac backend needs DIRAC 9 or later "
                           f"(tested with {DIRAC_TESTED})", "install it: pip install 'DIRAC>=9', or use a "
                           "DIRAC 9 environment; `--backend local` works with DIRAC 8 too")


def in_threads(fn: Callable, items: list, threads: int) -> list:
    """[fn(item) for item in items], the items shared among a few real threads (this runs in a thread
    of gevent's pool already: no greenlets, and no concurrent.futures, whose queue gevent patches);
    the first exception is raised once all are done."""
    results: list = [None] * len(items)
    errors: list = []

    def work(start: int) -> None:
        for index in range(start, len(items), threads):
            try:
                results[index] = fn(items[index])
            except Exception as e:          # noqa: BLE001  handed to the caller below
                errors.append(e)
                return

    workers = [threading.Thread(target=work, args=(start,), daemon=True) for start in range(min(threads, len(items)))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return results


def proxy_user() -> str:
    """The proxy's DIRAC user name (the Owner of the jobs it submits), '' if unknown."""
    from DIRAC.Core.Security.ProxyInfo import getProxyInfo
    proxy = getProxyInfo(disableVOMS=True)
    return str(proxy["Value"].get("username", "")) if proxy["OK"] else ""


def credentials_stamp() -> tuple:
    """Changes when the proxy file is renewed or replaced."""
    from DIRAC.Core.Security.Locations import getProxyLocation
    path = getProxyLocation() or ""
    try:
        info = os.stat(path)
    except OSError:
        return (path,)
    return (path, info.st_ino, info.st_mtime_ns, info.st_size)


# -- outputs on grid storage: DIRAC's conventions for user jobs ------------------------------------
# The JobWrapper uploads a job's OutputData to /<vo>/<LFNUserPrefix>/<o>/<owner>/<job id // 1000>/<job
# id>/<name> (or under OutputPath) and registers it in the file catalogue; an output sandbox too big
# for the sandbox store goes there too, as a tar archive named LDSB.<random>. Job parameters
# (UploadedOutputData, OutputSandboxLFN) say the same where the server keeps them (OpenSearch), which
# many installations do not: the job's description and the catalogue are the normal way.

GRID_SANDBOX_PREFIX = "LDSB."


@dataclass(slots=True)
class OutputPlan:
    """Where a DIRAC job's outputs go, from its JDL as the server keeps it."""

    owner: str
    group: str
    path: str                          # OutputPath ("" if none)
    data: list                         # OutputData entries: file names, globs or LFN:s

    @classmethod
    def from_jdl(cls, jdl: str) -> "OutputPlan":
        classad = jdl_classad(jdl)

        def text(name: str) -> str:
            return classad.getAttributeString(name) if classad.lookupAttribute(name) else ""
        data = classad.getListFromExpression("OutputData") if classad.lookupAttribute("OutputData") else []
        return cls(text("Owner"), text("OwnerGroup"), text("OutputPath"), [d for d in data if d])


def user_lfn(entry: str, base: str, output_path: str, job_id: int) -> str:
    """The LFN a job's output file gets, as DIRAC's JobWrapper makes it (it has no public helper):
    an LFN: entry as it is; else under OutputPath (absolute with LFN:, else below the user's base
    directory), by default in <base>/<job id // 1000>/<job id>/."""
    if entry.upper().startswith("LFN:"):
        return entry[4:]
    if output_path.startswith("LFN:"):
        directory = output_path[4:]
    elif output_path:
        directory = posixpath.join(base, output_path.lstrip("/"))
    else:
        directory = f"{base}/{job_id // 1000}/{job_id}"
    return posixpath.normpath(posixpath.join(directory, posixpath.basename(entry)))


def sandbox_went_to_storage(records: list[LoggingRecord]) -> bool:
    """The job's logging info says its output sandbox was uploaded as output data: the JobWrapper
    began uploading output data and never reported the sandbox uploaded (a failed job reports no
    sandbox step at all). Only the job's last run counts."""
    last_run = records
    for n, record in enumerate(records):
        if record.status == RESCHEDULED:
            last_run = records[n + 1:]
    minors = [record.minor for record in last_run]
    return "Uploading Output Data" in minors and "Output Sandbox Uploaded" not in minors


def catalogue_file(lfn: str, metadata: dict, kind: str = "data") -> OutputFile:
    return OutputFile(lfn, int(metadata.get("Size") or 0), str(metadata.get("Checksum") or ""), kind)


def dirac_time(text: str) -> float:
    """DIRAC's time stamps are UTC 'YYYY-MM-DD HH:MM:SS' strings; 0 when it is not one."""
    try:
        stamp = datetime.datetime.strptime(text.split(".")[0], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return 0.0
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()


def dirac_message(error: Exception) -> str:
    """The first line of the reason inside a DIRAC exception (often an S_ERROR dict in its args)."""
    value = error.args[0] if error.args else error
    text = value.get("Message", str(value)) if isinstance(value, dict) else str(value)
    return first_line(re.sub(r"^Reason\(s\):\s*", "", text.strip()))


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0].strip()


def utc_timestamp(value: Any) -> float:
    """Unix time of a DIRAC time stamp: a naive UTC datetime (DISET sends those), or its text."""
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=datetime.timezone.utc).timestamp()
    return dirac_time(value) if isinstance(value, str) else 0.0


def initialize_dirac(initialize: Callable[[], None]) -> None:
    """DIRAC.initialize(), tried again when the configuration server's answer was lost.

    DIRAC's background refresher may rebuild the list of configuration servers while initialize()
    reads it; under load the list is then empty for a moment ("No configuration servers found")
    and a resuming `watch` would stop with "not configured". A real misconfiguration fails every try.
    """
    for attempt in range(1, INIT_TRIES + 1):
        try:
            initialize()
            return
        except Exception as e:             # noqa: B902  DIRACInitError and friends
            reason = dirac_message(e)
            transient = "No configuration servers found" in reason or UNREACHABLE_PATTERN.search(reason)
            if attempt == INIT_TRIES or not transient:
                raise
            time.sleep(0.5 * attempt)


class DiracConnection(Backend):
    """DIRAC itself, for the backend below: its configuration and the user's proxy checked once
    (connect), every thread's kept clients (_clients), and each reply turned into its value or the
    error the engine knows what to do with (_value)."""

    def __init__(self) -> None:
        self.local = threading.local()       # DIRAC's client objects are not shared between threads
        self.reuse_clients = False           # decided by connect(): every service speaks dips://

    def connect(self) -> None:
        try:
            import DIRAC
            from DIRAC.Core.Security.ProxyInfo import getProxyInfo
        except ImportError as e:
            raise BackendError(f"cannot import DIRAC ({e})",
                               "install it or source your DIRAC environment (e.g. `lb-dirac`)") from None
        quiet_dirac_logs(DIRAC.gLogger)
        require_dirac_version(getattr(DIRAC, "__version__", ""))
        proxy = getProxyInfo(disableVOMS=True)
        if not proxy["OK"]:
            raise BackendError(f"no grid proxy: {proxy['Message']}",
                               "run `dirac-proxy-init` (LHCb: `lhcb-proxy-init`)")
        if proxy["Value"].get("secondsLeft", 0) <= 0:
            raise BackendError("your grid proxy has expired",
                               "run `dirac-proxy-init` (LHCb: `lhcb-proxy-init`)")
        try:
            initialize_dirac(DIRAC.initialize)
        except Exception as e:             # DIRACInitError and friends
            reason = dirac_message(e)
            if UNREACHABLE_PATTERN.search(reason):
                raise BackendError(f"cannot reach DIRAC's configuration server: {reason}",
                                   "check the network and try again later; nothing is lost") from None
            raise BackendError(f"DIRAC is not configured: {reason}",
                               "run `dirac-configure`, or source your experiment's DIRAC "
                               "environment (e.g. `lb-dirac`)") from None
        self.reuse_clients = all(map(speaks_dips, (JOB_MANAGER, JOB_MONITORING, SANDBOX_STORE)))

    def _clients(self) -> DiracClients:
        clients = getattr(self.local, "clients", None)
        credentials = credentials_stamp()
        if clients is None or clients.stale(credentials):
            clients = self.local.clients = DiracClients(credentials, self.reuse_clients)
        return clients

    def proxy_seconds_left(self) -> float:
        from DIRAC.Core.Security.ProxyInfo import getProxyInfo
        proxy = getProxyInfo(disableVOMS=True)          # reads the local file: about a millisecond
        return float(proxy["Value"].get("secondsLeft", 0)) if proxy["OK"] else 0.0

    def _require_proxy(self) -> None:
        """Fail before calling DIRAC when the proxy has expired: DIRAC would log an error per call."""
        if self.proxy_seconds_left() <= PROXY_MIN_LEFT:
            raise ProxyExpired("the grid proxy has expired")

    def _value(self, result: dict, what: str) -> Any:
        """The value of DIRAC's S_OK, or the failure as CallFailed, ServerUnreachable or ProxyExpired;
        after a failure the thread starts from new clients, as DIRAC's own calls would."""
        if result.get("OK"):
            return result["Value"]
        self.local.clients = None
        message = f"{what}: {first_line(result.get('Message', 'unknown error'))}"
        if self.proxy_seconds_left() <= PROXY_MIN_LEFT:
            raise ProxyExpired(message)
        if UNREACHABLE_PATTERN.search(message):
            raise ServerUnreachable(message)
        raise CallFailed(message)


class DiracBackend(DiracConnection):
    """The real DIRAC WMS through DIRAC's client API, with the user's configuration and proxy."""

    name = "dirac"
    threaded = True

    def __init__(self) -> None:
        super().__init__()
        self.reported: dict[int, JobState] = {}      # what status() last said about each job
        self.parameters_unavailable = False  # the server keeps no job parameters (no OpenSearch)

    def submit(self, spec: JobSpec, tag: str) -> int:
        # What Dirac().submitJob does with a Job object, from the stored description instead,
        # so that a job can be (re)submitted after a restart.
        self._require_proxy()
        result = self._clients().wms.submitJob(tagged_jdl(spec.jdl, tag), io.StringIO(spec.xml))
        value = self._value(result, "submission")
        return int(value[0] if isinstance(value, list) else value)

    def status(self, ids: list[int]) -> dict[int, JobState]:
        """One getJobsStates call: the three statuses of every job (getJobsSummary would send all
        thirty attributes, five times the bytes). A job's site changes only with its status, so
        getJobsSites asks only about the jobs whose status just changed to Matched or beyond; a job
        that just ended gets its whole record once instead, for the time it ended (the cleaning
        deadline counts from it) and how it ended: getJobsStates was seen to catch a job between
        the updates of its end (Done, minor status "Output Sandbox Uploaded")."""
        self._require_proxy()
        monitoring = self._clients().monitoring
        answer = self._value(monitoring.getJobsStates(list(ids)), "status query")
        states, moved = {}, []
        for job_id in ids:
            attrs = answer.get(job_id) or answer.get(str(job_id))
            if attrs is None:                # gone from the server: cleaned up or removed
                states[job_id] = JobState(DELETED, "Unknown to the server")
                continue
            states[job_id] = JobState(attrs.get("Status", ""), attrs.get("MinorStatus", ""),
                                      attrs.get("ApplicationStatus", ""))
            if states[job_id].status not in NO_NEW_SITE and \
                    states[job_id].status != getattr(self.reported.get(job_id), "status", None):
                moved.append(job_id)
        ended = [job_id for job_id in moved if is_final(states[job_id].status)]
        running = [job_id for job_id in moved if not is_final(states[job_id].status)]
        details = self._value(monitoring.getJobsSites(running), "site query") if running else {}
        if ended:
            details.update(self._value(monitoring.getJobsSummary(ended), "status query"))
        moved_set = set(moved)
        for job_id, state in states.items():
            if job_id in moved_set:
                attrs = details.get(job_id) or details.get(str(job_id)) or {}
                state.site = attrs.get("Site", "")
                if is_final(state.status):
                    state.ended = utc_timestamp(attrs.get("LastUpdateTime"))
                    if is_final(attrs.get("Status", "")):    # read after: the last word on how it ended
                        state.status, state.minor, state.app = (
                            attrs["Status"], attrs.get("MinorStatus", state.minor),
                            attrs.get("ApplicationStatus", state.app))
            else:
                state.site = self.reported[job_id].site if job_id in self.reported else None
            if is_final(state.status):
                self.reported.pop(job_id, None)      # never asked about again
            else:
                self.reported[job_id] = state
        return states

    def find(self, tags: list[str], groups: list[str], known: set[int], since: float = 0.0) -> dict[str, int]:
        """The batch's jobs share a JobGroup (a batch made before 0.2 may share DIRAC's default, the
        VO's name, with every job of the VO): only this user's jobs of the group updated since the
        batch was created (an hour to spare for clocks) and not known yet have their JDL read, several
        at once, each with its deadline."""
        self._require_proxy()
        monitoring, wanted, found = self._clients().monitoring, set(tags), {}
        cut = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since - 3600)) if since else None
        owner = proxy_user()
        unknown = []
        for group in groups:
            condition = {"JobGroup": group, **({"Owner": owner} if owner else {})}
            ids = self._value(monitoring.getJobs(condition, cut), "job search") or []
            unknown += [job_id for job_id in map(int, ids) if job_id not in known]

        def tag_of(job_id: int) -> Optional[str]:
            jdl = self._value(self._clients().monitoring.getJobJDL(job_id, True), "job description")
            match = TAG_PATTERN.search(jdl)
            return match.group(1) if match else None

        for job_id, tag in zip(unknown, in_threads(tag_of, unknown, FIND_PARALLEL)):
            if tag in wanted:
                found.setdefault(tag, job_id)
        self._confirm(list(found.values()))
        return found

    def _confirm(self, ids: list[int]) -> None:
        """Jobs of a bundle wait in Submitting until confirmed: confirm those a cut call left there."""
        if not ids:
            return
        summary = self._value(self._clients().monitoring.getJobsSummary(ids), "status query")
        waiting = [int(key) for key, attrs in summary.items() if attrs.get("Status") == SUBMITTING]
        if waiting:
            self._value(self._clients().job_manager.confirmBulkSubmission(waiting), "bundle confirmation")

    def bundle_limit(self) -> int:
        from DIRAC import gConfig
        from DIRAC.ConfigurationSystem.Client.PathFinder import getServiceSection
        try:
            return int(gConfig.getValue(f"{getServiceSection(JOB_MANAGER)}/MaxParametricJobs",
                                        BUNDLE_LIMIT_FALLBACK))
        except (TypeError, ValueError):
            return BUNDLE_LIMIT_FALLBACK

    def bundle_key(self, spec: JobSpec) -> Optional[tuple]:
        return parametric_key(spec)

    def submit_bundle(self, specs: list[JobSpec], tags: list[str]) -> list[int]:
        """One parametric job: one input sandbox upload (shared files and every job's workflow),
        one submission, one confirmation."""
        self._require_proxy()
        clients = self._clients()
        entries = sandbox_entries(specs[0].jdl)
        files = [entry for entry in entries if not is_remote_entry(entry)]
        with tempfile.TemporaryDirectory(prefix="grid-bundle-") as tmp:
            descriptions = []
            for n, spec in enumerate(specs):
                descriptions.append(f"gridpy-{n:04d}.xml")
                Path(tmp, descriptions[-1]).write_text(spec.xml)
            sandbox = self._value(clients.sandbox.uploadFilesAsSandbox(
                files + [os.path.join(tmp, name) for name in descriptions]), "input sandbox upload")
        jdl = parametric_jdl(specs, tags, descriptions, [e for e in entries if is_remote_entry(e)] + [sandbox])
        result = clients.job_manager.submitJob(jdl)
        too_large = re.search(r"exceeds the limit of (\d+)", result.get("Message", "") or "")
        if not result["OK"] and too_large:
            raise BundleTooLarge(f"bundle submission: {result['Message']}", int(too_large.group(1)))
        ids = [int(job_id) for job_id in self._value(result, "bundle submission")]
        if len(ids) != len(specs):       # never seen; the jobs are found by their tags on the next try
            raise CallFailed(f"bundle submission: {len(ids)} job(s) created for {len(specs)}")
        self._value(clients.job_manager.confirmBulkSubmission(ids), "bundle confirmation")
        return ids

    def fetch_output(self, job_id: int, dest: Path) -> bool:
        from DIRAC.WorkloadManagementSystem.Client.SandboxStoreClient import ZstdCompatibleTarFile
        self._require_proxy()
        client = self._clients().sandbox
        tmp = tempfile.mkdtemp(prefix="grid-sandbox-", dir=dest.parent)
        try:
            result = client.downloadSandboxForJob(job_id, "Output", tmp, unpack=False)
            if not result["OK"] and "No Output sandbox" in result.get("Message", ""):
                return False                   # none registered: too big (on grid storage), or no output
            for archive in self._value(result, "output download"):
                with ZstdCompatibleTarFile(archive, mode="r") as tar:
                    safe_extract(tar, dest)
            return True
        finally:
            remove_tree(Path(tmp))

    # -- outputs on grid storage ------------------------------------------------------------------

    def _output_plan(self, job_id: int) -> tuple[OutputPlan, str]:
        """The job's output plan and the base of its owner's user directory (/<vo>/user/<o>/<owner>)."""
        from DIRAC.ConfigurationSystem.Client.Helpers.Operations import Operations
        from DIRAC.ConfigurationSystem.Client.Helpers.Registry import getVOForGroup
        jdl = self._value(self._clients().monitoring.getJobJDL(int(job_id), False), "job description")
        plan = OutputPlan.from_jdl(jdl)
        vo = getVOForGroup(plan.group) or "dirac"
        prefix = Operations(vo=vo).getValue("LFNUserPrefix", "user")
        return plan, f"/{vo}/{prefix}/{plan.owner[:1]}/{plan.owner}"

    def _job_parameters(self, job_id: int) -> dict:
        """The job's parameters, where the server keeps them; {} where it does not. The lab and many
        installations have no parameter store (OpenSearch): after one failure they are not asked again
        (a server that is down fails the job description's call next, and that one counts)."""
        if self.parameters_unavailable:
            return {}
        result = self._clients().monitoring.getJobParameters(int(job_id), None)
        if not result.get("OK"):
            self.parameters_unavailable = True
            return {}
        value = result["Value"]
        return value.get(int(job_id)) or value.get(str(job_id)) or {}

    def _listing(self, directory: str) -> dict[str, dict]:
        """{lfn: catalogue metadata} of the files in one catalogue directory; {} if it does not exist."""
        catalogue = self._clients().data_manager.fileCatalog
        value = self._value(catalogue.listDirectory(directory), "catalogue listing")
        if directory in value["Failed"]:
            reason = str(value["Failed"][directory])
            if "not exist" in reason.lower() or "no such" in reason.lower():
                return {}
            self._value({"OK": False, "Message": reason}, f"catalogue listing of {directory}")
        entry = value["Successful"].get(directory) or {}
        return {lfn: details.get("MetaData", details) for lfn, details in entry.get("Files", {}).items()}

    def _metadata(self, lfns: list[str]) -> dict[str, dict]:
        catalogue = self._clients().data_manager.fileCatalog
        return self._value(catalogue.getFileMetadata(lfns), "catalogue metadata")["Successful"] if lfns else {}

    def job_outputs(self, job_id: int, done: bool) -> list[OutputFile]:
        """From the job parameters (UploadedOutputData) where the server has them; otherwise from the
        job's JDL (OutputData, OutputPath, owner, VO) and DIRAC's LFN convention, each name or glob
        matched against a listing of its catalogue directory. One or two calls per job (none more
        when it declared no output data)."""
        self._require_proxy()
        uploaded = self._job_parameters(job_id).get("UploadedOutputData", "")
        if uploaded:
            lfns = [lfn.strip() for lfn in str(uploaded).split(",") if lfn.strip()]
            found = self._metadata(lfns)
            return [catalogue_file(lfn, found[lfn]) if lfn in found else OutputFile(lfn, 0, registered=False)
                    for lfn in lfns if not posixpath.basename(lfn).startswith(GRID_SANDBOX_PREFIX)]
        plan, base = self._output_plan(job_id)
        wanted = [user_lfn(entry, base, plan.path, job_id) for entry in plan.data]
        listings = {directory: self._listing(directory) for directory in dict.fromkeys(map(posixpath.dirname, wanted))}
        files: dict[str, OutputFile] = {}
        for pattern in wanted:
            listing = listings[posixpath.dirname(pattern)]
            matches = [lfn for lfn in listing if fnmatch.fnmatchcase(posixpath.basename(lfn), posixpath.basename(pattern))
                       and not posixpath.basename(lfn).startswith(GRID_SANDBOX_PREFIX)]
            for lfn in sorted(matches):
                files.setdefault(lfn, catalogue_file(lfn, listing[lfn]))
            if not matches and done and not any(c in posixpath.basename(pattern) for c in "*?["):
                files.setdefault(pattern, OutputFile(pattern, 0, registered=False))
        return list(files.values())

    def grid_sandbox(self, job_id: int) -> Optional[OutputFile]:
        """The tarball of an output sandbox the JobWrapper put on grid storage for its size: the newest
        LDSB.* file of the job's directory. Under a shared OutputPath, the one registered closest after
        the job began uploading (OutputSandboxLFN, where it exists, is computed without OutputPath)."""
        records = self.logging_info(job_id)
        if not sandbox_went_to_storage(records):
            return None
        named = self._job_parameters(job_id).get("OutputSandboxLFN", "")
        if named and (found := self._metadata([named])):
            return catalogue_file(named, found[named], kind="sandbox")
        plan, base = self._output_plan(job_id)
        listing = self._listing(posixpath.dirname(user_lfn(GRID_SANDBOX_PREFIX, base, plan.path, job_id)))
        tarballs = {lfn: utc_timestamp(meta.get("CreationDate"))
                    for lfn, meta in listing.items() if posixpath.basename(lfn).startswith(GRID_SANDBOX_PREFIX)}
        if not tarballs:
            return None
        if plan.path:
            began = max((r.time for r in records if r.minor == "Uploading Output Data"), default=0.0)
            chosen = min(tarballs, key=lambda lfn: (tarballs[lfn] < began - 5, abs(tarballs[lfn] - began)))
        else:
            chosen = max(tarballs, key=tarballs.get)
        return catalogue_file(chosen, listing[chosen], kind="sandbox")

    def replicas(self, lfn: str) -> list[str]:
        self._require_proxy()
        value = self._value(self._clients().data_manager.getActiveReplicas([lfn], getUrl=False), "replica lookup")
        return sorted(value["Successful"].get(lfn) or {})

    def fetch_file(self, lfn: str, dest: Path, replica: Optional[str] = None) -> Path:
        """DataManager.getFile into dest (a folder of this file alone: it writes to the final name and
        leaves a bad copy there). A storage element that does not answer is ServerUnreachable."""
        self._require_proxy()
        where = f" from {replica}" if replica else ""
        value = self._value(self._clients().data_manager.getFile(lfn, destinationDir=str(dest), sourceSE=replica),
                            f"download of {lfn}{where}")
        if lfn in value["Successful"]:
            return Path(value["Successful"][lfn])
        reason = first_line(str(value["Failed"].get(lfn, "not downloaded")))
        message = f"download of {posixpath.basename(lfn)}{where}: {reason}"
        if UNREACHABLE_PATTERN.search(reason):
            raise ServerUnreachable(message)
        raise CallFailed(message)

    def kill(self, ids: list[int]) -> None:
        self._require_proxy()
        # positional only: a reused DISET client sends no keyword arguments (WMSClient.killJob would)
        self._value(self._clients().job_manager.killJob(list(ids)), "kill")

    def reschedule(self, ids: list[int]) -> None:
        self._require_proxy()
        self._value(self._clients().wms.rescheduleJob(list(ids)), "reschedule")

    def logging_info(self, job_id: int) -> list[LoggingRecord]:
        self._require_proxy()
        rows = self._value(self._clients().monitoring.getJobLoggingInfo(int(job_id)), "logging info")
        return [LoggingRecord(str(status), str(minor), str(app), dirac_time(str(when)), str(source))
                for status, minor, app, when, source in rows]


# ==================================================================================================
# Local backend
# ==================================================================================================
# This machine as a DIRAC site: a detached site process per batch runs the jobs through DIRAC's
# statuses, with or without grid.py watching.

class LocalBackend(Backend):
    """This machine as a DIRAC site: a detached site process per batch runs the jobs, at most one per
    CPU at once (GRID_LOCAL_SLOTS changes that), through DIRAC's statuses.

    Each job lives in .grid/local/<id>/: spec.json (what to run; its input files, captured when it
    was submitted, are in .grid/local/inputs/ by content, once each), state.json and its history
    logging.jsonl, work/ (its working directory) and, once collected, output/. The site (LocalSite)
    runs jobs to the end whether or not a grid.py command runs; this class submits jobs, reads their
    states, asks the site to kill or rerun them, starts a site when it finds work and none runs,
    and collects a final job's outputs into a folder that is renamed into place. Every change of a
    job's state is made under the batch's lock (.grid/local/lock).
    """

    name = "local"
    threaded = False

    def __init__(self, batch_dir: Path) -> None:
        self.root = batch_dir / STATE_DIR / "local"
        self.next_id = 0
        self.captured: dict[tuple, str] = {}     # a file's (path, inode, size, mtime): its digest
        self.site_checked = 0.0

    def connect(self) -> None:
        (self.root / LOCAL_INPUTS).mkdir(parents=True, exist_ok=True)

    def _dir(self, job_id: int) -> Path:
        return self.root / str(job_id)

    def _state(self, job_id: int) -> dict:
        return read_local_state(self._dir(job_id))

    def _new_id(self) -> int:
        """A fresh id, claimed by creating its folder (atomic, so ids are never shared)."""
        if not self.next_id:
            self.next_id = max((int(p) for p in os.listdir(self.root) if p.isdigit()), default=0) + 1
        while True:
            job_id, self.next_id = self.next_id, self.next_id + 1
            try:
                self._dir(job_id).mkdir()
                return job_id
            except FileExistsError:
                continue

    def submit(self, spec: JobSpec, tag: str) -> int:
        """Capture the input files as they are now (what runs is what was submitted), then the job."""
        inputs = [self._capture(entry) for entry in spec.input_sandbox if not is_remote_entry(entry)]
        with local_lock(self.root):
            job_id = self._new_id()
            folder = self._dir(job_id)
            write_local_state(folder, "JobManager", RECEIVED, "Job accepted")
            # The job exists once spec.json does (written last, atomically): find() goes by it.
            atomic_write(folder / "spec.json", json.dumps(
                {"tag": tag, "name": spec.name, "steps": spec.steps, "inputs": inputs,
                 "remote_inputs": [entry for entry in spec.input_sandbox if is_remote_entry(entry)],
                 "output_sandbox": spec.output_sandbox, "output_data": output_data(spec.jdl)}).encode())
        self.ensure_site(now=True)
        return job_id

    def _capture(self, entry: str) -> list:
        """One input file into .grid/local/inputs/<sha256> (a folder as DIRAC's Job API packs one,
        <name>.tar.gz): [name in the working directory, digest, mode]. A file many jobs share is
        read and stored once."""
        path = Path(entry)
        try:
            info = path.stat()
            if path.is_dir():
                return [f"{path.name}.tar.gz", store_input(self.root, path, pack=True), 0o644]
            key = (entry, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            if key not in self.captured:
                self.captured[key] = store_input(self.root, path)
        except OSError as e:
            raise CallFailed(f"input sandbox: {entry}: {e.strerror}") from None
        return [path.name, self.captured[key], stat.S_IMODE(info.st_mode)]

    def find(self, tags: list[str], groups: list[str], known: set[int], since: float = 0.0) -> dict[str, int]:
        wanted, found = set(tags), {}
        for entry in sorted(os.listdir(self.root), key=lambda e: int(e) if e.isdigit() else 0):
            if not entry.isdigit() or int(entry) in known:
                continue
            try:
                tag = json.loads((self.root / entry / "spec.json").read_bytes())["tag"]
            except (OSError, ValueError, KeyError):
                continue          # a submission cut before its spec was written: never accepted
            if tag in wanted:
                found.setdefault(tag, int(entry))
        return found

    def status(self, ids: list[int]) -> dict[int, JobState]:
        """The jobs' states as the site wrote them; starts a site if work is left and none runs."""
        states, active = {}, False
        for job_id in ids:
            state = self._state(job_id)
            if not state:
                states[job_id] = JobState(DELETED, "Unknown to the local backend")
                continue
            states[job_id] = JobState(state["status"], state.get("minor", ""), state.get("app", ""),
                                      state.get("site", ""), state.get("ended", 0.0), state.get("missing"))
            active = active or not is_final(state["status"])
        if active:
            self.ensure_site()
        return states

    def ensure_site(self, now: bool = False) -> None:
        """Start the batch's site unless one runs (looked at once a second at most, unless `now`)."""
        if not now and time.monotonic() - self.site_checked < 1.0:
            return
        self.site_checked = time.monotonic()
        if not site_running(self.root):
            spawn_detached([sys.executable, os.path.abspath(__file__), "_local-site", str(self.root)],
                           self.root / "site.log")

    def kill(self, ids: list[int]) -> None:
        """Jobs that do not run yet are Killed at once; running ones get SIGTERM (SIGKILL after
        LOCAL_KILL_GRACE) and the site records them Killed once their processes are gone, with
        what they printed. Waits up to LOCAL_KILL_WAIT for that."""
        stopping = []
        with local_lock(self.root):
            for job_id in ids:
                folder, state = self._dir(job_id), self._state(job_id)
                if not state or is_final(state["status"]):
                    continue
                if state.get("pgid"):
                    update_local_state(folder, "JobManager", minor=MARKED_FOR_TERMINATION, kill=True)
                    signal_job(state, signal.SIGTERM)
                    stopping.append(job_id)
                else:
                    write_local_state(folder, "JobManager", KILLED, MARKED_FOR_TERMINATION, ended=time.time())
            touch_changed(self.root)
        self._wait_final(stopping)

    def _wait_final(self, ids: list[int]) -> None:
        self.ensure_site(now=True)               # a site that died meanwhile ends them, as it starts
        deadline = time.monotonic() + LOCAL_KILL_WAIT
        while ids and time.monotonic() < deadline:
            ids = [job_id for job_id in ids if not is_final(self._state(job_id).get("status", DONE))]
            time.sleep(LOCAL_POLL)

    def reschedule(self, ids: list[int]) -> None:
        """As DIRAC does: stop the job wherever it is, forget its results, run it again from Received."""
        for job_id in ids:
            if not self._state(job_id):
                raise CallFailed(f"reschedule: job {job_id} is unknown to the local backend")
        self.kill(ids)
        with local_lock(self.root):
            for job_id in ids:
                folder = self._dir(job_id)
                if self._state(job_id).get("pgid"):
                    raise CallFailed(f"reschedule: job {job_id} is still stopping; try again in a moment")
                for name in ("work", "output", OUTPUT_PARTIAL):
                    remove_tree(folder / name)
                write_local_state(folder, "JobManager", RESCHEDULED, "Job Rescheduled")
            touch_changed(self.root)
        self.ensure_site(now=True)

    def ready_output(self, job_id: int) -> Path:
        """The job's output folder, built by moving its outputs out of its working directory (so
        they are stored once), to be renamed into place. Safe to repeat after a crash: what was
        moved stays moved, the folder is whole once output.partial/ is renamed to output/."""
        folder = self._dir(job_id)
        done = folder / "output"
        if done.is_dir():
            return done
        if self._state(job_id).get("collected"):
            raise CallFailed(f"the output of local job {job_id} was moved into the batch's folders already; "
                             "it is kept once")
        spec = json.loads((folder / "spec.json").read_bytes())
        partial, work = folder / OUTPUT_PARTIAL, folder / "work"
        partial.mkdir(exist_ok=True)
        if work.is_dir():
            sandbox = spec["output_sandbox"] + ["std.out", "std.err"] + [step[2] for step in spec["steps"]]
            collect_sandbox(work, partial, sandbox)
            if self._state(job_id).get("status") == DONE:      # as on the grid: no data from failed jobs
                collect_data(work, partial, spec.get("output_data", []))
        os.rename(partial, done)
        with local_lock(self.root):
            update_local_state(folder, "Downloader", history=False, collected=True)
        remove_tree(work)                         # the rest is scratch, as on a worker node
        return done

    def logging_info(self, job_id: int) -> list[LoggingRecord]:
        try:
            lines = (self._dir(job_id) / LOCAL_LOGGING).read_text().splitlines()
        except FileNotFoundError:                # a job run by an older grid.py: its state is all there is
            state = self._state(job_id)
            if not state:
                raise CallFailed(f"no logging information for local job {job_id}") from None
            return [LoggingRecord(state["status"], state.get("minor", ""), state.get("app", ""),
                                  state.get("ended") or state.get("since") or 0, "state.json")]
        records = []
        for line in lines:
            try:
                status, minor, app, when, source = json.loads(line)
            except (ValueError, TypeError):
                continue                             # a line cut short by a crash
            records.append(LoggingRecord(status, minor, app, when, source))
        return records


LOCAL_SITE = "Local"
LOCAL_LOGGING = "logging.jsonl"                  # a local job's history, one JSON list per line
LOCAL_INPUTS = "inputs"                          # .grid/local/inputs/<sha256>: input files as submitted
OUTPUT_PARTIAL = "output.partial"                # a job's output folder while it is being collected
MARKED_FOR_TERMINATION = "Marked for termination"
START_DELAY_HOOK = "GRID_LOCAL_START_DELAY"      # tests: seconds between starting a step and recording it


def output_data(jdl: str) -> list[str]:
    classad = jdl_classad(jdl)
    return classad.getListFromExpression("OutputData") if classad.lookupAttribute("OutputData") else []


LOCAL_LOCKS: dict[Path, list] = {}              # this process's batch locks: [open file, depth]


@contextlib.contextmanager
def local_lock(root: Path) -> Iterator[None]:
    """The batch's lock: every change of a local job's state is made holding it (held briefly).
    Reentrant within a process (a second flock of the same file would wait for the first)."""
    held = LOCAL_LOCKS.get(root)
    if held:
        held[1] += 1
    else:
        handle = open(root / "lock", "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        held = LOCAL_LOCKS[root] = [handle, 1]
    try:
        yield
    finally:
        held[1] -= 1
        if not held[1]:
            del LOCAL_LOCKS[root]
            held[0].close()


def read_local_state(folder: Path) -> dict:
    try:
        return json.loads((folder / "state.json").read_bytes())
    except (OSError, ValueError):
        return {}


def write_local_state(folder: Path, source: str, status: str, minor: str = "", app: str = "",
                      history: bool = True, **extra: Any) -> None:
    """Set a local job's state and add a line to its history, as DIRAC's JobLoggingDB would.

    The state comes first: a crash between the two loses a line of history, never a state. Lines
    are appended in one write each, so the site and commands never mix their lines.
    """
    state = {"status": status, "minor": minor, "app": app, "site": LOCAL_SITE, **extra}
    atomic_write(folder / "state.json", json.dumps(state).encode())
    if not history:
        return
    line = json.dumps([status, minor, app, round(time.time(), 3), source]) + "\n"
    with open(folder / LOCAL_LOGGING, "a") as log:
        log.write(line)


def update_local_state(folder: Path, source: str, history: bool = True, **changes: Any) -> dict:
    """Change some fields of a job's state (None removes one), keeping the others."""
    state = read_local_state(folder)
    state.update(changes)
    state = {key: value for key, value in state.items() if value is not None}
    status, minor, app = state.pop("status"), state.pop("minor", ""), state.pop("app", "")
    state.pop("site", None)
    write_local_state(folder, source, status, minor, app, history, **state)
    return read_local_state(folder)


def touch_changed(root: Path) -> None:
    """Tell the site that some job's state changed from outside (kill, reschedule)."""
    with open(root / "changed", "a"):
        os.utime(root / "changed")


def store_input(root: Path, source: Path, pack: bool = False) -> str:
    """Copy a file (or pack a folder as tar.gz) into inputs/, named by its sha256; the digest."""
    import hashlib
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=root / LOCAL_INPUTS)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            if pack:
                with tarfile.open(fileobj=out, mode="w:gz") as tar:
                    tar.add(source, arcname=source.name)
                out.flush()
                with open(tmp, "rb") as packed:
                    while block := packed.read(1 << 20):
                        digest.update(block)
            else:
                with open(source, "rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        target = root / LOCAL_INPUTS / digest.hexdigest()
        if target.exists():
            os.unlink(tmp)
        else:
            os.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return digest.hexdigest()


def prepare_work(folder: Path, spec: dict) -> Optional[str]:
    """The job's working directory as DIRAC's JobWrapper makes it: the input files in, every tar
    archive among them unpacked in place (the JobWrapper's tarfile.is_tarfile test: .tar, .tar.gz,
    .tgz, .tar.bz2, .tar.xz, whatever the name; a .zip is left as it is). Returns why not, or None."""
    for entry in spec.get("remote_inputs", []):
        return f"{entry} cannot be fetched without a grid"
    work = folder / "work"
    remove_tree(work)
    work.mkdir()
    inputs = folder.parent / LOCAL_INPUTS
    try:
        for name, digest, mode in spec.get("inputs", []):
            shutil.copyfile(inputs / digest, work / name)
            os.chmod(work / name, mode)
        for name, _, _ in spec.get("inputs", []):
            if tarfile.is_tarfile(work / name):
                with tarfile.open(work / name) as tar:
                    tar.extractall(work, filter="tar")
    except (OSError, tarfile.TarError) as e:
        return f"{getattr(e, 'filename', None) or ''}: {getattr(e, 'strerror', None) or e}".lstrip(": ")
    return None


def in_work(work: Path, pattern: str) -> list[Path]:
    """What DIRAC's JobWrapper finds for one declared output: glob.glob in the working directory
    (`*` matches no leading dot, `**` is `*`), kept inside it."""
    root = work.resolve()
    found = [work / name for name in sorted(glob.glob(pattern, root_dir=work))]
    return [path for path in found if path.resolve().is_relative_to(root) and path.resolve() != root]


def collect_sandbox(work: Path, dest: Path, patterns: list[str]) -> None:
    """Output sandbox files into dest by their base name, as DIRAC's sandbox upload stores them; a
    folder as <name>.tar, as the JobWrapper packs one."""
    for pattern in dict.fromkeys(patterns):
        for path in in_work(work, pattern):
            target = dest / path.name
            if path.is_dir() and not path.is_symlink():
                with tarfile.open(dest / f".{path.name}.tar", "w") as tar:
                    tar.add(path, arcname=path.name)
                os.replace(dest / f".{path.name}.tar", dest / f"{path.name}.tar")
            elif path.is_file():
                take_file(path, target)


def collect_data(work: Path, dest: Path, entries: list[str]) -> None:
    """Output data files into dest by their base name (their LFN's), folders by the files in them,
    as the JobWrapper's upload finds them."""
    for entry in entries:
        for path in in_work(work, data_name(entry)):
            files = [path] if path.is_file() else [Path(root, name) for root, _, names in os.walk(path)
                                                   for name in sorted(names)]
            for file in files:
                if not (dest / file.name).exists():
                    take_file(file, dest / file.name)


def data_name(entry: str) -> str:
    """The file in the working directory of one setOutputData entry: an LFN's base name, or the entry."""
    return os.path.basename(entry[4:]) if entry.upper().startswith("LFN:") else entry


def take_file(source: Path, target: Path) -> None:
    """Move a file (one copy on disk); a link is replaced by what it points to, as an upload would."""
    if source.is_symlink():
        shutil.copyfile(source, target)
    else:
        os.replace(source, target)


def missing_outputs(work: Path, sandbox: list[str], data: list[str]) -> list[list[str]]:
    """Declared outputs the job did not produce: [[name, "sandbox" | "data"], ...]. As DIRAC's
    JobWrapper counts them: a sandbox name without `*` that matches nothing (OutputSandboxMissingFiles),
    an output data entry that matches nothing ("Missing specified output data file")."""
    missing = [[name, "sandbox"] for name in sandbox if "*" not in name and not in_work(work, name)]
    return missing + [[entry, "data"] for entry in data if not in_work(work, data_name(entry))]


def site_running(root: Path) -> bool:
    """Whether a site holds the batch's site lock."""
    try:
        handle = open(root / "site.lock", "a")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False                             # closing the file releases the lock again


def spawn_detached(argv: list[str], log: Path) -> None:
    """Start a process that is nobody's child and has no terminal: fork, setsid, fork again, exec.
    It survives the terminal closing and the end (even SIGKILL) of the process that started it."""
    fork, waitpid = os.fork, os.waitpid
    if gevent is not None:             # the unpatched ones (gevent patched this process)
        from gevent import monkey
        fork, waitpid = monkey.get_original("os", "fork"), monkey.get_original("os", "waitpid")
    pid = fork()
    if pid == 0:                                 # the first child: only system calls until exec
        code = 0
        try:
            os.setsid()
            if fork() == 0:
                code = 127
                out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(out, 1)
                os.dup2(out, 2)
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # LevelDB's files are not close-on-exec
                os.execv(argv[0], argv)
        finally:
            os._exit(code)
    waitpid(pid, 0)


def process_start(pid: int) -> Optional[str]:
    """A process's start time (/proc/<pid>/stat), so that a reused pid is not taken for it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def signal_job(state: dict, sig: int) -> None:
    """Signal a job's processes (its own process group), if they are still the ones it started."""
    pgid = state.get("pgid")
    if pgid and process_start(pgid) == state.get("pstart"):
        with contextlib.suppress(OSError):
            os.killpg(pgid, sig)


@dataclass
class SiteJob:
    """A job the site runs: it holds a CPU slot from Matched until it is final."""

    job_id: int
    folder: Path
    spec: dict
    step: int = 0
    process: Optional[subprocess.Popen] = None
    log: Any = None                              # the step's application log, open: its stdout goes there
    kill_at: float = 0.0                         # when a job asked to stop gets SIGKILL
    failure: str = ""                            # the application status of the first step that failed


class LocalSite:
    """The local site of one batch: a detached process (`grid _local-site`) that runs the batch's
    local jobs to the end, whether or not any other grid.py command runs.

    It holds .grid/local/site.lock while it lives (so there is one per batch) and exits when no job
    is left to run; any command that finds work and no site starts one. At most `slots` jobs run at
    once; a job holds its slot from Matched until the site has recorded it final, so no slot is
    ever lost. Each step's stdout goes straight to its application log, its stderr to a file that
    is appended to the log when the step ends: output is never held in memory. The job's std.out is
    the site's own log of it, as std.out on the grid is the JobWrapper's.
    """

    def __init__(self, root: Path, slots: int) -> None:
        self.root, self.slots = root, slots
        self.running: dict[int, SiteJob] = {}
        self.waiting: list[int] = []             # Waiting jobs in id order, as of the last scan
        self.final: set[int] = set()             # jobs known final: not looked at again unless told
        self.seen: tuple = ()                    # (folder listing's mtime, the `changed` stamp)
        self.scanned = 0.0
        self.start_delay = float(os.environ.get(START_DELAY_HOOK, 0) or 0)

    def run(self) -> int:
        lock = open(self.root / "site.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return EXIT_OK                       # another site runs this batch
        atomic_write(self.root / "site.json", json.dumps(
            {"pid": os.getpid(), "since": time.time(), "slots": self.slots}).encode())
        self.end_orphans()
        idle_since = None
        while (self.root / "site.lock").exists():   # else the batch was removed: nothing to run
            ended = self.reap()
            if ended or self.changed() or time.monotonic() - self.scanned > LOCAL_SCAN_EVERY:
                self.scan()
            self.fill_slots()
            if self.running or self.waiting:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > LOCAL_SITE_IDLE and self.nothing_left(lock):
                return EXIT_OK
            time.sleep(LOCAL_POLL)
        return EXIT_OK

    # -- what there is to do ----------------------------------------------------------------------

    def job_ids(self) -> list[int]:
        return sorted(int(name) for name in os.listdir(self.root) if name.isdigit())

    def changed(self) -> bool:
        """New jobs (the folder listing changed) or states changed from outside (`changed`)."""
        def mtime(path: Path) -> int:
            try:
                return path.stat().st_mtime_ns
            except OSError:
                return 0
        seen = (mtime(self.root), mtime(self.root / "changed"))
        if seen == self.seen:
            return False
        if self.seen and seen[1] != self.seen[1]:
            self.final.clear()                   # a reschedule may have made a final job new again
            for job in self.running.values():
                if read_local_state(job.folder).get("kill") and not job.kill_at:
                    job.kill_at = time.monotonic() + LOCAL_KILL_GRACE
        self.seen = seen
        return True

    def scan(self) -> bool:
        """Look at every job not known final: Received ones become Waiting. True if any is not final."""
        self.scanned, waiting, active = time.monotonic(), [], False
        for job_id in self.job_ids():
            if job_id in self.final:
                continue
            folder = self.root / str(job_id)
            status = read_local_state(folder).get("status")
            if not status or not (folder / "spec.json").exists():
                continue                         # being submitted
            if is_final(status):
                self.final.add(job_id)
                continue
            active = True
            if status in (RECEIVED, RESCHEDULED):
                with local_lock(self.root):
                    if read_local_state(folder).get("status") in (RECEIVED, RESCHEDULED):
                        write_local_state(folder, "Site", WAITING, "Pilot Agent Submission")
            if job_id not in self.running:
                waiting.append(job_id)
        self.waiting = waiting
        return active

    def nothing_left(self, lock: Any) -> bool:
        """Exit, if a last look (holding the batch's lock) finds nothing: the site lock is let go
        before the batch's lock, so a job submitted after this look finds no site and starts one."""
        with local_lock(self.root):
            self.final.clear()
            if self.scan():
                return False
            lock.close()
            return True

    def end_orphans(self) -> None:
        """Jobs a site that died left Matched or Running: their processes are stopped; a Matched
        job waits again, a Running one failed as stalled (as DIRAC says of a job whose pilot died),
        one being killed is Killed."""
        for job_id in self.job_ids():
            folder = self.root / str(job_id)
            state = read_local_state(folder)
            if state.get("status") not in (MATCHED, RUNNING):
                continue
            signal_job(state, signal.SIGKILL)
            with local_lock(self.root):
                if state.get("kill"):
                    update_local_state(folder, "Site", status=KILLED, pgid=None, ended=time.time())
                elif state["status"] == MATCHED:
                    update_local_state(folder, "Site", status=WAITING, minor="Pilot Agent Submission", pgid=None)
                else:
                    update_local_state(folder, "Site", status=FAILED, minor="Job stalled: local site not running",
                                       app="The local site stopped while the job ran", pgid=None,
                                       ended=time.time())

    # -- running jobs -----------------------------------------------------------------------------

    def fill_slots(self) -> None:
        while self.waiting and len(self.running) < self.slots:
            job_id = self.waiting.pop(0)
            try:
                self.start(job_id)
            except OSError as e:                 # the job's folder is broken: the job fails, the site goes on
                self.fail(job_id, "Failed Downloading InputSandbox", str(e))

    def start(self, job_id: int) -> None:
        folder = self.root / str(job_id)
        with local_lock(self.root):
            if read_local_state(folder).get("status") != WAITING:
                return
            write_local_state(folder, "Site", MATCHED, "Assigned")
        job = self.running[job_id] = SiteJob(job_id, folder, json.loads((folder / "spec.json").read_bytes()))
        problem = prepare_work(folder, job.spec)
        if problem:
            self.wrapper_log(job, "ERROR", f"Cannot download the input sandbox: {problem}")
            return self.finish(job, FAILED, "Failed Downloading InputSandbox", problem)
        self.start_step(job)

    def start_step(self, job: SiteJob) -> None:
        executable, arguments, log_name = job.spec["steps"][job.step]
        work = job.folder / "work"
        command = local_command(executable, arguments, work)
        self.wrapper_log(job, "INFO", f"Command is: {shlex.join(command)}")
        job.log = open(work / log_name, "wb")
        job.log.write(f"<<<<<<<<<< {step_header(executable, job)} Standard Output >>>>>>>>>>\n\n".encode())
        job.log.flush()
        try:
            with open(job.folder / "step.err", "wb") as errors:
                job.process = subprocess.Popen(command, cwd=work, stdin=subprocess.DEVNULL, stdout=job.log,
                                               stderr=errors, start_new_session=True)
        except OSError as e:                     # DIRAC's words for a step it cannot start
            job.log.close()
            os.unlink(work / log_name)           # the Script module writes no log then
            os.unlink(job.folder / "step.err")
            self.wrapper_log(job, "ERROR", f"System call execution failed: {executable}: {e.strerror}")
            job.failure = job.failure or f"{step_name(executable)} Exited With Status {NOT_STARTED_STATUS}"
            return self.next_step(job)
        if self.start_delay:
            time.sleep(self.start_delay)         # tests: the step may end before it is recorded
        with local_lock(self.root):
            state = read_local_state(job.folder)
            pid = job.process.pid
            if is_final(state.get("status", KILLED)) or state.get("kill"):
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)      # killed meanwhile
            else:
                update_local_state(job.folder, "Site", status=RUNNING, minor="Application",
                                   pgid=pid, pstart=process_start(pid))

    def reap(self) -> bool:
        """Steps that ended: the next one starts, or the job ends. True if any ended."""
        ended = False
        for job in list(self.running.values()):
            if job.process is None:
                continue
            code = job.process.poll()
            if code is None:
                if job.kill_at and time.monotonic() > job.kill_at:
                    with contextlib.suppress(OSError):
                        os.killpg(job.process.pid, signal.SIGKILL)
                continue
            ended = True
            try:
                self.step_ended(job, code)
            except OSError as e:
                self.finish(job, FAILED, "Application Finished With Errors", str(e))
        return ended

    def step_ended(self, job: SiteJob, code: int) -> None:
        """Close the step's application log as DIRAC's Script module writes it, then go on."""
        executable = job.spec["steps"][job.step][0]
        job.process = None
        errors = job.folder / "step.err"
        job.log.write(b" ")
        if errors.stat().st_size:
            job.log.write(f"<<<<<<<<<< {step_header(executable, job)} Standard Error >>>>>>>>>>\n\n".encode())
            with open(errors, "rb") as f:
                shutil.copyfileobj(f, job.log)
            job.log.write(b" ")
        job.log.close()
        os.unlink(errors)
        state = read_local_state(job.folder)
        if state.get("kill") or is_final(state.get("status", KILLED)):
            self.wrapper_log(job, "INFO", f"{executable} was killed (status {code})")
            return self.finish(job, KILLED, MARKED_FOR_TERMINATION, state.get("app", ""))
        if code != 0:
            self.wrapper_log(job, "ERROR", f"Non-zero status while executing: {executable} exited with status {code}")
            job.failure = job.failure or f"{step_name(executable)} Exited With Status {code}"
        else:
            self.wrapper_log(job, "INFO", f"{executable} execution completed with status 0")
        self.next_step(job)

    def next_step(self, job: SiteJob) -> None:
        """As DIRAC's workflow does: every step runs, a failed one or not; the first failure is the
        job's application status, else the last step's "<name> successful"."""
        job.step += 1
        if job.step < len(job.spec["steps"]):
            return self.start_step(job)
        if job.failure:
            return self.finish(job, FAILED, "Application Finished With Errors", job.failure)
        self.finish(job, DONE, "Execution Complete", f"{step_name(job.spec['steps'][-1][0])} successful")

    def finish(self, job: SiteJob, status: str, minor: str, app: str) -> None:
        """Record the job final (with the declared outputs it did not produce) and free its slot."""
        missing = []
        if minor in ("Execution Complete", "Application Finished With Errors"):    # the job ran
            work = job.folder / "work"
            data = job.spec.get("output_data", []) if status == DONE else []
            missing = missing_outputs(work, job.spec["output_sandbox"], data)
            for name, kind in missing:
                self.wrapper_log(job, "WARN", f"Declared output {'data' if kind == 'data' else 'sandbox'} "
                                 f"file not produced: {name}")
        with local_lock(self.root):
            state = read_local_state(job.folder)
            if is_final(state.get("status", KILLED)):
                status, minor, app = state["status"], state.get("minor", ""), state.get("app", "")
            write_local_state(job.folder, "Site", status, minor, app, ended=state.get("ended") or time.time(),
                              **({"missing": missing} if missing else {}))
        del self.running[job.job_id]
        self.final.add(job.job_id)

    def fail(self, job_id: int, minor: str, app: str) -> None:
        self.running.pop(job_id, None)
        with local_lock(self.root):
            write_local_state(self.root / str(job_id), "Site", FAILED, minor, app, ended=time.time())
        self.final.add(job_id)

    def wrapper_log(self, job: SiteJob, level: str, text: str) -> None:
        """A line of the job's std.out, in the form of DIRAC's log lines."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        work = job.folder / "work"
        if work.is_dir():
            with open(work / "std.out", "a") as out:
                out.write(f"{stamp} UTC Local/Script {level}: {text}\n")
            (work / "std.err").touch()


def step_name(executable: str) -> str:
    """How DIRAC names a step in its application status: "sh" in "sh Exited With Status 3"."""
    return os.path.basename(executable).split("_")[0] or executable


def step_header(executable: str, job: SiteJob) -> str:
    """The executable as the Script module's log headers name it: its base name if it is a file
    of the working directory."""
    work = job.folder / "work"
    return os.path.basename(executable) if (work / os.path.basename(executable)).exists() else executable


def local_command(executable: str, arguments: str, work: Path) -> list[str]:
    """The command line DIRAC's Script module would build for this step."""
    command = shlex.split(executable)
    local = work / os.path.basename(command[0])
    if local.is_file():
        local.chmod(local.stat().st_mode | 0o755)
        command[0] = str(local)
    elif command[0].endswith(".py"):
        command.insert(0, sys.executable)
    return command + shlex.split(arguments)


def run_local_site(root: Path) -> int:
    """The body of `grid _local-site`: this batch's site, until no job is left."""
    os.chdir(root)
    slots = int(os.environ.get("GRID_LOCAL_SLOTS") or 0) or len(os.sched_getaffinity(0)) or 1
    return LocalSite(root, slots).run()


# ==================================================================================================
# Downloads
# ==================================================================================================
# An output folder that exists is complete: outputs are fetched into .grid/tmp and renamed into
# place in one step. An archive from a remote machine never writes outside its job's folder.

        # links, devices and fifos are not extracted: they could point outside the folder


def read_umask() -> int:
    """The process's umask: it can only be read by setting it, so this runs once, at import, before
    any thread could create a file meanwhile."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


UMASK = read_umask()


def direct_call(fn: Callable, *args: Any) -> Any:
    return fn(*args)


def free_bytes(folder: Path) -> tuple[int, int]:
    """Free and total space of the disk holding folder (patched by tests to fill the disk)."""
    usage = shutil.disk_usage(folder)
    return usage.free, usage.total


def file_adler32(path: Path) -> str:
    """The file's adler32 as 8 hex digits, computed as DIRAC's catalogue records it."""
    value = 1
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


def same_adler32(first: str, second: str) -> bool:
    """Hex checksums as equal numbers: catalogues may drop leading zeros or change the case."""
    try:
        return int(first, 16) == int(second, 16)
    except ValueError:
        return False


def copy_problem(path: Path, record: dict) -> str:
    """Why a downloaded copy is not the catalogue's file ("" if it is): size first, then adler32."""
    size = path.stat().st_size
    if size != record["size"]:
        return f"wrong size ({size} bytes, the catalogue says {record['size']})"
    if record["adler32"]:
        found = file_adler32(path)
        if not same_adler32(found, record["adler32"]):
            return f"bad checksum (adler32 {found}, the catalogue says {record['adler32']})"
    return ""


def human_size(size: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


class DiskRoom:
    """Downloads claim their size before they start; while the disk has too little free space (beyond
    what is claimed and DISK_RESERVE), they pause, said in one line, and resume once space appears."""

    def __init__(self, folder: Path, say: Callable[[str], None], poll: float = DISK_POLL) -> None:
        self.folder, self.say, self.poll = folder, say, poll
        self.claimed = 0
        self.paused = False

    @contextlib.contextmanager
    def room(self, size: int) -> Iterator[None]:
        while True:
            free, total = free_bytes(self.folder)
            reserve = min(DISK_RESERVE, int(DISK_RESERVE_SHARE * total))
            if free - self.claimed - size >= reserve:
                break
            if not self.paused:
                self.paused = True
                self.say(f"downloads paused: the disk of {self.folder.parent} has {human_size(free)} free, "
                         f"{human_size(size + self.claimed)} more are needed (keeping {human_size(reserve)} "
                         "spare); free some space and they resume by themselves")
            gevent.sleep(self.poll)
        if self.paused:
            self.paused = False
            self.say(f"downloads resume: {human_size(free)} free")
        self.claimed += size
        try:
            yield
        finally:
            self.claimed -= size


def tmp_root(batch_dir: Path) -> Path:
    return batch_dir / STATE_DIR / "tmp"


def stage_name(job: Job) -> str:
    """The job's staging folder in .grid/tmp: its complete sandbox, then each verified file as it comes.
    It is kept between runs (a crash loses no verified file) and renamed into place when whole."""
    return f"{job.num}.{job.dirac_id}.job"


class OutputDownloader:
    """Fetches final jobs' outputs into their folders: the output sandbox (from the sandbox store or,
    when it was too big, from grid storage) and the selected output data files. Every file is checked
    against the catalogue's size and adler32 (a bad copy is retried from another replica, and never
    placed); a job's folder is renamed into place only when all of it is there, so a folder that
    exists is complete. Backend calls go through `call` (the engine's, which waits out outages and
    an expired proxy), local work through `blocking` (the threadpool)."""

    def __init__(self, backend: Backend, batch_dir: Path, call: Callable = direct_call,
                 blocking: Callable = direct_call, selection: DataSelection = DataSelection(),
                 disk: Optional[DiskRoom] = None, files_parallel: int = FILES_PARALLEL) -> None:
        self.backend, self.batch_dir, self.call, self.blocking = backend, batch_dir, call, blocking
        self.selection, self.files_parallel = selection, files_parallel
        self.disk = disk or DiskRoom(batch_dir / STATE_DIR, lambda text: None)
        self.tmp = tmp_root(batch_dir)

    def download(self, job: Job) -> str:
        """Fetch what is missing of a final job's output; returns its folder (relative to the batch).
        Raises DataIncomplete when some selected file could not be had (the rest is kept)."""
        relative = job.output_folder()
        final = self.batch_dir / relative
        if job.outputs is None:
            job.outputs = [output_record(f) for f in self.look_up(job)]
            self.selection.apply([job])
        if final.exists():              # renamed into place before: complete, but a wider --data
            place = final               # selection may add files to it, each verified first
        else:
            place = self.staged_sandbox(job)
        self.fetch_data(job, place)
        if place != final:
            final.parent.mkdir(exist_ok=True)
            os.rename(place, final)
        return relative

    def look_up(self, job: Job) -> list[OutputFile]:
        try:
            return self.call(self.backend.job_outputs, job.dirac_id, job.status == DONE)
        except (ServerUnreachable, ProxyExpired):
            raise
        except CallFailed:
            if job.status == DONE:
                raise
            return []                   # a failed job's description may be gone: its sandbox still counts

    def staged_sandbox(self, job: Job) -> Path:
        """The job's staging folder holding its complete output sandbox, fetched now if it is not there."""
        stage = self.tmp / stage_name(job)
        if stage.is_dir():
            for record in job.outputs:
                record["downloaded"] |= record["kind"] == "sandbox"     # extracted before a crash
            return stage
        self.tmp.mkdir(parents=True, exist_ok=True)
        ready = self.call(self.backend.ready_output, job.dirac_id)
        if ready is not None:               # built beside us (the local backend): moved, not copied
            os.rename(ready, stage)
            return stage
        tmp = Path(tempfile.mkdtemp(prefix=f"{job.num}.", suffix=".sandbox", dir=self.tmp))
        try:
            tarball = next((r for r in job.outputs if r["kind"] == "sandbox"), None)
            if tarball is None and self.call(self.backend.fetch_output, job.dirac_id, tmp) is False:
                found = self.call(self.backend.grid_sandbox, job.dirac_id)
                if found:
                    tarball = output_record(found)
                    job.outputs.append(tarball)
            if tarball:
                self.fetch_grid_sandbox(job, tarball, tmp)
            tmp.chmod(0o777 & ~UMASK)        # mkdtemp's 0700 is for .grid/tmp; the folder is the user's
            os.rename(tmp, stage)
        finally:
            remove_tree(tmp)
        return stage

    def fetch_grid_sandbox(self, job: Job, record: dict, dest: Path) -> None:
        """An output sandbox from grid storage: a tar archive (bz2), verified, then extracted as if it
        had come from the sandbox store."""
        with self.disk.room(3 * record["size"]):        # the archive, and what it unpacks to
            part, path = self.fetch_verified(job, record)
            try:
                self.blocking(extract_archive, path, dest)
            finally:
                remove_tree(part)
        record["downloaded"], record["problem"] = True, ""

    def fetch_data(self, job: Job, place: Path) -> None:
        """Each selected data file not in place yet, a few at once; the others go on when one fails."""
        wanted = job.data_missing
        if not wanted:
            return
        if self.files_parallel > 1:
            pool = gevent.pool.Pool(self.files_parallel)
            tasks = [pool.spawn(outcome, self.fetch_one, job, record, place) for record in wanted]
            try:
                gevent.joinall(tasks)
            finally:
                pool.kill(block=False)      # stopped meanwhile: leave only .grid/tmp behind
            results = [task.value for task in tasks]
        else:                               # one by one, e.g. inside a worker thread
            results = [outcome(self.fetch_one, job, record, place) for record in wanted]
        failures = [value for ok, value in results if not ok]
        for failure in failures:            # an outage or an expired proxy first: it costs no try
            if isinstance(failure, (ServerUnreachable, ProxyExpired)):
                raise failure
        for failure in failures:
            if not isinstance(failure, FileUnavailable):
                raise failure
        problems = [r for r in wanted if not r["downloaded"]]
        if problems:
            text = "; ".join(f"{record_name(r)}: {r['problem']}" for r in problems[:3])
            more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise DataIncomplete(f"{len(problems)} of {len(wanted)} data file(s) not downloaded: {text}{more}")

    def fetch_one(self, job: Job, record: dict, place: Path) -> None:
        target = place / record_name(record)
        if target.is_file() and not self.blocking(copy_problem, target, record):
            record["downloaded"], record["problem"] = True, ""     # placed before a crash
            return
        try:
            with self.disk.room(record["size"]):
                part, path = self.fetch_verified(job, record)
                try:
                    os.replace(path, target)
                finally:
                    remove_tree(part)
        except FileUnavailable as e:
            record["problem"] = str(e)
            raise
        record["downloaded"], record["problem"] = True, ""

    def fetch_verified(self, job: Job, record: dict) -> tuple[Path, Path]:
        """A verified copy of the file in a folder of its own in .grid/tmp: (folder, file). The backend
        chooses the replica first; if that copy is bad or fails, every replica is tried on its own.
        A storage element that does not answer is an outage (no try spent) unless another has it."""
        sources: list[Optional[str]] = [None]
        problems, outage = [], None
        for source in sources:
            part = Path(tempfile.mkdtemp(prefix=f"{job.num}.", suffix=".part", dir=self.tmp))
            try:
                path = self.call(self.backend.fetch_file, record["lfn"], part, source)
                problem = self.blocking(copy_problem, path, record)
                if not problem:
                    return part, path
                problems.append(f"{problem} at {source}" if source else problem)
            except ServerUnreachable as e:
                outage = e
            except ProxyExpired:
                remove_tree(part)
                raise
            except CallFailed as e:
                problems.append(str(e))
            remove_tree(part)
            if source is None:
                sources += self.call(self.backend.replicas, record["lfn"])
        if outage is not None:
            raise outage
        raise FileUnavailable("; ".join(dict.fromkeys(problems)) or "no replica in the catalogue")


def extract_archive(path: Path, dest: Path) -> None:
    with tarfile.open(path, mode="r:*") as tar:
        safe_extract(tar, dest)


def download_output(backend: Backend, job: Job, batch_dir: Path,
                    selection: DataSelection = DataSelection()) -> str:
    """Fetch a final job's output into its folder, atomically, with the selected data files; returns
    the folder (relative). One call after the other, outside an engine (a command, a worker thread)."""
    return OutputDownloader(backend, batch_dir, selection=selection, files_parallel=1).download(job)


def clean_partial_downloads(batch_dir: Path, keep: Iterable[str] = ()) -> None:
    """Remove what a stopped run left in .grid/tmp, except the staging folders named in keep (jobs
    whose outputs are still coming: their verified files are not downloaded again)."""
    root, kept = tmp_root(batch_dir), set(keep)
    if not kept:
        return remove_tree(root)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(root):
            if entry not in kept:
                path = root / entry
                if path.is_dir() and not path.is_symlink():
                    remove_tree(path)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()


# ==================================================================================================
# Batch
# ==================================================================================================
# The batch's state over its store: its jobs, the figures every event needs (the summary counts,
# how many jobs are still open, the job of a DIRAC id: kept up to date as jobs change, never
# recounted, since a batch may hold 100,000 jobs), status transitions, submissions and their
# attempts, resubmission and the retry policy. Plain state: no greenlet, no backend call. It tells
# a Listener (the display) what happens, and hands work on through hooks that an engine points at
# its queues; a command that only changes state uses a Batch alone.

class Listener:
    """What a batch and its backend calls tell as they go: Display shows it; a bare Listener is silent."""

    def transition(self, job: Job, old: str) -> None:
        """A job's status changed from old to job.status."""

    def summary(self, counts: list[int]) -> None:
        """The summary counts may have changed."""

    def downloaded(self, job: Job) -> None:
        """A job's output is complete in its folder."""

    def message(self, text: str) -> None:
        """One line for the user."""


def ignore(*_: Any) -> None:
    """A hook nobody set: a command without an engine has no queue to fill."""


class Batch:
    """The jobs of one batch, changed only through these methods, which keep the figures and the store
    in step with them."""

    def __init__(self, store: Store, batch_dir: Path, display: Optional[Listener] = None,
                 retries: int = 0, exit_when: str = "all-final") -> None:
        self.store, self.batch_dir = store, batch_dir
        self.display = display or Listener()
        self.retries, self.exit_when = retries, exit_when
        self.meta = store.meta()
        self.bulk = bool(self.meta.get("bulk"))      # submit --bulk: bundles where the backend can
        self.sequences = self.meta.get("sequences", [])   # [first, last] of each parametric job's jobs
        self.jobs = store.jobs()
        self.by_id = {job.dirac_id: job for job in self.jobs.values() if job.dirac_id}
        self.column_totals = column_counts(job.status for job in self.jobs.values())
        self.jobs_in_progress = sum(1 for job in self.jobs.values() if job.in_progress)
        self.jobs_final = sum(1 for job in self.jobs.values() if is_final(job.status))
        self.jobs_downloaded = sum(1 for job in self.jobs.values() if job.output)
        self.attempt_stats = AttemptStats(self.jobs.values())
        self.not_retried: set[str] = set()           # reasons already reported as failing everywhere
        self.final_times: collections.deque = collections.deque()   # the last RATE_WINDOW's final jobs
        self.exited_early: Optional[str] = None      # why --exit-when ended the watch before the end
        self.cleaning = CleaningWatch()
        # Work handed on as jobs change: an engine points these at its queues and at its end.
        self.submission_due: Callable[[Job], None] = ignore
        self.download_due: Callable[[Job], None] = ignore
        self.exit_due: Callable[[], None] = ignore

    # -- figures, from the counters --------------------------------------------------------------

    def counts(self) -> list[int]:
        return list(self.column_totals)

    def pending_submissions(self) -> int:
        return sum(1 for j in self.jobs.values() if not j.submitted and j.status == SUBMITTING)

    def progress(self, server: str) -> "Progress":
        """What the live footer shows, twice a second: from the counters, never a scan of the jobs."""
        now = time.time()
        while self.final_times and self.final_times[0] < now - RATE_WINDOW:
            self.final_times.popleft()
        span = now - self.final_times[0] if self.final_times else 0.0
        rate = len(self.final_times) / span if len(self.final_times) > 1 and span > 1 else 0.0
        return Progress(counts=self.counts(), total=len(self.jobs), final=self.jobs_final,
                        failed=self.column_totals[-1], submitted=len(self.by_id),
                        downloaded=self.jobs_downloaded, rate=rate, server=server)

    def warn_cleaning(self, backend: str) -> None:
        """One loud line whenever the number of outputs the server is about to delete changes."""
        warning = self.cleaning.news(self.jobs.values(), backend)
        if warning:
            self.display.message("WARNING: " + warning)

    def resume(self, watch: bool) -> None:
        """A run starts: hand on every job that still needs work, to be submitted or downloaded; with
        watch, a job that failed before the last run ended is retried (or ends the watch) now."""
        for job in self.jobs.values():
            if job.output_missing:
                job.download_tries = 0           # every run tries each missing output again
            if not job.submitted and job.status == SUBMITTING:
                self.submission_due(job)
            elif job.needs_download:
                self.download_due(job)
            elif watch and job.failed:
                self.settle(job)

    # -- status ----------------------------------------------------------------------------------

    def apply(self, states: dict[int, JobState]) -> None:
        """What a status call reported, for the jobs it changed; one write for all of them."""
        changed = []
        for job_id, state in states.items():
            job = self.by_id.get(job_id)
            if job and state.site is None:
                state.site = job.site
            if job and (state.status, state.minor, state.app, state.site) != \
                    (job.status, job.minor, job.app, job.site):
                self.transition(job, state, save=False)
                changed.append(job)
        if changed:
            self.store.save(*changed)

    def transition(self, job: Job, state: JobState, save: bool = True) -> None:
        old_status, was_in_progress = job.status, job.in_progress
        job.minor, job.app = state.minor, state.app
        if state.site is not None:
            job.site = state.site
        if state.status != old_status:
            job.status = state.status
            self.column_totals[column_of(old_status)] -= 1
            self.column_totals[column_of(job.status)] += 1
            self.jobs_in_progress += job.in_progress - was_in_progress
            self.jobs_final += is_final(job.status) - is_final(old_status)
            job.history.append([state.status, round(time.time(), 3)])
            if is_final(job.status):
                job.ended = state.ended or time.time()
                job.missing = state.missing or []
                if job.missing:
                    self.display.message(f"#{job.num} {job.name}: {not_produced(job.missing)}")
                self.cleaning.due |= time.time() - job.ended > CLEANING_WARN_AFTER
            self.display.transition(job, old_status)
            self.display.summary(self.counts())
            if is_final(job.status) and not is_final(old_status):
                self.final_times.append(time.time())
                self.attempt_stats.add(job)
            if is_final(job.status) and job.submitted:
                self.download_due(job)
        if save:
            self.store.save(job)

    # -- submissions -----------------------------------------------------------------------------

    def tag(self, job: Job) -> str:
        """The tag of the job's next submission, "<batch tag>.<local number>.<attempt>" (in its JDL)."""
        return f"{self.meta['tag']}.{job.num}.{job.attempts + 1}"

    def intend(self, jobs: list[Job], tags: list[str]) -> None:
        """Note the submissions about to be sent (tags "" when none is after all), on disk before the
        call: a crash leaves a trace of every submission that may have reached the server."""
        for job, tag in zip(jobs, tags):
            job.intent = tag
        self.store.save(*jobs, sync=True)

    def in_doubt(self) -> dict[str, Job]:
        """Submissions that may have reached the server before a crash, by their tags."""
        return {job.intent: job for job in self.jobs.values() if job.intent and not job.submitted}

    def find_query(self, jobs: list[Job]) -> tuple[list[str], list[str], set[int], float]:
        """What Backend.find needs to look for these jobs' intended submissions: their tags, the job
        groups they were submitted in, the ids the batch knows already, and when it was made."""
        groups = sorted({match.group(1).strip() for job in jobs
                         for match in [GROUP_PATTERN.search(self.store.spec(job.num).jdl)] if match})
        known = {job_id for job in self.jobs.values() for job_id in job.ids}
        return [job.intent for job in jobs], groups, known, self.meta.get("created", 0.0)

    def record_submission(self, job: Job, job_id: int, save: bool = True) -> None:
        was_in_progress = job.in_progress
        job.dirac_id = job_id
        self.by_id[job_id] = job
        self.jobs_in_progress += job.in_progress - was_in_progress
        job.ids.append(job_id)
        job.attempts += 1
        job.error = job.intent = ""
        self.transition(job, JobState(RECEIVED, "Job accepted"), save=False)
        if save:
            self.store.save(job, sync=True)

    def adopt(self, jobs: list[Job], found: dict[str, int]) -> None:
        """Record the submissions the server accepted, {intent tag: id}, in one write."""
        adopted = [job for job in jobs if job.intent in found]
        for job in adopted:
            self.record_submission(job, found[job.intent], save=False)
        if adopted:
            self.store.save(*adopted, sync=True)

    def submission_refused(self, job: Job, error: Exception, tries: int) -> bool:
        """An error reply to a submission, noted on the job; whether it is worth another try."""
        job.error = str(error)
        self.display.message(f"#{job.num} {job.name}: {error} (try {tries}/{SUBMIT_ATTEMPTS})")
        return tries < SUBMIT_ATTEMPTS

    def bundle_refused(self, jobs: list[Job], error: Exception, tries: int) -> bool:
        """An error reply to a bundle; whether it is worth another try (else its jobs go one by one)."""
        if isinstance(error, BundleTooLarge):
            return False
        name = f"bundle #{jobs[0].num}-#{jobs[-1].num}"
        self.display.message(f"{name} ({len(jobs)} jobs): {error} (try {tries}/{SUBMIT_ATTEMPTS})")
        if tries >= SUBMIT_ATTEMPTS:
            self.display.message(f"{name} not accepted; submitting its {len(jobs)} job(s) one by one")
        return tries < SUBMIT_ATTEMPTS

    def split_bundle(self, jobs: list[Job], limit: int, why: str) -> list:
        """A bundle the server finds too large (it made none of its jobs): smaller ones to submit."""
        self.intend(jobs, [""] * len(jobs))
        most = max(1, min(limit, len(jobs) - 1))
        self.display.message(f"{why}; splitting {len(jobs)} job(s) into bundles of at most {most}")
        return [part if len(part) > 1 else part[0] for part in split_evenly([job.num for job in jobs], most)]

    def submission_failed(self, job: Job) -> None:
        """The server refused the job every time: it fails, and the retry policy has its say."""
        self.transition(job, JobState(FAILED, "Submission failed", job.error))
        self.settle(job)

    @property
    def bundling(self) -> bool:
        """Jobs go in bundles where the backend can: with --bulk, or those of a parametric job."""
        return self.bulk or bool(self.sequences)

    def bundles(self, pending: list[int], limit: int,
                key: Callable[[JobSpec], Optional[tuple]]) -> tuple[list[list[int]], list[int]]:
        """Jobs with equal bundle keys in bundles of at most limit (as even as can be); the rest one by one.
        With --bulk that is every job; else only the jobs of one parametric job go together (in
        parameter order, so that the server makes them in one call, as DIRAC would)."""
        sequence_of = {num: n for n, (first, last) in enumerate(self.sequences) for num in range(first, last + 1)}
        why = "bulk" if self.bulk else "parametric"
        groups: dict[tuple, list[int]] = {}
        singles = []
        for num in pending:
            if not self.bulk and num not in sequence_of:
                singles.append(num)
                continue
            group = key(self.store.spec(num))
            if group is None:
                singles.append(num)
            else:
                groups.setdefault((() if self.bulk else (sequence_of[num],)) + (group,), []).append(num)
        bundles = []
        for members in groups.values():
            for part in split_evenly(members, limit):
                if len(part) > 1:
                    bundles.append(part)
                else:
                    singles += part
        singles.sort()
        alone = sum(1 for num in singles if self.bulk or num in sequence_of)
        self.display.message(f"{why}: {sum(map(len, bundles))} job(s) in {len(bundles)} bundle(s) "
                             f"(at most {limit} each), {alone} one by one")
        return bundles, singles

    # -- downloads -------------------------------------------------------------------------------

    def record_download(self, job: Job, folder: str) -> None:
        self.jobs_downloaded += not job.output       # (a folder that gained data files counts once)
        job.output = folder
        job.error = ""
        self.display.downloaded(job)
        self.store.save(job)

    def download_failed(self, job: Job, error: Exception) -> bool:
        """Count a failed download against the job; whether it is worth another try."""
        job.download_tries += 1
        job.error = f"output download failed: {error}"
        self.display.message(f"#{job.num} {job.name}: {job.error} "
                             f"(try {job.download_tries}/{DOWNLOAD_ATTEMPTS})")
        self.store.save(job)
        return job.needs_download

    # -- resubmitting and the retry policy -------------------------------------------------------

    def retire_attempt(self, job: Job) -> None:
        """Keep the attempt that ended apart (its output moves to retried/), so the next starts clean.
        Safe to repeat after a crash: the move is skipped once done, the record is written last."""
        kept = ""
        if job.output:
            kept = os.path.join(RETRIED_DIR, f"{job.folder_name()}.{len(job.past) + 1}")
            move_into_place(self.batch_dir / job.output, self.batch_dir / kept)
        ended = next((t for status, t in reversed(job.history) if status == job.status), None)
        job.past.append({"id": job.dirac_id, "status": job.status, "minor": job.minor, "app": job.app,
                         "site": job.site, "reason": failure_reason(job) if job.failed else "",
                         "ended": ended, "output": kept, "missing": job.missing})
        self.jobs_downloaded -= bool(job.output)
        job.output, job.error, job.download_tries, job.missing, job.outputs = "", "", 0, [], None

    def resubmit(self, job: Job) -> None:
        """Submit a final job again as a new DIRAC job; it keeps its number and its lineage (ids)."""
        self.retire_attempt(job)
        self.by_id.pop(job.dirac_id, None)
        job.dirac_id = 0
        self.transition(job, JobState(SUBMITTING, f"Resubmission {len(job.past)}"), save=False)
        self.store.save(job, sync=True)
        self.submission_due(job)

    def settle(self, job: Job) -> None:
        """A failed job's output is in (or given up on): resubmit it, or end the watch, as asked."""
        if self.exit_when == "first-failure":
            return self.exit_early(f"#{job.num} {job.name} failed ({failure_reason(job)})")
        refusal = self.retry_refusal(job)
        if refusal is None:
            self.display.message(f"#{job.num} {job.name}: resubmitting "
                                 f"(retry {len(job.past) + 1}/{self.retries}; {failure_reason(job)})")
            return self.resubmit(job)
        if refusal and failure_reason(job) not in self.not_retried:
            self.not_retried.add(failure_reason(job))
            self.display.message(refusal)
        if self.exit_when == "all-done":
            self.exit_early(f"#{job.num} {job.name} failed for good ({failure_reason(job)})")

    def retry_refusal(self, job: Job) -> Optional[str]:
        """None if --retries allows another attempt; else why not ("" when there is nothing to say)."""
        if len(job.past) >= self.retries:
            return ""
        reason = failure_reason(job)
        if self.attempt_stats.systematic(reason):
            failures, finished = self.attempt_stats.failures[reason], self.attempt_stats.finished
            return (f"not retrying jobs that fail with {reason!r}: {failures} of {finished} finished "
                    f"attempts failed that way, so it fails everywhere; fix the cause, then "
                    f"`grid resubmit --reason {shell_quote(reason)}`")
        return None

    def exit_early(self, why: str) -> None:
        self.exited_early = why
        self.display.message(f"{why}; stopping as --exit-when {self.exit_when} asks "
                             "(`grid watch` follows the rest)")
        self.exit_due()


class AttemptStats:
    """Finished attempts of the whole batch and how many failed for each reason: the retry policy's
    evidence that a reason fails everywhere (a broken executable, a missing input) and not by bad luck."""

    def __init__(self, jobs: Iterable[Job]) -> None:
        self.finished = 0
        self.failures: dict[str, int] = {}
        for job in jobs:
            for attempt in job.past:
                self._count(attempt["reason"])
            if is_final(job.status):
                self.add(job)

    def add(self, job: Job) -> None:
        self._count(failure_reason(job) if job.failed else "")

    def _count(self, reason: str) -> None:
        self.finished += 1
        if reason:
            self.failures[reason] = self.failures.get(reason, 0) + 1

    def systematic(self, reason: str) -> bool:
        failures = self.failures.get(reason, 0)
        return failures >= SYSTEMATIC_MIN and failures > SYSTEMATIC_SHARE * self.finished


@dataclass(slots=True)
class Progress:
    """A moment of the run, for the live footer."""

    counts: list
    total: int
    final: int
    failed: int
    submitted: int
    downloaded: int
    rate: float                                  # jobs becoming final per second, lately
    server: str

    def eta(self) -> Optional[float]:
        return (self.total - self.final) / self.rate if self.rate > 0 else None


def move_into_place(source: Path, dest: Path) -> None:
    """Rename a folder, unless an earlier run already did (then the source is gone)."""
    if source.exists() and not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, dest)


# ==================================================================================================
# Display
# ==================================================================================================
# What a run shows as it goes: plain lines (a file, a pipe, CI), a live footer on a terminal, or
# JSON lines (--json). A display is the batch's Listener; the engine tells it when a run starts and
# ends, and redraws the live footer.

class Display(Listener):
    """The seed's output: a log line per status change and a summary line whenever counts change.
    Plain text with no control characters: what goes to a file, a pipe, CI or `nohup`."""

    live = False                    # a footer to redraw every FOOTER_REFRESH (the engine does it)

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.last_summary: Optional[str] = None
        self.closed = False                       # the reader of out went away
        self.stop_engine: Optional[Callable[[], None]] = None
        encoding = (getattr(self.out, "encoding", None) or "").lower()
        self.arrow = "→" if encoding.startswith("utf") else "->"

    def write(self, line: str) -> None:
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except BrokenPipeError:
            self.output_closed()

    def output_closed(self) -> None:
        """The reader went away (`grid watch | head`): nobody follows the run, so it stops as on
        Ctrl-C (state is kept), silently."""
        silence(self.out)
        self.closed = True
        if self.stop_engine:
            self.stop_engine()

    def start(self, progress: Callable[[], Progress], stop: Callable[[], None]) -> None:
        """A run starts: progress() tells its figures whenever asked, stop() ends it (as Ctrl-C)."""
        self.stop_engine = stop
        if self.closed:
            stop()
        self.summary(progress().counts)

    def redraw(self) -> None:
        """Draw the live footer again."""

    def close(self, counts: list[int]) -> None:
        """The run is over (finished, stopped or crashed)."""

    def summary(self, counts: list[int]) -> None:
        line = summary_line(counts)
        if line != self.last_summary:
            self.last_summary = line
            self.write(line)

    def transition(self, job: Job, old: str) -> None:
        minor = f" ({job.minor})" if job.minor else ""
        self.write(f"{clock(None)} #{job.num} [{job.dirac_id or '-'}] {one_line(job.name)}: "
                   f"{old} {self.arrow} {job.status}{one_line(minor)}")

    def downloaded(self, job: Job) -> None:
        self.write(f"{clock(None)} #{job.num} [{job.dirac_id}] {one_line(job.name)}: output in {job.output}/")

    def message(self, text: str) -> None:
        self.write(f"{clock(None)} {one_line(text)}")

    def result(self, text: str, record: dict) -> None:
        """The closing line(s) of a command; record is what --json prints instead."""
        self.write(text)


class LiveDisplay(Display):
    """On a terminal: the seed's log lines scroll, and one footer line under them is redrawn in place
    with the counts, a progress bar, the rate, the time left and the server's state."""

    live = True

    def __init__(self, out: Any = None, color: bool = True) -> None:
        super().__init__(out)
        self.color = color
        self.progress: Optional[Callable[[], Progress]] = None     # while a run goes on

    def write(self, line: str) -> None:
        self.out.write(f"\r\x1b[K{line}\n" + self.footer())
        self.out.flush()

    def start(self, progress: Callable[[], Progress], stop: Callable[[], None]) -> None:
        self.progress = progress

    def redraw(self) -> None:
        self.out.write("\r\x1b[K" + self.footer())
        self.out.flush()

    def close(self, counts: list[int]) -> None:
        self.progress = None
        self.out.write("\r\x1b[K")
        self.write(summary_line(counts))

    def summary(self, counts: list[int]) -> None:
        """The footer shows the counts; the seed's summary line is written once, at the end."""

    def footer(self) -> str:
        if self.progress is None:
            return ""
        width = shutil.get_terminal_size((100, 24)).columns
        return render_footer(self.progress(), width, self.color)


class JsonDisplay(Display):
    """--json: one JSON object per line and event, for programs that follow a run."""

    def emit(self, event: str, **fields: Any) -> None:
        self.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}))

    def summary(self, counts: list[int]) -> None:
        line = summary_line(counts)
        if line != self.last_summary:
            self.last_summary = line
            self.emit("summary", **dict(zip(COLUMN_NAMES, counts)))

    def transition(self, job: Job, old: str) -> None:
        self.emit("status", num=job.num, id=job.dirac_id or None, name=job.name, old=old, status=job.status,
                  minor=job.minor, application=job.app, site=job.site)

    def downloaded(self, job: Job) -> None:
        self.emit("output", num=job.num, id=job.dirac_id, name=job.name, folder=job.output)

    def message(self, text: str) -> None:
        self.emit("message", text=text)

    def result(self, text: str, record: dict) -> None:
        self.emit("result", **record)


def render_footer(p: Progress, width: int, color: bool) -> str:
    """`S: 0 R: 0 W: 3 M: 0 R: 2 D: 90 F: 5 · [####x---] 95/100 final · ... · server ok`, fitted to
    the width by leaving out the least important parts: a wrapped footer could not be redrawn."""
    size = 20
    done_cells = size * (p.final - p.failed) // max(p.total, 1)
    failed_cells = size * p.final // max(p.total, 1) - done_cells
    if color:
        bar = f"\x1b[32m{'█' * done_cells}\x1b[31m{'█' * failed_cells}\x1b[0m"
        bar += "░" * (size - done_cells - failed_cells)
    else:
        bar = "#" * done_cells + "x" * failed_cells + "-" * (size - done_cells - failed_cells)
    eta = p.eta()
    trouble = not p.server.startswith("server ok")
    parts = {"counts": " ".join(f"{letter}: {n}" for (letter, _), n in zip(COLUMNS, p.counts)),
             "trouble": p.server if trouble else "", "bar": f"[{bar}] {p.final}/{p.total} final",
             "submitted": f"{p.submitted} submitted", "downloaded": f"{p.downloaded} downloaded",
             "rate": f"{p.rate * 60:.1f}/min" if p.rate else "rate -",
             "eta": f"ETA {duration(eta)}" if eta is not None else "ETA -",
             "ok": "" if trouble else p.server}
    shown = ["counts"]
    for name in ("trouble", "bar", "submitted", "downloaded", "rate", "eta", "ok"):   # by importance
        line = " · ".join(parts[n] for n in parts if n in shown + [name] and parts[n])
        if parts[name] and visible_length(line) <= width - 1:
            shown.append(name)
    line = " · ".join(parts[n] for n in parts if n in shown and parts[n])
    return line if visible_length(line) < width else line[:max(width - 1, 1)]


def visible_length(text: str) -> int:
    return len(re.sub(r"\x1b\[[0-9;]*m", "", text))


def silence(stream: Any) -> None:
    """Point a stream whose reader went away at /dev/null: Python's flush at exit would meet the
    closed pipe again and print 'Exception ignored ... BrokenPipeError'."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def json_lines_out() -> Any:
    """--json: stdout for the JSON lines alone. What else would go to stdout from now on (the job
    files' prints, DIRAC's log lines, child processes) goes to stderr: fd 1 becomes a copy of fd 2,
    and the JSON lines get a descriptor of their own on the original stdout."""
    try:
        sys.stdout.flush()
        json_fd = os.dup(sys.stdout.fileno())
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    except (OSError, ValueError):            # no real stdout (embedded, captured): nothing to split
        return sys.stdout
    return os.fdopen(json_fd, "w", encoding="utf-8")


def make_display(json_lines: bool = False, out: Any = None) -> Display:
    """JSON lines when asked; the live footer on a terminal; plain lines everywhere else."""
    if json_lines:
        return JsonDisplay(out or json_lines_out())
    out = out or sys.stdout
    if out.isatty() and os.environ.get("TERM", "") != "dumb":
        return LiveDisplay(out, color=not os.environ.get("NO_COLOR"))     # no-color.org
    return Display(out)


# ==================================================================================================
# Engine
# ==================================================================================================
# Every backend call goes through BackendCalls: the one place that runs blocking calls in gevent's
# threadpool, waits while the proxy is expired, waits out outages and counts tries, and announces an
# outage or an expired proxy in one line, however many calls meet it. One engine per command that
# watches: it owns a Batch and every greenlet and pool: a submitter (bounded pool), a monitor (one
# bulk status sweep every interval, only for jobs that are not final), the download queue (a
# bounded pool: DownloadQueue), a proxy watcher, and the live footer's redraws. Blocking backend
# calls overlap, and the loop stays responsive.

class Stopped(Exception):
    """The engine is stopping: a call it would have made (again) is left for the next run."""


class BackendCalls:
    """Calls into one backend, with the outage and proxy state they all share.

    In an engine, `retry` makes a call (or a few, as one attempt) until it works or its tries are
    used: an expired proxy is waited for and an outage is waited out, neither costing a try; an error
    reply costs one. A command that calls the server once uses `once`: an outage is waited out for
    ONCE_DEADLINE seconds, and any failure becomes a BackendError with the command's fix.
    """

    def __init__(self, backend: Backend, display: Listener,
                 stopping: Optional["gevent.event.Event"] = None) -> None:
        use_gevent()
        self.backend, self.display = backend, display
        self.stopping = stopping or gevent.event.Event()
        self.threadpool = gevent.get_hub().threadpool
        self.outage_since: Optional[float] = None
        self.unreachable: set[str] = set()        # kinds of call whose last try found no server
        self.proxy_ok = gevent.event.Event()      # cleared while the proxy is expired: calls wait
        self.proxy_ok.set()
        self.proxy_warned = False
        self.proxy_left_at: Optional[tuple[float, float]] = None    # (seconds left, when we looked)

    def make_room(self, threads: int) -> None:
        """At least this many threads in the pool: every blocking call an engine may make at once."""
        self.threadpool.maxsize = max(self.threadpool.maxsize, threads)

    def call(self, fn: Callable, *args: Any) -> Any:
        """One try. It waits while the proxy is expired; an expired proxy or an outage it meets is
        announced once, whichever greenlet made the call."""
        self.wait_for_proxy()
        try:
            result = self.blocking(fn, *args)
        except ProxyExpired:
            self.proxy_expired()
            raise
        except ServerUnreachable as e:
            self.server_trouble(str(e), getattr(fn, "__name__", "call"))
            raise
        self.server_back(getattr(fn, "__name__", "call"))
        return result

    def retry(self, attempt: Callable[[], Any], failed: Callable[[Exception, int], bool] = None,
              errors: tuple = (CallFailed,), outage: str = "", base: float = 1.0) -> Any:
        """What attempt() returns once it works; attempt makes its calls through call().

        An error reply (or another of `errors`) is handed to failed(error, tries), which says whether
        to try again; with `outage` instead, error replies count as an outage of that kind, tried
        for ever (a status sweep: the watch can do nothing else). Waits between tries grow from
        `base` seconds. Raises Stopped when the engine stops first, or the error failed() gives up on.
        """
        tries = outages = 0
        while not self.stopping.is_set():
            try:
                return attempt()
            except ProxyExpired:
                continue                          # the next call waits for a fresh proxy
            except ServerUnreachable:
                outages += 1                      # announced once by call(); costs no try
                self.stopping.wait(backoff(outages, base))
            except errors as e:
                tries += 1
                if outage:
                    self.server_trouble(str(e), outage)
                elif not failed(e, tries):
                    raise
                self.stopping.wait(backoff(tries, base))
        raise Stopped()

    def once(self, fn: Callable, *args: Any, fix: str, failure: str = "",
             errors: tuple = (CallFailed,)) -> Any:
        """One call for a command that calls the server once: an outage is announced and waited out
        for up to ONCE_DEADLINE seconds; then, or at any other failure, a BackendError that says
        `failure` and the reason, with the command's fix."""
        deadline, outages, kind = time.monotonic() + ONCE_DEADLINE, 0, getattr(fn, "__name__", "call")
        while True:
            try:
                result = self.blocking(fn, *args)
            except ServerUnreachable as e:
                outages += 1
                pause = backoff(outages)
                if time.monotonic() + pause > deadline:
                    raise BackendError(f"{failure}{e}", fix) from None
                self.server_trouble(str(e), kind)
                gevent.sleep(pause)
                continue
            except errors as e:
                raise BackendError(f"{failure}{e}", fix) from None
            self.server_back(kind)
            return result

    def blocking(self, fn: Callable, *args: Any) -> Any:
        """fn in the threadpool. Its DIRAC calls have their own deadline (CALL_DEADLINE); a call that
        still has not returned well after it (DIRAC retrying, connecting) is an outage here, and its
        thread is left to end by itself. Not a submission: its retry must not look for the job on
        the server while the first try may still be placing it there."""
        if not self.backend.threaded:
            return fn(*args)
        call = self.threadpool.spawn(outcome, fn, *args)
        deadline = None if fn in (self.backend.submit, self.backend.submit_bundle) else \
            CALL_DEADLINE + CALL_DEADLINE_SPARE
        try:
            ok, value = call.get(timeout=deadline)
        except gevent.Timeout:
            raise ServerUnreachable(f"{getattr(fn, '__name__', 'call')}: no answer within {deadline:g} s") from None
        if not ok:
            raise value
        return value

    # -- outages ---------------------------------------------------------------------------------

    def server_trouble(self, message: str, kind: str) -> None:
        """An outage starts: one line, however many calls of however many kinds then fail."""
        if self.outage_since is None:
            self.outage_since = time.time()
            self.display.message(f"server unreachable since {clock(self.outage_since)}: {message}; retrying")
        self.unreachable.add(kind)

    def server_back(self, kind: str) -> None:
        """It ends when every kind of call that failed works again: a partial outage (the sandbox
        store down, job monitoring up) stays one outage instead of flickering."""
        if kind in self.unreachable:
            self.unreachable.discard(kind)
            if not self.unreachable:
                self.display.message(f"server reachable again (unreachable since {clock(self.outage_since)})")
                self.outage_since = None

    def server_state(self) -> str:
        if not self.proxy_ok.is_set():
            return "paused: grid proxy expired"
        if self.outage_since is not None:
            return f"server unreachable since {clock(self.outage_since)}"
        if self.proxy_left_at is None:
            return "server ok"
        left, seen = self.proxy_left_at
        return f"server ok, proxy {duration(max(0.0, left - (time.monotonic() - seen)))} left"

    # -- the proxy -------------------------------------------------------------------------------

    def watch_proxy(self, active: Callable[[], int]) -> None:
        """Look at the proxy every few seconds (a local file): pause every call while it is expired,
        resume once a fresh one appears, and warn once before it expires while jobs are active."""
        while not self.stopping.is_set():
            left = self.blocking(self.backend.proxy_seconds_left)
            if left is None:
                return                               # this backend needs no proxy
            self.proxy_left_at = (left, time.monotonic())
            if left <= PROXY_MIN_LEFT:
                self.proxy_expired()
            else:
                self.proxy_renewed(left)
                self.proxy_running_out(left, active())
            self.stopping.wait(PROXY_POLL)

    def wait_for_proxy(self) -> None:
        if not self.proxy_ok.is_set():
            gevent.wait([self.proxy_ok, self.stopping], count=1)
            if not self.proxy_ok.is_set():
                raise ProxyExpired("stopped while waiting for a fresh grid proxy")

    def proxy_expired(self) -> None:
        if self.proxy_ok.is_set():
            self.proxy_ok.clear()
            self.display.message(f"grid proxy expired: paused, nothing is lost; renew it with "
                                 f"{renew_command()} and this resumes by itself")

    def proxy_renewed(self, left: float) -> None:
        if not self.proxy_ok.is_set():
            self.proxy_ok.set()
            self.display.message(f"grid proxy renewed ({duration(left)} left): resuming")

    def proxy_running_out(self, left: float, active: int) -> None:
        if left >= PROXY_WARN_LEFT:
            self.proxy_warned = False
        elif not self.proxy_warned and active:
            self.proxy_warned = True
            self.display.message(f"grid proxy expires in {duration(left)} (at {clock(time.time() + left)}); "
                                 f"renew it with {renew_command()}, or watching pauses then")


class DownloadQueue:
    """The engine's downloads: jobs queued as their outputs become due, fetched through a bounded
    pool. Only real failures count as tries; an outage or an expired proxy is waited out. A failed
    job whose output is in (or given up on) is then settled: resubmitted, or not, as asked."""

    def __init__(self, batch: Batch, calls: BackendCalls, downloader: OutputDownloader, parallel: int,
                 stopping: "gevent.event.Event", crashed: Callable[["gevent.Greenlet"], None],
                 ended_one: Callable[[], None]) -> None:
        self.batch, self.calls, self.downloader, self.parallel = batch, calls, downloader, parallel
        self.stopping, self.crashed, self.ended_one = stopping, crashed, ended_one
        self.queue: "gevent.queue.Queue" = gevent.queue.Queue()
        self.active = 0                        # downloads started or waiting for room in the pool

    def queue_download(self, job: Job) -> None:
        self.queue.put(job.num)

    def busy(self) -> bool:
        """Whether a download is queued or under way: the run is not over."""
        return bool(self.active or self.queue.qsize())

    def run(self) -> None:
        """Download queued jobs' outputs through a bounded pool, until the engine stops."""
        pool = gevent.pool.Pool(self.parallel)
        while not self.stopping.is_set():
            try:
                num = self.queue.get(timeout=0.2)
            except gevent.queue.Empty:
                continue
            self.active += 1                # counted before waiting: the run is not over
            pool.wait_available()
            pool.spawn(self.download_one, self.batch.jobs[num]).link_exception(self.crashed)
        pool.kill()            # a download cut short leaves only .grid/tmp, cleaned next time

    def download_one(self, job: Job) -> None:
        """Download one output; only real failures count as tries, an outage or expired proxy is waited out."""
        def fetch() -> str:
            return self.downloader.download(job)

        try:
            with contextlib.suppress(CallFailed, OSError, tarfile.TarError):   # given up: job.error says why
                if job.needs_download:
                    self.batch.record_download(job, self.calls.retry(
                        fetch, lambda error, _: self.batch.download_failed(job, error),
                        errors=(CallFailed, OSError, tarfile.TarError)))
            if job.failed and not job.needs_download and not self.stopping.is_set():
                self.batch.settle(job)
        except Stopped:
            pass
        finally:
            self.active -= 1
            self.ended_one()


class Engine:
    """Submits, watches and downloads a batch's jobs concurrently, until every job is final and
    downloaded (or until --exit-when says so)."""

    def __init__(self, store: Store, backend: Backend, display: Display, batch_dir: Path,
                 parallel: int = DEFAULT_PARALLEL, interval: Optional[float] = None,
                 download_parallel: int = DOWNLOAD_PARALLEL, retries: int = 0,
                 exit_when: str = "all-final", on_tick: Optional[Callable[[], None]] = None) -> None:
        use_gevent()
        store.commit_in_groups()                     # concurrent submissions share their syncs
        self.batch = Batch(store, batch_dir, display, retries, exit_when)
        self.backend, self.display, self.batch_dir = backend, display, batch_dir
        self.on_tick = on_tick                       # called every REPORT_EVERY s while watching
        self.parallel = parallel
        self.interval = interval if interval is not None else INTERVAL.get(backend.name, 20.0)
        self.stopping = gevent.event.Event()
        self.finished = gevent.event.Event()
        self.calls = BackendCalls(backend, display, self.stopping)
        self.sweep_parallel = SWEEP_PARALLEL
        self.calls.make_room(parallel + download_parallel * FILES_PARALLEL + SWEEP_PARALLEL + 2)
        self.selection = DataSelection.from_meta(self.batch.meta)
        self.downloader = OutputDownloader(backend, batch_dir, call=self.calls.call, blocking=self.calls.blocking,
                                           selection=self.selection,
                                           disk=DiskRoom(batch_dir / STATE_DIR, display.message))
        self.to_submit: "gevent.queue.Queue" = gevent.queue.Queue()
        self.queued: set[int] = set()                # jobs in to_submit or being submitted: once each
        self.downloads = DownloadQueue(self.batch, self.calls, self.downloader, download_parallel,
                                       self.stopping, self._crashed, self.check_finished)
        self.submitting = 0
        self.interrupted = False
        self.crash: Optional[BaseException] = None
        self.batch.submission_due = self.queue_submission
        self.batch.download_due = self.downloads.queue_download
        self.batch.exit_due = self.finished.set

    # -- the run ----------------------------------------------------------------------------------

    def run(self, watch: bool = True) -> dict[int, Job]:
        """Submit what is not submitted yet; with watch, follow every job until final and downloaded
        (or until --exit-when says so), resubmitting failed jobs as --retries allows."""
        self.selection.apply(self.batch.jobs.values())
        clean_partial_downloads(self.batch_dir, keep=[stage_name(job) for job in self.batch.jobs.values()
                                                      if job.output_missing])
        self.display.start(self.progress, self.stop)
        self.batch.resume(watch)
        self.batch.warn_cleaning(self.backend.name)
        workers = [gevent.spawn(self.submit_all, watch),
                   gevent.spawn(self.calls.watch_proxy, lambda: self.batch.jobs_in_progress)]
        if watch:
            workers += [gevent.spawn(self.monitor), gevent.spawn(self.downloads.run)]
        if watch and self.on_tick:
            workers.append(gevent.spawn(self.every, REPORT_EVERY, self.on_tick, True))
        if self.display.live:
            workers.append(gevent.spawn(self.every, FOOTER_REFRESH, self.display.redraw))
        for worker in workers:
            worker.link_exception(self._crashed)
        handlers = [gevent.signal_handler(sig, self.stop) for sig in (signal.SIGINT, signal.SIGTERM)]
        try:
            if watch:
                self.check_finished()
                self.finished.wait()
            else:
                workers[0].join()
        finally:
            for handler in handlers:
                handler.cancel()              # libev leaves SIG_DFL behind: Ctrl-C would kill silently
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.stopping.set()
            gevent.joinall(workers, raise_error=False)
            self.display.close(self.batch.counts())
        if self.crash:
            raise self.crash
        return self.batch.jobs

    def every(self, seconds: float, fn: Callable[[], None], at_the_end: bool = False) -> None:
        """fn at the start and every `seconds` while the run goes on (and once more at its end)."""
        fn()
        while not self.stopping.wait(seconds):
            fn()
        if at_the_end:
            fn()

    def _crashed(self, greenlet: "gevent.Greenlet") -> None:
        self.crash = greenlet.exception
        self.finished.set()

    def stop(self) -> None:
        """Ctrl-C: stop starting work, let submissions in flight finish and be recorded."""
        if self.stopping.is_set():
            self.display.message("stopping now")
            self.finished.set()
            return
        self.display.message("stopping: state is kept, `grid watch` resumes "
                             f"({self.submitting} submission(s) in flight finish first)")
        self.interrupted = True
        self.stopping.set()
        self.finished.set()

    def check_finished(self) -> None:
        if not (self.batch.jobs_in_progress or self.submitting or self.downloads.busy()):
            self.finished.set()

    def progress(self) -> "Progress":
        return self.batch.progress(self.calls.server_state())

    def find(self, jobs: list[Job]) -> dict[str, int]:
        """The ids of these jobs' intended submissions that reached the server: {tag: id}."""
        return self.calls.call(self.backend.find, *self.batch.find_query(jobs))

    # -- submitting -------------------------------------------------------------------------------

    def submit_all(self, keep_going: bool) -> None:
        """Submit queued jobs through a bounded pool; with keep_going, wait for resubmissions too."""
        self.reconcile()
        if self.batch.bundling:
            self.bundle_queued()
        pool = gevent.pool.Pool(self.parallel)
        while not self.stopping.is_set():
            if self.to_submit.empty() and not keep_going and not (self.batch.bundling and len(pool)):
                break                  # (a bundle in flight may still give jobs back to the queue)
            try:
                item = self.to_submit.get(timeout=0.2)
            except gevent.queue.Empty:
                continue
            pool.wait_available()
            if self.stopping.is_set():
                break
            self.submitting += 1
            if isinstance(item, list):
                greenlet = pool.spawn(self.submit_bundle, [self.batch.jobs[num] for num in item])
            else:
                greenlet = pool.spawn(self.submit_one, self.batch.jobs[item])
            greenlet.link_exception(self._crashed)
        pool.join()           # submissions in flight are always waited for and recorded

    def queue_submission(self, job: Job) -> None:
        if job.num not in self.queued:
            self.queued.add(job.num)
            self.to_submit.put(job.num)

    def bundle_queued(self) -> None:
        """--bulk or parametric jobs: regroup the jobs waiting in the queue into bundles (lists of
        job numbers) where the backend can; resubmissions, queued later, go one by one."""
        waiting = []
        while not self.to_submit.empty():
            waiting.append(self.to_submit.get_nowait())
        for num in waiting:
            if self.batch.jobs[num].submitted:       # found by reconcile()
                self.queued.discard(num)
        pending = [num for num in waiting if not self.batch.jobs[num].submitted]
        if not pending:
            return
        try:
            limit = self.calls.retry(lambda: self.calls.call(self.backend.bundle_limit), outage="bundle_limit")
        except Stopped:
            return
        if limit < 2:
            if self.batch.bulk:
                self.display.message(f"bulk: the {self.backend.name} backend submits one job at a time")
            bundles, singles = [], pending
        else:
            bundles, singles = self.batch.bundles(pending, limit, self.backend.bundle_key)
        for item in bundles + singles:
            self.to_submit.put(item)

    def reconcile(self) -> None:
        """After a crash, adopt the jobs the server accepted before their ids were stored."""
        in_doubt = self.batch.in_doubt()
        if not in_doubt:
            return
        self.display.message(f"resuming: {len(in_doubt)} submission(s) were cut short earlier; "
                             "looking for them on the server before submitting anything")
        try:
            found = self.calls.retry(lambda: self.find(list(in_doubt.values())), outage="find",
                                     base=self.interval)
        except Stopped:
            return
        self.batch.adopt(list(in_doubt.values()), found)
        self.display.message(f"{len(in_doubt)} submission(s) cut short earlier: {len(found)} found on the "
                             f"server and kept, {len(in_doubt) - len(found)} not there, submitted now")

    def submit_one(self, job: Job) -> None:
        """Submit one job; only error replies count as tries, an outage or expired proxy is waited out."""
        spec = None

        def attempt() -> int:
            tag = self.batch.tag(job)
            if job.intent == tag:                # an earlier try may have reached the server
                found = self.find([job])
                if found:
                    return found[tag]
            self.batch.intend([job], [tag])
            return self.calls.call(self.backend.submit, spec, tag)

        try:
            if job.submitted:                    # found by reconcile() while it waited in the queue
                return
            spec = self.batch.store.spec(job.num)
            self.batch.record_submission(job, self.calls.retry(
                attempt, lambda error, tries: self.batch.submission_refused(job, error, tries)))
        except Stopped:
            pass
        except CallFailed:
            self.batch.submission_failed(job)
        finally:
            self.submitting -= 1
            self.queued.discard(job.num)
            self.check_finished()

    def submit_bundle(self, jobs: list[Job]) -> None:
        """Submit jobs in one call; a bundle that keeps failing goes back to the queue one job at a
        time, one the server finds too large split.

        Exactly once as for one job: every job's tag is on disk before the call, and after a failed
        call the jobs that reached the server anyway are found by their tags and kept.
        """
        requeued: list = []
        bundle = [job.num for job in jobs]
        jobs = [job for job in jobs if not job.submitted]         # reconcile() may have found some
        specs = {}

        def attempt() -> Optional[list[int]]:
            nonlocal jobs
            jobs = self.adopt_accepted(jobs)
            if len(jobs) < 2:
                return None
            tags = [self.batch.tag(job) for job in jobs]
            self.batch.intend(jobs, tags)
            return self.calls.call(self.backend.submit_bundle, [specs[job.num] for job in jobs], tags)

        try:
            specs.update((job.num, self.batch.store.spec(job.num)) for job in jobs)
            try:
                ids = self.calls.retry(attempt, lambda error, tries: self.batch.bundle_refused(jobs, error, tries))
            except BundleTooLarge as e:          # refused before any job was made: split it
                requeued = self.batch.split_bundle(jobs, e.limit, str(e))
                return
            except CallFailed:
                ids = None                       # not accepted: what is left goes one by one
            if ids is not None:
                self.batch.adopt(jobs, {job.intent: job_id for job, job_id in zip(jobs, ids)})
            elif not self.stopping.is_set():
                requeued = [job.num for job in jobs]
        except Stopped:
            pass                                         # left for the next run, as they are
        finally:
            for item in requeued:
                self.to_submit.put(item)                 # still in self.queued: not queued twice
            again = {num for item in requeued for num in (item if isinstance(item, list) else [item])}
            self.queued.difference_update(num for num in bundle if num not in again)
            self.submitting -= 1
            self.check_finished()

    def adopt_accepted(self, jobs: list[Job]) -> list[Job]:
        """Keep the jobs an earlier try placed on the server after all; return the others."""
        tried = [job for job in jobs if job.intent == self.batch.tag(job)]
        if tried:
            self.batch.adopt(tried, self.find(tried))
        return [job for job in jobs if not job.submitted]

    # -- monitoring -------------------------------------------------------------------------------

    def monitor(self) -> None:
        """A status sweep every interval; a failed one is tried again (an outage: one line) until it works."""
        while not self.stopping.is_set():
            try:
                self.calls.retry(self.sweep, outage="status", base=self.interval)
            except Stopped:
                return
            self.batch.warn_cleaning(self.backend.name)
            self.check_finished()
            self.stopping.wait(self.interval)

    def sweep(self) -> None:
        """Ask about every job that is not final, in calls of at most BULK_STATUS_MAX ids, up to
        sweep_parallel of them at once (100,000 open jobs are 100 calls); none, no call. Each answer
        is applied as it comes; a failed call ends the sweep (the monitor retries it)."""
        if not self.batch.jobs_in_progress:      # only downloads left: not even a look at the jobs
            return
        active = [j.dirac_id for j in self.batch.jobs.values() if j.submitted and not is_final(j.status)]
        pool = gevent.pool.Pool(self.sweep_parallel)
        try:
            for ok, states in pool.imap_unordered(self.status_of, chunks(active, BULK_STATUS_MAX)):
                if not ok:
                    raise states
                self.batch.apply(states)
        finally:
            pool.kill()                    # after a failure: the other answers are not waited for

    def status_of(self, ids: list[int]) -> tuple[bool, Any]:
        """(True, states) or (False, the CallFailed): a greenlet that raises would print its traceback."""
        try:
            return True, self.calls.call(self.backend.status, ids)
        except CallFailed as e:
            return False, e



def ensure_proxy_lasts(backend: Backend, pending: int, parallel: int) -> None:
    """Refuse to start submitting when the proxy may expire before the last job is sent."""
    left = backend.proxy_seconds_left() if pending else None
    if left is None:
        return
    slots = max(1, min(parallel, pending))
    needed = pending * SUBMIT_SECONDS_PER_JOB / slots + PROXY_SUBMIT_MARGIN
    if left < needed:
        hours = max(24, int(needed // 3600) + 2)
        raise BackendError(
            f"the grid proxy has {duration(left)} left, and submitting {pending} job(s) may take up to "
            f"{duration(needed)} ({pending} x {SUBMIT_SECONDS_PER_JOB:g} s / {slots} at once, "
            f"+ {PROXY_SUBMIT_MARGIN / 60:g} min to spare); nothing was submitted",
            f"renew it first: {renew_command(hours)}")


def renew_command(hours: int = 24) -> str:
    return f"`dirac-proxy-init -v {hours}:00` (LHCb: `lhcb-proxy-init -v {hours}:00`)"


# ==================================================================================================
# Report
# ==================================================================================================
# `grid report` draws the batch as one HTML page that needs nothing beside it: no network, no
# other file. Plots are drawn with matplotlib as SVG and written into the page; each has its
# numbers in a table under it (for screen readers, and for programs: every number sits in a data-*
# attribute). Everything is aggregated before it is drawn (per time bin, per site, per reason, per
# number of attempts), so the page of 100,000 jobs is as small as that of ten. matplotlib is
# imported here only, when a page is drawn: no other command starts slower for it.

@dataclass(slots=True)
class TimeBins:
    """Equal intervals from the batch's start to now (or to its last event, once it is over)."""

    start: float
    width: float
    count: int

    def index(self, stamp: float) -> int:
        return min(self.count - 1, max(0, int((stamp - self.start) / self.width)))

    def edges(self) -> list[float]:
        return [self.start + i * self.width for i in range(self.count + 1)]


@dataclass(slots=True)
class Timeline:
    """The batch over time: jobs per summary column at the end of each bin, and attempts that ended
    (Done, or failed) in each bin; `recent` counts the attempts that ended in the last hour."""

    columns: list
    done: list
    failed: list
    recent: int = 0


@dataclass(slots=True)
class Distribution:
    """How long attempts took, as counts in bins growing geometrically (grid times span seconds
    to days), with the median, the 90th percentile and the longest."""

    edges: list
    counts: list
    median: float = 0.0
    p90: float = 0.0
    longest: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(slots=True)
class SiteRow:
    site: str
    done: int
    failed: int
    reasons: list                                # [(reason, jobs)], the most frequent first


@dataclass(slots=True)
class ReasonRow:
    """A failure reason's retries: attempts that failed with it and were tried again, jobs whose
    latest attempt failed with it (not tried again: retries used up or not asked for), jobs that
    failed with it once and are Done now, and whether it fails everywhere (not retried by itself)."""

    reason: str
    retried: int
    stopped: int
    recovered: int
    everywhere: bool


@dataclass
class BatchPicture:
    """What the report shows, aggregated: its size depends on bins, sites and reasons, not on jobs."""

    meta: dict
    now: float
    counts: list
    facts: list                                  # [(key, label, value as text)]
    running: bool                                # some job is not final yet
    bins: TimeBins
    timeline: Timeline
    rate: Optional[float]                        # attempts ending per second lately, while running
    left: Optional[float]                        # estimated seconds until every job is final
    waiting: Distribution
    running_times: Distribution
    sites: list
    attempts: list                               # [(attempts, done, failed, not final)]
    reasons: list


def picture_batch(meta: dict, jobs: list[Job], batch_dir: Path, now: float) -> BatchPicture:
    """Aggregate a snapshot of the batch for its report."""
    counts = column_counts(job.status for job in jobs)
    running = any(not is_final(job.status) for job in jobs)
    bins = time_bins(meta, jobs, now, running)
    timeline = job_timeline(jobs, bins, now - REPORT_RATE_WINDOW)
    rate, left = time_left(jobs, timeline.recent, bins.start, now) if running else (None, None)
    waits, runs = attempt_times(jobs)
    return BatchPicture(meta=meta, now=now, counts=counts, facts=batch_facts(meta, jobs, batch_dir),
                        running=running, bins=bins, timeline=timeline, rate=rate, left=left,
                        waiting=distribution(waits), running_times=distribution(runs),
                        sites=site_rows(jobs), attempts=attempt_rows(jobs), reasons=reason_rows(jobs))


def time_bins(meta: dict, jobs: list[Job], now: float, running: bool) -> TimeBins:
    first = min((job.history[0][1] for job in jobs if job.history), default=now)
    start = min(meta.get("created") or first, first)
    end = now if running else max((job.history[-1][1] for job in jobs if job.history), default=now)
    return TimeBins(start, max(end - start, 1.0) / REPORT_TIME_BINS, REPORT_TIME_BINS)


def job_timeline(jobs: list[Job], bins: TimeBins, recent_since: float) -> Timeline:
    """From every job's history (a status and its time per change): each change moves the job from
    one column to another in its bin; the sums of the moves up to a bin are the columns' counts.
    (Half a million changes for 100,000 jobs: the loop body is kept to plain look-ups.)"""
    moves = [[0] * bins.count for _ in COLUMNS]
    timeline = Timeline(columns=[], done=[0] * bins.count, failed=[0] * bins.count)
    index, column = bins.index, COLUMN_OF.get
    for job in jobs:
        before, was_final = -1, False
        for status, stamp in job.history or [[job.status, bins.start]]:
            at, now_in, final = index(stamp), column(status, 1), status in FINAL
            if before >= 0:
                moves[before][at] -= 1
            moves[now_in][at] += 1
            if final and not was_final:
                (timeline.done if status == DONE else timeline.failed)[at] += 1
                timeline.recent += stamp >= recent_since
            before, was_final = now_in, final
    timeline.columns = [list(itertools.accumulate(moved)) for moved in moves]
    return timeline


def time_left(jobs: list[Job], recent: int, start: float, now: float) -> tuple[Optional[float], Optional[float]]:
    """The rate at which attempts ended over the last hour (or since the start, if sooner), and the
    time the jobs not final yet need at that rate; None while nothing has ended."""
    span = now - max(start, now - REPORT_RATE_WINDOW)
    if not recent or span < 1:
        return None, None
    rate = recent / span
    return rate, sum(1 for job in jobs if not is_final(job.status)) / rate


def attempt_times(jobs: list[Job]) -> tuple[list[float], list[float]]:
    """Seconds each attempt waited (accepted by the server, or rescheduled, until Running) and ran
    (Running until final). A step no status sweep saw (Waiting straight to Done) is left out."""
    waits: list[float] = []
    runs: list[float] = []
    running_column = column_of(RUNNING)
    for job in jobs:
        since = started = None
        for status, stamp in job.history:
            if status == SUBMITTING:
                since = started = None
            elif is_final(status):
                if started is not None:
                    runs.append(stamp - started)
                since = started = None
            elif column_of(status) == running_column:
                if started is None and since is not None:
                    waits.append(stamp - since)
                started = started if started is not None else stamp
            elif since is None or status == RESCHEDULED:
                since, started = stamp, None
    return waits, runs


def distribution(values: list[float]) -> Distribution:
    if not values:
        return Distribution(edges=[], counts=[])
    values.sort()
    low = max(values[0], REPORT_SHORTEST)
    high = max(values[-1], low * 2)
    edges = [low * (high / low) ** (i / REPORT_DURATION_BINS) for i in range(REPORT_DURATION_BINS + 1)]
    counts = [0] * REPORT_DURATION_BINS
    for value in values:
        counts[min(REPORT_DURATION_BINS - 1, max(0, bisect.bisect_right(edges, value) - 1))] += 1
    return Distribution(edges=edges, counts=counts, median=quantile(values, 0.5), p90=quantile(values, 0.9),
                        longest=values[-1])


def quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated between the two nearest."""
    position = q * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def site_rows(jobs: list[Job]) -> list[SiteRow]:
    """Done and failed jobs per site, the busiest first, each with its failure reasons: the groups of
    `grid failures`, split by site."""
    done = collections.Counter(job.site or "-" for job in jobs if job.status == DONE)
    reasons: dict[str, list] = {}
    for reason, members in failure_groups(jobs):
        for site, count in site_counts(members).items():
            reasons.setdefault(site, []).append((reason, count))
    rows = [SiteRow(site, done[site], sum(n for _, n in reasons.get(site, [])),
                    sorted(reasons.get(site, []), key=lambda item: (-item[1], item[0])))
            for site in set(done) | set(reasons)]
    return sorted(rows, key=lambda row: (-(row.done + row.failed), row.site))


def attempt_rows(jobs: list[Job]) -> list[tuple[int, int, int, int]]:
    """(attempts, done, failed, not final) per number of attempts the jobs needed so far."""
    rows: dict[int, list[int]] = {}
    for job in jobs:
        row = rows.setdefault(job.attempts, [0, 0, 0])
        row[0 if job.status == DONE else 1 if job.failed else 2] += 1
    return [(attempts, *rows[attempts]) for attempts in sorted(rows)]


def reason_rows(jobs: list[Job]) -> list[ReasonRow]:
    """Every reason an attempt failed for, with what became of the jobs it hit."""
    retried = collections.Counter(attempt["reason"] for job in jobs for attempt in job.past if attempt["reason"])
    recovered = collections.Counter(reason for job in jobs if job.status == DONE
                                    for reason in {attempt["reason"] for attempt in job.past} if reason)
    stopped = {reason: len(members) for reason, members in failure_groups(jobs)}
    stats = AttemptStats(jobs)
    rows = [ReasonRow(reason, retried[reason], stopped.get(reason, 0), recovered[reason],
                      stats.systematic(reason)) for reason in set(retried) | set(stopped)]
    return sorted(rows, key=lambda row: (-(row.retried + row.stopped), row.reason))


def batch_facts(meta: dict, jobs: list[Job], batch_dir: Path) -> list[tuple[str, str, str]]:
    final = sum(1 for job in jobs if is_final(job.status) and job.submitted)
    outputs = sum(1 for job in jobs if job.output)
    files = ", ".join(os.path.basename(path) for path in meta.get("jobfiles", [])) or "-"
    return [("tag", "batch", meta.get("tag", "-")), ("backend", "backend", meta.get("backend", "-")),
            ("created", "created", when(meta.get("created") or 0)), ("jobfiles", "job files", files),
            ("jobs", "jobs", str(len(jobs))), ("attempts", "attempts", str(sum(job.attempts for job in jobs))),
            ("outputs", "outputs downloaded", f"{outputs} of {final} final"),
            ("size", "size of the outputs", byte_size(outputs_size(batch_dir))),
            ("database", "size of the database", byte_size(folder_size(batch_dir / STATE_DIR / "db")))]


def outputs_size(batch_dir: Path) -> int:
    return sum(folder_size(batch_dir / name) for name in (SUCCEEDED_DIR, FAILED_DIR, RETRIED_DIR))


def folder_size(path: Path) -> int:
    """Bytes of the files under a folder (links not followed); 0 if there is none."""
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def byte_size(count: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return ""


# -- the plots: matplotlib figures written as SVG ---------------------------------------------------

COLUMN_COLORS = ("#b0b0b0", "#9ecae1", "#fdae6b", "#bcbddc", "#3182bd", "#31a354", "#de2d26")
DONE_COLOR, FAILED_COLOR, OPEN_COLOR = COLUMN_COLORS[5], COLUMN_COLORS[6], COLUMN_COLORS[4]
PLOT_STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
              "axes.grid": True, "grid.alpha": 0.3, "legend.frameon": False, "figure.dpi": 72}
NICE_SECONDS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 6 * 3600,
                12 * 3600, 86400, 2 * 86400, 7 * 86400)   # where the time axes may have ticks


def report_plots(picture: BatchPicture) -> dict[str, str]:
    """Each plot of the page as SVG text, by section name."""
    try:
        import matplotlib
    except ImportError:
        raise GridError("`grid report` draws its plots with matplotlib, which is not installed",
                        "install it: pip install 'matplotlib>=3.7' (or pip install '.[report]' in grid.py's "
                        "folder)") from None
    matplotlib.use("Agg")                        # never a window, whatever the environment says
    from matplotlib.figure import Figure

    plots = {"timeline": plot_timeline, "throughput": plot_throughput, "durations": plot_durations,
             "sites": plot_sites, "attempts": plot_attempts}
    with matplotlib.rc_context(PLOT_STYLE):
        return {name: svg_text(draw(Figure(figsize=(9, 3.2), layout="constrained"), picture))
                for name, draw in plots.items()}


def svg_text(figure: Any) -> str:
    """The figure as an <svg> element for the page: no XML prolog, no metadata, no namespaces
    (the HTML parser knows SVG), so the page holds no address of any kind."""
    out = io.StringIO()
    figure.savefig(out, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = out.getvalue()
    text = text[text.index("<svg"):]
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text, count=2)


def bin_times(picture: BatchPicture) -> list:
    return [datetime.datetime.fromtimestamp(stamp) for stamp in picture.bins.edges()]


def date_axis(axes: Any) -> None:
    import matplotlib.dates
    locator = matplotlib.dates.AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(matplotlib.dates.ConciseDateFormatter(locator))


def plot_timeline(figure: Any, picture: BatchPicture) -> Any:
    axes = figure.subplots()
    axes.stackplot(bin_times(picture)[1:], *picture.timeline.columns, labels=COLUMN_NAMES,
                   colors=COLUMN_COLORS, step="pre")
    axes.set_ylabel("jobs")
    axes.set_title("jobs in each column of the summary, over time", loc="left")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    date_axis(axes)
    return figure


def plot_throughput(figure: Any, picture: BatchPicture) -> Any:
    import matplotlib.dates
    axes = figure.subplots()
    edges = matplotlib.dates.date2num(bin_times(picture))     # stairs: one shape per colour, not a bar per bin
    done, failed = picture.timeline.done, picture.timeline.failed
    axes.stairs(done, edges, fill=True, color=DONE_COLOR, label="Done")
    axes.stairs([d + f for d, f in zip(done, failed)], edges, baseline=done, fill=True, color=FAILED_COLOR,
                label="failed")
    axes.xaxis_date()
    axes.set_ylabel("attempts")
    axes.set_title(f"attempts that ended, per {duration(picture.bins.width)}", loc="left")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    date_axis(axes)
    return figure


def plot_durations(figure: Any, picture: BatchPicture) -> Any:
    for axes, (title, spread, color) in zip(figure.subplots(1, 2), (
            ("waiting: accepted to Running", picture.waiting, COLUMN_COLORS[2]),
            ("running: Running to final", picture.running_times, OPEN_COLOR))):
        axes.set_title(title, loc="left")
        axes.set_ylabel("attempts")
        if not spread.counts:
            axes.text(0.5, 0.5, "no attempt seen yet", ha="center", va="center", transform=axes.transAxes)
            continue
        axes.stairs(spread.counts, spread.edges, fill=True, color=color)
        axes.set_xscale("log")
        ticks = [s for s in NICE_SECONDS if spread.edges[0] <= s <= spread.edges[-1]] or \
            [spread.edges[0], spread.edges[-1]]
        ticks = ticks[::-(-len(ticks) // 7)]              # seven at most
        axes.set_xticks(ticks, [seconds_text(s) for s in ticks])
        axes.minorticks_off()
        axes.axvline(spread.median, color="black", linewidth=1, linestyle="--")
    return figure


def plot_sites(figure: Any, picture: BatchPicture) -> Any:
    rows = picture.sites[:REPORT_SITES]
    figure.set_figheight(1.2 + 0.28 * max(len(rows), 1))
    axes = figure.subplots()
    names = [row.site for row in rows][::-1]
    done = [row.done for row in rows][::-1]
    axes.barh(names, done, color=DONE_COLOR, label="Done")
    axes.barh(names, [row.failed for row in rows][::-1], left=done, color=FAILED_COLOR, label="failed")
    axes.set_xlabel("jobs")
    busiest = f" (the {len(rows)} busiest of {len(picture.sites)}; all in the table)" \
        if len(rows) < len(picture.sites) else ""
    axes.set_title(f"final jobs per site{busiest}", loc="left")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return figure


def plot_attempts(figure: Any, picture: BatchPicture) -> Any:
    axes = figure.subplots()
    labels = [str(attempts) for attempts, *_ in picture.attempts]
    done, failed, open_ = ([row[i] for row in picture.attempts] for i in (1, 2, 3))
    axes.bar(labels, done, width=0.5, color=DONE_COLOR, label="Done")
    axes.bar(labels, failed, width=0.5, bottom=done, color=FAILED_COLOR, label="failed")
    axes.bar(labels, open_, width=0.5, bottom=[d + f for d, f in zip(done, failed)], color=OPEN_COLOR,
             label="not final")
    axes.set_xlabel("attempts (submissions accepted by the server)")
    axes.set_ylabel("jobs")
    axes.set_title("attempts per job", loc="left")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return figure


def seconds_text(seconds: float) -> str:
    """Tick labels: '0.5 s', '10 s', '10 min', '6 h', '1 d'."""
    if seconds < 60:
        return f"{seconds:.2g} s"
    if seconds >= 86400:
        return f"{seconds / 86400:.3g} d"
    return f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{seconds / 60:.3g} min"


def throughput_text(picture: BatchPicture) -> str:
    ended = sum(picture.timeline.done) + sum(picture.timeline.failed)
    if not picture.running:
        return f"{ended} attempt(s) ended; every job is final"
    if picture.left is None:
        return f"{ended} attempt(s) ended; time left: not known until attempts end"
    return (f"{picture.rate * 3600:.1f} attempts/h lately; estimated time left {duration(picture.left)} "
            f"(until {when(picture.now + picture.left)})")


# -- the page ----------------------------------------------------------------------------------------

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
pre.summary { font-size: 1.1em; background: #f4f4f4; padding: .5em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: .15em .7em; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; } tr:nth-child(even) { background: #f7f7f7; }
figure { margin: .5em 0; } figure svg { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-size: .9em; } details { margin: .3em 0 1em; }
"""


def report_page(picture: BatchPicture) -> str:
    """The whole page; while the batch runs it reloads itself every minute."""
    from html import escape
    plots = report_plots(picture)
    tag = escape(picture.meta.get("tag", "batch"))
    refresh = f'<meta http-equiv="refresh" content="{REPORT_EVERY:.0f}">' if picture.running else ""
    sections = [summary_section(picture), timeline_section(picture, plots["timeline"]),
                throughput_section(picture, plots["throughput"]), durations_section(picture, plots["durations"]),
                sites_section(picture, plots["sites"]), attempts_section(picture, plots["attempts"])]
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n{refresh}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>grid.py report: {tag}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>Batch {tag}</h1>\n<p class=\"note\">as of {when(picture.now)}; written by grid.py "
            f"{__version__} (<code>grid report</code>)</p>\n" + "\n".join(sections) + "\n</body>\n</html>\n")


def table_html(head: list[str], rows: list[list[str]], numeric: set[int], attrs: list[str] = None,
               caption: str = "") -> str:
    """A table of text cells (already escaped); numeric columns are right-aligned."""
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f'<{tag}{" class=n" if i in numeric else ""}>{v}</{tag}>' for i, v in enumerate(values))
    body = "".join(f"<tr{(' ' + attrs[i]) if attrs else ''}>{cells('td', row)}</tr>\n" for i, row in enumerate(rows))
    caption = f"<caption>{caption}</caption>" if caption else ""
    return f"<table>{caption}<thead><tr>{cells('th', head)}</tr></thead>\n<tbody>\n{body}</tbody></table>"


def figure_html(svg: str, label: str, caption: str) -> str:
    from html import escape
    return (f'<figure role="img" aria-label="{escape(label)}">\n{svg}\n'
            f"<figcaption>{caption}</figcaption>\n</figure>")


def summary_section(picture: BatchPicture) -> str:
    from html import escape
    counts = "".join(f'<td class=n data-column="{name}">{n}</td>' for name, n in zip(COLUMN_NAMES, picture.counts))
    facts = "".join(f'<tr><th>{escape(label)}</th><td data-fact="{key}">{escape(value)}</td></tr>'
                    for key, label, value in picture.facts)
    return (f'<section id="summary">\n<h2>Summary</h2>\n<pre class="summary">{summary_line(picture.counts)}</pre>\n'
            f"<table><thead><tr>{''.join(f'<th class=n>{name}</th>' for name in COLUMN_NAMES)}</tr></thead>"
            f"<tbody><tr>{counts}</tr></tbody></table>\n<table><tbody>{facts}</tbody></table>\n</section>")


def timeline_section(picture: BatchPicture, svg: str) -> str:
    every = max(1, picture.bins.count // REPORT_TABLE_ROWS)
    rows, attrs = [], []
    for i in range(every - 1, picture.bins.count, every):
        values = [column[i] for column in picture.timeline.columns]
        rows.append([when(picture.bins.start + (i + 1) * picture.bins.width), *map(str, values)])
        attrs.append(f'data-time="{picture.bins.start + (i + 1) * picture.bins.width:.0f}" '
                     f'data-counts="{" ".join(map(str, values))}"')
    return (f'<section id="timeline">\n<h2>Jobs over time</h2>\n'
            + figure_html(svg, "stacked areas of the jobs in each summary column over time",
                          "Each colour is a column of the summary line; together they are every job of the "
                          "batch. From the statuses grid.py saw, with their times.")
            + "\n<details><summary>the numbers</summary>\n"
            + table_html(["time", *COLUMN_NAMES], rows, set(range(1, 8)), attrs) + "</details>\n</section>")


def throughput_section(picture: BatchPicture, svg: str) -> str:
    rows, attrs = [], []
    for i in range(picture.bins.count):
        done, failed = picture.timeline.done[i], picture.timeline.failed[i]
        if done or failed:
            rows.append([when(picture.bins.start + i * picture.bins.width), str(done), str(failed)])
            attrs.append(f'data-done="{done}" data-failed="{failed}"')
    left = f'{picture.left:.0f}' if picture.left is not None else ""
    return (f'<section id="throughput" data-running="{int(picture.running)}" data-left="{left}">\n'
            f"<h2>Throughput</h2>\n<p>{throughput_text(picture)}</p>\n"
            + figure_html(svg, "bars of the attempts that ended in each interval",
                          f"Attempts that ended (Done in green, failed in red) per {duration(picture.bins.width)}."
                          " The time left assumes the rate of the last hour holds.")
            + "\n<details><summary>the numbers</summary>\n"
            + table_html(["interval from", "Done", "failed"], rows, {1, 2}, attrs) + "</details>\n</section>")


def durations_section(picture: BatchPicture, svg: str) -> str:
    rows, attrs = [], []
    for name, spread in (("waiting", picture.waiting), ("running", picture.running_times)):
        shown = [duration_cell(v) for v in (spread.median, spread.p90, spread.longest)] if spread.total else ["-"] * 3
        rows.append([name, str(spread.total), *shown])
        attrs.append(f'data-times="{name}" data-attempts="{spread.total}" data-median="{spread.median:.3f}"')
    return ('<section id="durations">\n<h2>Waiting and running times</h2>\n'
            + figure_html(svg, "histograms of the waiting and the running times of attempts",
                          "Attempts by how long they waited (accepted by the server until Running) and ran "
                          "(Running until final), on a log scale; the dashed line is the median. Steps no "
                          "status sweep saw are left out.")
            + "\n" + table_html(["time", "attempts", "median", "90%", "longest"], rows, {1, 2, 3, 4}, attrs)
            + "\n</section>")


def duration_cell(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else duration(seconds)


def sites_section(picture: BatchPicture, svg: str) -> str:
    from html import escape
    rows, attrs = [], []
    for row in picture.sites:
        reasons = "".join(f'<li data-reason="{escape(reason)}" data-count="{n}">{n} × {escape(reason)}</li>'
                          for reason, n in row.reasons[:REPORT_SITE_REASONS])
        more = len(row.reasons) - REPORT_SITE_REASONS
        if more > 0:
            others = sum(n for _, n in row.reasons[REPORT_SITE_REASONS:])
            reasons += f"<li>{others} more, for {more} other reason(s): <code>grid failures</code></li>"
        rows.append([escape(row.site), str(row.done), str(row.failed), f"<ul>{reasons}</ul>" if reasons else "-"])
        attrs.append(f'data-site="{escape(row.site)}" data-done="{row.done}" data-failed="{row.failed}"')
    return ('<section id="sites">\n<h2>Sites</h2>\n'
            + figure_html(svg, "bars of the done and failed jobs per site",
                          "Final jobs per site (their latest attempts), the busiest first. The reasons are "
                          "the groups of <code>grid failures</code>.")
            + "\n" + table_html(["site", "Done", "failed", "main failure reasons"], rows, {1, 2}, attrs)
            + "\n</section>")


def attempts_section(picture: BatchPicture, svg: str) -> str:
    from html import escape
    rows = [[str(attempts), str(done), str(failed), str(open_)] for attempts, done, failed, open_ in picture.attempts]
    attrs = [f'data-attempts="{a}" data-jobs="{d + f + o}" data-done="{d}" data-failed="{f}"'
             for a, d, f, o in picture.attempts]
    reason_rows_html = [[escape(r.reason), str(r.retried), str(r.recovered), str(r.stopped),
                         "yes: not retried by itself" if r.everywhere else "no"] for r in picture.reasons]
    reason_attrs = [f'data-reason="{escape(r.reason)}" data-retried="{r.retried}" data-stopped="{r.stopped}" '
                    f'data-recovered="{r.recovered}"' for r in picture.reasons]
    reasons = table_html(["reason", "attempts retried", "jobs Done after", "jobs stopped", "fails everywhere"],
                         reason_rows_html, {1, 2, 3}, reason_attrs,
                         "failure reasons: retried, or stopped (the job's latest attempt failed so)") \
        if reason_rows_html else '<p class="note">no attempt has failed</p>'
    return ('<section id="attempts">\n<h2>Attempts</h2>\n'
            + figure_html(svg, "bars of the jobs by the number of attempts they needed",
                          "Jobs by the attempts they needed so far (0: never accepted by the server), coloured "
                          "by where their latest attempt is.")
            + "\n" + table_html(["attempts", "Done", "failed", "not final"], rows, {0, 1, 2, 3}, attrs)
            + "\n" + reasons + "\n</section>")


def write_report(batch_dir: Path, target: Path) -> BatchPicture:
    """Draw the batch from a snapshot (it may be running) and put the page in place atomically, so a
    browser that reloads it sees the old page or the new one."""
    with Store.snapshot(batch_dir) as store:
        meta, jobs = store.meta(), list(store.jobs().values())
    picture = picture_batch(meta, jobs, batch_dir, time.time())
    atomic_write(target, report_page(picture).encode())
    return picture


# ==================================================================================================
# Commands
# ==================================================================================================
# The command line as a table (COMMANDS, at the end): each command is a pair, add_NAME(parser)
# adding its arguments (its docstring: the command's line in `grid --help`, then its description)
# right above cmd_NAME(args) running it. A command decides little: it opens the batch, hands work
# to the engine or the batch, and results to the display.

def add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parallel", type=positive_int, default=DEFAULT_PARALLEL, metavar="N",
                        help="submissions at once (default: %(default)s)")
    parser.add_argument("--interval", type=positive_float, default=None, metavar="SECONDS",
                        help="seconds between status sweeps (default: "
                        + ", ".join(f"{k} {v:g}" for k, v in INTERVAL.items()) + ")")
    parser.add_argument("--retries", type=non_negative_int, default=None, metavar="N",
                        help="resubmit each failed job up to N times, except for a reason that fails "
                        "more than half of all attempts (kept for later `watch`; default 0)")
    parser.add_argument("--exit-when", choices=EXIT_WHEN, default="all-final",
                        help="return when every job is final (default); as soon as one job has failed "
                        "for good, since not all can be done (all-done); or at the first failure, "
                        "retries or not (first-failure). Exit code 0 only if every job is Done, 6 if not")
    parser.add_argument("--data", choices=DATA_CHOICES, default=None,
                        help="which output data files (setOutputData) of final jobs to download into their "
                        "folders: all (default) or none; kept in the batch, a later `watch --data` changes it. "
                        "An output sandbox DIRAC put on grid storage for its size is always downloaded")
    parser.add_argument("--data-pattern", default=None, metavar="GLOB",
                        help="download only the output data files whose name matches GLOB (the whole LFN "
                        "if GLOB has a '/'); kept in the batch like --data")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line and event, instead of text; stdout carries "
                        "nothing else (job files' prints, DIRAC's logs and warnings go to stderr)")
    parser.add_argument("--report", action="store_true",
                        help=f"keep {REPORT_FILE} in the batch directory up to date (`grid report`): "
                        f"rewritten every {REPORT_EVERY:g} s while watching, and at the end")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


@contextlib.contextmanager
def open_batch(args: argparse.Namespace, shared: bool = False) -> Iterator[Store]:
    """The -C batch, held by this command until the block ends (LevelDB: one process at a time);
    with shared, a snapshot of it while another command holds it (then store.owned is False)."""
    batch_dir = Path(args.batch).resolve()
    try:
        store = Store.open(batch_dir, args.command)
    except BatchInUse:
        if not shared:
            raise
        with Store.snapshot(batch_dir) as snapshot:
            yield snapshot
        return
    try:
        yield store
    finally:
        store.close()


def batch_backend(name: str, batch_dir: Path) -> Backend:
    """The batch's backend, connected: a BackendError with the fix when it cannot be used."""
    backend = make_backend(name, batch_dir)
    backend.connect()
    return backend


def make_backend(name: str, batch_dir: Path) -> Backend:
    use_gevent()                       # before DIRAC is imported: the engine and the threadpool need it
    if name == "local":
        return LocalBackend(batch_dir)
    if name == "dirac":
        return DiracBackend()
    raise GridError(f"unknown backend {name!r}", f"use one of: {', '.join(BACKENDS)}")


def new_batch_tag(batch_dir: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", batch_dir.resolve().name)[:32] or "batch"
    import uuid
    return f"grid-{slug}-{uuid.uuid4().hex[:8]}"


def add_submit(parser: argparse.ArgumentParser) -> None:
    """run job files, submit every job, then watch

    Run the job files (with `submit` and DIRAC's `Job` defined), then submit every job
    concurrently and watch them. The whole of every file runs before anything is submitted. A job
    with parameter sequences (Job.setParameterSequence) is one job per parameter set, with the
    values DIRAC would give it, each followed, downloaded and resubmitted on its own; on DIRAC
    they go to the server as one parametric job. Refuses to start when the grid proxy may expire
    before the last job is sent."""
    parser.add_argument("jobfiles", nargs="+", metavar="JOBFILE", help="Python file(s) calling submit(job)")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help="where the jobs run: the DIRAC WMS, or this machine as a site (a detached "
                        "process that runs the jobs to the end with or without grid.py, one per CPU or "
                        "GRID_LOCAL_SLOTS; settings only the grid uses are ignored) (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run the job files and show what would be submitted (with --backend local: "
                        "also the settings ignored on this machine); submit nothing")
    parser.add_argument("--no-watch", action="store_true", help="return once every job is submitted")
    parser.add_argument("--bulk", action="store_true",
                        help="submit jobs of one job file that differ only in their arguments or in "
                        "simple JDL values (no spaces, commas, quotes or braces) as DIRAC parametric "
                        "jobs, up to the server's MaxParametricJobs per call; each job is still "
                        "followed, downloaded and resubmitted on its own. Other jobs go one by one")
    add_engine_options(parser)


def cmd_submit(args: argparse.Namespace) -> int:
    batch_dir = Path(args.batch).resolve()
    if not args.dry_run and holds_batch(batch_dir):
        raise BatchError(f"{batch_dir} already holds a batch",
                         "resume it with `grid watch`, or submit from a new directory")
    display = make_display(args.json)       # first: with --json, the job files' prints go to stderr
    tag = new_batch_tag(batch_dir)
    use_gevent()                       # before the job files import DIRAC (and with it ssl)
    with contextlib.chdir(batch_dir):
        specs = load_job_files(args.jobfiles, tag, args.backend)
    if args.dry_run:
        print_dry_run(specs, args.backend)
        return EXIT_OK
    ensure_writable(batch_dir)
    backend = batch_backend(args.backend, batch_dir)
    ensure_proxy_lasts(backend, len(specs), args.parallel)
    store = Store.open(batch_dir, "submit", create=True)
    try:
        now = round(time.time(), 3)
        jobs = (Job(num=i, name=name, history=[[SUBMITTING, now]]) for i, name in enumerate(specs.names, 1))
        meta = {"tag": tag, "backend": args.backend, "created": time.time(), "version": __version__,
                "jobfiles": [os.path.abspath(p) for p in args.jobfiles], "bulk": args.bulk,
                "sequences": specs.sequences}
        if args.retries is not None:
            meta["retries"] = args.retries
        store.create_batch(meta, jobs, specs.blobs())
        display.message(f"{len(specs)} job(s) from {', '.join(args.jobfiles)} in batch {tag} "
                        f"on the {args.backend} backend")
        specs.close()
        return run_engine(store, backend, display, batch_dir, args, watch=not args.no_watch)
    finally:
        store.close()


def holds_batch(batch_dir: Path) -> bool:
    """A batch exists once its jobs are stored; the database of a `submit` killed before that
    holds nothing, and a new `submit` may use it."""
    if not (batch_dir / STATE_DIR / "db").is_dir():
        return False
    with Store.snapshot(batch_dir) as store:
        return bool(store.meta())


def ensure_writable(batch_dir: Path) -> None:
    """Fail before anything is submitted if the batch's state cannot be kept."""
    try:
        (batch_dir / STATE_DIR).mkdir(exist_ok=True)
        atomic_write(batch_dir / STATE_DIR / "probe", b"")
        (batch_dir / STATE_DIR / "probe").unlink()
    except OSError as e:
        raise BatchError(f"cannot write in {batch_dir}: {e.strerror}",
                         "submit from a directory you can write to") from None


def print_dry_run(specs: SpecSpool, backend: str) -> None:
    """What would be submitted; for the local backend also the settings it ignores (the grid's alone)."""
    print(f"dry run: {len(specs)} job(s) would be submitted to the {backend} backend; nothing was submitted")
    in_sequence = {num: (num - first + 1, last - first + 1) for first, last in specs.sequences
                   for num in range(first, last + 1)}
    defaults = plain_job_attributes() if backend == "local" else {}
    for num, spec in enumerate(specs, 1):
        steps = "; ".join(" ".join(filter(None, step[:2])) for step in spec.steps) or "-"
        inputs = ", ".join(os.path.relpath(p) if os.path.isabs(p) else p for p in spec.input_sandbox) or "-"
        outputs = ", ".join(spec.output_sandbox) or "-"
        where = spec.origin + (", parameter set {} of {}".format(*in_sequence[num]) if num in in_sequence else "")
        print(f"#{num} {one_line(spec.name)}  [{where}]\n    run: {steps}\n    in:  {inputs}\n    out: {outputs}")
        ignored = ignored_locally(spec, defaults) if backend == "local" else []
        if ignored:
            print(f"    ignored on this machine: {'; '.join(ignored)}")


# JDL attributes the local backend honours, or that say nothing about where a job runs.
LOCAL_ATTRIBUTES = frozenset({"Arguments", "Executable", "JobName", "JobGroup", "LogLevel", "InputSandbox",
                              "OutputSandbox", "OutputData", "StdOutput", "StdError", JOB_TAG_ATTRIBUTE})


def ignored_locally(spec: JobSpec, defaults: dict[str, str]) -> list[str]:
    """The settings of a job that only the grid uses ("Site = LCG.CERN.cern"), as its JDL has them."""
    return [f"{name} = {value}" for name, value in sorted(jdl_attributes(spec.jdl).items())
            if name not in LOCAL_ATTRIBUTES and not name.startswith("Parameter")
            and defaults.get(name) != value]


def plain_job_attributes() -> dict[str, str]:
    """The JDL of a Job nothing was set on: its values (JobType User, Priority 1) are no setting."""
    job = import_dirac_job()()
    job.setExecutable("true")
    return jdl_attributes(job._toJDL(jobDescriptionObject=io.StringIO(job._toXML())))


def add_watch(parser: argparse.ArgumentParser) -> None:
    """resume watching and downloading

    Follow the batch's jobs, log every status change, download outputs of final jobs into
    succeeded/ and failed/; submit jobs a stopped `submit` left (submissions a crash cut short
    are first looked for on the server, and a line says so). On a terminal a live footer shows
    progress; piped, the output is plain lines (or JSON lines with --json). Returns when every
    job is final and every output is downloaded (or as --exit-when says): exit code 0 if every
    job is Done, 6 if not. Ctrl-C stops (exit 130), and so does a closed output pipe; state is
    kept. A server outage is one line and is waited out, and so is a call unanswered for 3
    minutes; an expired grid proxy pauses everything until a fresh one appears; outputs still
    missing 5 days after their job ended are warned about (DIRAC deletes them after about 7)."""
    add_engine_options(parser)


def cmd_watch(args: argparse.Namespace) -> int:
    with open_batch(args) as store:
        batch_dir = store.state_dir.parent
        display = make_display(args.json)    # before DIRAC starts: with --json its logs go to stderr
        backend = batch_backend(store.meta()["backend"], batch_dir)
        return run_engine(store, backend, display, batch_dir, args, watch=True)


def run_engine(store: Store, backend: Backend, display: Display, batch_dir: Path,
               args: argparse.Namespace, watch: bool, prepare: Callable[["Engine"], None] = None) -> int:
    """Run the engine with the command line's options; --retries, --data and --data-pattern are kept
    in the batch for `watch` (and changed by the options of a later one)."""
    retries = args.retries if args.retries is not None else store.meta().get("retries", 0)
    choice = {key: value for key, value in (("data", args.data), ("data_pattern", args.data_pattern))
              if value is not None and store.meta().get(key) != value}
    if choice:
        store.update_meta(**choice)
    on_tick = report_writer(batch_dir, display) if args.report and watch else None
    engine = Engine(store, backend, display, batch_dir, parallel=args.parallel, interval=args.interval,
                    retries=retries, exit_when=args.exit_when, on_tick=on_tick)
    if on_tick:
        display.message(f"report: {batch_dir / REPORT_FILE}, rewritten every {REPORT_EVERY:g} s")
    if prepare:
        prepare(engine)
    ensure_proxy_lasts(backend, engine.batch.pending_submissions(), args.parallel)
    jobs = engine.run(watch=watch)
    return finish(jobs, display, watched=watch, stopped=engine.interrupted, early=engine.batch.exited_early)


def finish(jobs: dict[int, Job], display: Display, watched: bool, stopped: bool,
           early: Optional[str] = None) -> int:
    """The closing lines of submit/watch, and the exit code scripts chain on: 0 only if all is Done."""
    if stopped:
        return EXIT_INTERRUPTED
    submitted = sum(1 for j in jobs.values() if j.submitted)
    done = sum(1 for j in jobs.values() if j.status == DONE)
    failed = sum(1 for j in jobs.values() if j.failed)
    record = {"jobs": len(jobs), "submitted": submitted, "done": done, "failed": failed,
              "final": sum(1 for j in jobs.values() if is_final(j.status)), "early_exit": early}
    if not watched:
        display.result(f"{submitted} of {len(jobs)} job(s) submitted; follow them with `grid watch`", record)
        return EXIT_OK
    missing = [j for j in jobs.values() if j.output_missing]
    if early:
        text = f"stopped early ({early}): {done} done, {failed} failed, " \
               f"{len(jobs) - record['final']} not final yet; `grid watch` follows them"
    else:
        text = f"all {len(jobs)} job(s) final: {done} done, {failed} failed; " \
               f"outputs in {SUCCEEDED_DIR}/ and {FAILED_DIR}/"
    if failed:
        text += "\nwhy they failed: `grid failures`; to try them again: `grid resubmit --all`"
    for job in missing:
        what = "output incomplete" if job.output else "no output"
        text += f"\n  #{job.num} {one_line(job.name)}: {what} ({job.error or 'not downloaded'})"
    never = [(j, r) for j in jobs.values() if j.status == DONE for r in j.outputs or () if not r["registered"]]
    for job, file in never:
        text += f"\n  #{job.num} {one_line(job.name)}: {record_name(file)}: {file['problem']}"
    record["no_output"] = [j.num for j in missing]
    display.result(text, record)
    return EXIT_OK if done == len(jobs) else EXIT_JOBS_FAILED


def select_jobs(jobs: dict[int, Job], batch_dir: Path, numbers: list[int], every: bool = False,
                reason: Optional[str] = None, which: Callable[[Job], bool] = lambda job: True) -> list[Job]:
    """The jobs a command acts on: named by local number, or every one `which` accepts (--all),
    or the failed ones whose reason contains a text (--reason, as `grid failures` prints it)."""
    if not numbers and not every and reason is None:
        raise UsageError("name the jobs (local numbers, as `grid status` shows them), or use --all",
                         "e.g. `grid COMMAND 3 7 12` or `grid COMMAND --all`")
    chosen = [pick_job(jobs, num, batch_dir) for num in dict.fromkeys(numbers)]
    if every or reason is not None:
        chosen += [j for j in jobs.values() if which(j) and j.num not in numbers
                   and (reason is None or (j.failed and reason in failure_reason(j)))]
    return chosen


def confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; elsewhere demand --yes, so that no script kills jobs by surprise."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question.rstrip('?')} needs confirmation, and there is no terminal to ask",
                         "add --yes")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise UsageError("nothing done", "answer y to go ahead, or add --yes")


def add_resubmit(parser: argparse.ArgumentParser) -> None:
    """submit failed jobs again, as new DIRAC jobs

    Submit failed jobs again from their stored description, as new DIRAC jobs, then watch. Each
    keeps its local number; its DIRAC ids and attempts are kept (`grid status --json`), and the
    output of the attempt before is moved to retried/<folder>.<attempt>/. A Done job is refused
    unless --force is given."""
    parser.add_argument("jobs", nargs="*", type=job_number, metavar="JOB", help="local job numbers")
    parser.add_argument("--all", action="store_true", help="every failed job")
    parser.add_argument("--reason", metavar="TEXT",
                        help="the failed jobs whose reason (as `grid failures` shows it) contains TEXT")
    parser.add_argument("--force", action="store_true",
                        help="also resubmit jobs named by number that are Done")
    parser.add_argument("--no-watch", action="store_true", help="return once the jobs are submitted")
    add_engine_options(parser)


def cmd_resubmit(args: argparse.Namespace) -> int:
    with open_batch(args) as store:
        batch_dir, jobs = store.state_dir.parent, store.jobs()
        chosen = select_jobs(jobs, batch_dir, args.jobs, args.all, args.reason, which=lambda job: job.failed)
        not_final = [j for j in chosen if not is_final(j.status)]
        if not_final:
            job = not_final[0]
            raise UsageError(f"job #{job.num} is {job.status}, not final: it cannot be resubmitted yet",
                             f"wait for it, or `grid kill {job.num}` first")
        done = [j for j in chosen if not j.failed]
        if done and not args.force:
            named = " ".join(f"#{j.num}" for j in done[:10]) + (" ..." if len(done) > 10 else "")
            raise UsageError(f"{len(done)} job(s) named succeeded ({named}): resubmit is for failed jobs",
                             "add --force to run them again anyway (their outputs move to "
                             f"{RETRIED_DIR}/)")
        if not chosen:
            print("no failed job to resubmit")
            return EXIT_OK
        display = make_display(args.json)    # before DIRAC starts: with --json its logs go to stderr
        backend = batch_backend(store.meta()["backend"], batch_dir)

        def resubmit_chosen(engine: Engine) -> None:
            for job in chosen:
                engine.batch.resubmit(engine.batch.jobs[job.num])
            display.message(f"resubmitting {len(chosen)} job(s): "
                            + " ".join(f"#{j.num}" for j in chosen[:20]) + (" ..." if len(chosen) > 20 else ""))

        return run_engine(store, backend, display, batch_dir, args, watch=not args.no_watch,
                          prepare=resubmit_chosen)


def add_kill(parser: argparse.ArgumentParser) -> None:
    """kill jobs

    Kill jobs that are not final (asks first on a terminal). Works while `watch` runs: the watch
    records the change. Jobs not submitted yet are not submitted. Says what it did in one line,
    however many jobs."""
    parser.add_argument("jobs", nargs="*", type=job_number, metavar="JOB", help="local job numbers")
    parser.add_argument("--all", action="store_true", help="every job that is not final")
    parser.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")


def cmd_kill(args: argparse.Namespace) -> int:
    """Kill jobs on the server. Works beside a running `watch`: it only needs the jobs' ids, and the
    watch sees the jobs become Killed; alone, it records the new statuses itself."""
    with open_batch(args, shared=True) as store:     # in use by a watch: act on a snapshot
        batch_dir, meta, jobs = store.state_dir.parent, store.meta(), store.jobs()
        chosen = [j for j in select_jobs(jobs, batch_dir, args.jobs, args.all,
                                         which=lambda job: not is_final(job.status))
                  if not is_final(j.status)]
        if not chosen:
            print("no job to kill: every job named is final already")
            return EXIT_OK
        confirm(f"kill {len(chosen)} job(s)?", args.yes)
        backend = batch_backend(meta["backend"], batch_dir)
        calls = BackendCalls(backend, Display(sys.stderr))
        fix = "check the server with `grid watch`, then try again"
        on_server = [j.dirac_id for j in chosen if j.submitted]
        for chunk in chunks(on_server, BULK_STATUS_MAX):
            calls.once(backend.kill, chunk, fix=fix)
        unsent = [j for j in chosen if not j.submitted]
        if not store.owned:
            print(f"killed {len(on_server)} job(s); the running {describe_owner(batch_dir / STATE_DIR)} "
                  "records it" + (f"; {len(unsent)} not submitted yet are submitted by it" if unsent else ""))
            return EXIT_OK
        batch = Batch(store, batch_dir, Display(io.StringIO()))     # one summary, not a line per job
        for job in unsent:
            batch.transition(batch.jobs[job.num], JobState(KILLED, "Killed before submission"))
        if on_server:
            batch.apply(calls.once(backend.status, on_server, fix=fix))
        print(f"killed {len(chosen)} job(s); `grid watch` downloads what they left")
        return EXIT_OK


def add_reschedule(parser: argparse.ArgumentParser) -> None:
    """run jobs again under the same DIRAC id

    DIRAC's reschedule: the jobs run again from the start with the same id (DIRAC limits how
    often). The output of the attempt before is moved to retried/. Needs the batch: stop `watch`
    first, and run `watch` after."""
    parser.add_argument("jobs", nargs="+", type=job_number, metavar="JOB", help="local job numbers")
    parser.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")


def cmd_reschedule(args: argparse.Namespace) -> int:
    """DIRAC's reschedule: the same job (same id) runs again; its last output is kept in retried/."""
    with open_batch(args) as store:
        batch_dir, jobs = store.state_dir.parent, store.jobs()
        chosen = select_jobs(jobs, batch_dir, args.jobs)
        unsent = [j for j in chosen if not j.submitted]
        if unsent:
            raise UsageError(f"job #{unsent[0].num} was never submitted, so it cannot be rescheduled",
                             "`grid watch` submits it")
        confirm(f"reschedule {len(chosen)} job(s)?", args.yes)
        backend = batch_backend(store.meta()["backend"], batch_dir)
        batch = Batch(store, batch_dir, Display(io.StringIO()))     # one summary, not a line per job
        calls = BackendCalls(backend, Display(sys.stderr))
        ids = [j.dirac_id for j in chosen]
        fix = "check the jobs with `grid status`; DIRAC limits how often a job is rescheduled, " \
              "`grid resubmit` has no limit"
        calls.once(backend.reschedule, ids, fix=fix)
        states = calls.once(backend.status, ids, fix=fix)
        for job in chosen:
            job = batch.jobs[job.num]
            if is_final(job.status):
                batch.retire_attempt(job)
            batch.transition(job, states.get(job.dirac_id, JobState(RESCHEDULED, "Job Rescheduled")),
                             save=False)
            store.save(job, sync=True)
        print(f"rescheduled {len(chosen)} job(s); follow them with `grid watch`")
        return EXIT_OK


def add_status(parser: argparse.ArgumentParser) -> None:
    """summary and one line per job

    Print the summary line and, per job: local number, DIRAC id, name, status, minor status,
    site, output folder (control characters in names escaped: \\n, \\t). Works while `watch`
    runs; does not contact the server (a local batch shows what its site did, even with no
    `watch` running). Warns on stderr about outputs not downloaded 5 days after their job ended."""
    parser.add_argument("--json", action="store_true", help="one JSON document instead of text")


def cmd_status(args: argparse.Namespace) -> int:
    batch_dir = Path(args.batch).resolve()
    if not args.json:
        return print_status_lines(batch_dir)
    with Store.snapshot(batch_dir) as store:
        meta, jobs = store.meta(), store.jobs()
    jobs = with_site_states(meta, jobs, batch_dir)
    ordered = [jobs[n] for n in sorted(jobs)]
    counts = column_counts(j.status for j in ordered)
    warn_outputs_at_risk(ordered, meta)
    with gc_paused():                   # one string, one write: json.dump() writes piece by piece
        document = json.dumps({"batch": str(batch_dir), "tag": meta.get("tag"),
                               "backend": meta.get("backend"), "summary": dict(zip(COLUMN_NAMES, counts)),
                               "jobs": [status_record(j) for j in ordered]})
    sys.stdout.write(document + "\n")
    return EXIT_OK


def print_status_lines(batch_dir: Path) -> int:
    """The summary line and a line per job, from the stored status entries: `status` of 100,000 jobs
    is mostly this loop, so it counts and joins bytes and decodes nothing."""
    counts, lines, unfetched = [0] * len(COLUMNS), [], []
    with Store.snapshot(batch_dir) as store, gc_paused():
        meta = store.meta()
        if meta.get("backend") == "local":       # the local site's own states count: Jobs, as they come
            entries: Iterable[bytes] = map(status_entry, with_site_states(meta, store.jobs(), batch_dir).values())
        else:
            entries = store.status_entries()
        for entry in entries:
            counts[entry[0]] += 1
            lines.append(entry[2:])
            if entry[1]:
                unfetched.append(entry_num(entry))
        warn_outputs_at_risk([store.job(num) for num in unfetched], meta)
    sys.stdout.flush()
    sys.stdout.buffer.write(b"\n".join([summary_line(counts).encode(), *lines]) + b"\n")
    return EXIT_OK


def warn_outputs_at_risk(jobs: list[Job], meta: dict) -> None:
    at_risk, left = outputs_at_risk(jobs, meta.get("backend", ""), time.time())
    if at_risk:                          # on stderr: loud on a terminal, out of the way of a pipe
        print(f"grid: warning: {cleaning_warning(at_risk, left, meta['backend'])}", file=sys.stderr)


def with_site_states(meta: dict, jobs: dict[int, Job], batch_dir: Path) -> dict[int, Job]:
    """A local batch's jobs as its site has them now, even when no `watch` runs to record them:
    each job not final in the store gets the state the site wrote (the store catches up at the
    next `watch`). Like any command that finds work, this starts the site if none runs."""
    active = {job.dirac_id: job for job in jobs.values() if job.submitted and not is_final(job.status)}
    if meta.get("backend") != "local" or not active or not (batch_dir / STATE_DIR / "local").is_dir():
        return jobs
    for job_id, state in LocalBackend(batch_dir).status(list(active)).items():
        job = active[job_id]
        job.status, job.minor, job.app, job.site = state.status, state.minor, state.app, state.site or job.site
        job.missing = state.missing or []
    return jobs


def status_record(job: Job) -> dict:
    return {"num": job.num, "id": job.dirac_id or None, "name": job.name, "status": job.status,
            "minor": job.minor, "application": job.app, "site": job.site, "ids": job.ids,
            "attempts": job.attempts, "output": job.output or None, "error": job.error or None,
            "ended": job.ended_at if is_final(job.status) else None, "history": job.history,
            "past": job.past, "missing": [{"name": name, "kind": kind} for name, kind in job.missing],
            "outputs": job.outputs}


# -- day to day: failures, why, logs, export, list ------------------------------------------------
# All of them read a snapshot of the batch (they work while `watch` runs) and import DIRAC only to
# ask the server something: `why` for DIRAC's logging info, `logs` for an output not downloaded yet.

def job_number(text: str) -> int:
    """A job's local number as the log lines show it: `12` or `#12`."""
    try:
        value = int(text.strip().lstrip("#"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a job number: {text!r} (give its local number, e.g. 12)") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError("job numbers start at 1")
    return value


def pick_job(jobs: dict[int, Job], num: int, batch_dir: Path) -> Job:
    if num not in jobs:
        have = f"its jobs are #1 to #{max(jobs)}" if jobs else "it has no job"
        raise UsageError(f"no job #{num} in the batch in {batch_dir} ({have})",
                         "`grid status` lists the jobs with their numbers")
    return jobs[num]


def command_hint(args: argparse.Namespace, *words: str) -> str:
    """A command line the user can paste back: the same program name, and -C when it was given."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    program = program if program in ("grid", "grid.py") else "grid"
    batch = ["-C", args.batch] if args.batch != "." else []
    return " ".join([program, *map(shell_quote, batch), *map(shell_quote, words)])


def read_batch(batch_dir: Path, num: Optional[int] = None) -> tuple[dict, dict[int, Job], Optional[JobSpec]]:
    """The batch's meta and jobs from a snapshot, and job num's spec when asked for."""
    with Store.snapshot(batch_dir) as store:
        meta, jobs = store.meta(), store.jobs()
        spec = store.spec(pick_job(jobs, num, batch_dir).num) if num is not None else None
    return meta, with_site_states(meta, jobs, batch_dir), spec


# failures

def add_failures(parser: argparse.ArgumentParser) -> None:
    """failed jobs grouped by reason

    Group the batch's failed jobs (Failed, Killed, Deleted) by reason: status, minor status and
    application status, which holds the exit code where DIRAC knows it. Per group: the count, the
    sites, example job numbers and the command that resubmits the group. Works while `watch`
    runs; does not contact the server."""
    parser.add_argument("--json", action="store_true", help="one JSON document instead of text")


def cmd_failures(args: argparse.Namespace) -> int:
    batch_dir = Path(args.batch).resolve()
    _, jobs, _ = read_batch(batch_dir)
    groups = failure_groups(jobs.values())
    if args.json:
        print_json({"batch": str(batch_dir), "jobs": len(jobs), "failed": sum(len(g) for _, g in groups),
                    "groups": [failure_record(reason, members) for reason, members in groups]})
    else:
        sys.stdout.write("".join(line + "\n" for line in failure_lines(args, len(jobs), groups)))
    return EXIT_OK


def failure_record(reason: str, members: list[Job]) -> dict:
    first = members[0]
    return {"reason": reason, "count": len(members), "status": first.status, "minor": first.minor,
            "application": first.app, "exit_code": exit_code(first), "sites": site_counts(members),
            "jobs": [job.num for job in members]}


def failure_lines(args: argparse.Namespace, total: int, groups: list[tuple[str, list[Job]]]) -> list[str]:
    failed = sum(len(members) for _, members in groups)
    if not failed:
        return [f"no failed job among {total}"]
    lines = [f"{failed} of {total} job(s) failed, for {len(groups)} reason(s); "
             f"details of one: {command_hint(args, 'why', 'N')}"]
    for reason, members in groups:
        sites = ", ".join(f"{site} ({n})" for site, n in site_counts(members).items())
        examples = " ".join(f"#{job.num}" for job in members[:EXAMPLE_JOBS])
        more = f" and {len(members) - EXAMPLE_JOBS} more" if len(members) > EXAMPLE_JOBS else ""
        code = exit_code(members[0])
        killed = [f"       exit:  {exit_meaning(code)}"] if code is not None and code < 0 else []
        lines += ["", f"{len(members):5d}  {one_line(reason)}", *killed, f"       sites: {one_line(sites)}",
                  f"       jobs:  {examples}{more}",
                  f"       resubmit: {one_line(command_hint(args, 'resubmit', '--reason', reason))}"]
    return lines


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout)
    sys.stdout.write("\n")


# why

def add_why(parser: argparse.ArgumentParser) -> None:
    """everything known about one job

    Show one job: status history with times, minor and application status, exit code, site,
    attempts and DIRAC ids, output folder, the last lines of its stdout, then the backend's own
    history of it (DIRAC: JobMonitoring's getJobLoggingInfo, one call to the server). Works while
    `watch` runs."""
    parser.add_argument("job", type=job_number, metavar="JOB", help="the job's local number (as in `status`)")
    parser.add_argument("--offline", action="store_true",
                        help="do not contact the server: leave DIRAC's logging info out")


def cmd_why(args: argparse.Namespace) -> int:
    batch_dir = Path(args.batch).resolve()
    meta, jobs, spec = read_batch(batch_dir, args.job)
    job = jobs[args.job]
    lines = job_lines(job, spec, meta) + history_lines(job)
    lines += stdout_lines(args, job, spec, batch_dir)
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
    if job.submitted and not args.offline:
        print_logging_info(meta.get("backend", DEFAULT_BACKEND), job, batch_dir)
    return EXIT_OK


def job_lines(job: Job, spec: JobSpec, meta: dict) -> list[str]:
    """What the store knows about one job, a field per line."""
    since = job.history[-1][1] if job.history else 0
    ids = ", ".join(map(str, job.ids)) or "-"
    fields = [("status", f"{job.status} since {when(since)}"), ("minor", job.minor or "-"),
              ("application", job.app or "-")]
    code = exit_code(job)
    if code is not None:
        fields.append(("exit code", exit_meaning(code)))
    if is_failed(job.status):
        fields.append(("reason", failure_reason(job)))
    id_label = "DIRAC id" if meta.get("backend") == "dirac" else f"{meta.get('backend', '?')} id"
    fields += [("site", job.site or "-"), (id_label, str(job.dirac_id or "- (not submitted)")),
               ("attempts", f"{job.attempts} (ids: {ids})"),
               ("output", f"{job.output}/" if job.output else "-")]
    fields += output_file_fields(job, DataSelection.from_meta(meta))
    if job.error:
        fields.append(("problem", job.error))
    if job.missing:
        fields.append(("outputs", not_produced(job.missing)))
    for number, attempt in enumerate(job.past, 1):
        kept = f", output in {attempt['output']}/" if attempt.get("output") else ""
        fields.append((f"attempt {number}", f"{id_label} {attempt['id'] or '-'}: {attempt['status']} "
                       f"at {when(attempt['ended'] or 0)}: {attempt['reason'] or attempt['minor']}{kept}"))
    fields += [("defined at", spec.origin or "-"),
               ("batch", f"{meta.get('tag', '-')} ({meta.get('backend', '-')})")]
    return [f"#{job.num} {one_line(job.name)}"] + [f"  {label + ':':<13}{one_line(value)}" for label, value in fields]


def output_file_fields(job: Job, selection: DataSelection) -> list[tuple[str, str]]:
    """One line per file the job left on grid storage: LFN, size, checksum and where its download is."""
    if job.outputs is None:
        waiting = job.submitted and is_final(job.status) and not job.output
        return [("grid files", "not looked up yet (`grid watch` does it)")] if waiting else []
    fields = []
    for file in job.outputs:
        if file["downloaded"]:
            state = "downloaded"
        elif file["problem"]:
            state = f"not downloaded: {file['problem']}"
        elif not selection.wants(file):
            state = "not selected (--data none or --data-pattern)"
        else:
            state = "not downloaded yet"
        label = "sandbox file" if file["kind"] == "sandbox" else "data file"
        fields.append((label, f"{file['lfn']}  {human_size(file['size'])}  adler32 {file['adler32'] or '-'}  {state}"))
    return fields


def history_lines(job: Job) -> list[str]:
    lines = ["history (as grid.py saw it):"]
    return lines + [f"  {when(entry[1])}  {entry[0]}" for entry in job.history]


def stdout_lines(args: argparse.Namespace, job: Job, spec: JobSpec, batch_dir: Path) -> list[str]:
    """The last lines of the job's stdout, or why there are none yet."""
    folder = batch_dir / job.output if job.output else None
    files = stdout_files(folder, spec) if folder and folder.is_dir() else []
    if not files:
        if folder and folder.is_dir():
            other = command_hint(args, "logs", str(job.num), "--file", "NAME")
            return [f"stdout: none in {job.output}/ (`{other}` prints another file)"]
        if not job.submitted:
            return ["stdout: none (the job was never accepted by the server)"]
        if is_final(job.status):
            return [f"stdout: not downloaded yet (`{command_hint(args, 'logs', str(job.num))}` fetches it)"]
        return [f"stdout: none yet (the job is {job.status})"]
    lines = tail_section("stdout", files[-1], batch_dir)   # the last step that wrote a log is where it ended
    errors = folder / "std.err"
    if is_failed(job.status) and errors.is_file() and errors.stat().st_size:
        lines += tail_section("stderr", errors, batch_dir)
    return lines


def tail_section(title: str, path: Path, batch_dir: Path) -> list[str]:
    tail = tail_lines(path, WHY_TAIL_LINES)
    if not tail:
        return [f"{title}: {path.relative_to(batch_dir)} is empty"]
    heading = f"{title} (last {len(tail)} lines of {path.relative_to(batch_dir)}):"
    return [heading] + [f"  | {line}" for line in tail]


def stdout_files(folder: Path, spec: JobSpec) -> list[Path]:
    """Where a job's stdout is: each step's application log (Script1_<name>.log), which holds what
    the step printed, on the grid and locally; else std.out (on the grid, the job wrapper's log)."""
    logs = [inside(folder, step[2]) for step in spec.steps]
    found = [path for path in logs if path and path.is_file()]
    if found:
        return found
    wrapper = folder / "std.out"
    return [wrapper] if wrapper.is_file() else []


def inside(folder: Path, name: str) -> Optional[Path]:
    """folder/name if that stays inside folder (names come from job files and archives)."""
    path = (folder / name).resolve()
    return path if path.is_relative_to(folder.resolve()) and path != folder.resolve() else None


def tail_lines(path: Path, count: int) -> list[str]:
    """The last lines of a file, reading only its end: outputs can be large."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - TAIL_BYTES))
        lines = f.read().decode(errors="replace").splitlines()
    if size > TAIL_BYTES:
        lines = lines[1:]                     # cut in the middle
    while lines and not lines[-1].strip():
        lines.pop()                           # DIRAC ends each section of a step's log with a space
    return lines[-count:]


def print_logging_info(backend_name: str, job: Job, batch_dir: Path) -> None:
    """The backend's own history of the job (DIRAC: JobMonitoring's getJobLoggingInfo), one call."""
    backend = make_backend(backend_name, batch_dir)
    try:
        if backend.threaded:                  # only DIRAC needs connecting; local reads files
            backend.connect()
    except GridError as e:
        fix = "; or " if e.fix else ""
        raise BackendError(e.message, f"{e.fix}{fix}add --offline to leave DIRAC's logging info out") from None
    records = BackendCalls(backend, Display(sys.stderr)).once(
        backend.logging_info, job.dirac_id, failure=f"cannot fetch the logging info of job {job.dirac_id}: ",
        fix="try again later, or add --offline to leave it out")
    title = "DIRAC logging info" if backend.name == "dirac" else "local backend's logging info"
    rows = [(when(r.time), r.status, r.minor or "-", r.app or "-", r.source or "-") for r in records]
    sys.stdout.write(f"{title} (job {job.dirac_id}):\n" + "".join(f"  {line}\n" for line in table(rows)))


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as left-aligned columns, two spaces apart."""
    widths = [max(len(cell) for cell in column) for column in zip(*rows)] if rows else []
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


# logs

def add_logs(parser: argparse.ArgumentParser) -> None:
    """print a job's stdout (downloading its output if needed)

    Print a job's stdout: each step's application log (Script1_<name>.log), or std.out when there
    is none (on the grid std.out is the job wrapper's log). If the output is not downloaded yet,
    ask the server for the job's status and download it now into the folder `watch` would use;
    that needs the batch, so it is refused while `watch` or `submit` holds it (they download it
    themselves)."""
    parser.add_argument("job", type=job_number, metavar="JOB", help="the job's local number (as in `status`)")
    parser.add_argument("--file", metavar="NAME", help="print this file of the job's output folder instead "
                        "(e.g. std.err, std.out)")


def cmd_logs(args: argparse.Namespace) -> int:
    batch_dir = Path(args.batch).resolve()
    meta, jobs, spec = read_batch(batch_dir, args.job)
    job = jobs[args.job]
    folder = batch_dir / (job.output or job.output_folder())
    if not folder.is_dir():
        job = fetch_now(args, batch_dir, meta, job)
        folder = batch_dir / job.output
    files = [chosen_file(args, job, folder)] if args.file else stdout_files(folder, spec)
    if not files:
        other = command_hint(args, "logs", str(job.num), "--file", "NAME")
        raise GridError(f"#{job.num} has no stdout in {job.output}/ ({folder_contents(folder)})",
                        f"print one of its files with `{other}`")
    sys.stdout.flush()
    for path in files:
        if len(files) > 1:
            sys.stdout.buffer.write(f"==> {path.name} <==\n".encode())
        with open(path, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return EXIT_OK


def chosen_file(args: argparse.Namespace, job: Job, folder: Path) -> Path:
    path = inside(folder, args.file)
    if not path or not path.is_file():
        raise UsageError(f"no file {args.file!r} in {job.output}/ ({folder_contents(folder)})",
                         "give one of the files it holds")
    return path


def folder_contents(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return "it holds " + ", ".join(names) if names else "it is empty: the job registered no output"


def fetch_now(args: argparse.Namespace, batch_dir: Path, meta: dict, job: Job) -> Job:
    """Download a job's output now, through the engine's own code, into the folder `watch` would use.

    This needs the batch's database (to record the folder). When another command holds it, the
    user is told so: that command is `watch` or `submit`, which downloads final jobs itself.
    """
    if not job.submitted:
        raise GridError(f"#{job.num} {job.name} was never accepted by the server, so it has no output",
                        f"see why with `{command_hint(args, 'why', str(job.num))}`")
    try:
        store = Store.open(batch_dir, "logs")
    except BatchInUse:
        raise BatchInUse(f"the output of #{job.num} is not downloaded yet and the batch is in use by "
                         f"{describe_owner(batch_dir / STATE_DIR)}",
                         f"wait until `grid status` shows its output folder (a running `watch` downloads it), "
                         f"then run `{command_hint(args, 'logs', str(job.num))}` again") from None
    try:
        backend = make_backend(meta.get("backend", DEFAULT_BACKEND), batch_dir)
        return fetch_with(store, backend, batch_dir, job.num)
    finally:
        store.close()


def fetch_with(store: Store, backend: Backend, batch_dir: Path, num: int) -> Job:
    """Ask for the job's status if we do not know it final yet, then download its output once."""
    backend.connect()
    batch, calls = Batch(store, batch_dir), BackendCalls(backend, Display(sys.stderr))
    job = batch.jobs[num]
    failure, fix = f"cannot download the output of #{job.num}: ", \
        "try again later; `grid watch` retries downloads by itself"
    if not is_final(job.status):
        before = job.status
        batch.apply(calls.once(backend.status, [job.dirac_id], failure=failure, fix=fix))
        if job.status != before:
            print(f"#{job.num} {one_line(job.name)}: {job.status} on the server (was {before} here)", file=sys.stderr)
    if not is_final(job.status):
        raise GridError(f"#{job.num} {job.name} is {job.status}: its output comes once it is final",
                        "try again later; `grid watch` follows it and downloads the output")
    if not job.output or not (batch_dir / job.output).is_dir():
        job.output = calls.once(download_output, backend, job, batch_dir, DataSelection.from_meta(batch.meta),
                                failure=failure, fix=fix,
                                errors=(CallFailed, tarfile.TarError))
        job.error = ""
        store.save(job, sync=True)
        print(f"#{job.num} {one_line(job.name)}: output downloaded into {job.output}/", file=sys.stderr)
    return job


# lfns

def add_lfns(parser: argparse.ArgumentParser) -> None:
    """the output data LFNs of the batch's jobs, one per line

    Print the LFN of every output data file the batch's jobs left on grid storage (found when
    `watch` downloads their outputs, whatever --data says), one per line: the input of the next
    batch's setInputData. Works while `watch` runs; does not contact the server."""
    parser.add_argument("jobs", nargs="*", type=job_number, metavar="JOB", help="only these jobs (local numbers)")
    parser.add_argument("--status", choices=sorted(FINAL), help="only jobs with this status, e.g. Done")


def cmd_lfns(args: argparse.Namespace) -> int:
    """The output data LFNs of the batch's jobs, one per line: what the next batch's setInputData takes."""
    batch_dir = Path(args.batch).resolve()
    _, jobs, _ = read_batch(batch_dir)
    chosen = [pick_job(jobs, num, batch_dir) for num in dict.fromkeys(args.jobs)] or \
        [jobs[num] for num in sorted(jobs)]
    if args.status:
        chosen = [job for job in chosen if job.status == args.status]
    lines = [file["lfn"] for job in chosen for file in job.outputs or ()
             if file["kind"] == "data" and file["registered"]]
    sys.stdout.write("".join(line + "\n" for line in lines))
    unknown = sum(1 for job in chosen if job.submitted and is_final(job.status) and job.outputs is None)
    if unknown:
        print(f"grid: note: the output files of {unknown} final job(s) are not looked up yet; "
              "`grid watch` does it", file=sys.stderr)
    return EXIT_OK


# export

def add_export(parser: argparse.ArgumentParser) -> None:
    """every stored field of every job, as CSV or JSON

    Write one row per job with every field grid.py stores: CSV (lists in one cell: ids as
    '12;15', history as 'Status ISO-time; ...') and/or a JSON array (fields as stored, times in
    unix seconds). Works while `watch` runs."""
    parser.add_argument("--csv", metavar="FILE", help="write CSV to FILE ('-': the terminal)")
    parser.add_argument("--json", metavar="FILE", help="write JSON to FILE ('-': the terminal)")


def cmd_export(args: argparse.Namespace) -> int:
    if not args.csv and not args.json:
        raise UsageError("say where to export to", "give --csv FILE and/or --json FILE ('-' for the terminal)")
    if args.csv == "-" and args.json == "-":
        raise UsageError("--csv - and --json - would both go to the terminal", "write one of them to a file")
    batch_dir = Path(args.batch).resolve()
    _, jobs, _ = read_batch(batch_dir)
    ordered = [jobs[num] for num in sorted(jobs)]
    for target, text in ((args.csv, jobs_csv(ordered)), (args.json, jobs_json(ordered))):
        if target == "-":
            sys.stdout.write(text)
        elif target:
            write_export(Path(target), text)
            print(f"{len(ordered)} job(s) written to {target}", file=sys.stderr)
    return EXIT_OK


def write_export(path: Path, text: str) -> None:
    """Write the user's file whole or not at all; a failure names their file, not the temporary one.
    A device or a named pipe (/dev/stdout, a FIFO) is written to, never replaced by a file."""
    if path.is_dir():
        raise GridError(f"cannot write {path}: it is a folder", f"give a file name, e.g. {path / 'jobs.csv'}")
    try:
        if path.exists() and not path.is_file():
            with open(path, "w") as f:
                f.write(text)
        else:
            atomic_write(path.resolve() if path.is_symlink() else path, text.encode())
    except OSError as e:
        why = "no such folder" if isinstance(e, FileNotFoundError) else e.strerror or str(e)
        raise GridError(f"cannot write {path}: {why}",
                        "give a file in a folder that exists and that you can write to, "
                        "or '-' for the terminal") from None


def jobs_csv(jobs: list[Job]) -> str:
    """One row per job, a column per stored field; lists become one readable cell each."""
    import csv
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(Job.FIELDS)
    for job in jobs:
        writer.writerow([csv_cell(name, value) for name, value in job.to_dict().items()])
    return out.getvalue()


def csv_cell(name: str, value: Any) -> Any:
    """ids as "12;15"; history as "Received 2025-01-31T12:00:00+01:00; Waiting ..."; other lists as JSON."""
    if name == "ids":
        return ";".join(map(str, value))
    if name == "history":
        return "; ".join(f"{entry[0]} {iso_time(entry[1])}" for entry in value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def jobs_json(jobs: list[Job]) -> str:
    """A JSON array with one object per job (every stored field, as stored), one job per line."""
    return "[\n" + ",\n".join(json.dumps(job.to_dict()) for job in jobs) + "\n]\n"


# list

def add_list(parser: argparse.ArgumentParser) -> None:
    """the batches under a folder, with their summary lines

    Find batch directories (with .grid/db) under FOLDER and print one line per batch: its path,
    summary line, backend, creation time and tag, and the command holding it if one runs. Hidden
    folders and batches' succeeded/ and failed/ are not searched. Works while `watch` runs. Exit
    code 4 if a batch could not be read."""
    parser.add_argument("folder", nargs="?", metavar="FOLDER",
                        help="where to look (default: the -C directory, else the current one)")
    parser.add_argument("--depth", type=positive_int, default=LIST_DEPTH, metavar="N",
                        help="folder levels below FOLDER to search (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="a JSON array instead of text")


def cmd_list(args: argparse.Namespace) -> int:
    root = Path(args.folder if args.folder is not None else args.batch).resolve()
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder", "give a folder that holds batch directories")
    batches = [batch_record(path, root) for path in find_batches(root, args.depth)]
    if args.json:
        print_json(batches)
    elif not batches:
        print(f"no batch under {root} (a batch is a directory with {STATE_DIR}/db in it)", file=sys.stderr)
    else:
        sys.stdout.write("".join(batch_line(record) + "\n" for record in batches))
    return EXIT_BATCH if any(record["error"] for record in batches) else EXIT_OK


def find_batches(root: Path, depth: int) -> list[Path]:
    """Batch directories (with .grid/db) under root; hidden folders and a batch's output folders,
    which can hold thousands of job folders, are not searched."""
    found = []
    for folder, subfolders, _ in os.walk(root):
        here = Path(folder)
        skip = {SUCCEEDED_DIR, FAILED_DIR} if (here / STATE_DIR / "db").is_dir() else set()
        if skip:
            found.append(here)
        deep_enough = len(here.relative_to(root).parts) >= depth
        subfolders[:] = [] if deep_enough else sorted(d for d in subfolders
                                                      if not d.startswith(".") and d not in skip)
    return sorted(found)


def batch_record(path: Path, root: Path) -> dict:
    """One batch's summary from a snapshot; a batch that cannot be read says why."""
    record: dict = {"path": os.path.relpath(path, root), "batch": str(path), "tag": None, "backend": None,
                    "created": None, "jobs": 0, "summary": None, "in_use_by": live_owner(path / STATE_DIR),
                    "error": None}
    try:
        with Store.snapshot(path) as store:
            meta, jobs = store.meta(), store.jobs()
    except (GridError, OSError, ValueError) as e:
        record["error"] = getattr(e, "message", None) or str(e)
        return record
    counts = column_counts(job.status for job in jobs.values())
    record.update(tag=meta.get("tag"), backend=meta.get("backend"), created=meta.get("created"),
                  jobs=len(jobs), summary=dict(zip(COLUMN_NAMES, counts)))
    return record


def batch_line(record: dict) -> str:
    if record["error"]:
        return f"{one_line(record['path'])}\tunreadable: {one_line(record['error'])}"
    counts = [record["summary"][name] for name in COLUMN_NAMES]
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["created"])) if record["created"] else "-"
    line = f"{one_line(record['path'])}\t{summary_line(counts)}\t{record['backend']}\t{created}\t{record['tag']}"
    owner = record["in_use_by"]
    return line + (f"\tin use by `grid {owner['command']}` (pid {owner['pid']})" if owner else "")


def live_owner(state_dir: Path) -> Optional[dict]:
    """The command holding the batch, if its process still lives (a killed one leaves its file)."""
    try:
        owner = json.loads((state_dir / "owner").read_text())
        os.kill(int(owner["pid"]), 0)
    except PermissionError:
        return owner                              # alive, another user's
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return owner


# report

def add_report(parser: argparse.ArgumentParser) -> None:
    """draw the batch as one HTML page with plots

    Write one self-contained HTML page (plots as SVG inside it: it needs no network and no other
    file): the summary line and the batch's facts; the summary's columns over time; throughput
    and the estimated time left; waiting and running times; Done and failed jobs per site with
    their main failure reasons (the groups of `grid failures`); the attempts jobs needed and the
    reasons retried or stopped. Each plot has its numbers in a table. Reads a snapshot: works
    while `watch` runs (`watch --report` rewrites the page every minute); does not contact the
    server."""
    parser.add_argument("-o", "--output", metavar="FILE",
                        help=f"where to write the page (default: {REPORT_FILE} in the batch directory)")


def cmd_report(args: argparse.Namespace) -> int:
    batch_dir = Path(args.batch).resolve()
    target = Path(args.output).resolve() if args.output else batch_dir / REPORT_FILE
    write_report(batch_dir, target)
    print(f"report written to {target}")
    return EXIT_OK


def report_writer(batch_dir: Path, display: Display) -> Callable[[], None]:
    """`watch --report`: `grid report` in a process of its own, so that drawing 100,000 jobs never
    holds up the engine's loop; a page that cannot be written is said once, and the watch goes on."""
    command = [sys.executable, os.path.abspath(__file__), "-C", str(batch_dir), "report"]
    failing = False

    def write() -> None:
        nonlocal failing
        try:
            done = subprocess.run(command, capture_output=True, text=True, errors="replace",
                                  timeout=REPORT_TIMEOUT)
            problem = (done.stderr.strip().splitlines() or ["no reason given"])[0] if done.returncode else ""
        except (OSError, subprocess.TimeoutExpired) as e:
            problem = str(e)
        if problem and not failing:
            display.message(f"report not written: {problem}")
        failing = bool(problem)
    return write


def cmd_local_site(args: argparse.Namespace) -> int:
    return run_local_site(Path(args.folder))


# The table: each command's builder of its arguments (the first line of its docstring is the
# command's line in `grid --help`, the rest its description) and its handler cmd_NAME, in the
# order `grid --help` lists them.
COMMANDS: list[tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = [
            (add_submit, cmd_submit), (add_watch, cmd_watch), (add_status, cmd_status),
            (add_resubmit, cmd_resubmit), (add_kill, cmd_kill), (add_reschedule, cmd_reschedule),
            (add_failures, cmd_failures), (add_why, cmd_why), (add_logs, cmd_logs), (add_lfns, cmd_lfns),
            (add_export, cmd_export), (add_list, cmd_list), (add_report, cmd_report)]


# ==================================================================================================
# main
# ==================================================================================================

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grid", description="Submit, watch and download DIRAC grid jobs concurrently. "
        "A directory is a batch: run the commands from it (or name it with -C).",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 job file, 4 batch, 5 backend, 6 not every job "
        "Done, 130 interrupted (Ctrl-C at any moment, with one line saying what was kept; or a closed "
        "output pipe of submit/watch). Output cut by a closed pipe otherwise ends quietly.")
    parser.add_argument("--version", action="version", version=f"grid.py {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-C", dest="batch", default=".", metavar="DIR",
                        help="the batch directory (default: the current directory)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    for add_arguments, handler in COMMANDS:
        summary, _, description = add_arguments.__doc__.partition("\n\n")
        command = commands.add_parser(handler.__name__[4:], help=summary, description=description)
        add_arguments(command)
        command.set_defaults(func=handler)

    local_site = commands.add_parser("_local-site")   # a local batch's site process; not for users
    local_site.add_argument("folder")
    local_site.set_defaults(func=cmd_local_site)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        return args.func(args)
    except GridError as e:
        if args.debug:
            traceback.print_exc()
        print(f"grid: error: {one_line(e.message)}", file=sys.stderr)
        if e.fix:
            print(f"grid: fix: {one_line(e.fix)}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:              # the reader went away (`| head`): end quietly, as cat does
        silence(sys.stdout)
        return EXIT_OK
    except OSError as e:                 # disk full, permissions: the system's words, no traceback
        if args.debug:
            traceback.print_exc()
        print(f"grid: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"grid: {interruption_note(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED


def interruption_note(args: Optional[argparse.Namespace]) -> str:
    """The one true line after Ctrl-C outside the engine (the engine says its own)."""
    if args is None or not getattr(args, "command", None):
        return "interrupted; nothing was done"
    stored = (Path(args.batch) / STATE_DIR / "db").is_dir()
    if args.command == "submit" and (args.dry_run or not stored):
        return "interrupted before anything was submitted; nothing was stored"
    if args.command in ("submit", "watch", "resubmit"):
        return "interrupted; state is kept, `grid watch` resumes"
    return "interrupted"


def run() -> NoReturn:
    """The `grid` command: main(), then, if gevent ran, the process ends without finalizing Python.

    DIRAC's scheduler thread and gevent's threadpool leave daemon threads behind, each with its own
    gevent loop. Should one of them wake up in libev while Python finalizes, gevent's allocator takes
    the GIL of an interpreter that is gone: a segfault (exit 139) after the command had done all its
    work, about once in 120 commands against a real WMS. By now every batch is closed and the work
    is on disk: atexit handlers run, the output is flushed, and os._exit ends the process.
    """
    code = main()
    if gevent is None:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):   # a reader gone meanwhile: nothing left to tell it
            stream.flush()
    os._exit(code)


signal.signal(signal.SIGINT, IMPORT_TIME_SIGINT or signal.default_int_handler)   # imports are done

if __name__ == "__main__":
    run()
