"""The docs stay true: the README's configuration table is the one generated from gifting/config.py."""

from __future__ import annotations

from gifting.config import markdown_table
from tests.conftest import REPO


def test_readme_configuration_table_is_current() -> None:
    """Every setting appears in the README exactly as `gifting config --markdown` prints it."""
    readme = (REPO / "README.md").read_text()
    assert markdown_table() in readme, "regenerate the README table with `make docs`"


def test_procfile_runs_web_and_worker() -> None:
    """The Procfile names the two processes a deployment runs."""
    procfile = (REPO / "Procfile").read_text().splitlines()
    assert "web: gifting serve" in procfile and "worker: gifting worker" in procfile
