# One job file line, many jobs: DIRAC's parametric jobs. Each value of the sequence becomes a job of
# its own (its own number, output folder and resubmission); %(who)s is the value, %n its index.
# On the grid the server creates all of them in one call.
j = Job()
j.setName('greet-%(who)s')
j.setExecutable('echo', arguments='Hello %(who)s, you are number %n')
j.setParameterSequence('who', ['Alice', 'Bob', 'Carol'], addToWorkflow=True)
submit(j)
