"""The import-boundary rules of DESIGN.md section 2, enforced statically (`ast`) and dynamically (blocked imports).

- Only `_trl.py` imports `trl`.
- The pure modules (`divergence.py`, `chunked.py` with its `_chunk_math.py`, `_checks.py`, everything in `verify/`,
  every `loss.py` and `selection.py` and the parts they are split into, `PURE_PARTS`) import only torch, the standard
  library and each other.
- vllm, flash_attn, bitsandbytes and math_verify are imported inside function bodies only, so the package imports
  without them.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "trl_reasoning_distill"
PACKAGE_DIR = ROOT / PACKAGE
TRL_GATEWAY = PACKAGE_DIR / "_trl.py"
OPTIONAL = ("vllm", "flash_attn", "bitsandbytes", "math_verify")
PURE_THIRD_PARTY = ("torch",)
# the parts that a `loss.py` or `selection.py` is split into (it re-exports their public names)
PURE_PARTS = (
    "cotd_po/_loss_common.py", "cotd_po/likelihood.py", "cotd_po/listwise.py", "cotd_po/pairwise.py",
    "gen_ssd/_selection_base.py", "gen_ssd/perplexity.py", "gen_ssd/beam_search.py", "gen_ssd/termination.py",
    "brts/alignment.py", "brts/tiers.py", "brts/recovery.py",
    "brts/_loss_common.py", "brts/student_context.py", "brts/teacher_context.py",
)


# --- a small import scanner ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    target: str  # absolute dotted name (relative imports resolved)
    own: bool  # a module of this package
    in_function: bool  # inside a function body (runs on call, not at import)
    type_checking: bool  # under `if TYPE_CHECKING:` (never runs)
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def pure_modules() -> dict[str, Path]:
    paths = {PACKAGE_DIR / name for name in ("divergence.py", "chunked.py", "_chunk_math.py", "_chunk_driver.py",
                                            "_checks.py")}
    paths |= set((PACKAGE_DIR / "verify").rglob("*.py"))
    paths |= set(PACKAGE_DIR.rglob("loss.py")) | set(PACKAGE_DIR.rglob("selection.py"))
    paths |= {PACKAGE_DIR / name for name in PURE_PARTS}
    return {module_name(p): p for p in sorted(paths) if p.exists()}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, level: int, importer: str, is_package: bool) -> str:
    """Absolute name of `from <level dots><name> import ...` written in module `importer`."""
    if level == 0:
        return name
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, name] if name else base)


def scan(source: str, importer: str, is_package: bool = False, known: set[str] | None = None) -> list[Import]:
    """Every import of `source` (module `importer`), `importlib.import_module("x")` with a constant name included.

    `from pkg import name` counts as an import of `pkg.name` when that is a module of this package (in `known`),
    else of `pkg`.
    """
    known = set(all_modules()) if known is None else known
    found: list[Import] = []

    def add(target: str, node: ast.AST, in_function: bool, type_checking: bool) -> None:
        own = target == PACKAGE or target.startswith(PACKAGE + ".")
        found.append(Import(target, own, in_function, type_checking, node.lineno))

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, in_function, type_checking)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, importer, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, node, in_function, type_checking)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            add(node.args[0].value, node, in_function, type_checking)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            in_function = True
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, in_function, True)
            for child in node.orelse:
                visit(child, in_function, type_checking)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, in_function, type_checking)

    visit(ast.parse(source), False, False)
    return found


def scan_file(path: Path, known: set[str]) -> list[Import]:
    return scan(path.read_text(), module_name(path), path.name == "__init__.py", known)


def top(name: str) -> str:
    return name.split(".")[0]


def trl_violations(imports: list[Import]) -> list[str]:
    return [f"line {i.line}: {i.target}" for i in imports if top(i.target) == "trl"]


def optional_violations(imports: list[Import]) -> list[str]:
    return [f"line {i.line}: {i.target} at module level" for i in imports
            if top(i.target) in OPTIONAL and not i.in_function and not i.type_checking]


def purity_violations(imports: list[Import], pure: set[str]) -> list[str]:
    bad = []
    for i in imports:
        if i.type_checking or (i.in_function and top(i.target) in OPTIONAL):
            continue  # never runs, or an optional extra loaded lazily (math_verify in verify/grade.py)
        if i.own:
            ok = i.target in pure
        else:
            ok = top(i.target) in PURE_THIRD_PARTY or top(i.target) in sys.stdlib_module_names
        if not ok:
            bad.append(f"line {i.line}: {i.target}")
    return bad


# --- the scanner itself ------------------------------------------------------------------------------------------


KNOWN = {PACKAGE, f"{PACKAGE}.divergence", f"{PACKAGE}.kd_trainer", f"{PACKAGE}.gen_ssd", f"{PACKAGE}.gen_ssd.loss",
         f"{PACKAGE}.gen_ssd.selection", f"{PACKAGE}.gen_ssd.trainer"}


def test_scanner_finds_every_import_form():
    source = textwrap.dedent(
        """
        import trl
        import trl.experimental.gkd as gkd
        from trl.trainer import utils
        import importlib
        x = importlib.import_module("trl.experimental")
        if TYPE_CHECKING:
            from vllm import LLM
        try:
            import math_verify
        except ImportError:
            math_verify = None

        class A:
            import flash_attn

            def f(self):
                import bitsandbytes
        """
    )
    imports = scan(source, f"{PACKAGE}.gen_ssd.loss", known=KNOWN)
    assert trl_violations(imports) == ["line 2: trl", "line 3: trl.experimental.gkd", "line 4: trl.trainer",
                                       "line 6: trl.experimental"]
    assert optional_violations(imports) == ["line 10: math_verify at module level",
                                            "line 15: flash_attn at module level"]
    assert {i.target: i.type_checking for i in imports}["vllm"] is True
    assert {i.target: i.in_function for i in imports}["bitsandbytes"] is True


def test_scanner_resolves_relative_imports():
    source = textwrap.dedent(
        """
        from ..divergence import kl
        from .. import divergence, kd_trainer
        from . import selection
        from .trainer import GenSSDTrainer
        from .. import __version__
        import torch.nn.functional as F
        import math
        from datasets import Dataset
        """
    )
    imports = scan(source, f"{PACKAGE}.gen_ssd.loss", known=KNOWN)
    assert [i.target for i in imports] == [
        f"{PACKAGE}.divergence", f"{PACKAGE}.divergence", f"{PACKAGE}.kd_trainer", f"{PACKAGE}.gen_ssd.selection",
        f"{PACKAGE}.gen_ssd.trainer", PACKAGE, "torch.nn.functional", "math", "datasets",
    ]
    pure = {f"{PACKAGE}.divergence", f"{PACKAGE}.gen_ssd.loss", f"{PACKAGE}.gen_ssd.selection"}
    assert purity_violations(imports, pure) == [
        f"line 3: {PACKAGE}.kd_trainer", f"line 5: {PACKAGE}.gen_ssd.trainer", f"line 6: {PACKAGE}", "line 9: datasets"
    ]
    # in a package's __init__, one dot is the package itself
    init = scan("from .extract import x\nfrom . import grade\n", f"{PACKAGE}.verify", is_package=True,
                known={f"{PACKAGE}.verify.extract", f"{PACKAGE}.verify.grade"})
    assert [i.target for i in init] == [f"{PACKAGE}.verify.extract", f"{PACKAGE}.verify.grade"]


# --- the package -------------------------------------------------------------------------------------------------


def test_pure_module_set_is_what_the_design_names():
    pure = pure_modules()
    assert f"{PACKAGE}.divergence" in pure
    assert {f"{PACKAGE}.verify", f"{PACKAGE}.verify.extract", f"{PACKAGE}.verify.grade"} <= set(pure)
    assert all(name in all_modules() for name in pure)
    assert all((PACKAGE_DIR / name).exists() for name in PURE_PARTS), "a listed part of a pure module is missing"


def test_only_the_gateway_imports_trl():
    known = set(all_modules())
    bad = {name: v for name, path in all_modules().items()
           if path != TRL_GATEWAY and (v := trl_violations(scan_file(path, known)))}
    assert not bad, f"only {PACKAGE}/_trl.py may import trl; add the name there and import it from ._trl: {bad}"
    assert trl_violations(scan_file(TRL_GATEWAY, known)), "_trl.py no longer imports trl: is the scanner broken?"


def test_optional_extras_are_imported_inside_functions_only():
    known = set(all_modules())
    bad = {name: v for name, path in all_modules().items() if (v := optional_violations(scan_file(path, known)))}
    assert not bad, f"{OPTIONAL} must be imported inside function bodies: {bad}"


@pytest.mark.parametrize("name", sorted(pure_modules()))
def test_pure_module_imports_only_torch_stdlib_and_pure_modules(name):
    pure = pure_modules()
    bad = purity_violations(scan_file(pure[name], set(all_modules())), set(pure))
    assert not bad, f"{name} is pure (DESIGN.md section 2): torch, the standard library and {sorted(pure)} only: {bad}"


# --- dynamic: import with the heavy dependencies missing -----------------------------------------------------------


BLOCKER = textwrap.dedent(
    """
    import importlib, importlib.util, json, sys, traceback

    BLOCKED = {blocked!r}
    attempts = []

    class Blocker:
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in BLOCKED:
                attempts.append(fullname)
                raise ModuleNotFoundError(f"No module named {{fullname!r}} (blocked by the test)", name=fullname)
            return None

    sys.meta_path.insert(0, Blocker())

    # an absent package is also absent to `importlib.util.find_spec` (what availability checks call): None, no error
    _find_spec = importlib.util.find_spec

    def find_spec(name, package=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append("find_spec:" + name)
            return None
        return _find_spec(name, package)

    importlib.util.find_spec = find_spec
    """
)


def run_python(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_pure_modules_import_without_trl_transformers_vllm_math_verify():
    names = sorted(pure_modules())
    code = BLOCKER.format(blocked=["trl", "transformers", "vllm", "math_verify"]) + textwrap.dedent(
        f"""
        failures = {{}}
        for name in {names!r}:
            try:
                importlib.import_module(name)
            except Exception:
                failures[name] = traceback.format_exc(limit=-6)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(json.dumps({{"failures": failures, "loaded": loaded, "attempts": attempts}}))
        """
    )
    result = run_python(code)
    assert not result["failures"], (
        "pure modules must import with trl/transformers/vllm/math_verify missing (a subpackage __init__ on the way "
        "must not import its trainer eagerly):\n" + "\n".join(f"{k}:\n{v}" for k, v in result["failures"].items())
    )
    assert not result["loaded"]


def test_package_and_generation_import_without_the_optional_extras():
    code = BLOCKER.format(blocked=list(OPTIONAL)) + textwrap.dedent(
        f"""
        import {PACKAGE}
        import {PACKAGE}.generation
        from {PACKAGE}.generation import VLLMGenerator
        import {PACKAGE}._trl
        import {PACKAGE}.kd_trainer
        print(json.dumps({{"loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
                           "vllm": "vllm" in sys.modules}}))
        """
    )
    result = run_python(code)
    assert result["vllm"] is False
    assert result["loaded"] == []


def test_no_library_module_imports_the_command_line():
    """`cli.py` sits on top: models and data load through `loading.py`, below the methods (no cli -> method -> cli
    circle). Only the entry points themselves (`cli`, `__main__`) may name it."""
    known = set(all_modules())
    entry = {f"{PACKAGE}.cli", f"{PACKAGE}.__main__"}
    bad = {name: [f"line {i.line}" for i in scan_file(path, known) if i.target == f"{PACKAGE}.cli"]
           for name, path in all_modules().items() if name not in entry}
    assert not {k: v for k, v in bad.items() if v}, f"import from {PACKAGE}.loading instead of {PACKAGE}.cli"
