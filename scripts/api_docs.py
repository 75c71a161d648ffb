"""Build the API reference from the docstrings: ``python scripts/api_docs.py [OUTPUT]`` (default docs/_build/api).

One HTML page per public module (pdoc, Google-style docstrings); the tests build it too, so a docstring that
does not render fails them.
"""

from __future__ import annotations

import pkgutil
import re
import sys
import warnings
from pathlib import Path

import pdoc
import pdoc.docstrings
import pdoc.render

import lightning_premem

ROOT = Path(__file__).resolve().parents[1]
_ROLE_TILDE = re.compile(r"(:(?:mod|func|data|const|class|meth|attr|exc|obj):`)~")
_pdoc_rst = pdoc.docstrings.rst


def _rst(contents: str, source_file: Path | None) -> str:
    # Sphinx's ":class:`~a.b.C`" (show the last part only): pdoc keeps the "~", which stops it linking the name
    return _pdoc_rst(_ROLE_TILDE.sub(r"\1", contents), source_file)


def public_modules() -> list[str]:
    """Return the package and every public module in it (a subpackage's ``__all__`` hides its modules from pdoc)."""
    found = pkgutil.walk_packages(lightning_premem.__path__, "lightning_premem.")
    return ["lightning_premem", *(m.name for m in found if not any(p.startswith("_") for p in m.name.split(".")))]


def build(output: Path) -> Path:
    """Write the reference into ``output``; return its index page."""
    pdoc.docstrings.rst = _rst
    pdoc.render.configure(docformat="google", show_source=False, footer_text="lightning-premem")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a docstring pdoc cannot read is an error, not a line in a log
        # a package's modules are named here and found again by pdoc's walk of the package: the same page
        warnings.filterwarnings("ignore", message="The module specification .* adds a module named")
        pdoc.pdoc(*public_modules(), output_directory=output)
    return output / "index.html"


if __name__ == "__main__":
    index = build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "_build" / "api")
    print(f"API reference: {index}")
