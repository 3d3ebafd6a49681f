"""Print command N (1 = main job, 2 = tests) of the README's first fenced code block.

CI runs exactly what the README tells users to run, so the two cannot drift apart.
"""
import re
import sys
from pathlib import Path

text = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
block = re.search(r"```[a-z]*\n(.*?)```", text, re.S)
if block is None:
    sys.exit("README.md has no fenced code block")
commands = [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]
if len(commands) != 2:
    sys.exit(f"README.md's first code block must hold exactly two commands, found {len(commands)}")
print(commands[int(sys.argv[1]) - 1])
