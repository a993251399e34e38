# One job that fails on purpose: its executable exits with status 3. Its output, stdout included,
# lands in failed/.
from DIRAC.Interfaces.API.Job import Job  # importing Job yourself works too

j = Job()
j.setName('fails-on-purpose')
j.setExecutable('/bin/sh', arguments='-c "echo about to fail; echo oops >&2; exit 3"')
submit(j)
