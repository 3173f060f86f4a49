"""The seams the code promises: the package's layers, imports pointing down only and no
circle, one owner per contract, the engine using only public names, the reference path
independent of the fast path, the public names and CLIs where users find them, no citation
of a file outside the repo."""

import ast
import importlib
import pathlib
import re
import subprocess
import sys

import pytest
from procs import default_signals

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENGINE = sorted((ROOT / "fastddpm").rglob("*.py"))
KERNELS = sorted((ROOT / "kernels").glob("*.py"))

# fastddpm's layers, lowest first: a module imports only from a lower layer or its own package.
LAYERS = [("kernels",), ("io",), ("core",), ("models", "metrics"), ("sampling",), ("training",), ("cli",),
          ("train", "generate", "eval", "pretrained", "tune"), ("bench",), ("__init__", "__main__")]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
COMMANDS = ("bench", "eval", "generate", "pretrained", "train", "tune")


def module_name(path: pathlib.Path) -> str:
    """fastddpm.x.y for a file of the engine; kernels/ is installed as fastddpm.kernels."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = ("fastddpm",) + parts if parts[0] == "kernels" else parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: pathlib.Path) -> bool:
    return path.name == "__init__.py"


MODULES = {module_name(p): p for p in ENGINE + KERNELS}


def targets(path: pathlib.Path) -> set:
    """The fastddpm modules a file imports (at any depth of the file: lazy imports count)."""
    me = module_name(path)
    pkg = me if is_package(path) else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("fastddpm"):
                continue
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fastddpm")}
    return out - {me}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    for m in MODULES:
        assert layer(m) in RANK, f"{m}: add its folder to LAYERS"


def graph() -> dict:
    """module -> the fastddpm modules it imports; a package's __init__ re-exporting its own
    modules is not counted as an edge back up."""
    g = {m: {t for t in targets(p) if t in MODULES} for m, p in MODULES.items()}
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in g.items()}


def upward_imports(g: dict) -> list:
    return [f"{m} imports {t}: from layer {layer(m)} up to {layer(t)}" for m, ts in g.items() for t in ts
            if layer(t) != layer(m) and RANK[layer(t)] >= RANK[layer(m)]]


def circle(g: dict):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(g.get(m, ())):
            if state.get(t) == "open":
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t, stack + [t])):
                return found
        state[m] = "done"
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_imports_point_down_only():
    assert upward_imports(graph()) == []


def test_no_import_circle():
    assert circle(graph()) is None


def test_the_layer_checks_catch_what_they_look_for():
    made_up = {"fastddpm.io.a": {"fastddpm.sampling.s"}, "fastddpm.sampling.s": {"fastddpm.core.c"},
               "fastddpm.core.c": {"fastddpm.io.a"}}
    assert upward_imports(made_up) == ["fastddpm.io.a imports fastddpm.sampling.s: from layer io up to sampling"]
    assert circle(made_up) == ["fastddpm.core.c", "fastddpm.io.a", "fastddpm.sampling.s", "fastddpm.core.c"]
    assert circle({"fastddpm.io.a": {"fastddpm.io.b"}, "fastddpm.io.b": set()}) is None
    assert upward_imports({"fastddpm.generate": {"fastddpm.eval"}}) != []  # CLIs do not import each other


@pytest.mark.parametrize("name", ["Sampler", "Trainer", "TrainConfig", "UNet", "UNetConfig", "Schedule", "Plan", "Method",
                                  "save_grid", "to_uint8", "kernels", "metrics", "reference", "fused"])
def test_public_names(name):
    import fastddpm

    assert getattr(fastddpm, name) is not None and name in fastddpm.__all__


def test_modules_the_readme_names_are_reachable_from_import_fastddpm():
    code = ("import fastddpm; fastddpm.pretrained.load_model; fastddpm.generate.generate; fastddpm.eval.main; "
            "fastddpm.train.main; fastddpm.bench.main; fastddpm.reference.sample; fastddpm.fused.sampler_step; "
            "fastddpm.kernels.q_sample; fastddpm.metrics.evaluate")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, preexec_fn=default_signals)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("module", COMMANDS)
def test_every_cli_imports_and_answers_help(module):
    assert callable(importlib.import_module(f"fastddpm.{module}").main)
    run = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", f"fastddpm.{module}", "--help"],
                         capture_output=True, text=True, timeout=120, preexec_fn=default_signals)
    assert run.returncode == 0 and "usage:" in run.stdout, run.stderr


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
    fast = {".fused", "..sampling", "..training", "..bench"}
    for mod, name in imports(ROOT / "fastddpm" / "core" / "reference.py"):
        assert mod not in fast, f"reference.py imports {mod}"
        assert not any(mod.startswith(f) for f in fast), f"reference.py imports {mod}"
        if mod in (".", "..") and name:
            assert mod + name not in fast and name != "fused", f"reference.py imports {name}"
        assert "kernels." not in mod or mod.endswith("kernels"), f"reference.py imports kernel internals: {mod}"


def test_kernels_never_import_the_engine():
    for path in KERNELS:
        for mod, _ in imports(path):
            assert not mod.startswith("fastddpm") and not mod.startswith(".."), f"kernels/{path.name} imports {mod}"
    for m, path in MODULES.items():
        if layer(m) == "kernels":
            assert all(layer(t) == "kernels" for t in targets(path)), m


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


def test_every_torchrun_port_in_the_tests_is_its_own():
    """Two tests that start torchrun on one --master_port at once (pytest -n, pytest-xdist) fail
    to bind: test_sources and test_stop both used 29541. Each port (29500-29999) is used once."""
    ports = [(p.name, port) for p in sorted((ROOT / "tests").glob("*.py")) if p.name != "test_structure.py"
             for port in re.findall(r"\b(29[5-9]\d\d)\b", p.read_text())]
    assert len(ports) >= 7, ports  # the DDP tests' ports are written as literals, which this reads
    seen = {}
    for name, port in ports:
        assert port not in seen, f"--master_port {port} in both {seen[port]} and {name}"
        seen[port] = name
