"""The package's shape: no import cycle, no private helper borrowed across modules, and a data side
that installs and imports without the decoder's dependencies."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from framepipe import MissingDependencyError
from framepipe._optional import require

PACKAGE = Path(__file__).parents[1] / "src" / "framepipe"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every ``from X import names`` and ``import X`` in ``path``, at any depth."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names in _imports(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules] or [module]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycle_among_framepipe_modules():
    graph = _graph()
    # A package's __init__ re-exports its modules; an edge into it stands for those modules.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + ".") and graph.get(nxt) is not None:
                continue  # a module importing its own package's __init__ (for __version__): not a cycle
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for module, names in _imports(path):
            if module.startswith("framepipe"):
                offenders += [
                    f"{_module_name(path)}: {module}.{n}" for n in names if n.startswith("_") and n[:2] != "__"
                ]
    assert offenders == []


def test_the_data_side_imports_nothing_of_the_decoder():
    code = (
        "import sys, framepipe.data, framepipe.data._feedbench, framepipe.data._cli\n"
        "heavy = [m for m in ('diffusers', 'av', 'matplotlib', 'PIL', 'safetensors') if m in sys.modules]\n"
        "ours = sorted(m for m in sys.modules if m.startswith('framepipe.') and not m.startswith('framepipe.data')"
        " and m not in ('framepipe._errors', 'framepipe._paths', 'framepipe._argtypes', 'framepipe._lazy'))\n"
        "print(heavy, ours)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "[]"]  # framepipe/__init__ imports its public names at first use
    allowed = ("framepipe.data", "framepipe._errors", "framepipe._paths", "framepipe._argtypes", "framepipe._lazy")
    for path in (PACKAGE / "data").glob("*.py"):
        for module, _ in _imports(path):
            assert not module.startswith("framepipe.") or module.startswith(allowed), (path, module)


def test_the_command_line_and_the_packing_workers_start_without_torch():
    """``framepipe --help`` took 5 s importing torch, and each S3 packing worker 3.5 s of CPU."""
    code = (
        "import sys\n"
        "from framepipe.cli import build_parser\n"
        "build_parser().format_help()\n"
        "import framepipe, framepipe.data, framepipe.data._pack\n"
        "print(sorted(m for m in ('torch', 'numpy', 'diffusers', 'av', 'boto3', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_are_found_at_first_use():
    import framepipe
    import framepipe.data

    for package in (framepipe, framepipe.data):
        assert set(package.__all__) <= set(dir(package))
        for name in package.__all__:
            assert getattr(package, name) is not None, name
        with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
            package.nothing_here  # noqa: B018
    assert framepipe.decode.__module__ == "framepipe._api"


def test_a_missing_optional_dependency_names_the_install_command():
    with pytest.raises(MissingDependencyError, match=r"pip install 'framepipe\[video\]'"):
        require("framepipe_no_such_module", "video")
    assert require("json", "video").dumps([]) == "[]"
