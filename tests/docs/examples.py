"""Collect and run the fenced examples of the README and docs/ (the documentation's own test collector).

Every fenced block whose language is Python (``python``, ``py``) or shell (``bash``, ``sh``, ``shell``,
``console``) is an example, and every example is run by the test suite. Blocks of another language are not examples
and must say what they are (``text``, ``toml``, ...); an unknown language or a bare fence holding a command is caught
by :func:`check_fences`. Examples run in the folder of :mod:`tests.docs.sandbox`, where ``model.onnx``,
``cat.jpg``, ``photos/`` and the others exist.

How an example runs is chosen by an HTML comment on the line just above its fence, ``<!-- example: MODE -->``:

==============  ===================================================================================================
(no marker)     ``run``: run as written, in order with the page's other plain examples, in one folder; Python
                blocks of a page share one namespace, as a reader's session would
``slow``        run as written in a folder of its own, as a test marked ``slow`` (Ray, the flagship model, minutes
                of work)
``continues``   run after the ``slow`` example above it (and any ``continues`` between), in the same folder and
                Python namespace, as part of that one test: a command line that uses a model the example above
                built; a ``continues`` block without a ``slow`` one above it is refused
``installs``    a set-up command: its leading ``python3 -m venv .venv`` and ``.venv/bin/pip install`` steps are
                checked (each extra it installs exists in pyproject.toml) and left to the fresh clone of CI; the
                steps after them run as written against the test venv, as a test marked ``slow``
``ci``          the test command itself: each of its steps must be a step of ``.ci/run`` (running it from inside the
                suite would run the suite again)
``benchmark``   a benchmark's regeneration command: ``--help`` of each script runs and must list every flag used;
                the full run is the benchmark's own (minutes to hours). A block made only of
                ``.venv/bin/python benchmarks/NAME.py ...`` lines (or ``python``, ``python3``; environment
                variables before them allowed) gets
                this mode without a marker: the validation pages are written by their scripts, which write no
                markers
==============  ===================================================================================================

Pages written by scripts cannot carry markers either; :data:`PAGE_RULES` gives their examples a mode and the textual
replacements that make them runnable here (a cluster address becomes a local cluster, a bucket a local folder). A
replacement that no longer matches fails the test, so the table cannot silently go stale.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO

PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell", "console"}
NOT_EXAMPLES = {"text", "toml", "yaml", "json", "csv", "html", "diff", "ini", "mermaid"}
MODES = ("run", "slow", "continues", "installs", "ci", "benchmark")

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
MARKER = re.compile(r"^\s*<!--\s*example:\s*(?P<mode>[\w-]+)\s*-->\s*$")
INSTALLS = re.compile(r"(-m venv|pip install)")
# A benchmark's command line: the venv's python, or python / python3 on PATH, environment variables first allowed
# (``OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/NAME.py ...``).
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=\S*$")
BENCHMARK_LINE = re.compile(r"^(?:[A-Za-z_]\w*=\S* +)*(?:\.venv/bin/)?python3? benchmarks/[\w.-]+\.py\b")

# Pages written by benchmark scripts: path -> (mode for their examples, [(old, new), ...] replacements).
PAGE_RULES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "docs/ray.md": ("slow", [('["s3://bucket/photos/"]', '["photos/"]'), ('address="auto"', "address=None"),
                             ("/shared/out", "out"), ("/shared/eval", "eval"), ("--ray auto", "--ray")]),
}


@dataclass
class Example:
    """One fenced example: where it is, its language (``python`` | ``shell``), its code and how it runs."""
    path: Path
    line: int
    lang: str
    code: str
    mode: str = "run"
    replacements: list = field(default_factory=list)

    @property
    def where(self) -> str:
        try:
            name = self.path.resolve().relative_to(REPO)
        except ValueError:
            name = self.path
        return f"{name}:{self.line}"


def documentation_files() -> list[Path]:
    """README.md and every Markdown page of docs/ (the hooks' folder holds no pages)."""
    return [REPO / "README.md"] + sorted(p for p in (REPO / "docs").rglob("*.md") if "hooks" not in p.parts)


def _fences(text: str):
    """(line number, language, marker mode or None, code) of each fenced block."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = len(match["indent"]), match["fence"], match["info"].lower()
        start = i
        i += 1
        body = []
        while i < len(lines) and not (lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i >= len(lines):
            raise ValueError(f"line {start + 1}: a fence that is never closed")
        i += 1
        above = lines[start - 1] if start > 0 else ""
        marker = MARKER.match(above)
        yield start + 1, info, (marker["mode"] if marker else None), textwrap.dedent("\n".join(body))


def collect(path: Path, rules: dict | None = None) -> list[Example]:
    """The examples of one Markdown file, in page order; a bad marker or language is a ValueError naming the line."""
    rules = PAGE_RULES if rules is None else rules
    try:
        key = path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        key = path.name
    page_mode, replacements = rules.get(key, (None, []))
    examples = []
    for line, info, mode, code in _fences(path.read_text(encoding="utf-8")):
        where = f"{key}:{line}"
        if info in PYTHON:
            lang = "python"
        elif info in SHELL:
            lang = "shell"
        elif info in NOT_EXAMPLES or info == "":
            if mode is not None:
                raise ValueError(f"{where}: an example marker above a block that is not Python or shell")
            if info == "" and _looks_like_command(code):
                raise ValueError(f"{where}: a bare fence holding a command; mark it ```bash so that it is run, "
                                 "or ```text if it is not a command")
            continue
        else:
            raise ValueError(f"{where}: unknown block language {info!r}; use python or bash for examples, "
                             f"or one of {', '.join(sorted(NOT_EXAMPLES))}")
        if mode is not None and mode not in MODES:
            raise ValueError(f"{where}: unknown example mode {mode!r}; choose from {', '.join(MODES)}")
        if mode is None:
            lines = [ln for ln in code.splitlines() if ln.strip()]
            mode = page_mode or ("benchmark" if lines and all(BENCHMARK_LINE.match(ln) for ln in lines) else "run")
        if mode == "continues" and not (examples and examples[-1].mode in ("slow", "continues")):
            raise ValueError(f"{where}: a 'continues' example must come after a 'slow' example (or another "
                             "'continues'), whose folder it runs in")
        if mode in ("run", "slow", "continues") and INSTALLS.search(code):
            raise ValueError(f"{where}: a set-up command (venv or pip install) must be marked "
                             "<!-- example: installs --> or <!-- example: ci -->; run as written it would change the "
                             "venv the tests run in")
        examples.append(Example(path, line, lang, code, mode, replacements))
    return examples


def _looks_like_command(code: str) -> bool:
    first = code.strip().split("\n")[0]
    return bool(re.match(r"^(\$ )?(cnnviz|python3?|\.venv/|pip|mkdocs|import |from \w+ import)", first))


def check_fences(path: Path) -> None:
    """Raise ValueError if the file has a fence the collector cannot classify (see :func:`collect`)."""
    collect(path)


def runnable_code(example: Example) -> str:
    """The code as it is run: the page's replacements applied (each must still match)."""
    code = example.code
    for old, new in example.replacements:
        code = code.replace(old, new)
    return code


def check_replacements(path: Path, rules: dict | None = None) -> None:
    """Every replacement of the page's rule matches at least one of its examples (AssertionError otherwise)."""
    rules = PAGE_RULES if rules is None else rules
    key = path.resolve().relative_to(REPO).as_posix()
    text = "\n".join(ex.code for ex in collect(path, rules))
    for old, _ in rules.get(key, (None, []))[1]:
        assert old in text, f"{key}: the replacement of {old!r} matches no example any more; update PAGE_RULES"


def environment(workdir: Path) -> dict:
    """The environment of a shell example: the test venv's scripts first on PATH (``cnnviz``, ``mkdocs``)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = ""
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


class ExampleFailed(AssertionError):
    """An example of the documentation failed: where it is, its code and what it said."""


def run_python(example: Example, namespace: dict, workdir: Path) -> None:
    code = runnable_code(example)
    old = os.getcwd()
    os.chdir(workdir)
    try:
        exec(compile(code, example.where, "exec"), namespace)
    except Exception as exc:
        raise ExampleFailed(f"{example.where}: the Python example failed with {type(exc).__name__}: {exc}\n"
                            f"{textwrap.indent(code, '    ')}") from exc
    finally:
        os.chdir(old)


def run_shell(example: Example, workdir: Path, code: str | None = None, timeout: float = 900) -> str:
    code = runnable_code(example) if code is None else code
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=workdir, env=environment(workdir),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ExampleFailed(f"{example.where}: the shell example exited with {proc.returncode}\n"
                            f"{textwrap.indent(code, '    ')}\nstderr:\n{proc.stderr[-3000:]}")
    return proc.stdout


def slow_groups(path: Path) -> list[list[Example]]:
    """The page's ``slow`` examples, each with the ``continues`` examples that follow it: one test each."""
    groups: list[list[Example]] = []
    for example in collect(path):
        if example.mode == "slow":
            groups.append([example])
        elif example.mode == "continues":
            groups[-1].append(example)  # collect() refuses a continues example without a slow one above it
    return groups


def run_in_order(examples: list[Example], workdir: Path) -> None:
    """Run examples one after the other in ``workdir``, the Python ones in one namespace."""
    namespace: dict = {"__name__": "__docs_example__"}
    for example in examples:
        if example.lang == "python":
            run_python(example, namespace, workdir)
        else:
            run_shell(example, workdir)


# --- set-up commands and the CI command ---------------------------------------------------------------------------

def steps(code: str) -> list[str]:
    """The ``&&``-separated steps of a one-line shell command (line continuations joined)."""
    joined = " ".join(code.replace("\\\n", " ").split())
    return [s.strip() for s in joined.split("&&") if s.strip()]


SETUP = re.compile(r"^(python3 -m venv \.venv(-\w+)?|\.venv(-\w+)?/bin/(pip|python -m pip) install .*)$")


def extras(step: str) -> list[str]:
    """The extras a ``pip install -e '.[a,b]'`` step installs."""
    match = re.search(r"\.\[([\w,-]+)\]", step)
    return match.group(1).split(",") if match else []


def split_setup(code: str) -> tuple[list[str], list[str]]:
    """(leading set-up steps, the rest)."""
    parts = steps(code)
    n = 0
    while n < len(parts) and SETUP.match(parts[n]):
        n += 1
    return parts[:n], parts[n:]


def normalise_step(step: str) -> str:
    """``.venv/bin/pip`` and ``.venv/bin/python -m pip`` are one command."""
    return " ".join(re.sub(r"\.venv/bin/pip\b", ".venv/bin/python -m pip", step).split())


def ci_steps() -> list[str]:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    return [normalise_step(ln) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def benchmark_calls(code: str) -> list[tuple[str, list[str]]]:
    """(script path, the flags it is called with) of each line of a benchmark block."""
    calls = []
    for line in code.splitlines():
        if not line.strip():
            continue
        words = shlex.split(line, comments=True)
        while words and ENV_ASSIGNMENT.match(words[0]):
            words = words[1:]
        script = words[1]
        calls.append((script, [w.split("=")[0] for w in words[2:] if w.startswith("--")]))
    return calls
