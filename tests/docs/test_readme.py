"""The README stays what a newcomer reads in two minutes: short, and every figure tied to where it was measured."""
from __future__ import annotations

import re

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.M | re.S)
    assert match, f"the README has no '## {title}' section"
    return match.group(1)


def test_the_readme_is_under_200_lines():
    assert len(README.splitlines()) < 200


def test_every_result_links_its_validation_page_and_its_script():
    """Each bullet of 'Results' that states a figure names the docs page and the benchmark script behind it."""
    bullets = re.split(r"^- ", _section("Results"), flags=re.M)[1:]
    assert len(bullets) >= 4
    for bullet in bullets:
        if re.search(r"\d", bullet):
            assert re.search(r"\]\(docs/[\w/.-]+\.md(#[\w-]+)?\)", bullet), bullet
            assert re.search(r"`benchmarks/\w+\.py`", bullet), bullet
            for page in re.findall(r"\]\((docs/[\w/.-]+\.md)", bullet):
                assert (REPO / page).is_file(), page
            for script in re.findall(r"`(benchmarks/\w+\.py)`", bullet):
                assert (REPO / script).is_file(), script


def test_the_readme_says_how_to_open_the_docs():
    docs = _section("Documentation")
    assert "mkdocs serve" in docs and "mkdocs build --strict" in docs


def test_the_readme_links_resolve():
    for target in re.findall(r"\]\(((?:docs|models|benchmarks)/[^)#\s]+)", README):
        assert (REPO / target).exists(), target
