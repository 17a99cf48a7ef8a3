"""What every benchmark that writes a documentation page puts in it: when, at which commit and on which machine the
figures were measured, and the command that measures them again.

A script writes either a whole page (:func:`write_page`) or one section of a page that other scripts or people also
write (:func:`write_section`): the section sits between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` and is
replaced in place, so the rest of the page is kept. Imported by the scripts beside it (``import pages``: a script's
own folder is first on ``sys.path``).
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def commit() -> str:
    """The checked-out commit, short, with ``+ uncommitted changes`` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit (no git)"
    return head + (" + uncommitted changes" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return None


def machine() -> str:
    """The machine in words: CPU model, the cores this process may use, memory, and the load average now (the
    development machine is shared, so a figure measured at load 4 on 2 cores is not an idle machine's)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = _memory_gb()
    parts = [f"{_cpu_model()} ({platform.machine()}), {cores} CPU cores"]
    if memory:
        parts.append(f"{memory:.0f} GB memory")
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f}")
    return ", ".join(parts)


def now() -> str:
    """The date and time in UTC, to the minute."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def header(script: str, command: str, note: str = "") -> str:
    """The opening lines of a written page or section: who wrote it, the command that rewrites it, and when, at which
    commit and on which machine it ran.

    Args:
        script: the script's path from the repository root (``benchmarks/NAME.py``).
        command: the command line that reproduces the figures.
        note: a sentence about the run added after the date line (its sample, its load), or empty.

    Returns:
        Markdown: a sentence naming the script, a ``bash`` block with the command, and the measurement line.
    """
    lines = [f"Written by `{script}` (do not edit by hand: rerun it):", "", "```bash", command, "```", "",
             f"Measured {now()} at commit {commit()}, on {machine()}." + (f" {note}" if note else "")]
    return "\n".join(lines)


def write_page(path: Path, text: str) -> Path:
    """Write a whole page (a script owns it): ``text`` with one trailing newline; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
    return path


def write_section(path: Path, name: str, text: str) -> Path:
    """Replace the section ``name`` of the page at ``path`` with ``text``, keeping the rest of the page.

    The section is everything between the lines ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; a page without
    them gets the section appended at its end.

    Args:
        path: the Markdown page.
        name: the section's marker name (the script's name, by convention).
        text: the section's new Markdown, without the markers.

    Returns:
        ``path``.

    Raises:
        ValueError: the page has one marker without the other, or the end before the begin (a hand edit broke it:
            writing would lose text).
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else ""
    if begin in old or end in old:
        start, stop = old.find(begin), old.find(end)
        if start < 0 or stop < start:
            raise ValueError(f"{path}: the markers of section {name!r} are broken; put back {begin} ... {end}")
        new = old[:start] + block + old[stop + len(end):]
    else:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
    return path
