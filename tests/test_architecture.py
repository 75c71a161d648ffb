"""The layout's rules, checked over the package's own imports (docs/architecture.md).

- Imports point one way: core <- probes, data, module <- callbacks, analysis <- experiments <- cli.
  Units on one layer do not import each other; nothing but experiments/ and the CLI imports experiments/.
- No ``_private`` name is imported from another unit (a subpackage or a top-level module).
- The core imports nothing from Lightning; no module is over 600 lines.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_premem"
CORE = {"_checks", "functional", "metric", "answers", "tokenization", "history", "protocols"}
LAYERS = {
    **dict.fromkeys(CORE, 0),
    "probes": 1,
    "data": 1,
    "module": 1,
    "callbacks": 2,
    "analysis": 2,
    "experiments": 3,
    "cli": 4,
}
MAX_LINES = 600


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts


def _unit(parts):
    """The unit a module belongs to: its subpackage, or the top-level module itself (None: the package root)."""
    return None if parts == ("__init__",) else parts[0]


def _imports(path):
    """``(imported module parts, imported names, line)`` of every ``lightning_premem`` import, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "lightning_premem" or node.module.startswith("lightning_premem."):
                module = tuple(node.module.split(".")[1:])
                names = [alias.name for alias in node.names]
                # `from lightning_premem.pkg import module` imports the module pkg.module
                yield module, names, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "lightning_premem" or alias.name.startswith("lightning_premem."):
                    yield tuple(alias.name.split(".")[1:]), [], node.lineno


def _all_imports():
    for path, parts in _modules():
        for module, names, line in _imports(path):
            yield path, parts, module, names, line


def test_every_unit_has_a_layer():
    units = {_unit(parts) for _, parts in _modules()} - {None}
    assert units == set(LAYERS), f"give a new unit a layer here and in docs/architecture.md: {units ^ set(LAYERS)}"


def test_imports_point_one_way():
    wrong = []
    for path, parts, module, _, line in _all_imports():
        source, target = _unit(parts), module[0] if module else None
        where = f"{path.relative_to(PACKAGE.parent)}:{line} imports lightning_premem.{'.'.join(module)}"
        if source is None:
            continue  # the package root re-exports the public names
        if target is None:
            wrong.append(f"{where} (the package root: import from the module that defines the name)")
        elif target != source and LAYERS[target] >= LAYERS[source] and not (source in CORE and target in CORE):
            wrong.append(f"{where} (layer {LAYERS[target]} from layer {LAYERS[source]})")
    assert not wrong, "\n".join(wrong)


def test_only_experiments_and_the_cli_import_experiments():
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path, parts, module, _, line in _all_imports()
        if module[:1] == ("experiments",) and _unit(parts) not in ("experiments", "cli")
    ]
    assert not wrong


def test_no_private_name_crosses_a_unit():
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line} takes {name} from lightning_premem.{'.'.join(module)}"
        for path, parts, module, names, line in _all_imports()
        for name in names
        if name.startswith("_") and module and module[0] != _unit(parts)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_core_imports_nothing_from_lightning():
    for path, parts in _modules():
        if _unit(parts) in CORE:
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                assert not any(n == "lightning" or n.startswith("lightning.") for n in names), path


@pytest.mark.parametrize("path", [p for p, _ in _modules()], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_600_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_rules_catch_what_they_should(tmp_path, monkeypatch):
    # a probe importing a callback, and a private name taken across units, are both found
    fake = tmp_path / "lightning_premem"
    (fake / "probes").mkdir(parents=True)
    (fake / "probes" / "bad.py").write_text(
        "from lightning_premem.callbacks.premem import PreMemorizationCallback\n"
        "from lightning_premem.history import _vector\n"
    )
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="layer 2 from layer 1"):
        test_imports_point_one_way()
    with pytest.raises(AssertionError, match="takes _vector"):
        test_no_private_name_crosses_a_unit()
