# A step that fails (the next one never runs) and a step that cannot start.
j = Job()
j.setName("fails")
j.setExecutable("echo", arguments="before")
j.setExecutable("sh", arguments="-c 'echo about to fail; echo oops >&2; exit 3'")
j.setExecutable("echo", arguments="never runs")
submit(j)

j = Job()
j.setName("cannot-start")
j.setExecutable("./no-such-program", arguments="x")
submit(j)
