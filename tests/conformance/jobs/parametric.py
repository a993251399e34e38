# A parameter sequence, DIRAC's documented way: three jobs. %n is the job's index; the second step
# has no arguments of its own.
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"

j = Job()
j.setName("param-%(args)s")
j.setInputSandbox([str(DATA / "args.sh")])
j.setExecutable("echo", arguments="%(args)s %n")
j.setExecutable("args.sh")
j.setParameterSequence("args", ["first", "second value", "trois-é"], addToWorkflow=True)
submit(j)
