"""`--help` of the training scripts without importing torch and transformers (~10-30 s on a loaded CPU).

The help text is what argparse prints for the script's parser (its dataclasses, defaults and the script's
`set_defaults`). It is rendered once, the slow way, and kept in the user's cache keyed by everything that shapes it:
the source of this package, the versions of trl, transformers and peft, the terminal width and the program name. Any
change of these renders it afresh, so a cached text is never stale. `TRL_DISTILL_NO_HELP_CACHE=1` bypasses the cache.
Standard library only: this module is imported before anything heavy.
"""

import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
HELP_FLAGS = ("-h", "--help")


def wants_help(argv: list[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "trl_reasoning_distill" / "help"


def help_key(prog: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    for dist in ("trl", "transformers", "peft"):
        try:
            digest.update(f"{dist}={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{dist}=absent".encode())
    digest.update(f"{prog}|{shutil.get_terminal_size().columns}|{sys.version_info[:2]}".encode())
    return digest.hexdigest()[:32]


def print_help(prog: str, render: Callable[[], str]) -> None:
    """Print the help of `prog`: from the cache when it is current, else `render()` (and cache it)."""
    use_cache = os.environ.get("TRL_DISTILL_NO_HELP_CACHE", "") in ("", "0")
    stem = prog.replace("/", "_").replace(" ", "_")
    path = cache_dir() / f"{stem}-{help_key(prog)}.txt" if use_cache else None
    if path is not None and path.is_file():
        sys.stdout.write(path.read_text())
        return
    text = render()
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
