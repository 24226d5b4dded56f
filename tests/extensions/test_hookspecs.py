"""Every hook is documented and tested (the idea of datasette's test_plugin_hooks_have_tests)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdweb.config import PROJECT_ROOT
from sdweb.extensions.manager import PluginHost

HOOK_NAMES = PluginHost().hook_names
TESTS_DIR = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve()


def test_the_hook_list_is_not_empty() -> None:
    # Guards the parametrized tests below from passing vacuously.
    assert {"register_samplers", "before_generate", "on_step", "register_ui_tabs"} <= set(HOOK_NAMES)


@pytest.mark.parametrize("hook_name", HOOK_NAMES)
def test_every_hook_has_a_test(hook_name: str) -> None:
    pattern = re.compile(rf"\b{hook_name}\b")
    users = [path for path in TESTS_DIR.rglob("test_*.py")
             if path.resolve() != THIS_FILE and pattern.search(path.read_text(encoding="utf-8"))]
    assert users, f"no test under tests/ mentions the hook {hook_name!r}: add one"


@pytest.mark.parametrize("hook_name", HOOK_NAMES)
def test_every_hook_has_a_docs_section(hook_name: str) -> None:
    docs = (PROJECT_ROOT / "docs" / "extensions.md").read_text(encoding="utf-8")
    assert re.search(rf"^## {hook_name}$", docs, re.MULTILINE), (
        f"docs/extensions.md needs a '## {hook_name}' section")


@pytest.mark.parametrize("hook_name", HOOK_NAMES)
def test_every_hook_has_a_docstring(hook_name: str) -> None:
    from sdweb.extensions import hookspecs

    assert len((getattr(hookspecs, hook_name).__doc__ or "").strip()) > 20
