"""Every Python block of the READMEs runs as written, on a CPU machine, in a fresh interpreter.

The convention for README code blocks:

- A fenced ```` ```python ```` block runs as written. The blocks of one README run in order, in
  one namespace (a block may use what an earlier one defined), in a fresh Python process started
  in an empty temporary folder, with CUDA hidden and ``TRITON_INTERPRET`` unset: what a user who
  copies them gets on a CPU machine. The first block that fails fails the test, named by its
  README line, with its traceback.
- A block that cannot run there (it needs a GPU, a file the user downloads, the network) is
  marked by the line ``<!-- not run: <reason> -->`` immediately before its opening fence, and
  the text says so. A runnable variant (CPU, a local file) must follow it before the next
  heading. A marked block is still compiled, so it cannot hold a syntax error.
- Fails: an unmarked block that raises; a marker with no reason; a marker not followed by a
  python block; a marked block with no runnable block after it in its section.
- Other fences (``bash``, ``text``, ...) are not run here; CI runs the README's first block.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", *sorted(p for p in ROOT.glob("*/README.md") if not p.parent.name.startswith((".", "build")))]
MARKER = re.compile(r"^<!-- not run(?::\s*(?P<reason>.*?))?\s*-->$")
LOOSE_MARKER = re.compile(r"^<!--\s*not[\s_-]*run", re.I)  # meant as a marker, maybe malformed
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
HEADING = re.compile(r"^#{1,6}\s")
PYTHON = ("python", "py", "python3")


@dataclass
class Block:
    line: int  # 1-based line of the first code line
    language: str
    source: str
    marker: str | None  # the marker line before the fence, if any
    reason: str | None  # its reason (None or empty: no reason given)
    section: int  # index of the heading the block sits under

    @property
    def is_python(self) -> bool:
        return self.language.lower() in PYTHON


def parse(text: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown text, and the problems with its markers."""
    blocks: list[Block] = []
    problems: list[str] = []
    lines = text.splitlines()
    section, i = 0, 0
    while i < len(lines):
        line = lines[i]
        if HEADING.match(line):
            section += 1
        fence = FENCE.match(line)
        if fence is None:
            i += 1
            continue
        close = re.compile(rf"^ {{0,3}}{re.escape(fence['fence'][0])}{{{len(fence['fence'])},}}\s*$")
        end = next((j for j in range(i + 1, len(lines)) if close.match(lines[j])), len(lines))
        indent = fence["indent"]
        body = "\n".join(x[len(indent):] if x.startswith(indent) else x for x in lines[i + 1:end])
        before = lines[i - 1].strip() if i > 0 else ""
        marked = MARKER.match(before)
        if marked is None and LOOSE_MARKER.match(before):
            problems.append(f"line {i}: malformed marker {before!r}; write <!-- not run: <reason> -->")
        blocks.append(Block(i + 2, fence["info"], body + "\n", before if marked else None,
                            (marked["reason"] or "").strip() if marked else None, section))
        i = end + 1
    for n, line in enumerate(lines, 1):
        if MARKER.match(line.strip()) and not any(b.marker is not None and b.line == n + 2 for b in blocks):
            problems.append(f"line {n}: a not-run marker must sit on the line right before a ```python fence")
    for b in blocks:
        if b.marker is None:
            continue
        if not b.is_python:
            problems.append(f"line {b.line}: a not-run marker before a {b.language or 'plain'} block (only python blocks run)")
        elif not b.reason:
            problems.append(f"line {b.line}: the not-run marker gives no reason; write <!-- not run: <reason> -->")
        elif not any(o.is_python and o.marker is None and o.section == b.section and o.line > b.line for o in blocks):
            problems.append(f"line {b.line}: a not-run block needs a runnable python variant after it in its section")
        else:
            try:
                compile(b.source, f"line {b.line}", "exec")
            except SyntaxError as exc:
                problems.append(f"line {b.line}: the not-run block does not compile: {exc}")
    return blocks, problems


# Runs in the child process: every block in order in one namespace. Before a block starts, the
# report already names it as failed, so a crash or a timeout inside it is pinned on it. Tracebacks
# give README line numbers (the source is offset to them).
RUNNER = textwrap.dedent('''
    import json, sys, time, traceback
    readme, blocks_file, report_file = sys.argv[1:4]
    blocks = json.load(open(blocks_file))
    namespace = {"__name__": "__main__"}
    report = []

    def save(rows):
        with open(report_file, "w") as f:
            json.dump(rows, f)

    for block in blocks:
        save(report + [{"line": block["line"], "ok": False, "error": "the interpreter died or timed out in this block"}])
        start = time.perf_counter()
        try:
            exec(compile("\\n" * (block["line"] - 1) + block["source"], readme, "exec"), namespace)
        except BaseException:
            report.append({"line": block["line"], "ok": False, "error": traceback.format_exc(limit=-8)})
            break
        report.append({"line": block["line"], "ok": True, "seconds": round(time.perf_counter() - start, 2)})
    save(report)
''')


def run_blocks(readme: Path, blocks: list[Block], tmp: Path, timeout: float = 600) -> list[dict]:
    """Run the runnable python blocks of ``readme`` in a fresh interpreter whose working folder is
    the empty ``tmp/work``; one report row per block that ran (the last failed, if any did)."""
    runnable = [{"line": b.line, "source": b.source} for b in blocks if b.is_python and b.marker is None]
    (tmp / "blocks.json").write_text(json.dumps(runnable))
    work = tmp / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg")
    argv = [sys.executable, "-c", RUNNER, str(readme), str(tmp / "blocks.json"), str(tmp / "report.json")]
    try:
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        died = proc.returncode != 0 and f"exit status {proc.returncode}:\n{proc.stderr[-3000:]}"
    except subprocess.TimeoutExpired:
        died = f"timed out after {timeout:.0f} s"
    report = json.loads((tmp / "report.json").read_text()) if (tmp / "report.json").exists() else []
    if died and report and not report[-1]["ok"]:
        report[-1]["error"] += f" ({died})"
    elif died:
        report.append({"line": None, "ok": False, "error": f"the interpreter failed: {died}"})
    return report


def _failures(report: list[dict], readme: str) -> list[str]:
    return [f"{readme}:{r['line']}: this block fails as written:\n{r['error']}" for r in report if not r["ok"]]


@pytest.mark.parametrize("readme", READMES, ids=[str(p.relative_to(ROOT)) for p in READMES])
def test_readme_python_blocks_run_as_written(readme, tmp_path):
    blocks, problems = parse(readme.read_text())
    assert not problems, f"{readme.name}: " + "; ".join(problems)
    if not any(b.is_python and b.marker is None for b in blocks):
        return  # markers checked; nothing to run
    report = run_blocks(readme, blocks, tmp_path)
    failures = _failures(report, str(readme.relative_to(ROOT)))
    assert not failures, "\n\n".join(failures)
    assert len(report) == sum(b.is_python and b.marker is None for b in blocks)


# The checker itself: it must fail on each kind of broken README.
GOOD = """# T
```python
x = 1
```
## GPU
<!-- not run: needs a CUDA GPU -->
```python
y = torch.zeros(1, device="cuda")
```
The same on CPU:
```python
y = x + 1
assert y == 2
```
```bash
echo not run
```
"""


def test_the_checker_accepts_a_good_readme(tmp_path):
    blocks, problems = parse(GOOD)
    assert problems == []
    assert [(b.line, b.is_python, b.reason) for b in blocks] == [
        (3, True, None), (8, True, "needs a CUDA GPU"), (12, True, None), (16, False, None)]
    (tmp_path / "README.md").write_text(GOOD)
    report = run_blocks(tmp_path / "README.md", blocks, tmp_path)
    assert [r["ok"] for r in report] == [True, True]


@pytest.mark.parametrize("text,expected", [
    ("# T\n<!-- not run -->\n```python\nx = 1\n```\n```python\nx = 2\n```\n", "gives no reason"),
    ("# T\n<!-- not run:   -->\n```python\nx = 1\n```\n```python\nx = 2\n```\n", "gives no reason"),
    ("# T\n<!-- not run: GPU -->\n```python\nx = 1\n```\n## Next\n```python\nx = 2\n```\n", "runnable python variant"),
    ("# T\n<!-- not run: GPU -->\n\n```python\nx = 1\n```\n```python\nx = 2\n```\n", "right before a ```python fence"),
    ("# T\n<!-- not run: a shell -->\n```bash\nls\n```\n", "before a bash block"),
    ("# T\n<!-- notrun: GPU -->\n```python\nx = 1\n```\n", "malformed marker"),
    ("# T\n<!-- Not Run: GPU -->\n```python\nx = 1\n```\n", "malformed marker"),
    ("# T\n<!-- not run: GPU -->\n```python\nx = (\n```\n```python\nx = 2\n```\n", "does not compile"),
])
def test_the_checker_rejects_bad_markers(text, expected):
    _, problems = parse(text)
    assert any(expected in p for p in problems), problems


def test_the_checker_reports_the_failing_block_and_its_line(tmp_path):
    text = "# T\n```python\nimport math\n```\n\n```python\nvalue = math.sqrt(4)\nprint(undefined_name)\n```\n```python\nz = 3\n```\n"
    (tmp_path / "README.md").write_text(text)
    blocks, problems = parse(text)
    assert problems == []
    report = run_blocks(tmp_path / "README.md", blocks, tmp_path)
    assert [r["ok"] for r in report] == [True, False]  # the third block is not reached
    failures = _failures(report, "README.md")
    assert failures[0].startswith("README.md:7: this block fails")
    assert "NameError" in failures[0] and 'README.md", line 8' in failures[0]


def test_blocks_run_in_an_empty_folder_on_cpu(tmp_path):
    text = ("# T\n```python\nimport os, torch\nassert os.listdir('.') == [], os.listdir('.')\n"
            "assert not torch.cuda.is_available()\nassert 'TRITON_INTERPRET' not in os.environ\n```\n")
    blocks, _ = parse(text)
    assert [r["ok"] for r in run_blocks(tmp_path / "README.md", blocks, tmp_path)] == [True]
