"""The layout shows the architecture: ``pytorch_quantizer``'s sub-packages import only those below
them, the library imports neither argparse nor the CLI, no project module imports itself back
through others (imports inside functions included), and the code stays in files of modest size."""
import ast
from pathlib import Path

from conftest import REPO_ROOT

LAYERS = {"errors": 0, "version": 0, "maths": 1, "quantizers": 2, "model": 3, "methods": 4, "formats": 5, "export": 6,
          "api": 7}
PACKAGES = ("pytorch_quantizer", "inference", "kernels", "analysis")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (``from a import b`` gives a.b when
    a.b is a module, else a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for package in PACKAGES for path in (REPO_ROOT / package).rglob("*.py")}
    return {name: {imported for imported in imports_of(path) if imported in files and imported != name}
            for name, path in files.items()}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "pytorch_quantizer" or len(parts) < 2:
        return None
    return LAYERS[parts[1]]


def test_library_sub_packages_import_only_those_below_them():
    graph = project_graph()
    upward = [(module, imported) for module, imports in graph.items() if layer_of(module) is not None
              for imported in imports if layer_of(imported) is not None and layer_of(imported) > layer_of(module)]
    sideways = [(module, imported) for module, imports in graph.items() if layer_of(module) is not None
                for imported in imports if imported.split(".")[:1] in (["inference"], ["analysis"])]
    assert not upward and not sideways, upward + sideways


def test_the_library_imports_neither_argparse_nor_the_cli():
    for path in (REPO_ROOT / "pytorch_quantizer").rglob("*.py"):
        imported = imports_of(path)
        assert "argparse" not in imported and not any(name.split(".")[0] == "inference" for name in imported), path


def test_no_import_cycles():
    graph = project_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, cycles


def test_code_files_stay_small():
    large = [(str(path.relative_to(REPO_ROOT)), lines) for package in ("pytorch_quantizer", "inference", "kernels")
             for path in (REPO_ROOT / package).rglob("*.py")
             if (lines := len(path.read_text().splitlines())) > MAX_LINES]
    assert not large, large
