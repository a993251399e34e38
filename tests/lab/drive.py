#!/usr/bin/env python
"""Drive lab jobs to Done (or Failed) without a JobAgent, through the lab's real DIRAC services.

For each job this does what the Matcher and a pilot's job wrapper would do, as the job owner (user proxy):
  0. takes the job out of the TaskQueueDB, as the Matcher does when it hands a job to a pilot (there is no
     service call for that, so this one step is SQL on the lab's MariaDB, as root through its unix socket;
     left in, the entries make the lab's JobAgent fail one match per cycle on jobs that are not Waiting);
  1. uploads an output sandbox (by default std.out saying which job it is) assigned to the job
     (SandboxStoreClient.uploadFilesAsSandbox, assignTo={"Job:<id>": "Output"});
  2. with --data-size N (data_size=N): uploads and registers each file the job's JDL declares as OutputData
     (N random bytes, incompressible) to its OutputSE (default SE-1) at the LFN a job wrapper gives it
     (/<vo>/user/<o>/<owner>/<id // 1000>/<id>/<name>, or <owner>/<OutputPath>/<name>), through DataManager
     putAndRegister, as a job does after its sandbox;
  3. JobStateUpdate.setJobSite (the lab's site) and one JobStateUpdate.setJobStatusBulk call:
     Matched -> Running -> Completing -> Done|Failed, with time stamps (JobLoggingDB has the history).
Jobs are first waited for until the optimizers have made them Waiting. Only Waiting jobs are driven;
others are reported as errors. Meant for when the lab's JobAgent is stopped (it would match jobs too).

Run it inside the lab's network namespace with the lab's client environment:
    bash tests/lab/lab.sh run python tests/lab/drive.py [--status Failed] [--file NAME=TEXT] JOBID... | -
The last line of output is "RESULT {json}" with {"ok": [...], "errors": {id: msg}, "warnings": [...], "seconds": s,
"data": {id: {lfn: sha256}}}.

As a module (in a process that runs inside the netns with the client environment):
    from drive import drive_jobs
    drive_jobs([1, 2, 3], status="Done", files={"std.out": "job {job_id}\\n"})
"""
import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

DEFAULT_FILES = {"std.out": "job {job_id} {status} (driven by drive.py)\n"}
MINOR = {"Done": "Execution Complete", "Failed": "Application Finished With Errors"}
SITE = "DIRAC.Lab.local"
DEFAULT_SE = "SE-1"
_initialised = False


def _init():
    global _initialised
    if not _initialised:
        import DIRAC

        DIRAC.initialize()
        _initialised = True


def wait_until_optimised(job_ids, timeout=60.0):
    """Wait until no job is Received/Checking any more; return {job_id: status}."""
    _init()
    from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient

    monitor = JobMonitoringClient()
    end = time.monotonic() + timeout
    while True:
        statuses = {}
        for i in range(0, len(job_ids), 1000):
            res = monitor.getJobsStatus(job_ids[i : i + 1000])
            if not res["OK"]:
                raise RuntimeError(f"getJobsStatus: {res['Message']}")
            statuses.update({int(k): v["Status"] for k, v in res["Value"].items()})
        pending = [j for j in job_ids if statuses.get(j) in (None, "Received", "Checking")]
        if not pending or time.monotonic() > end:
            return statuses
        time.sleep(0.3)


def remove_from_task_queues(job_ids):
    """Delete the jobs' TaskQueueDB entries (what the Matcher does on a match). Returns a warning or None."""
    if not job_ids:
        return None
    db = os.environ.get("GRID_LAB_DBPREFIX", "gridlab_") + "TaskQueueDB"
    try:
        import MySQLdb

        conn = MySQLdb.connect(user="root", database=db, unix_socket=os.environ.get("GRID_LAB_MYSQL_SOCKET", "/run/mysqld/mysqld.sock"))
        try:
            cur = conn.cursor()
            for i in range(0, len(job_ids), 1000):
                chunk = [int(j) for j in job_ids[i : i + 1000]]
                cur.execute("DELETE FROM tq_Jobs WHERE JobId IN (%s)" % ",".join(["%s"] * len(chunk)), chunk)
            conn.commit()
        finally:
            conn.close()
    except Exception as exc:  # the driving itself still works; a running JobAgent just gets failed matches
        return f"could not remove the jobs from {db}.tq_Jobs: {exc}"
    return None


def _stamps(n):
    t0 = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    return [(t0 + datetime.timedelta(milliseconds=10 * i)).strftime("%Y-%m-%d %H:%M:%S.%f") for i in range(n)]


def _as_list(value):
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def output_lfn(job_id, name, owner, vo, output_path=""):
    """The LFN a DIRAC job wrapper uploads output file `name` of a user job to (JobWrapper's convention)."""
    if name.startswith("LFN:"):
        return name[len("LFN:"):]
    base = f"/{vo}/user/{owner[:1]}/{owner}"
    if output_path.startswith("LFN:"):
        base, output_path = "", output_path[len("LFN:"):]
    path = output_path.strip("/") or f"{job_id // 1000}/{job_id}"
    return f"{base}/{path}/{os.path.basename(name)}"


def upload_output_data(job_id, size, workdir):
    """Upload and register `size` random bytes for each OutputData file of the job's JDL; {lfn: sha256}."""
    import hashlib

    from DIRAC.ConfigurationSystem.Client.Helpers.Registry import getVOForGroup
    from DIRAC.DataManagementSystem.Client.DataManager import DataManager
    from DIRAC.Interfaces.API.Dirac import Dirac

    res = Dirac().getJobJDL(job_id)
    if not res["OK"]:
        raise RuntimeError(f"getJobJDL: {res['Message']}")
    jdl = res["Value"]
    ses = _as_list(jdl.get("OutputSE")) or [DEFAULT_SE]
    vo = getVOForGroup(jdl.get("OwnerGroup", "")) or "dirac"
    output_path = jdl.get("OutputPath", "")
    output_path = output_path if isinstance(output_path, str) else ""
    uploaded = {}
    for name in _as_list(jdl.get("OutputData")):
        lfn = output_lfn(job_id, name, jdl["Owner"], vo, output_path)
        path = os.path.join(workdir, f"data-{job_id}-{os.path.basename(lfn)}")
        data = os.urandom(size)
        with open(path, "wb") as f:
            f.write(data)
        res = DataManager().putAndRegister(lfn, path, ses[0])
        os.unlink(path)
        if not res["OK"] or lfn not in res["Value"]["Successful"]:
            raise RuntimeError(f"putAndRegister {lfn}: {res.get('Message') or res['Value']['Failed'].get(lfn)}")
        uploaded[lfn] = hashlib.sha256(data).hexdigest()
    return uploaded


def _drive_one(job_id, status, files, workdir, source, data_size=None, uploaded=None):
    from DIRAC.WorkloadManagementSystem.Client.JobStateUpdateClient import JobStateUpdateClient
    from DIRAC.WorkloadManagementSystem.Client.SandboxStoreClient import SandboxStoreClient

    contents = files(job_id) if callable(files) else files
    if contents:
        jobdir = os.path.join(workdir, str(job_id))
        os.makedirs(jobdir, exist_ok=True)
        paths = []
        for name, text in contents.items():
            path = os.path.join(jobdir, name)
            data = text.format(job_id=job_id, status=status) if isinstance(text, str) else text
            with open(path, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            paths.append(path)
        res = SandboxStoreClient().uploadFilesAsSandbox(paths, assignTo={f"Job:{job_id}": "Output"})
        if not res["OK"]:
            return f"output sandbox upload: {res['Message']}"
    chain = [
        ("Matched", "Assigned", ""),
        ("Running", "Job Initialization", ""),
        ("Running", "Application", "Running"),
        ("Completing", "Uploading Output Sandbox", ""),
    ]
    if data_size is not None:
        try:
            uploaded[job_id] = upload_output_data(job_id, data_size, workdir)
        except RuntimeError as exc:
            return f"output data: {exc}"
        chain.append(("Completing", "Uploading Output Data", ""))
    chain.append((status, MINOR[status], "Finished" if status == "Done" else "Failed"))
    bulk = {}
    for stamp, (st, minor, app) in zip(_stamps(len(chain)), chain):
        bulk[stamp] = {"Status": st, "MinorStatus": minor, "Source": source}
        if app:
            bulk[stamp]["ApplicationStatus"] = app
    client = JobStateUpdateClient()
    res = client.setJobSite(job_id, SITE)
    if not res["OK"]:
        return f"setJobSite: {res['Message']}"
    res = client.setJobStatusBulk(job_id, bulk, False)
    if not res["OK"]:
        return f"setJobStatusBulk: {res['Message']}"
    return None


def drive_jobs(job_ids, status="Done", files=None, workers=16, wait=60.0, source="drive.py", data_size=None):
    """Drive the given Waiting jobs to `status` ("Done" or "Failed") with an output sandbox.

    files: {name: text} for the output sandbox (text may use {job_id} and {status}), or a callable
    job_id -> {name: text|bytes}; None = DEFAULT_FILES; {} = no output sandbox.
    data_size: upload and register each of the job's OutputData files with that many random bytes.
    Returns {"ok": [job ids driven], "errors": {job_id: message}, "warnings": [...], "seconds": elapsed,
    "data": {job_id: {lfn: sha256}}}.
    """
    if status not in MINOR:
        raise ValueError(f"status must be one of {sorted(MINOR)}")
    t0 = time.monotonic()
    job_ids = [int(j) for j in job_ids]
    _init()
    statuses = wait_until_optimised(job_ids, timeout=wait)
    errors = {j: f"job is {statuses.get(j)}, not Waiting" for j in job_ids if statuses.get(j) != "Waiting"}
    todo = [j for j in job_ids if j not in errors]
    files = DEFAULT_FILES if files is None else files
    warning = remove_from_task_queues(todo)
    ok, data = [], {}
    with tempfile.TemporaryDirectory(prefix="drive.") as workdir:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo) or 1))) as pool:
            def drive(job_id):
                return _drive_one(job_id, status, files, workdir, source, data_size, data)

            for job_id, err in zip(todo, pool.map(drive, todo)):
                if err:
                    errors[job_id] = err
                else:
                    ok.append(job_id)
    return {"ok": ok, "errors": errors, "warnings": [warning] if warning else [],
            "seconds": round(time.monotonic() - t0, 3), "data": data}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("job_ids", nargs="+", help="DIRAC job IDs, or - to read them from stdin")
    p.add_argument("--status", default="Done", choices=sorted(MINOR))
    p.add_argument("--file", action="append", default=[], metavar="NAME=TEXT",
                   help="output sandbox file (repeatable; TEXT may use {job_id} {status}); default std.out")
    p.add_argument("--no-sandbox", action="store_true", help="upload no output sandbox")
    p.add_argument("--data-size", type=int, metavar="BYTES",
                   help="upload and register each OutputData file of the job's JDL, BYTES random bytes")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the optimizers (default 60)")
    a = p.parse_args(argv)
    ids = sys.stdin.read().split() if a.job_ids == ["-"] else a.job_ids
    files = {} if a.no_sandbox else (dict(f.split("=", 1) for f in a.file) if a.file else None)
    res = drive_jobs([int(i) for i in ids], status=a.status, files=files, workers=a.workers, wait=a.wait,
                     data_size=a.data_size)
    print(f"drove {len(res['ok'])} job(s) to {a.status} in {res['seconds']} s; {len(res['errors'])} error(s)",
          *res["warnings"], file=sys.stderr)
    print("RESULT " + json.dumps(res), flush=True)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
