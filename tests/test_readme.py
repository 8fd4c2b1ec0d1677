"""The README's Python examples run and its printed numbers are what the code prints."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run_and_print_what_they_claim():
    blocks = python_blocks()
    assert blocks, "README has no python example"
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.md", "exec"), {})
        printed = out.getvalue().split("\n")
        claims = [m.group(1) for m in re.finditer(r"print\(.*\)\s+# (\S+)", block)]
        for line, claim in zip(printed, claims):
            assert line.strip() == claim, (line, claim)


def test_quick_start_has_exactly_two_commands():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    assert len(commands) == 2 and all(len(c.strip().splitlines()) == 1 for c in commands)
    assert "pytest" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = commands[1].strip().split("&& ", 2)[-1]
    assert test_command in ci
