"""What the training scripts share: TRL's argument classes (`ScriptArguments`, `ModelConfig`) beside each method's
config, the toy defaults, model and data loading (through `loading.py`), accuracy before and after, saving.

Parsed as TRL's own `trl sft` / `trl dpo` scripts parse (`TrlParser`, `--config` YAML, the command line wins), with
three differences: an unknown or misspelled flag (or YAML key) is an error naming it, abbreviations are not accepted,
and `bf16: true` on a machine without a bf16 accelerator is turned off with a warning (not refused), so that a paper
YAML can be tried on a laptop.
"""

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from .._trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config  # noqa: E402
from ..loading import DATA_SUFFIXES, MissingResourceError, load_dataset_spec, load_model_and_tokenizer  # noqa: E402

__all__ = ["ModelConfig", "get_peft_config"]

# CPU-friendly defaults of the toy runs (ours: a few minutes on 2 cores); a --config YAML or the command line
# overrides every one.
TOY_TRAINING_DEFAULTS = dict(
    output_dir="runs/example", max_steps=150, per_device_train_batch_size=16, learning_rate=1e-3,
    lr_scheduler_type="cosine", warmup_steps=10, logging_steps=25, save_strategy="no", report_to="none",
    activation_checkpointing=False, bf16=False, max_length=256,
)
# The toy world when no model or data set is named: the committed toy student and teacher, seeded toy problems.
TOY_DATA_DEFAULTS = dict(model_name_or_path="toy-student", teacher_model_name_or_path="toy-teacher",
                         dataset_name="toy:train:1024", eval_dataset_name="toy:test:300")


@dataclass
class DistillScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments` (`--dataset_name`, `--dataset_config`, `--dataset_train_split`, ...) and the held-out
    problems every script scores before and after training."""

    eval_dataset_name: str = field(
        default="", metadata={"help": "Held-out prompt/answer data scored with greedy pass@1 before and after "
                                      "training: a toy:<split>:<n> spec, a .jsonl/.json/.parquet file or a Hub id (its"
                                      " --dataset_test_split); '' skips the scoring."})
    eval_max_new_tokens: int = field(default=192, metadata={"help": "Generation budget of that scoring."})


@dataclass
class TeacherArguments:
    """The teacher, for methods whose config (an `SFTConfig` or a `DPOConfig`) has no `teacher_model_name_or_path`;
    the same flag as `GKDConfig`'s."""

    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher model: a path, a Hub id or 'toy-teacher'."})


SHARED_FIELDS = {"attn_implementation"}  # fields of ModelConfig that KDConfig has too (the same meaning)


class DistillParser(TrlParser):
    """`TrlParser` that refuses unknown flags and YAML keys with one line naming them (exit 2)."""

    def __init__(self, dataclass_types, **kwargs):
        import dataclasses

        # KDConfig (our base) has TRL ModelConfig's `attn_implementation`: one flag sets both (argparse "resolve").
        names = [f.name for cls in dataclass_types for f in dataclasses.fields(cls)]
        shared = {name for name in names if names.count(name) > 1}
        if shared - SHARED_FIELDS:
            raise TypeError(f"fields named twice in {[c.__name__ for c in dataclass_types]}: {sorted(shared)}")
        self._shared_owners = {name: names.count(name) for name in shared}
        super().__init__(dataclass_types, allow_abbrev=False, conflict_handler="resolve", **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        owners_left = dict(self._shared_owners)

        class SharedNamespace(argparse.Namespace):
            """HfArgumentParser deletes each field once read: a shared one stays until its last owner read it."""

            def __delattr__(self, name):
                if owners_left.get(name, 0) > 1:
                    owners_left[name] -= 1
                    return
                super().__delattr__(name)

        namespace, rest = super().parse_known_args(args, SharedNamespace() if namespace is None else namespace)
        _no_bf16_without_accelerator(namespace)
        return namespace, rest

    def parse(self, argv: list[str]) -> tuple:
        try:
            parsed = self.parse_args_and_config(argv)
        except (ValueError, OSError) as error:  # unknown flags or keys, a missing --config, a value a config refuses
            self.error(str(error).replace("HfArgumentParser", "this script"))
        changes = toy_changes(parsed, getattr(self, "toy_defaults", {}))
        if changes:
            print("toy settings, changed from the paper's defaults (those the toy reproduction trains with): " +
                  ", ".join(changes) + "; a paper YAML (--config) sets the paper's values.", flush=True)
        return parsed


def _declared_here(cls, name: str) -> bool:
    """Whether field `name` of dataclass `cls` is declared by a class of this package (a method setting, whose default
    is the paper's value), not by TRL or transformers (a training setting)."""
    owner = next((c for c in cls.__mro__ if name in c.__dict__.get("__annotations__", {})), cls)
    return owner.__module__.startswith(__package__.split(".")[0])


def _short(value, width: int = 24) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def toy_changes(parsed: tuple, toy_defaults: dict) -> list[str]:
    """`name=value (paper: default)` for each method setting that the script's toy defaults change and that is still
    in force after parsing (a YAML or flag that sets it takes it out)."""
    import dataclasses

    changes = []
    for obj in parsed:
        if not dataclasses.is_dataclass(obj):
            continue
        for f in dataclasses.fields(obj):
            if f.name not in toy_defaults or not _declared_here(type(obj), f.name):
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            value = getattr(obj, f.name)
            if value == toy_defaults[f.name] and value != default:
                changes.append(f"{f.name}={_short(value)} (paper: {_short(default)})")
    return changes


def _no_bf16_without_accelerator(namespace) -> None:
    if not getattr(namespace, "bf16", False) or getattr(namespace, "use_cpu", False):
        return
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    if is_torch_bf16_gpu_available() or is_torch_xla_available():
        return
    warnings.warn("bf16 is set but this machine has no accelerator with bf16: training in float32 instead (bf16 set "
                  "to false; --use_cpu true keeps CPU bf16 autocast).", stacklevel=2)
    namespace.bf16 = False


def make_parser(prog: str, dataclass_types: tuple, description: str, **defaults) -> DistillParser:
    """The script's parser: its dataclasses, the toy world's data and training defaults, then `defaults`."""
    parser = DistillParser(dataclass_types, prog=prog, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(**{**TOY_TRAINING_DEFAULTS, **TOY_DATA_DEFAULTS, **defaults})
    parser.toy_defaults = defaults
    return parser


def model_init_kwargs(model_args: ModelConfig) -> dict:
    """`from_pretrained` keywords of TRL's scripts: revision, dtype, attention kernel, bitsandbytes quantization."""
    kwargs = dict(dtype=model_args.dtype, attn_implementation=model_args.attn_implementation)
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        from accelerate import PartialState

        kwargs.update(quantization_config=quantization_config, device_map={"": PartialState().local_process_index})
    return kwargs


def check_model_args(model_args: ModelConfig) -> None:
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise ValueError("--load_in_4bit / --load_in_8bit train through adapters only: add --use_peft true (QLoRA).")


def load_student(model_args: ModelConfig, trust_remote_code: bool = False):
    """(student, tokenizer) from `--model_name_or_path` with `ModelConfig`'s keywords."""
    return load_model_and_tokenizer(model_args.model_name_or_path, trust_remote_code,
                                    revision=model_args.model_revision, **model_init_kwargs(model_args))


def load_teacher(name: str | None, model_args: ModelConfig, config=None, trust_remote_code: bool = False):
    """(teacher, tokenizer): `ModelConfig`'s dtype, attention and quantization, then the config's
    `teacher_model_init_kwargs` (consumed here, as the trainer gets a loaded model)."""
    if not name:
        raise ValueError("this method needs a teacher: --teacher_model_name_or_path <path or hub id>.")
    kwargs = model_init_kwargs(model_args)
    if config is not None and getattr(config, "teacher_model_init_kwargs", None):
        kwargs.update(config.teacher_model_init_kwargs)
        config.teacher_model_init_kwargs = None
    return load_model_and_tokenizer(name, trust_remote_code, **kwargs)


def teacher_sampler(name: str | None, model_args: ModelConfig, generation_args, tokenizer, config=None,
                    trust_remote_code: bool = False, num_processes: int = 1):
    """What samples the teacher, as `generation_args` (a config with the `TeacherGenerationConfig` fields) says:
    `teacher_generation_backend="hf"`: the transformers teacher (`load_teacher`); `"vllm"`: the `VLLMGenerator` of
    `generation.vllm.teacher_generator_from_config`, on a server or an engine colocated in this process. The vLLM
    teacher's weights are not loaded here: only its `config.json` and `generation_config.json` (the padded embedding
    rows that are never sampled and the ids it stops on)."""
    if getattr(generation_args, "teacher_generation_backend", "hf") == "hf":
        teacher, _ = load_teacher(name, model_args, config, trust_remote_code)
        return teacher
    from ..generation.vllm import teacher_generator_from_config

    if not name:
        raise ValueError("this method needs a teacher: --teacher_model_name_or_path <path or hub id>.")
    return teacher_generator_from_config(generation_args, _teacher_reference(name, trust_remote_code),
                                         tokenizer, num_processes)


def _teacher_reference(name: str, trust_remote_code: bool):
    """The teacher's path and configs without its weights (what `teacher_generator_from_config` reads)."""
    from pathlib import Path
    from types import SimpleNamespace

    from transformers import AutoConfig, GenerationConfig

    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise MissingResourceError(f"the model folder {name} does not exist.")
    try:
        model_config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise MissingResourceError(f"the teacher {name} for vLLM: {str(error).splitlines()[0]}") from None
    try:
        generation_config = GenerationConfig.from_pretrained(name)
    except OSError:  # no generation_config.json: the tokenizer's EOS only
        generation_config = GenerationConfig()
    return SimpleNamespace(name_or_path=name, config=model_config, generation_config=generation_config)


def load_train_data(script_args: DistillScriptArguments, hint: str | None = None):
    if not script_args.dataset_name:
        raise ValueError("no training data: --dataset_name <hub id, file or toy:<split>:<n>>.")
    if script_args.dataset_streaming:
        raise ValueError("--dataset_streaming: these trainers need a map-style data set (row checks before compute, "
                         "resumable per-row sampling); drop the flag.")
    return load_dataset_spec(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split,
                             hint=hint)


def load_trainer_eval_data(script_args: DistillScriptArguments, config):
    """The trainer's evaluation set when `--eval_strategy` is not "no", as TRL's scripts take it: the
    `--dataset_test_split` of `--dataset_name` (a toy spec or a single file has one split: `--eval_dataset_name`)."""
    if str(getattr(config.eval_strategy, "value", config.eval_strategy)) == "no":
        return None
    single = script_args.dataset_name.startswith("toy:") or script_args.dataset_name.endswith(DATA_SUFFIXES)
    if single and not script_args.eval_dataset_name:
        raise ValueError(f"--eval_strategy {config.eval_strategy}: {script_args.dataset_name} has one split; name the "
                         "evaluation data with --eval_dataset_name.")
    if single:
        return load_dataset_spec(script_args.eval_dataset_name, split=script_args.dataset_test_split)
    return load_dataset_spec(script_args.dataset_name, script_args.dataset_config, script_args.dataset_test_split)


def ignore_bias_buffers(model, script_args: DistillScriptArguments):
    """TRL's `--ignore_bias_buffers` (its DPO script): DDP skips the boolean buffers (attention masks)."""
    if script_args.ignore_bias_buffers:
        import torch

        model._ddp_params_and_buffers_to_ignore = [name for name, buffer in model.named_buffers()
                                                   if buffer.dtype == torch.bool]
    return model


def load_eval_data(script_args: DistillScriptArguments):
    """The held-out problems, loaded before any model (a missing file fails early); None without them."""
    if not script_args.eval_dataset_name:
        return None
    from ..evaluation import evaluation_rows

    return evaluation_rows(load_dataset_spec(script_args.eval_dataset_name, split=script_args.dataset_test_split))


def accuracy(model, tokenizer, eval_rows, script_args: DistillScriptArguments, label: str) -> float | None:
    """Greedy pass@1 on the held-out problems, printed with its wall time (None without them)."""
    if eval_rows is None:
        return None
    from ..evaluation import evaluate

    start = time.time()
    result = evaluate(model, tokenizer, eval_rows, max_new_tokens=script_args.eval_max_new_tokens, progress=False)
    print(f"{label}: greedy pass@1 {result.greedy_accuracy:.3f} on {result.n} problems ({time.time() - start:.0f} s)",
          flush=True)
    return result.greedy_accuracy


def save(trainer, output_dir: str, script_args: DistillScriptArguments, tag: str) -> None:
    """`trainer.save_model` (weights, tokenizer, training arguments) and a model card naming the method and data."""
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        name = os.path.basename(os.path.normpath(output_dir))
        trainer.create_model_card(model_name=name, dataset_name=script_args.dataset_name,
                                  tags=["trl-reasoning-distill", tag])


def run(prog: str, train, parsed: tuple):
    """`train(*parsed)`, with a missing model or data set (or a refused setting found before compute) reported as one
    line naming it instead of a traceback."""
    try:
        return train(*parsed)
    except MissingResourceError as error:
        sys.exit(f"{prog}: {error}")


def train_kd(trainer_cls, tag: str, label: str, script_args, config, model_args, columns: tuple[str, ...],
             hint: str | None = None, train_data=None, **trainer_kwargs):
    """The KD-family script (GKD, TSD-KD, BRTS, VCRD): data first (a missing set fails before any model loads), then
    student and teacher, accuracy before, `trainer_cls(...).train()`, save, accuracy after. Returns the trainer."""
    check_model_args(model_args)
    train = load_train_data(script_args, hint) if train_data is None else train_data
    train = train.select_columns([c for c in columns if c in train.column_names])
    eval_dataset = load_trainer_eval_data(script_args, config)
    if eval_dataset is not None:
        eval_dataset = eval_dataset.select_columns([c for c in train.column_names if c in eval_dataset.column_names])
    eval_rows = load_eval_data(script_args)
    student, tokenizer = load_student(model_args, config.trust_remote_code)
    ignore_bias_buffers(student, script_args)
    teacher, _ = load_teacher(config.teacher_model_name_or_path, model_args, config, config.trust_remote_code)
    accuracy(student, tokenizer, eval_rows, script_args, "student before")
    if callable(trainer_kwargs.get("train_dataset")):  # data made from the loaded models (VCRD's offline rollouts)
        train = trainer_kwargs.pop("train_dataset")(student, teacher, tokenizer, train)
    trainer = trainer_cls(model=student, teacher_model=teacher, args=config, train_dataset=train,
                          eval_dataset=eval_dataset, processing_class=tokenizer,
                          peft_config=get_peft_config(model_args), **trainer_kwargs)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    save(trainer, config.output_dir, script_args, tag)
    accuracy(trainer.model, tokenizer, eval_rows, script_args, f"student after {label}")
    return trainer
