"""The seams the code promises: one owner per contract, the engine using only public names,
the reference path independent of the fast path, no citation of a file outside the repo."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENGINE = sorted((ROOT / "fastddpm").glob("*.py"))
KERNELS = sorted((ROOT / "kernels").glob("*.py"))


def imports(path: pathlib.Path):
    """(module, name) pairs of every import in a file, and every `K._x` attribute access."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = ("." * node.level) + (node.module or "")
            out += [(mod, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "K":
            out.append(("K", node.attr))
    return out


def test_the_engine_uses_only_public_kernel_names():
    for path in ENGINE:
        for mod, name in imports(path):
            private_module = re.search(r"kernels\._", mod) or (mod.endswith("kernels") and name and name.startswith("_"))
            private_attr = mod == "K" and name.startswith("_")
            assert not (private_module or private_attr), f"{path.name} imports a private kernel name: {mod} {name}"


def test_the_reference_path_imports_nothing_of_the_fast_path():
    fast = {".sampler", ".fused", ".trainer", ".bench", ".aot", ".staticcost"}
    for mod, name in imports(ROOT / "fastddpm" / "reference.py"):
        assert mod not in fast, f"reference.py imports {mod}"
        if mod == "." and name:
            assert "." + name not in fast, f"reference.py imports {name}"
        assert "kernels." not in mod or mod.endswith("kernels"), f"reference.py imports kernel internals: {mod}"


def test_kernels_never_import_the_engine():
    for path in KERNELS:
        for mod, _ in imports(path):
            assert not mod.startswith("fastddpm") and not mod.startswith(".."), f"kernels/{path.name} imports {mod}"


def test_contracts_are_defined_once():
    every = ENGINE + KERNELS + sorted((ROOT / "tests").glob("*.py"))
    for name in ("VARIANCES", "STREAM_NOISING", "STREAM_REVERSE", "STREAM_PRIOR", "STREAM_TIMESTEP", "FLOAT_DTYPES", "NCOEF"):
        owners = [p.name for p in every if re.search(rf"^{name}\s*=", p.read_text(), re.M)]
        assert len(owners) == 1, f"{name} defined in {owners}"


def test_no_citation_of_files_outside_the_repository():
    for path in ENGINE + KERNELS + sorted((ROOT / "tests").glob("*.py")) + [ROOT / "README.md"]:
        if path.name == "test_structure.py":
            continue  # this test names what it looks for
        text = path.read_text()
        assert not re.search(r"shared/|DESIGN\b", text), f"{path.name} cites a file outside the repository"
    for doc in re.findall(r"docs/[\w.]+\.md", "".join(p.read_text() for p in ENGINE + KERNELS)):
        assert (ROOT / doc).exists(), doc
