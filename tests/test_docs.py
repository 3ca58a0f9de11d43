"""The configuration page is generated from the settings classes, and stays so.

``scripts/config_docs.py`` renders ``docs/configuration.md`` from each settings field's attribute docstring
(and from the docstrings of the variables read outside the settings). These tests fail when a field has no
description, when a settings class is left off the page, or when the committed page is stale.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "config_docs.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("config_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config_docs = load_generator()


def test_every_setting_has_a_description():
    missing = config_docs.missing_descriptions()
    assert not missing, (
        "give each of these a docstring right after its declaration (it becomes its description on "
        f"docs/configuration.md): {', '.join(missing)}"
    )


def test_every_settings_class_is_on_the_page():
    """Any class in src/ built on the settings base (or on a documented settings class) is documented."""
    documented = {cls.__name__ for cls, _, _ in config_docs.SECTIONS}
    bases_of_settings = documented | {"EnvSettings", "BaseSettings"}
    undocumented = []
    for path in sorted((ROOT / "src" / "freestems").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and node.name not in documented | {"EnvSettings"}:
                bases = {getattr(base, "id", getattr(base, "attr", None)) for base in node.bases}
                if bases & bases_of_settings:
                    undocumented.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not undocumented, f"add them to SECTIONS in scripts/config_docs.py: {undocumented}"


def test_the_configuration_page_is_up_to_date():
    committed = config_docs.PAGE.read_text() if config_docs.PAGE.exists() else ""
    assert committed == config_docs.render(), (
        f"docs/configuration.md is stale: regenerate it with `{config_docs.COMMAND}` and commit it"
    )
