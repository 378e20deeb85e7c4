"""Models and data sets by name: the toy world's (`toy-student`, `toy:train:64`), local folders and files, or the Hub.

Below the methods and the command line (the trainers, the Gen-SSD sampler, the example scripts and `trl-distill` all
load through here). A model or data set that is neither local nor in the Hugging Face cache, on a machine that cannot
reach the Hub, is one `MissingResourceError` naming it and the command that fetches it, not a traceback.
"""

from pathlib import Path

TOY_MODELS = ("toy-teacher", "toy-student")
TOY_SPEC = "toy:<split>:<n>[:<min_ops>-<max_ops>]"
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


class MissingResourceError(ValueError):
    """A model or data set that cannot be found or fetched; the message says how to get it (one line)."""


def parse_toy_spec(spec: str) -> dict:
    """`toy:<split>:<n>[:<min_ops>-<max_ops>]` as `toy_dataset` arguments; `ValueError` naming the bad part."""
    from .toy.task import SPLITS

    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"a toy dataset spec is {TOY_SPEC}, got {spec!r}.")
    if parts[1] not in SPLITS:
        raise ValueError(f"the split of {spec!r} must be one of {SPLITS}, got {parts[1]!r}.")
    if not parts[2].isdigit() or int(parts[2]) < 1:
        raise ValueError(f"the size of {spec!r} must be a positive integer, got {parts[2]!r} ({TOY_SPEC}).")
    ops = parts[3].split("-") if len(parts) == 4 else ["2", "4"]
    if len(ops) not in (1, 2) or not all(x.isdigit() for x in ops) or not 2 <= int(ops[0]) <= int(ops[-1]):
        raise ValueError(f"the operand range of {spec!r} must be <min>-<max> or <n> with 2 <= min <= max, got "
                         f"{parts[3]!r}.")
    return {"split": parts[1], "n": int(parts[2]), "seed": 0, "min_ops": int(ops[0]), "max_ops": int(ops[-1])}


def _offline(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}"
    return any(s in text for s in ("Offline", "offline", "couldn't connect", "Couldn't reach", "ConnectionError",
                                   "LocalEntryNotFound", "cached files", "not found", "NotFound", "does not exist",
                                   "doesn't exist", "not a valid model identifier"))


def load_dataset_spec(spec: str, name: str | None = None, split: str = "train", hint: str | None = None):
    """One split of a data set, named as TRL's scripts name it (`--dataset_name`, `--dataset_config`, a split):

    - `toy:<split>:<n>[:<min_ops>-<max_ops>]`: the toy world's problems (the split is in the spec);
    - a `.json`/`.jsonl`/`.parquet`/`.csv` file (its one split, whatever `split` says);
    - a folder or a Hub id: `datasets.load_dataset(spec, name, split=split)`.

    A missing file, or a Hub data set that is not cached while the Hub is unreachable, raises `MissingResourceError`
    naming it and how to get it (`hint`: e.g. the script that prepares the file).
    """
    if spec.startswith("toy:"):
        from .toy import toy_dataset

        return toy_dataset(**parse_toy_spec(spec))
    from datasets import load_dataset

    how = f" ({hint})" if hint else ""
    if spec.endswith(DATA_SUFFIXES):
        if not Path(spec).is_file():
            raise MissingResourceError(f"the dataset file {spec} does not exist{how}.")
        kind = {".parquet": "parquet", ".csv": "csv"}.get(Path(spec).suffix, "json")
        return load_dataset(kind, data_files=spec, split="train")
    try:
        return load_dataset(spec, name=name, split=split)
    except ValueError as error:  # a wrong split or config name: datasets names the ones there are
        raise ValueError(f"dataset {spec!r}: {error}") from error
    except Exception as error:
        if not _offline(error):
            raise
        raise MissingResourceError(
            f"dataset {spec!r} is neither a local path nor in the Hugging Face cache, and the Hub cannot be reached: "
            f"fetch it with `huggingface-cli download --repo-type dataset {spec}`{how}, or give a local file "
            f"(.jsonl/.json/.parquet/.csv) or a {TOY_SPEC} spec.") from None


def load_model_and_tokenizer(name: str, trust_remote_code: bool = False, **model_kwargs):
    """(model, tokenizer) of a toy name, a local folder or a Hub id; `model_kwargs` go to `from_pretrained`
    (`revision`, `dtype`, `attn_implementation`, `quantization_config`, `device_map`, ...). The tokenizer pads on the
    left (generation) and falls back to eos as its pad token."""
    if name in TOY_MODELS:
        from .toy import load_toy_student, load_toy_teacher, load_toy_tokenizer

        if model_kwargs.get("quantization_config") is not None:
            raise ValueError(f"{name} is a float32 CPU model: 4-bit/8-bit loading is for real checkpoints.")
        model = load_toy_teacher() if name == "toy-teacher" else load_toy_student()
        if model_kwargs.get("attn_implementation"):  # checked as from_pretrained would (an unknown kernel fails)
            model.set_attn_implementation(model_kwargs["attn_implementation"])
        if model_kwargs.get("dtype") not in (None, "auto"):
            import torch

            model = model.to(getattr(torch, model_kwargs["dtype"]))
        return model, load_toy_tokenizer()
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise MissingResourceError(f"the model folder {name} does not exist.")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_kwargs = {"dtype": "auto", **{k: v for k, v in model_kwargs.items() if v is not None}}
    revision = model_kwargs.get("revision")
    try:
        model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust_remote_code, **model_kwargs)
    except OSError as error:
        if Path(name).exists() or not _offline(error):
            raise
        raise MissingResourceError(
            f"model {name!r} is neither a local folder nor in the Hugging Face cache, and the Hub cannot be reached: "
            f"fetch it with `huggingface-cli download {name}`, or give a local folder.") from None
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, padding_side="left",
                                              **({"revision": revision} if revision else {}))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
