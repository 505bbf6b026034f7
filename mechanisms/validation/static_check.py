"""Static check of mechanism source: a lint whose findings feed a repair round.

It is NOT the security boundary (the sandbox is): Python offers too many indirect routes for an
AST check to be complete. Its job is to reject the obvious escapes and protocol mistakes early,
with messages precise enough (line numbers, names) for a model to fix them.

It refuses nothing that is merely unusual: print() is harmless (the sandboxed host swaps stdout for
a capped sink, so the output is dropped), and float("inf") as a running minimum is ordinary Python;
only a non-finite value that a hook RETURNS is an error, which the dry run reports as not JSON.
Small models write both often, and refusing them cost whole Level 2 sessions.
"""

from __future__ import annotations

import ast
import importlib
import re
from types import ModuleType

from mechanisms.protocol import ALLOWED_IMPORTS, HOOK_NAMES

FORBIDDEN_CALLS = frozenset({
    "eval", "exec", "compile", "__import__", "open", "input", "breakpoint", "globals", "locals", "vars",
    "setattr", "delattr", "help", "exit", "quit", "memoryview",
})
# Dunder attributes ordinary mechanism code needs (super().__init__()); everything else is how
# escapes walk the object graph (__class__, __subclasses__, __globals__, __builtins__, ...).
ALLOWED_DUNDER_ATTRIBUTES = frozenset({"__init__"})
# Calls a module-level constant may make.
CONSTANT_CALLS = frozenset({"frozenset", "set", "tuple", "dict", "list", "float", "int", "str", "range", "sorted"})
# Positional parameters of each hook, counting self.
HOOK_ARITY = {"on_result": 3, "prompt_sections": 2, "restrict": 2, "propose": 2, "filter": 3, "accept": 3}

_DUNDER = re.compile(r"^__\w+__$")


def _is_dunder(name: str) -> bool:
    return bool(_DUNDER.match(name))


def _reached_module(module_name: str, attribute: str) -> str | None:
    """The name of a module reachable as ``module_name.attribute`` that is not itself allowed, if any.

    Allowed modules hold references to others (``random._os``, ``dataclasses.sys``); following
    them is how code reaches os or sys without importing them. Only allow-listed (pure standard
    library) modules are imported here.
    """
    if module_name.partition(".")[0] not in ALLOWED_IMPORTS:
        return None
    try:
        value = getattr(importlib.import_module(module_name), attribute, None)
    except ImportError:
        return None
    if isinstance(value, ModuleType) and value.__name__.partition(".")[0] not in ALLOWED_IMPORTS:
        return value.__name__
    return None


def static_check(code: str, class_name: str | None = None) -> list[str]:
    """Problems found in a mechanism's source (empty list = passes the lint)."""
    try:
        tree = ast.parse(code, filename="<mechanism>")
    except SyntaxError as exc:
        # The line itself, so that a reviewer and a repair prompt see what is wrong without counting lines.
        line = (exc.text or "").strip()[:120]
        return [f"line {exc.lineno}: syntax error: {exc.msg}" + (f" in `{line}`" if line else "")]
    problems: list[str] = []
    problems += _check_module_level(tree)
    problems += _check_nodes(tree)
    problems += _check_class(tree, class_name)
    return problems


def _check_import(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return [f"line {node.lineno}: relative import is not allowed"]
        modules = [node.module or ""]
        if any(alias.name == "*" for alias in node.names):
            return [f"line {node.lineno}: 'from {node.module} import *' is not allowed; import names explicitly"]
        for alias in node.names:
            reached = _reached_module(node.module or "", alias.name)
            if alias.name.startswith("_") or reached:
                return [f"line {node.lineno}: 'from {node.module} import {alias.name}' reaches "
                        f"{reached or 'a private name'}, which is not allowed"]
    else:
        modules = [alias.name for alias in node.names]
    return [
        f"line {node.lineno}: import of '{module}' is not allowed (allowed: {', '.join(ALLOWED_IMPORTS)})"
        for module in modules if module.partition(".")[0] not in ALLOWED_IMPORTS
    ]


def _is_constant_expression(node: ast.expr) -> bool:
    for child in ast.walk(node):
        if isinstance(child, (ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            return False
        if isinstance(child, ast.Call):
            func = child.func
            simple_builtin = isinstance(func, ast.Name) and func.id in CONSTANT_CALLS
            module_function = (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                               and func.value.id in ALLOWED_IMPORTS)
            if not (simple_builtin or module_function):
                return False
    return True


def _check_module_level(tree: ast.Module) -> list[str]:
    problems: list[str] = []
    for index, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef)):
            continue
        is_docstring = (index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                        and isinstance(node.value.value, str))
        if is_docstring:
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if all(isinstance(t, ast.Name) for t in targets) and _is_constant_expression(node.value):
                continue
            problems.append(f"line {node.lineno}: module-level assignment must bind a name to a constant expression")
            continue
        problems.append(
            f"line {node.lineno}: module-level {type(node).__name__} statement is not allowed "
            "(only imports, constants, functions and the class)"
        )
    return problems


def _module_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> module name, for `import x` / `import x as y` anywhere in the module."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.partition(".")[0]] = alias.name if alias.asname else \
                    alias.name.partition(".")[0]
    return aliases


def _check_attribute(node: ast.Attribute, aliases: dict[str, str]) -> list[str]:
    line = node.lineno
    if _is_dunder(node.attr):
        if node.attr in ALLOWED_DUNDER_ATTRIBUTES:
            return []
        return [f"line {line}: access to dunder attribute '{node.attr}' is not allowed"]
    owner = node.value.id if isinstance(node.value, ast.Name) else None
    if node.attr.startswith("_") and owner not in ("self", "cls"):
        return [f"line {line}: access to private attribute '{node.attr}' of another object is not allowed"]
    reached = _reached_module(aliases[owner], node.attr) if owner in aliases else None
    if reached:
        return [f"line {line}: '{owner}.{node.attr}' reaches module '{reached}', which is not allowed"]
    return []


def _never_ends(loop: ast.While) -> bool:
    """`while True:` whose body (outside nested loops and functions) has no break, return or raise."""
    if not (isinstance(loop.test, ast.Constant) and loop.test.value):
        return False
    pending: list[ast.AST] = list(loop.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Break, ast.Return, ast.Raise)):
            return False
        if isinstance(node, (ast.While, ast.For, ast.FunctionDef, ast.Lambda, ast.ClassDef)):
            # A break in a nested loop ends only that loop; a return in a nested def ends nothing here.
            if isinstance(node, (ast.While, ast.For)):
                pending += [n for n in node.body if isinstance(n, (ast.Return, ast.Raise))]
                pending += node.orelse
            continue
        pending += list(ast.iter_child_nodes(node))
    return True


def _check_nodes(tree: ast.Module) -> list[str]:
    problems: list[str] = []
    aliases = _module_aliases(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            problems += _check_import(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name in FORBIDDEN_CALLS:
                problems.append(f"line {line}: call to {name}() is not allowed")
            elif name in ("getattr", "hasattr") and len(node.args) >= 2:
                attribute = node.args[1]
                if not (isinstance(attribute, ast.Constant) and isinstance(attribute.value, str)):
                    problems.append(f"line {line}: {name}() with a computed attribute name is not allowed")
        elif isinstance(node, ast.Attribute):
            problems += _check_attribute(node, aliases)
        elif isinstance(node, ast.Name) and _is_dunder(node.id):
            problems.append(f"line {line}: use of dunder name '{node.id}' is not allowed")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _is_dunder(node.value):
            problems.append(f"line {line}: string '{node.value}' names a dunder attribute, which is not allowed")
        elif isinstance(node, ast.While) and _never_ends(node):
            problems.append(f"line {line}: 'while True' loop has no break, return or raise; it cannot end")
        elif isinstance(node, ast.Return) and isinstance(node.value, (ast.Set, ast.SetComp)):
            problems.append(f"line {line}: returns a set, which is not JSON; return a sorted list")
        elif isinstance(node, (ast.AsyncFunctionDef, ast.AsyncWith, ast.AsyncFor)):
            problems.append(f"line {line}: async code is not allowed")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            problems.append(f"line {line}: '{type(node).__name__.lower()}' is not allowed; keep state on self")
    return problems


def _check_class(tree: ast.Module, class_name: str | None) -> list[str]:
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    if len(classes) != 1:
        found = ", ".join(c.name for c in classes) or "none"
        return [f"the module must define exactly one top-level class (found: {found})"]
    cls = classes[0]
    if class_name is not None and cls.name != class_name:
        return [f"line {cls.lineno}: the class is named '{cls.name}' but the spec names '{class_name}'"]
    problems: list[str] = []
    methods = {node.name: node for node in cls.body if isinstance(node, ast.FunctionDef)}
    hooks = [name for name in HOOK_NAMES if name in methods]
    if not hooks:
        problems.append(f"line {cls.lineno}: class '{cls.name}' defines none of the hooks ({', '.join(HOOK_NAMES)})")
    for hook in hooks:
        args = methods[hook].args
        positional = len(args.posonlyargs) + len(args.args)
        if args.vararg is None and positional != HOOK_ARITY[hook]:
            problems.append(
                f"line {methods[hook].lineno}: {hook}() takes {positional} positional parameters; "
                f"the protocol passes {HOOK_ARITY[hook]} (self included)"
            )
    init = methods.get("__init__")
    if init is not None:
        required = len(init.args.posonlyargs) + len(init.args.args) - len(init.args.defaults)
        if required > 1 or any(d is None for d in init.args.kw_defaults):
            problems.append(f"line {init.lineno}: __init__ must be callable with no arguments")
    return problems
