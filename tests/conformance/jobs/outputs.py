# Output sandbox patterns: wildcards, a file in a folder, a folder, a non-ASCII name, a file that
# is never made; a second job's large output (a few MB: DIRAC sends sandboxes above 10 MiB to grid
# storage instead).
j = Job()
j.setName("outputs")
j.setExecutable("sh", arguments="-c 'mkdir -p sub keep; for i in 1 2 3; do echo $i > out$i.txt; done; "
                                "echo x > sub/x.dat; echo kept > keep/k.txt; echo é > résumé.txt; echo no > other.log'")
j.setOutputSandbox(["out*.txt", "sub/x.dat", "keep", "résumé.txt", "never-made.txt"])
submit(j)

j = Job()
j.setName("large-output")
j.setExecutable("seq", arguments="1 300000")
submit(j)
