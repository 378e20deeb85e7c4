"""`--help` of the training scripts without importing torch and transformers (~10-30 s on a loaded CPU).

The help text is what argparse prints for the script's parser (its dataclasses, defaults and the script's
`set_defaults`), always at `HELP_WIDTH` columns. Rendering it needs trl and transformers, so it is rendered ahead:
- the package ships one text per script and program name (`scripts/help/<prog>.txt`), written by
  `make help-snapshots`, each headed by the key of what shapes it ([`snapshot_key`]: the sources that define the
  scripts' arguments and the versions of trl, transformers, peft and Python); a test renders every one afresh and
  fails if a shipped text is out of date;
- where the key differs (other library versions), the text is rendered once, the slow way, and kept in the user's
  cache under a key of the whole package source ([`help_key`]).
A text is used only when its key matches, so it is never stale. `TRL_DISTILL_NO_HELP_CACHE=1` renders afresh.
Standard library only: this module is imported before anything heavy.
"""

import hashlib
import importlib.metadata
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SNAPSHOT_DIR = Path(__file__).resolve().parent / "help"
HELP_FLAGS = ("-h", "--help")
HELP_WIDTH = 100  # columns of every help text, so a shipped text fits any terminal alike
# The sources that define the scripts' arguments: their dataclasses, defaults and help strings.
ARGUMENT_SOURCES = ("scripts/*.py", "*config.py", "*/config.py", "generation/base.py", "divergence.py", "_trl.py",
                    "__init__.py", "toy_recipes.py")  # toy_recipes.py: the toy budgets and learning rates


def wants_help(argv: list[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "trl_reasoning_distill" / "help"


def library_versions() -> str:
    """The versions that shape a help text besides our sources: trl, transformers, peft and Python."""
    versions = []
    for dist in ("trl", "transformers", "peft"):
        try:
            versions.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist}=absent")
    return " ".join([*versions, "python={}.{}".format(*sys.version_info[:2])])


def _versions_digest(digest) -> None:
    digest.update(f"{library_versions()}|{HELP_WIDTH}".encode())


def _sources_digest(digest, paths) -> None:
    for path in sorted(set(paths)):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())


def help_key(prog: str) -> str:
    """Key of a cached text: the whole package source, the library versions and `prog`."""
    digest = hashlib.sha256()
    _sources_digest(digest, PACKAGE_DIR.rglob("*.py"))
    _versions_digest(digest)
    digest.update(prog.encode())
    return digest.hexdigest()[:32]


def snapshot_key(prog: str) -> str:
    """Key of a shipped text: the sources of `ARGUMENT_SOURCES`, the library versions and `prog`."""
    digest = hashlib.sha256()
    _sources_digest(digest, [path for pattern in ARGUMENT_SOURCES for path in PACKAGE_DIR.glob(pattern)])
    _versions_digest(digest)
    digest.update(prog.encode())
    return digest.hexdigest()[:32]


def _stem(prog: str) -> str:
    return prog.replace("/", "_").replace(" ", "_")


def snapshot_path(prog: str) -> Path:
    return SNAPSHOT_DIR / f"{_stem(prog)}.txt"


def read_snapshot(prog: str) -> str | None:
    """The shipped help text of `prog` if its key is current, else None."""
    path = snapshot_path(prog)
    if not path.is_file():
        return None
    header, _, text = path.read_text().partition("\n")
    return text if header.split(" | ")[0] == f"# help-key {snapshot_key(prog)}" else None


def snapshot_versions(prog: str) -> str | None:
    """The library versions a shipped text was rendered under (its header), or None without one."""
    path = snapshot_path(prog)
    if not path.is_file():
        return None
    return path.read_text().partition("\n")[0].partition(" | ")[2] or None


def render_at_width(render: Callable[[], str]) -> str:
    """`render()` with argparse formatting for `HELP_WIDTH` columns, whatever the terminal."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)
    try:
        return render()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def write_snapshot(prog: str, render: Callable[[], str]) -> Path:
    """Render the help of `prog` and ship it under its current key."""
    path = snapshot_path(prog)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# help-key {snapshot_key(prog)} | {library_versions()}\n" + render_at_width(render))
    return path


def print_help(prog: str, render: Callable[[], str]) -> None:
    """Print the help of `prog`: the shipped text or the cached one when current, else `render()` (and cache it)."""
    use_cache = os.environ.get("TRL_DISTILL_NO_HELP_CACHE", "") in ("", "0")
    shipped = read_snapshot(prog) if use_cache else None
    if shipped is not None:
        sys.stdout.write(shipped)
        return
    stem = _stem(prog)
    path = cache_dir() / f"{stem}-{help_key(prog)}.txt" if use_cache else None
    if path is not None and path.is_file():
        sys.stdout.write(path.read_text())
        return
    text = render_at_width(render)
    if path is not None:
        try:  # atomic: a concurrent reader sees the whole text or none
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
                tmp.write(text)
            os.replace(tmp.name, path)
            for old in path.parent.glob(f"{stem}-*.txt"):  # texts of older sources
                if old != path:
                    old.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only home: the help is still printed, just not cached
    sys.stdout.write(text)
