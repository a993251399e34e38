"""The lab is a real DIRAC: jobs run through its JobAgent, the driver moves jobs through its services,
the WAN switch changes what a DISET call costs, its storage element and catalogue hold what jobs upload."""
import hashlib
import json
import os
import re
import socket
import subprocess
import time

SUBMIT_AND_WAIT = r'''
import json, os, sys, time
import DIRAC
DIRAC.initialize()
from DIRAC.Interfaces.API.Dirac import Dirac
from DIRAC.Interfaces.API.Job import Job

token = sys.argv[1]
with open("hello_input.txt", "w") as f:
    f.write(f"input sandbox {token}\n")
j = Job()
j.setName("lab-hello")
j.setExecutable("/bin/sh", arguments='-c "cat hello_input.txt; echo RESULT-$(cat hello_input.txt | wc -c) > result.txt"')
j.setInputSandbox(["hello_input.txt"])
j.setOutputSandbox(["std.out", "std.err", "result.txt"])
d = Dirac()
t0 = time.monotonic()
res = d.submitJob(j)
assert res["OK"], res
jid = res["Value"]
seen = []
while time.monotonic() - t0 < 180:
    st = d.getJobStatus([jid])
    assert st["OK"], st
    s = st["Value"][jid]
    if not seen or seen[-1] != s["Status"]:
        seen.append(s["Status"])
    if s["Status"] in ("Done", "Failed", "Killed"):
        break
    time.sleep(0.5)
done_after = time.monotonic() - t0
out = d.getOutputSandbox(jid, outputDir="out")
files = {}
if out["OK"]:
    for name in os.listdir(f"out/{jid}"):
        with open(f"out/{jid}/{name}", errors="replace") as f:
            files[name] = f.read()
print("RESULT " + json.dumps({"job_id": jid, "status": s, "seen": seen, "done_after": done_after,
                              "osb": out["OK"], "osb_message": out.get("Message"), "files": files}))
'''

SUBMIT_MANY = r'''
import json, sys
import DIRAC
DIRAC.initialize()
from DIRAC.Interfaces.API.Dirac import Dirac
from DIRAC.Interfaces.API.Job import Job
j = Job()
j.setName("lab-many")
j.setExecutable("/bin/echo", arguments="%s")
j.setParameterSequence("args", [str(i) for i in range(int(sys.argv[1]))])
res = Dirac().submitJob(j)
assert res["OK"], res
print("RESULT " + json.dumps(res["Value"]))
'''

CHECK_DRIVEN = r'''
import json, os, sys
from concurrent.futures import ThreadPoolExecutor
import DIRAC
DIRAC.initialize()
from DIRAC.Interfaces.API.Dirac import Dirac
from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient
ids = [int(i) for i in sys.argv[1:]]
st = JobMonitoringClient().getJobsStatus(ids)
assert st["OK"], st
statuses = {int(k): v["Status"] for k, v in st["Value"].items()}
def get(jid):
    r = Dirac().getOutputSandbox(jid, outputDir="out")
    if not r["OK"]:
        return jid, "ERROR " + r["Message"]
    with open(f"out/{jid}/std.out") as f:
        return jid, f.read()
with ThreadPoolExecutor(8) as pool:
    outputs = dict(pool.map(get, ids))
print("RESULT " + json.dumps({"statuses": statuses, "outputs": outputs}))
'''

TIME_STATUS_CALL = r'''
import json, statistics, sys, time
import DIRAC
DIRAC.initialize()
from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient
client = JobMonitoringClient()
client.getJobsStatus([1])
times = []
for _ in range(5):
    t = time.monotonic()
    r = client.getJobsStatus([1])
    times.append(time.monotonic() - t)
    assert r["OK"], r
print("RESULT " + json.dumps(statistics.median(times)))
'''


def result_of(proc):
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no RESULT line\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_lab_answers_and_is_isolated(dirac_lab):
    t0 = time.monotonic()
    out = dirac_lab.lab("up")
    assert "already up" in out and time.monotonic() - t0 < 10
    status = dirac_lab.lab("status")
    assert status.count(" answers ") == 10, status
    assert "DataManagement/FileCatalog" in status and "DataManagement/StorageElement" in status
    links = dirac_lab.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"]
    # the services are not reachable from the root namespace
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex(("127.0.0.1", 9135)) != 0


def test_job_with_input_sandbox_runs_through_jobagent(dirac_lab, tmp_path):
    token = f"tok{int(time.time())}"
    res = result_of(dirac_lab.run_python(SUBMIT_AND_WAIT, token, cwd=tmp_path, timeout=300))
    jid = res["job_id"]
    dirac_lab.timings["first job submitted -> Done"] = res["done_after"]
    assert res["status"]["Status"] == "Done", res
    assert res["status"]["MinorStatus"] == "Execution Complete"
    assert res["seen"][0] in ("Received", "Checking", "Waiting") and res["seen"][-1] == "Done"
    assert res["osb"], res["osb_message"]
    # the payload read the input sandbox and its files came back in the output sandbox
    expected = f"input sandbox {token}\n"
    assert res["files"]["result.txt"].strip() == f"RESULT-{len(expected)}"
    assert expected in res["files"]["Script1_sh.log"]
    assert "std.out" in res["files"]

    cli = dirac_lab.run(["dirac-wms-job-status", str(jid)], capture_output=True, text=True, timeout=120, check=True)
    assert re.search(rf"JobID={jid} .*Status=Done;", cli.stdout), cli.stdout
    assert "MinorStatus=Execution Complete;" in cli.stdout and "Site=DIRAC.Lab.local;" in cli.stdout
    log = dirac_lab.run(["dirac-wms-job-logging-info", str(jid)], capture_output=True, text=True, timeout=120,
                        check=True).stdout
    history = [ln.split()[1] for ln in log.splitlines()[2:] if len(ln.split()) > 1]
    for status in ("Received", "Checking", "Waiting", "Matched", "Running", "Done"):
        assert status in history, log
    assert history.index("Matched") < history.index("Running") < history.index("Done")


def test_driver_takes_50_jobs_to_done(dirac_lab, tmp_path):
    dirac_lab.jobagent(False)
    ids = result_of(dirac_lab.run_python(SUBMIT_MANY, 50, cwd=tmp_path))
    assert len(ids) == 50
    t0 = time.monotonic()
    res = dirac_lab.drive(ids, "Done")
    dirac_lab.timings["drive 50 jobs to Done"] = time.monotonic() - t0
    assert sorted(res["ok"]) == sorted(ids) and not res["errors"] and not res["warnings"], res

    check = result_of(dirac_lab.run_python(CHECK_DRIVEN, *ids, cwd=tmp_path))
    assert set(check["statuses"].values()) == {"Done"}, check["statuses"]
    for jid in ids:
        assert check["outputs"][str(jid)] == f"job {jid} Done (driven by drive.py)\n"

    # Failed, with files of our own
    more = result_of(dirac_lab.run_python(SUBMIT_MANY, 2, cwd=tmp_path))
    res = dirac_lab.drive(more, "Failed", files={"std.out": "boom {job_id}\n", "std.err": "err\n"})
    assert sorted(res["ok"]) == sorted(more)
    check = result_of(dirac_lab.run_python(CHECK_DRIVEN, *more, cwd=tmp_path))
    assert set(check["statuses"].values()) == {"Failed"}
    assert check["outputs"][str(more[0])] == f"boom {more[0]}\n"


def test_wan_adds_latency_to_a_diset_call(dirac_lab):
    def median_call():
        return result_of(dirac_lab.run_python(TIME_STATUS_CALL, timeout=120))

    base = median_call()
    dirac_lab.wan(True)
    try:
        slow = median_call()
    finally:
        dirac_lab.wan(False)
    after = median_call()
    dirac_lab.timings["status call, loopback"] = base
    dirac_lab.timings["status call, 50 ms round trip"] = slow
    assert slow - base >= 0.040, (base, slow)
    assert after - base < 0.030, (base, after)


OUTPUT_DATA_AND_BIG_SANDBOX = r'''
import json, sys, time
import DIRAC
DIRAC.initialize()
from DIRAC.Interfaces.API.Dirac import Dirac
from DIRAC.Interfaces.API.Job import Job
from DIRAC.Resources.Catalog.FileCatalog import FileCatalog
from DIRAC.WorkloadManagementSystem.Client.JobMonitoringClient import JobMonitoringClient
j = Job()
j.setName("lab-data")
j.setExecutable("/bin/sh", arguments='-c "head -c 1500000 /dev/urandom > out.dat; head -c 1500000 /dev/urandom > big.bin;'
                ' sha256sum out.dat big.bin"')
j.setOutputData(["out.dat"], outputSE="SE-1")
j.setOutputSandbox(["std.out", "big.bin"])
d = Dirac()
jid = d.submitJob(j)["Value"]
t0 = time.monotonic()
while time.monotonic() - t0 < 240:
    s = d.getJobStatus(jid)["Value"][jid]
    if s["Status"] in ("Done", "Failed", "Killed"):
        break
    time.sleep(0.5)
folder = f"/labvo/user/l/labuser/{jid // 1000}/{jid}"
listing = FileCatalog().listDirectory(folder)["Value"]["Successful"][folder]["Files"]
files = {lfn: {"size": m["MetaData"]["Size"], "checksum": m["MetaData"]["Checksum"]} for lfn, m in listing.items()}
log = [row[1] for row in d.getJobLoggingInfo(jid)["Value"]]
print("RESULT " + json.dumps({"job_id": jid, "status": s, "files": files, "log": log,
                              "seconds": time.monotonic() - t0}))
'''

GET_FILE = r'''
import json, sys
import DIRAC
DIRAC.initialize()
from DIRAC.DataManagementSystem.Client.DataManager import DataManager
res = DataManager().getFile(sys.argv[1], destinationDir=sys.argv[2])
print("RESULT " + json.dumps({"ok": res["OK"] and sys.argv[1] in res["Value"]["Successful"],
                              "message": res.get("Message") or str(res["Value"]["Failed"])}))
'''


def test_jobagent_uploads_output_data_and_an_oversized_sandbox_to_the_storage_element(dirac_lab, tmp_path):
    with dirac_lab.sandbox_limit(1 << 20):
        assert dirac_lab.cs_get("/Systems/WorkloadManagement/JobWrapper/OutputSandboxLimit") == str(1 << 20)
        res = result_of(dirac_lab.run_python(OUTPUT_DATA_AND_BIG_SANDBOX, cwd=tmp_path))
    assert dirac_lab.cs_get("/Systems/WorkloadManagement/JobWrapper/OutputSandboxLimit") == "10485760"
    dirac_lab.timings["output data + oversized sandbox job, submitted -> Done"] = res["seconds"]
    jid = res["job_id"]
    assert res["status"]["Status"] == "Done", res
    folder = f"/labvo/user/l/labuser/{jid // 1000}/{jid}"
    names = sorted(os.path.basename(lfn) for lfn in res["files"])
    assert names[1] == "out.dat" and names[0].startswith("LDSB."), res["files"]      # the sandbox went to SE-1
    assert "Uploading Output Data" in res["log"] and "Output Sandbox Uploaded" not in res["log"], res["log"]
    # the replicas are files on SE-1's disk, as the catalogue describes them
    out = dirac_lab.replica(f"{folder}/out.dat")
    assert out.stat().st_size == res["files"][f"{folder}/out.dat"]["size"] == 1500000


def test_storage_element_serves_checks_and_goes_down_on_demand(dirac_lab, tmp_path):
    lfn = f"/labvo/user/l/labuser/labtest/{time.time_ns()}/f.dat"
    data = os.urandom(300000)
    assert dirac_lab.put_files({lfn: data}) == {lfn: hashlib.sha256(data).hexdigest()}
    assert dirac_lab.replica(lfn).read_bytes() == data

    def get(dest):
        dest.mkdir()
        return result_of(dirac_lab.run_python(GET_FILE, lfn, dest, timeout=120))

    assert get(tmp_path / "a")["ok"] and (tmp_path / "a/f.dat").read_bytes() == data
    with dirac_lab.corrupt_replica(lfn):
        res = get(tmp_path / "b")
        assert not res["ok"] and "checksum" in res["message"].lower(), res
    assert dirac_lab.replica(lfn).read_bytes() == data
    dirac_lab.se(False)
    assert not get(tmp_path / "c")["ok"]
    dirac_lab.se(True)
    assert get(tmp_path / "d")["ok"]


def test_lab_has_its_own_database_account(dirac_lab):
    user = os.environ.get("DBPREFIX", "gridlab_") + "dirac"
    cfg = (dirac_lab.lab_dir / "server/etc/dirac.cfg").read_text()
    assert re.search(rf"^\s*User = {re.escape(user)}$", cfg, re.M), cfg
    grants = subprocess.run(["mysql", "-uroot", "-N", "-e", f"SHOW GRANTS FOR '{user}'@'localhost'"],
                            capture_output=True, text=True, check=True).stdout
    databases = re.findall(r"ON `([^`]+)`\.\*", grants.replace("\\_", "_"))
    prefix = os.environ.get("DBPREFIX", "gridlab_")
    assert len(databases) == 8 and all(d.startswith(prefix) for d in databases), grants
