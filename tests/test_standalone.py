"""The repository stands alone: a clone has everything its tests need.

No tracked file may point at the ``shared/`` folder that once sat beside the checkout (the reference
fixtures now live in ``tests/fixtures/``), and a test module that needs no browser must run where
playwright is not installed (``conftest.py`` imports it only inside the browser fixtures).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from reference import FIXTURES, MDX23C_FIXTURES, POLARFORMER_FIXTURES, ROFORMER_FIXTURES, SCNET_FIXTURES

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().relative_to(ROOT).as_posix()
FOLDER = "shared"  # the folder beside the checkout: named once, so this module holds no path to it
OUTSIDE = re.compile(
    rf"\.\./{FOLDER}"  # a relative path out of the checkout
    rf"|{FOLDER}/fixtures"  # the old fixtures folder, however it is reached
    rf"|(?<![\w./-]){FOLDER}/"  # the folder on its own, not one inside the repository
    rf"|/\s*[\"']{FOLDER}[\"']"  # Path(...) / the folder's name
)
DOCUMENTATION = ("README.md", "SECURITY.md", "docs/")
MAX_FIXTURE_BYTES = 30_000_000  # what a clone carries for them


def tracked_files() -> list[str]:
    """The repository's tracked files (this module excepted: it names what it looks for)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [name for name in listed.stdout.decode().split("\0") if name and name != HERE]


def references_outside(names: list[str]) -> list[str]:
    """``file:line: text`` of every text line among ``names`` that points outside the repository."""
    found = []
    for name in names:
        data = (ROOT / name).read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (the .pt fixtures)
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    return found


def test_the_reference_fixtures_are_in_the_repository():
    folders = (SCNET_FIXTURES, ROFORMER_FIXTURES, MDX23C_FIXTURES, POLARFORMER_FIXTURES)
    for folder in folders:
        assert folder.parent == ROOT / "tests" / "fixtures"
        assert (folder / "README.md").is_file(), folder  # how they were made, what the tests rely on
    size = sum(path.stat().st_size for path in FIXTURES.rglob("*") if path.is_file())
    assert size <= MAX_FIXTURE_BYTES, f"tests/fixtures/ holds {size / 1e6:.1f} MB"


def test_code_refers_to_nothing_outside_the_repository():
    code = [name for name in tracked_files() if not name.startswith(DOCUMENTATION)]
    found = references_outside(code)
    assert not found, "\n".join(found)


def test_documentation_refers_to_nothing_outside_the_repository():
    documentation = [name for name in tracked_files() if name.startswith(DOCUMENTATION)]
    found = references_outside(documentation)
    assert not found, "\n".join(found)


def test_a_module_without_browser_runs_where_playwright_cannot_be_imported():
    """conftest loads without playwright (blocked here) and without torch (nothing asked for a model)."""
    target = f"{__file__}::test_the_reference_fixtures_are_in_the_repository"
    script = "\n".join(
        [
            "import sys",
            "sys.modules['playwright'] = None  # any import of playwright now fails",
            "import pytest",
            f"code = pytest.main(['-q', '-p', 'no:cacheprovider', {target!r}])",
            "print('torch imported:', 'torch' in sys.modules)",
            "sys.exit(code)",
        ]
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout and "torch imported: False" in result.stdout, result.stdout
