"""Every fenced Python and shell example of the README and docs/ runs (see tests/docs/examples.py for how)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED
from tests.docs import examples as ex

FILES = ex.documentation_files()


def _examples(mode: str):
    found = []
    for path in FILES:
        try:
            found += [e for e in ex.collect(path) if e.mode == mode]
        except ValueError:
            pass  # test_fences_are_examples_or_say_what_they_are reports it
    return found


def _slow_groups():
    found = []
    for path in FILES:
        try:
            found += ex.slow_groups(path)
        except ValueError:
            pass
    return found


def _pages_with_plain_examples():
    pages = []
    for path in FILES:
        try:
            if any(e.mode == "run" for e in ex.collect(path)):
                pages.append(path)
        except ValueError:
            pass
    return pages


def _id(item):
    if isinstance(item, list):  # a slow example and those that continue it
        return item[0].where + "".join(f"+{e.line}" for e in item[1:])
    return item.where if isinstance(item, ex.Example) else str(item.relative_to(REPO))


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_fences_are_examples_or_say_what_they_are(path):
    ex.check_fences(path)


def test_the_collector_finds_the_examples():
    """Every fence with a Python or shell language in the README and docs/ is collected, in every mode."""
    total = 0
    for path in FILES:
        fences = re.findall(r"^ *```(python|py|bash|sh|shell|console)\s*$", path.read_text(), flags=re.MULTILINE)
        assert len(ex.collect(path)) == len(fences), path
        total += len(fences)
    assert total >= 20
    assert {e.mode for path in FILES for e in ex.collect(path)} >= {"run", "installs", "ci", "benchmark"}


@pytest.mark.parametrize("path", _pages_with_plain_examples(), ids=_id)
def test_page_examples_run(path, example_dir):
    ex.run_in_order([e for e in ex.collect(path) if e.mode == "run"], example_dir)


@pytest.mark.slow
@pytest.mark.parametrize("group", _slow_groups(), ids=_id)
def test_slow_example_runs(group, example_dir):
    ex.run_in_order(group, example_dir)


CONTINUED_PAGE = """<!-- example: slow -->
```python
from pathlib import Path
Path("made.txt").write_text("1")
n = 41
```

<!-- example: continues -->
```bash
test "$(cat made.txt)" = 1
```

<!-- example: continues -->
```python
assert n + 1 == 42
```

<!-- example: slow -->
```python
n
```
"""


def test_continued_examples_run_in_their_slow_examples_folder(tmp_path, example_dir):
    """A 'continues' block runs after its slow block, in its folder and namespace, as one test; the next slow block
    starts a test of its own (its own namespace: ``n`` is not defined there)."""
    page = tmp_path / "page.md"
    page.write_text(CONTINUED_PAGE)
    groups = ex.slow_groups(page)
    assert [[e.mode for e in group] for group in groups] == [["slow", "continues", "continues"], ["slow"]]
    ex.run_in_order(groups[0], example_dir)
    with pytest.raises(ex.ExampleFailed, match="NameError"):
        ex.run_in_order(groups[1], example_dir)
    broken = page.read_text().replace("assert n + 1 == 42", "assert n + 1 == 43")
    page.write_text(broken)
    with pytest.raises(ex.ExampleFailed, match=r"page.md:14: the Python example failed with AssertionError"):
        ex.run_in_order(ex.slow_groups(page)[0], example_dir)


@pytest.mark.parametrize("path", [p for p in FILES if p.resolve().relative_to(REPO).as_posix() in ex.PAGE_RULES],
                         ids=_id)
def test_page_rules_still_match(path):
    ex.check_replacements(path)


def _extras_of_pyproject() -> set:
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(data["project"]["optional-dependencies"])


@pytest.mark.slow
@pytest.mark.parametrize("example", _examples("installs"), ids=_id)
def test_setup_command_runs_after_its_install_steps(example, example_dir):
    setup, rest = ex.split_setup(example.code)
    assert setup and setup[0].startswith("python3 -m venv"), f"{example.where}: no venv step to leave to CI"
    for step in setup:
        assert set(ex.extras(step)) <= _extras_of_pyproject(), f"{example.where}: {step} names an unknown extra"
    assert rest, f"{example.where}: nothing after the install steps"
    if "../shared" in example.code and not SHARED.exists():
        pytest.skip(f"{example.where} reads ../shared, which is not beside the clone ({SHARED})")
    ex.run_shell(example, example_dir, code=" && ".join(rest))


@pytest.mark.parametrize("example", _examples("ci"), ids=_id)
def test_ci_command_is_what_ci_runs(example):
    ci = ex.ci_steps()
    for step in ex.steps(example.code):
        assert ex.normalise_step(step) in ci, f"{example.where}: {step!r} is not a step of .ci/run"


@pytest.mark.parametrize("example", _examples("benchmark"), ids=_id)
def test_benchmark_command_parses(example):
    for script, flags in ex.benchmark_calls(example.code):
        assert (REPO / script).is_file(), f"{example.where}: {script} does not exist"
        proc = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{example.where}: {script} --help failed: {proc.stderr[-2000:]}"
        for flag in flags:
            assert flag in proc.stdout, f"{example.where}: {script} has no {flag} flag"


# --- the collector itself fails on a broken example -----------------------------------------------------------------

BROKEN_PAGE = """# A page

```python
import onnx_cnnviz as cv
m = cv.load("model.onnx")
```

Text between the examples.

```python
maps = cv.grad_cam(m, x_that_was_never_defined)
```
"""


def test_a_broken_python_example_fails(tmp_path, example_dir):
    page = tmp_path / "broken.md"
    page.write_text(BROKEN_PAGE)
    found = ex.collect(page)
    assert [e.line for e in found] == [3, 10]
    with pytest.raises(ex.ExampleFailed, match=r"broken.md:10: the Python example failed with NameError"):
        ex.run_in_order(found, example_dir)


def test_a_broken_copy_of_a_real_page_fails(tmp_path, example_dir):
    """The library page with one call misspelt fails at that block; the page itself passes (above)."""
    original = (REPO / "docs" / "getting-started" / "library.md").read_text()
    assert "cv.grad_cam(m, x" in original
    page = tmp_path / "library.md"
    page.write_text(original.replace("cv.grad_cam(m, x", "cv.grad_cam_misspelt(m, x", 1))
    with pytest.raises(ex.ExampleFailed, match="grad_cam_misspelt"):
        ex.run_in_order([e for e in ex.collect(page) if e.mode == "run"], example_dir)


def test_a_broken_shell_example_fails(tmp_path, example_dir):
    page = tmp_path / "cli.md"
    page.write_text("```bash\ncnnviz explain model.onnx cat.jpg --no-such-flag --out out/\n```\n")
    with pytest.raises(ex.ExampleFailed, match=r"cli.md:1: the shell example exited with 2"):
        ex.run_in_order(ex.collect(page), example_dir)


def test_a_benchmark_command_with_environment_variables_or_any_python_is_a_benchmark_command(tmp_path):
    """A validation page's regeneration command is never run by the docs tests, environment variables before it or
    not (run as written it would rewrite the page); its script and flags are checked."""
    page = tmp_path / "page.md"
    page.write_text("```bash\nOMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 .venv/bin/python benchmarks/what_loads.py "
                    "--only resnet --write\n.venv/bin/python benchmarks/pointing_game.py --write\n"
                    "python benchmarks/hf_sweep.py --write\npython3 benchmarks/ray_throughput.py\n```\n")
    (found,) = ex.collect(page)
    assert found.mode == "benchmark"
    assert ex.benchmark_calls(found.code) == [("benchmarks/what_loads.py", ["--only", "--write"]),
                                              ("benchmarks/pointing_game.py", ["--write"]),
                                              ("benchmarks/hf_sweep.py", ["--write"]),
                                              ("benchmarks/ray_throughput.py", [])]
    page.write_text("```bash\nOMP_WAIT_POLICY=PASSIVE cnnviz inspect model.onnx\n```\n")
    assert [e.mode for e in ex.collect(page)] == ["run"]


@pytest.mark.parametrize("text, message", [
    ("```pycon\n>>> 1\n```\n", "unknown block language 'pycon'"),
    ("```\ncnnviz inspect model.onnx\n```\n", "bare fence holding a command"),
    ("<!-- example: sometimes -->\n```bash\ncnnviz --help\n```\n", "unknown example mode 'sometimes'"),
    ("```python\nx = 1\n", "never closed"),
    ("<!-- example: continues -->\n```bash\ncnnviz --help\n```\n", "must come after a 'slow' example"),
    ("```python\nx = 1\n```\n\n<!-- example: continues -->\n```bash\ncnnviz --help\n```\n",
     "must come after a 'slow' example"),
])
def test_unclassifiable_fences_are_refused(tmp_path, text, message):
    page = tmp_path / "page.md"
    page.write_text(text)
    with pytest.raises(ValueError, match=message):
        ex.collect(page)
