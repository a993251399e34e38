# The seed's example: one job, no import needed (grid.py defines Job and submit).
j = Job()
j.setExecutable('echo Hello World')
j.setName('Test job')
submit(j)
