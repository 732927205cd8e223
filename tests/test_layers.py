"""The package's layers: mpq_plugins.quant (torch only) <- mpq_plugins.espnet (the ESPnet adapter) <-
mpq_plugins.eval and the entry points; no import cycle anywhere inside mpq_plugins."""
import ast
import os
import subprocess
import sys

from tests.conftest import ROOT

PKG = os.path.join(ROOT, "mpq_plugins")
# what each part of the package may import from mpq_plugins; the shared, torch-free modules at the top
# level (datadir: Kaldi tables, confio: quant confs, record: system.yaml) sit below everything
SHARED = ("mpq_plugins.datadir", "mpq_plugins.confio", "mpq_plugins.record")
ALLOWED = {
    "mpq_plugins.quant": ("mpq_plugins.quant",),
    "mpq_plugins.espnet": ("mpq_plugins.quant", "mpq_plugins.espnet") + SHARED,
    "mpq_plugins.eval": ("mpq_plugins.quant", "mpq_plugins.espnet", "mpq_plugins.eval") + SHARED,
    **{m: () for m in SHARED},
}


def modules():
    out = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                name = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".").removesuffix(".__init__")
                out[name] = path
    return out


def imports(path):
    """Every mpq_plugins module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in found if n.startswith("mpq_plugins")}


def graph():
    mods = modules()
    g = {}
    for name, path in mods.items():
        targets = set()
        for imp in imports(path):
            while imp not in mods and "." in imp:
                imp = imp.rsplit(".", 1)[0]
            if imp in mods and imp != name and not name.startswith(imp + "."):
                targets.add(imp)
        g[name] = targets
    return g


def test_no_import_cycle():
    g = graph()
    state = {}

    def visit(n, path):
        state[n] = "open"
        for m in g[n]:
            assert state.get(m) != "open", f"import cycle: {' -> '.join(path + [n, m])}"
            if m not in state:
                visit(m, path + [n])
        state[n] = "done"

    for n in g:
        if n not in state:
            visit(n, [])


def test_each_layer_imports_only_the_layers_below():
    g = graph()
    for name, targets in g.items():
        rule = next((v for k, v in ALLOWED.items() if name == k or name.startswith(k + ".")), None)
        if rule is None:
            assert name.startswith("mpq_plugins.bin") or name == "mpq_plugins", name   # entry points: anything
            continue
        for t in targets:
            assert any(t == a or t.startswith(a + ".") for a in rule), f"{name} imports {t}"


def test_quant_imports_without_espnet():
    code = ("import sys, mpq_plugins.quant, mpq_plugins.quant.serve, mpq_plugins.quant.packing, "
            "mpq_plugins.quant.sensitivity, mpq_plugins.quant.mixed, mpq_plugins.quant.allocation; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('espnet', 'espnet2')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
