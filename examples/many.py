# 100 jobs made in a loop: each gets its own arguments, all share one input sandbox file.
# Paths in the input sandbox are found from the batch directory, then from this file's folder.
for i in range(1, 101):
    j = Job()
    j.setName(f'square-{i:03d}')
    j.setInputSandbox(['square.sh'])
    j.setExecutable('square.sh', arguments=str(i))
    j.setOutputSandbox(['result.txt'])
    submit(j)
