# Input files, a directory (DIRAC's Job API packs it as mydir.tar.gz) and an archive of our own:
# DIRAC's job wrapper unpacks archives in the job's working directory.
import tarfile
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
with open("extra.txt", "w") as f:
    f.write("packed in an archive of our own\n")
with tarfile.open("bundle.tar.gz", "w:gz") as tar:       # in the batch directory
    tar.add("extra.txt", arcname="bundle/extra.txt")

j = Job()
j.setName("inputs")
j.setInputSandbox([str(DATA / "data.txt"), str(DATA / "mydir"), "bundle.tar.gz"])
j.setExecutable("sh", arguments="mydir/run.sh")
j.setExecutable("cat", arguments="data.txt bundle/extra.txt mydir/a.txt")
submit(j)
