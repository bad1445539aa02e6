"""The package's structure, checked: five layers, each importing only the layers below it
(core <- writers <- training, data <- cli) and the modules they share, core in torch alone, the writers without
Lightning, and Hydra only at the command line."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vae_cli"
# What each layer may import from the package; vae_cli.errors (one exception class) is open to all.
ALLOWED = {
    "core": {"core"},
    "writers": {"core", "writers"},
    "training": {"core", "writers", "training"},
    "data": {"data"},
    "cli": {"core", "writers", "training", "data", "cli"},
}
# Third-party packages each layer may import (the standard library is open to all).
THIRD_PARTY = {
    "core": {"torch"},
    "writers": {"torch", "matplotlib", "PIL"},
    "training": {"torch", "pytorch_lightning", "lightning_fabric"},
    "data": {"torch", "numpy", "torchvision", "PIL"},
    "cli": {"torch", "pytorch_lightning", "torchvision", "hydra", "omegaconf", "yaml", "matplotlib", "optuna", "tqdm"},
}


def _imports(path: Path) -> set[str]:
    """Absolute names of every module the file imports, at the top or inside functions."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
                # `from . import images` imports the module vae_cli.writers.images
                found |= {module} if node.module else {f"{module}.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


# The data layer's one module that imports Lightning: the datamodules as Lightning's trainer sees them.
LIGHTNING_DATA = PACKAGE / "data" / "lightning.py"
LAYER_FILES = [(layer, f) for layer in ALLOWED for f in sorted((PACKAGE / layer).rglob("*.py"))]


# Modules beside the layers, open to all of them: the exceptions, every setting's rule, the trust boundary (every
# file read as data) and the other libraries' private names. Each imports only the standard library and the others
# (inputs.py reads with torch and PyYAML, imported where a file of theirs is read; compat.py imports torch where a
# function needs it).
SHARED = {"errors": set(), "settings": {"errors"}, "inputs": {"errors", "torch", "yaml"}, "compat": {"torch"}}


def test_the_package_is_five_layers_and_the_modules_they_share():
    assert sorted(p.stem for p in PACKAGE.iterdir() if p.suffix == ".py") == sorted(["__init__", *SHARED])
    # (a link is no layer: a checkout used without installing links vae_cli/configs to configs/, the package
    # pyproject.toml maps there)
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.is_symlink() and p.name != "__pycache__"} == set(
        ALLOWED
    )
    for name, allowed in SHARED.items():
        imported = {n.removeprefix("vae_cli.") for n in _imports(PACKAGE / f"{name}.py")}
        assert {n for n in imported if n.split(".")[0] not in sys.stdlib_module_names} <= allowed, name


@pytest.mark.parametrize("layer, path", LAYER_FILES, ids=[f"{layer}/{p.name}" for layer, p in LAYER_FILES])
def test_each_layer_imports_only_the_layers_below_it(layer, path):
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "vae_cli":
            part = name.split(".")[1] if "." in name else ""
            assert part in SHARED or part in ALLOWED[layer], f"{path.name} imports {name} ({layer} may not)"
        else:
            allowed = THIRD_PARTY[layer] | ({"pytorch_lightning"} if path == LIGHTNING_DATA else set())
            assert top in sys.stdlib_module_names or top in allowed, f"{path.name} imports {name}"


def test_the_parser_sees_relative_and_local_imports():
    # The check above is only as good as _imports: it must see an upward import written either way.
    found = _imports(PACKAGE / "cli" / "build.py")
    assert "vae_cli.training.module" in found and "vae_cli.core.metrics" in found and "pytorch_lightning" in found


def test_every_datamodule_keeps_the_declared_contract():
    import vae_cli.data as data
    from vae_cli.data.base import BaseDataModule

    modules = [getattr(data, n) for n in data.__all__ if isinstance(getattr(data, n), type)]
    # setup, the three loaders, head, eval_batches and train_pixel_mean are abstract: a class without them
    # cannot be instantiated.
    assert {
        "setup",
        "train_dataloader",
        "val_dataloader",
        "test_dataloader",
        "head",
        "eval_batches",
        "train_pixel_mean",
    } <= BaseDataModule.__abstractmethods__
    concrete = [m for m in modules if issubclass(m, BaseDataModule) and not m.__abstractmethods__]
    assert {m.__name__ for m in concrete} == {"Digits", "MNIST", "FashionMNIST", "CIFAR10", "ImageFolder"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Each vae_cli module and the vae_cli modules it imports (a name imported from a package counts as the
    package unless it is one of its modules)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules:  # vae_cli.cli.checks.named -> vae_cli.cli.checks
                imported = imported.rpartition(".")[0]
            if imported and imported != name and imported.startswith("vae_cli."):
                targets.add(imported)
        graph[name] = targets
    return graph


def test_no_module_imports_itself_through_others():
    graph, done, path = _import_graph(), set(), []

    def visit(name):  # depth first: a module met again on the current path closes a cycle
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name) :] + [name]))
        if name in done:
            return
        path.append(name)
        for target in sorted(graph[name]):
            visit(target)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
