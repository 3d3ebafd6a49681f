"""The README's API table: every name in it imports, and every top-level public name is in it.
(Also the diagnostic command and the version, until their tests move to tests/test_info.py.)"""
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _api_table_rows() -> list[tuple[str, str]]:
    """(name, module) pairs from the README's "## API" table: | `name` | `module` | purpose |."""
    text = README.read_text()
    section = re.search(r"^## API\b.*?(?=^## )", text, re.S | re.M)
    assert section, "README.md needs an '## API' section"
    rows = re.findall(r"^\|\s*`([A-Za-z_][\w.]*)`\s*\|\s*`([\w.]+)`\s*\|", section.group(0), re.M)
    assert len(rows) >= 10, f"the API table looks truncated: {rows}"
    return rows


@pytest.mark.parametrize("name,module", _api_table_rows())
def test_readme_api_name_imports(name, module):
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    assert obj is not None


def test_readme_api_table_lists_every_top_level_name():
    import elasticast_kernels

    listed = {name for name, _ in _api_table_rows()}
    missing = sorted(set(elasticast_kernels.__all__) - {"__version__"} - listed)
    assert not missing, f"public names of elasticast_kernels missing from the README's API table: {missing}"


def test_info_command_runs_and_reports_backends():
    out = subprocess.run([sys.executable, "-m", "elasticast_kernels.info", "--json"],
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    import elasticast_kernels
    assert report["elasticast_kernels"] == elasticast_kernels.__version__
    assert report["native_extension"]["loaded"], report["native_extension"]
    assert report["backends"]["torch"] == "available"
    assert report["auto_backend"] in report["backends"]
    text = subprocess.run([sys.executable, "-m", "elasticast_kernels.info"], capture_output=True, text=True, check=True).stdout
    assert "attention backends" in text and "auto picks" in text


def test_version_lives_in_one_place_and_the_clis_show_it():
    import elasticast_kernels
    version = elasticast_kernels.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    citation = (README.parent / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(version)}$", citation, re.M), "CITATION.cff must cite the package version"
    assert f"## [{version}]" in (README.parent / "CHANGELOG.md").read_text()
    for argv in ([sys.executable, "-m", "elasticast_kernels.info", "--version"],
                 [sys.executable, "-m", "elasticast_kernels.bench", "--version"]):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"elasticast-kernels {version}"
