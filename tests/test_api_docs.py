"""The API reference builds from the docstrings, and every public name is in it, documented."""

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import api_docs  # noqa: E402

MODULES = api_docs.public_modules()


def _public_names(module):
    return [name for name in getattr(module, "__all__", []) if not inspect.ismodule(getattr(module, name))]


@pytest.mark.parametrize("name", MODULES)
def test_every_public_name_has_a_docstring(name):
    module = importlib.import_module(name)
    assert inspect.getdoc(module), f"{name} has no module docstring"
    for attr in _public_names(module):
        value = getattr(module, attr)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name}.{attr} has no docstring"


@pytest.mark.slow
def test_the_reference_builds_with_a_page_and_an_entry_per_public_name(tmp_path):
    index = api_docs.build(tmp_path)
    assert index.is_file()
    for name in MODULES:
        page = tmp_path / (name.replace(".", "/") + ".html")
        assert page.is_file(), f"no page for {name}"
        html = page.read_text()
        module = importlib.import_module(name)
        missing = [attr for attr in _public_names(module) if not re.search(rf'id="{re.escape(attr)}"', html)]
        assert not missing, f"{name}: {missing} are not in its page"
    # cross references resolve to pages: the callback's docstring links the protocol it reads examples through
    callback_page = (tmp_path / "lightning_premem/callbacks/premem.html").read_text()
    assert 'href="../protocols.html#ProbeExampleSource"' in callback_page
