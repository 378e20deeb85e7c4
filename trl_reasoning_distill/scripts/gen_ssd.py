"""Gen-SSD: the student selects the teacher's reasoning chunk by chunk (https://huggingface.co/papers/2604.02819).

The paper's pipeline (§3.2 "Cold Start", §4.1): (1) cold start, SFT of the student on verified teacher samples of
problems held apart; (2) Gen-SSD sampling on the other problems: the teacher writes in chunks, 16, 8, 4, ...
candidates per chunk, the cold-started student keeps the 2 it finds least perplexing, and the lowest-PPL trajectory is
kept if its answer is right (`GenSSDSampler`, resumable JSONL); (3) SFT of the cold-started student on those
trajectories. With `--online true`, steps 2-3 are `GenSSDTrainer` instead: the current student selects inside training
(not in the paper).

Toy world, CPU, a few minutes:
    trl-distill train gen_ssd
    trl-distill train gen_ssd --selection_rule high       # Table 4's ablation: keep the most perplexing chunks
    trl-distill train gen_ssd --online true --max_steps 50
The teacher samples (cold start and Gen-SSD) are resumable files under --output_dir, fingerprinted with the models
and settings that made them: a rerun under other ones stops and names what differs; `--overwrite` starts afresh.
Paper scale (QwQ-32B teacher on vLLM, Qwen2.5-Math-1.5B student; see the YAML for data and GPUs):
    python examples/data/gen_ssd.py --output data/openmathreasoning_25k.jsonl
    python examples/gen_ssd.py --config examples/configs/gen_ssd_paper.yaml
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

HINT = "make the paper's problems with `python examples/data/gen_ssd.py`"


@dataclass
class PipelineArguments:
    cold_start_fraction: float = field(
        default=0.25, metadata={"help": "Share of the training problems held apart for the cold start (paper: 3K of "
                                         "25K); 0 skips it (the toy student is already cold-started once)."})
    cold_start_samples: int = field(
        default=4, metadata={"help": "Teacher samples per cold-start problem, the first correct kept (ours; the "
                                      "paper keeps 3K correct rejection samples, §4.1)."})
    sampler_batch_size: int = field(default=16, metadata={"help": "Problems sampled in lockstep by GenSSDSampler."})
    cold_start_data: str = field(
        default="", metadata={"help": "Cold-start teacher samples (resumed if present); default "
                                      "<output_dir>/cold_start_data.jsonl."})
    sampled_data: str = field(
        default="", metadata={"help": "Gen-SSD JSONL (resumed if present); default <output_dir>/gen_ssd_data.jsonl."})
    overwrite: bool = field(
        default=False, metadata={"help": "Delete sample files made under other models or settings and start afresh "
                                         "(without it such files stop the run, naming what differs)."})
    num_samples: int = field(
        default=0, metadata={"help": "Seeded subsample of the kept trajectories for SFT (paper: 8500); 0 keeps all."})
    eos_tokens: list[str] = field(
        default_factory=list, metadata={"help": "Extra tokens the teacher stops on, e.g. <|im_end|> <|endoftext|>."})
    online: bool = field(default=False, metadata={"help": "Select on the fly with GenSSDTrainer instead."})


def make_parser(prog: str = "gen_ssd.py"):
    from ..gen_ssd import GenSSDConfig
    from .common import DistillScriptArguments, ModelConfig, make_parser

    # Toy scale (ours): 24-token chunks of a 192-token budget (toy solutions are 20-120 tokens), the teacher sampled
    # at T=1 as the toy build does; the selection defaults (K 16/8/4, beam 2, lowest PPL) are GenSSDConfig's.
    # The teacher's backend is GenSSDConfig's: --teacher_generation_backend vllm, --teacher_model_server_url or the
    # colocated engine's --teacher_vllm_gpu_memory_utilization / --teacher_vllm_tensor_parallel_size (the unprefixed
    # --vllm_* fields are the student's, for on-policy sampling).
    return make_parser(prog, (DistillScriptArguments, GenSSDConfig, ModelConfig, PipelineArguments), __doc__,
                       output_dir="runs/gen_ssd", chunk_size=24, max_new_tokens=192, teacher_temperature=1.0)


def load_teacher(config, model_args, pipeline: PipelineArguments, tokenizer):
    """(teacher, generator): the transformers teacher (sampled with the KV cache of the kept chunks; loaded with
    `teacher_generation_backend="hf"` and for the on-line trainer, which computes on it) and the vLLM sampler the
    config asks for (prefix caching; None with "hf"). Either samples the cold start and proposes the chunks."""
    import torch

    from ..generation.vllm import teacher_generator_from_config
    from .common import load_teacher, teacher_sampler

    if config.teacher_generation_backend == "hf" or pipeline.online:
        teacher, _ = load_teacher(config.teacher_model_name_or_path, model_args, config, config.trust_remote_code)
        if torch.cuda.is_available() and not model_args.load_in_4bit | model_args.load_in_8bit:
            teacher = teacher.to("cuda")
        generator = teacher_generator_from_config(config, teacher, tokenizer, config.world_size)
    else:  # the vLLM teacher only: its weights are not loaded in this process
        teacher, generator = None, teacher_sampler(config.teacher_model_name_or_path, model_args, config, tokenizer,
                                                   config, config.trust_remote_code, config.world_size)
    if generator is not None:  # --eos_tokens: samples ending with one are "eos" (vLLM stops on them itself)
        generator.eos_token_ids.update(tokenizer.convert_tokens_to_ids(pipeline.eos_tokens))
    return teacher, generator


def sft(student, tokenizer, config, data, label: str, peft_config=None):
    """Eq. 1 with TRL's SFTTrainer (completion tokens only; GenSSDConfig is an SFTConfig); the trainer, or None
    without data."""
    from .._trl import SFTTrainer

    if len(data) == 0:
        print(f"{label}: no verified trajectory, nothing to train on")
        return None
    trainer = SFTTrainer(model=student, args=config, train_dataset=data.select_columns(["prompt", "completion"]),
                         processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    return trainer


def train(script_args, config, model_args, pipeline: PipelineArguments):
    import torch
    from datasets import load_dataset

    from ..baselines import rejection_sample
    from ..gen_ssd import GenSSDSampler, GenSSDTrainer
    from ..gen_ssd.sampler import split_cold_start
    from .common import (
        accuracy,
        check_model_args,
        get_peft_config,
        ignore_bias_buffers,
        load_eval_data,
        load_student,
        load_train_data,
        save,
    )

    check_model_args(model_args)
    train = load_train_data(script_args, HINT)
    eval_rows = load_eval_data(script_args)
    student, tokenizer = load_student(model_args, config.trust_remote_code)
    ignore_bias_buffers(student, script_args)
    student = student.to("cuda") if torch.cuda.is_available() and getattr(student, "hf_device_map", None) is None \
        else student
    teacher, generator = load_teacher(config, model_args, pipeline, tokenizer)
    accuracy(student, tokenizer, eval_rows, script_args, "student before")
    peft_config = get_peft_config(model_args)
    trainer = None

    distinct = len({str(p) for p in train["prompt"]})
    cold, rest = split_cold_start(train, math.floor(pipeline.cold_start_fraction * distinct), seed=config.seed)
    if len(cold):  # paper §3.2 cold start: verified teacher samples (rejection sampling, Eq. 2), SFT from the base
        cold_path = pipeline.cold_start_data or str(Path(config.output_dir) / "cold_start_data.jsonl")
        data = rejection_sample(generator or teacher, tokenizer, cold, n=pipeline.cold_start_samples,
                                temperature=config.teacher_temperature, top_p=config.teacher_top_p,
                                max_new_tokens=config.max_new_tokens, seed=config.seed, output_jsonl=cold_path,
                                overwrite=pipeline.overwrite)
        print(f"cold start: {len(data)} verified teacher samples from {len(cold)} problems")
        trainer = sft(student, tokenizer, config, data, "cold start", peft_config) or trainer
        if trainer is not None:
            student = trainer.model
            save(trainer, str(Path(config.output_dir) / "cold_start"), script_args, "gen_ssd")
            accuracy(student, tokenizer, eval_rows, script_args, "student after cold start")

    if pipeline.online:  # the selection inside training, scored by the current student
        trainer = GenSSDTrainer(model=student, teacher_model=teacher, args=config, teacher_generator=generator,
                                train_dataset=rest.select_columns(["prompt", config.answer_column]),
                                processing_class=tokenizer, peft_config=None if trainer else peft_config)
        trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
        student = trainer.model
    else:  # paper §3.2, §4.1: Gen-SSD data with the cold-started student as frozen scorer, then SFT on it
        path = pipeline.sampled_data or str(Path(config.output_dir) / "gen_ssd_data.jsonl")
        sampler = GenSSDSampler(generator or teacher, student, tokenizer, config.chunk_sampling(),
                                config.selection_callback(),
                                batch_size=pipeline.sampler_batch_size, scorer_batch_size=config.scorer_batch_size,
                                seed=config.seed, answer_extraction=config.answer_extraction,
                                eos_token_ids=[tokenizer.eos_token_id,
                                               *tokenizer.convert_tokens_to_ids(pipeline.eos_tokens)])
        summary = sampler.sample(rest, path, overwrite=pipeline.overwrite)
        print(f"Gen-SSD: {summary.kept}/{summary.problems} problems kept, {summary.pruned} chunks pruned, "
              f"{summary.tokens_per_kept:.0f} teacher tokens per kept trajectory, {summary.seconds:.0f} s")
        if summary.kept:
            data = load_dataset("json", data_files=path, split="train")
            if 0 < pipeline.num_samples < len(data):
                data = data.shuffle(seed=config.seed).select(range(pipeline.num_samples))
            trainer = sft(student, tokenizer, config, data, "Gen-SSD", None if trainer else peft_config) or trainer
            student = trainer.model if trainer is not None else student

    if trainer is not None:
        save(trainer, config.output_dir, script_args, "gen_ssd")
    else:  # nothing was trained (no verified trajectory): the student as it came, so the folder is complete
        student.save_pretrained(config.output_dir)
        tokenizer.save_pretrained(config.output_dir)
    accuracy(student, tokenizer, eval_rows, script_args, "student after Gen-SSD")
    return trainer
