"""The training scripts: `trl-distill train <method> [flags]` and `accelerate launch examples/<method>.py [flags]` run
the same `main` of `trl_reasoning_distill.scripts.<method>`.

Each parses `(ScriptArguments, <Method>Config, ModelConfig)` with `TrlParser` as TRL's own `trl sft/dpo/gkd` scripts
do. This module and `_help` import only the standard library, so `--help` answers without loading torch.
"""

import importlib
import sys

from ._help import print_help, wants_help, write_snapshot

METHODS = ("brts", "cotd_po", "gen_ssd", "gkd", "standard_kd", "tsd_kd", "vcrd")


def help_programs(method: str) -> tuple[str, str]:
    """The program names a script's help is shown under: `examples/<method>.py` and `trl-distill train <method>`."""
    return f"{method}.py", f"trl-distill train {method}"


def write_help_snapshots() -> None:
    """Render the help of every script under every program name and ship it (`make help-snapshots`)."""
    for method in METHODS:
        module = importlib.import_module(f"{__name__}.{method}")
        for prog in help_programs(method):
            print(write_snapshot(prog, lambda prog=prog, module=module: module.make_parser(prog).format_help()))


def run_script(method: str, argv: list[str] | None = None, prog: str | None = None):
    """Parse `argv` with the parser of `scripts/<method>.py` and run its `train` (its `--help` from the cache)."""
    if method not in METHODS:
        raise SystemExit(f"trl-distill train: unknown method {method!r}; one of {', '.join(METHODS)}.")
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or f"trl-distill train {method}"
    module = importlib.import_module(f"{__name__}.{method}")
    if wants_help(argv):
        print_help(prog, lambda: module.make_parser(prog).format_help())
        return None
    from .common import run

    return run(prog, module.train, module.make_parser(prog).parse(argv))
