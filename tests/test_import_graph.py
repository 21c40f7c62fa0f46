"""Imports point down and never round (house style; issue 19): read from the source with `ast`, nothing imported.

An edge a -> b is any `import goat.b` / `from goat.b import x` in module a, at the top or inside a function
(a lazy import still ties a to b). Names imported through `importlib.import_module` with a string (the task
LOADERS, goat.adapters' lazy exports) are not edges: they are looked up by name on purpose.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "goat"

# The layers of goat, lowest first: a module imports only from its own layer or from layers below it. The data
# flows config -> task -> model + adapter -> trainer -> evaluator -> results -> report, so tasks never import the
# trainer and adapters know nothing of tasks. A module belongs to the layer of its longest listed prefix; a new
# module must be given a place here.
LAYERS = (
    # leaves: import nothing of goat (domains of settings, metrics and answer checks, schedules, compile, logging,
    # a run's costs)
    (
        "goat.domains",
        "goat.metrics",
        "goat.stats",
        "goat.evaluators",
        "goat.schedule",
        "goat.compile",
        "goat.tracking",
        "goat.evaluate",
        "goat.run_costs",
    ),
    ("goat.adapters",),  # methods: config, layers, surgery, save/load
    ("goat.config",),  # the run's schema and ConfigError
    ("goat.compose",),  # the configs and overrides composed into a run's config (Hydra's compose API)
    ("goat.distributed", "goat.checkpoint"),  # engines (DDP, ZeRO, FSDP) and the training state on disk
    ("goat.tasks",),  # data, scoring, and each task type's pipeline
    ("goat.models",),  # model building, CLIP heads
    ("goat.checks",),  # everything checked before data or weights load
    ("goat.trainer",),  # the loop
    ("goat.train",),  # one run: config -> task -> model + adapter -> trainer -> results.json
    ("goat.evaluate_run",),  # goat-eval
    ("goat.tables", "goat.results", "goat.significance", "goat.figures", "goat.report"),  # goat-report
    ("goat.multirun",),  # Hydra's sweeper and launchers over train(): goat-train -m, goat-grid --hydra
    ("goat.cli",),  # entry points
    ("goat.grid",),  # goat-grid: runs the CLI's config composition and train() over a paper table
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name `module` imports, wherever the import statement stands (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from goat import train` -> goat.train
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the goat modules it imports (the longest existing module that prefixes each imported name)."""
    known = modules()
    graph = {}
    for module, path in known.items():
        targets = set()
        for name in imported_names(path, module):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("goat.") and name != module:  # the root package holds only __version__
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search; grey = on the current path)."""
    colour, path = {}, []

    def visit(node):
        colour[node] = "grey"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if colour.get(target) == "grey":
                return path[path.index(target) :] + [target]
            if target not in colour and (cycle := visit(target)):
                return cycle
        path.pop()
        colour[node] = "black"
        return None

    for node in sorted(graph):
        if node not in colour and (cycle := visit(node)):
            return cycle
    return None


def layer(module: str) -> int | None:
    matches = [
        (len(prefix), index)
        for index, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1] if matches else None


def test_the_walker_sees_top_level_and_lazy_imports():
    graph = import_graph()
    assert "goat.config" in graph["goat.checks"]  # top level
    assert "goat.train" in graph["goat.cli"]  # inside _train()
    assert "goat.train" in graph["goat.multirun"]  # inside run_job()
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_goat_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m != "goat" and layer(m) is None]
    assert not unplaced, f"give these modules a layer in LAYERS: {unplaced}"


def test_imports_point_down_the_layers():
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if module != "goat" and layer(target) > layer(module)
    ]
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_task_modules_never_import_the_trainer_or_the_run():
    graph = import_graph()
    reached = {m: targets for m, targets in graph.items() if m == "goat.tasks" or m.startswith("goat.tasks.")}
    wrong = {m: bad for m, targets in reached.items() if (bad := targets & {"goat.train", "goat.trainer"})}
    assert not wrong, wrong


# The model libraries, and matplotlib: goat-train's entry point must not import them (docs/reliability.md, "Imports").
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "deepspeed", "matplotlib")


def test_goat_train_and_goat_grid_load_no_model_library_before_a_run():
    """goat-train answers --help, --cfg and a wrong setting in about 1 s, and goat-grid --dry-run in under 1 s,
    because importing goat.cli and goat.grid stops short of torch (7-9 s to import here). Run in a fresh
    interpreter: this test process has torch loaded already."""
    code = "import sys, goat.cli, goat.grid; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "goat" in loaded.stdout.split()
    assert sorted(set(HEAVY) & set(loaded.stdout.split())) == []


def lazy_imports() -> list[tuple[str, int, str]]:
    """(module, line, source line) of every import statement inside a function of goat/."""
    found = []
    for module, path in modules().items():
        source = path.read_text()
        lines = source.splitlines()
        for function in ast.walk(ast.parse(source, filename=str(path))):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        text = " ".join(lines[node.lineno - 1 : node.end_lineno])
                        found.append((module, node.lineno, text))
    return sorted(set(found))


def test_every_import_inside_a_function_says_why():
    """Imports stand at the top of a module; the few that wait for their function say why on their line
    (`# lazy: <reason>`: startup time of an entry point, an optional dependency), so the set stays small."""
    unexplained = [f"{module}:{line}: {text.strip()}" for module, line, text in lazy_imports() if "# lazy:" not in text]
    assert not unexplained, "an import inside a function without a `# lazy: reason` comment:\n" + "\n".join(unexplained)
