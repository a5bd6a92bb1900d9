"""Mutation testing of the modules verdicts rest on: do the fast tests notice when the
code is wrong? A small AST mutator (no dependency): each mutant changes one operator or
constant of one module, the module's tests run against it, and a mutant the tests do
not fail on "survives" and is listed with its line.

    nice -n 19 .venv/bin/python scripts/mutation.py [module ...] [--json FILE]

Modules and the tests run against them are in TARGETS. Too slow for CI (a few hundred
mutants, about a second each); `tox -e mutation` runs it.

Mutations: a comparison operator swapped (== !=, < <=, > >=, in / not in, is / is
not), `and` / `or`, `not x` -> `x`, True / False, an integer n -> n + 1, `+` / `-`,
`return X` -> `return None`, a string used as a regular expression or a key left as it
is (messages would give mostly equivalent mutants).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> (tests, functions to mutate or None for the whole module)
TARGETS = {
    "harness/checks.py": (["tests/test_checks.py"], None),
    "harness/runner.py": (["tests/test_judge.py", "tests/test_known_bugs.py"],
                          {"judge", "_judge"}),
    "harness/compare.py": (["tests/test_compare_coverage.py", "tests/test_compare.py"],
                           None),
    "harness/scenario.py": (["tests/test_scenario_values.py", "tests/test_scenario_loader.py",
                             "tests/test_step_table.py",
                             "tests/test_known_bugs.py"],
                            None),
}
SWAP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt,
        ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In,
        ast.Is: ast.IsNot, ast.IsNot: ast.Is}


def _in_scope(tree, functions):
    """Line ranges to mutate: the whole module, or the named functions."""
    if functions is None:
        return [(1, 10 ** 9)]
    return [(n.lineno, n.end_lineno) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name in functions]


def _docstring_nodes(tree):
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            body = n.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value,
                                                                     ast.Constant):
                out.add(id(body[0].value))
    return out


def mutation_points(source, functions=None):
    """[(index, line, description)] of every mutation of ``source`` in scope."""
    tree = ast.parse(source)
    return [(i, line, what) for i, (line, what, _) in
            enumerate(_points(tree, _in_scope(tree, functions)))]


def _points(tree, scope):
    """(line, description, apply) per mutation; ``apply(node)`` mutates in place."""
    docs = _docstring_nodes(tree)
    out = []

    def inside(node):
        line = getattr(node, "lineno", None)
        return line is not None and any(lo <= line <= hi for lo, hi in scope)

    for node in ast.walk(tree):
        if not inside(node):
            continue
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in SWAP:
                    new = SWAP[type(op)]
                    out.append((node.lineno, f"{type(op).__name__} -> {new.__name__}",
                                _setter(node, "ops", k, new)))
        elif isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            out.append((node.lineno, f"{type(node.op).__name__} -> {new.__name__}",
                        _attr(node, "op", new)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            out.append((node.lineno, "not x -> x", _drop_not(node)))
        elif isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub):
            new = ast.Sub if isinstance(node.op, ast.Add) else ast.Add
            out.append((node.lineno, f"{type(node.op).__name__} -> {new.__name__}",
                        _attr(node, "op", new)))
        elif isinstance(node, ast.Constant) and id(node) not in docs:
            v = node.value
            if isinstance(v, bool):
                out.append((node.lineno, f"{v} -> {not v}", _const(node, not v)))
            elif isinstance(v, int):
                out.append((node.lineno, f"{v} -> {v + 1}", _const(node, v + 1)))
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            out.append((node.lineno, "return X -> return None", _return_none(node)))
    return out


def _setter(node, field, k, new):
    def apply():
        getattr(node, field)[k] = new()
    return apply


def _attr(node, field, new):
    def apply():
        setattr(node, field, new())
    return apply


def _const(node, value):
    def apply():
        node.value = value
    return apply


def _return_none(node):
    def apply():
        node.value = ast.Constant(None)
    return apply


def _drop_not(node):
    def apply():
        # `not x` -> `bool(x)`: same type, opposite truth
        node.op = ast.Not()
        node.__dict__["_mutated"] = True
    return apply


class _NotDropper(ast.NodeTransformer):
    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if node.__dict__.get("_mutated"):
            return ast.copy_location(ast.Call(ast.Name("bool", ast.Load()),
                                              [node.operand], []), node)
        return node


def mutant_source(source, index, functions=None):
    tree = ast.parse(source)
    points = _points(tree, _in_scope(tree, functions))
    points[index][2]()
    tree = _NotDropper().visit(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


def _copy_tree(dest):
    for name in ("harness", "tests", "scenarios", "firmware", "images", "pyproject.toml",
                 "docs", "README.md"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns(
                "__pycache__", "build", "*.mig"))
        elif src.exists():
            shutil.copy2(src, dest / name)


def run_tests(tree, tests, timeout):
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-m", "not vm",
                            "-p", "no:cacheprovider", "-p", "no:xdist", *tests],
                           cwd=tree, env=env, capture_output=True, text=True,
                           timeout=timeout)
        return r.returncode
    except subprocess.TimeoutExpired:
        return "timeout"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", default=list(TARGETS))
    ap.add_argument("--json", help="write every mutant's result here")
    ap.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args(argv)
    results, summary = [], {}
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        for module in a.modules:
            tests, functions = TARGETS[module]
            path = tree / module
            original = path.read_text()
            if run_tests(tree, tests, a.timeout) != 0:
                raise SystemExit(f"{module}: its tests fail without any mutation")
            points = mutation_points(original, functions)
            killed, survived = 0, []
            t0 = time.monotonic()
            for index, line, what in points:
                path.write_text(mutant_source(original, index, functions))
                rc = run_tests(tree, tests, a.timeout)
                dead = rc != 0
                killed += dead
                if not dead:
                    survived.append((line, what))
                results.append({"module": module, "line": line, "mutation": what,
                                "killed": dead, "rc": rc})
            path.write_text(original)
            n = len(points)
            summary[module] = {"mutants": n, "killed": killed,
                               "score": round(100.0 * killed / n, 1) if n else None,
                               "seconds": round(time.monotonic() - t0, 1),
                               "survivors": survived}
            print(f"{module}: {killed}/{n} killed ({summary[module]['score']} %)",
                  flush=True)
            for line, what in survived:
                print(f"  survived: line {line}: {what}", flush=True)
    total = sum(s["mutants"] for s in summary.values())
    dead = sum(s["killed"] for s in summary.values())
    print(f"total: {dead}/{total} killed ({100.0 * dead / total:.1f} %)")
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summary, "mutants": results},
                                           indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
