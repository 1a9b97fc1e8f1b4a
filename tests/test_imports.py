"""The engine's import graph: no circle (module- or function-level imports), and no gradio in it.

Read from the source (ast), so it costs no imports and also sees the lazy imports inside
functions, which is where the gemma_bench <-> task_eval circle used to hide.
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "reap_core"


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, path: Path, known: dict) -> tuple[set[str], set[str]]:
    """(reap_core modules that `name` imports, top-level names of everything it imports)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    inside, tops = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        tops |= {t.split(".")[0] for t in targets}
        inside |= {t for t in targets if t in known and t != name and not name.startswith(t + ".")}
    return inside, tops


def test_no_import_circle_and_no_gradio_in_the_engine():
    mods = _modules()
    graph, with_gradio = {}, []
    for name, path in mods.items():
        graph[name], tops = _imports(name, path, mods)
        if "gradio" in tops:
            with_gradio.append(name)
    assert not with_gradio, f"reap_core must not import gradio: {with_gradio}"

    state: dict[str, int] = {}          # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert {"reap_core.task_eval", "reap_core.gemma_bench"} <= set(graph)
    assert "reap_core.gemma_bench" in graph["reap_core.task_eval"]   # the edge is seen (the check can fail)
