# Arguments with spaces, quotes and non-ASCII letters, in several steps, one of them a script of the
# input sandbox: what each step receives is what it prints.
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"

j = Job()
j.setName("arguments")
j.setInputSandbox([str(DATA / "args.sh")])
j.setExecutable("args.sh", arguments="plain 'two words' \"double quoted\" it\\'s")
j.setExecutable("args.sh", arguments="héllo wörld ✓ '*' '$HOME'")
j.setExecutable("printf", arguments="'%s|' a 'b c'")
submit(j)
