"""Gen-SSD: the student selects the teacher's reasoning chunk by chunk (https://huggingface.co/papers/2604.02819).

The paper's pipeline (spec §2.2): (1) cold start, SFT of the student on verified teacher samples of problems held
apart; (2) Gen-SSD sampling on the other problems: the teacher writes in chunks, 16, 8, 4, ... candidates per chunk,
the cold-started student keeps the 2 it finds least perplexing, and the lowest-PPL trajectory is kept if its answer is
right (`GenSSDSampler`, resumable JSONL); (3) SFT of the cold-started student on those trajectories. With
`--online true`, steps 2-3 are `GenSSDTrainer` instead: the current student selects inside training (not in the paper).

Toy world, CPU, a few minutes:
    python examples/gen_ssd.py
    python examples/gen_ssd.py --selection_rule high       # Table 4's ablation: keep the most perplexing chunks
    python examples/gen_ssd.py --online true --max_steps 50
The teacher samples (cold start and Gen-SSD) are resumable files under --output_dir, fingerprinted with the models
and settings that made them: a rerun under other ones stops and names what differs; `--overwrite` starts afresh.
Paper scale (QwQ-32B teacher on vLLM, Qwen2.5-Math-1.5B student; see the YAML for data and GPUs):
    python examples/gen_ssd.py --config examples/configs/gen_ssd_paper.yaml
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import TOY_TRAINING_DEFAULTS, ScriptArguments, accuracy
from datasets import load_dataset

from trl_reasoning_distill import rejection_sample
from trl_reasoning_distill._trl import SFTTrainer, TrlParser
from trl_reasoning_distill.cli import load_dataset_spec, load_model_and_tokenizer
from trl_reasoning_distill.gen_ssd import GenSSDConfig, GenSSDSampler, GenSSDTrainer
from trl_reasoning_distill.gen_ssd.sampler import split_cold_start


@dataclass
class PipelineArguments:
    cold_start_fraction: float = field(
        default=0.25, metadata={"help": "Share of the training problems held apart for the cold start (paper: 3K of "
                                         "25K); 0 skips it (the toy student is already cold-started once)."})
    cold_start_samples: int = field(
        default=4, metadata={"help": "Teacher samples per cold-start problem, the first correct kept (spec §8 A10)."})
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
    teacher_backend: str = field(default="hf", metadata={"help": "'hf' (transformers) or 'vllm' (colocated engine)."})
    vllm_gpu_memory_utilization: float = field(default=0.7, metadata={"help": "GPU share of the vLLM teacher."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs the vLLM teacher is split over."})
    eos_tokens: list[str] = field(
        default_factory=list, metadata={"help": "Extra tokens the teacher stops on, e.g. <|im_end|> <|endoftext|>."})
    online: bool = field(default=False, metadata={"help": "Select on the fly with GenSSDTrainer instead."})


def load_teacher(script_args: ScriptArguments, pipeline: PipelineArguments, tokenizer):
    """A transformers model (sampled with the KV cache of the kept chunks) or a vLLM engine (prefix caching)."""
    if pipeline.teacher_backend == "vllm":
        from trl_reasoning_distill.generation import VLLMGenerator

        return VLLMGenerator.colocate(script_args.teacher, tokenizer, pipeline.vllm_gpu_memory_utilization,
                                      tensor_parallel_size=pipeline.vllm_tensor_parallel_size)
    teacher, _ = load_model_and_tokenizer(script_args.teacher)
    return teacher.to("cuda") if torch.cuda.is_available() else teacher


def sft(student, tokenizer, config: GenSSDConfig, data, label: str):
    """Eq. 1 with TRL's SFTTrainer (completion tokens only); GenSSDConfig is an SFTConfig."""
    if len(data) == 0:
        print(f"{label}: no verified trajectory, nothing to train on")
        return student
    trainer = SFTTrainer(model=student, args=config, train_dataset=data.select_columns(["prompt", "completion"]),
                         processing_class=tokenizer)
    trainer.train()
    return trainer.model


def main():
    parser = TrlParser((ScriptArguments, PipelineArguments, GenSSDConfig))
    # Toy scale (ours): 24-token chunks of a 192-token budget (toy solutions are 20-120 tokens), the teacher sampled
    # at T=1 as the toy build does; the selection defaults (K 16/8/4, beam 2, lowest PPL) are GenSSDConfig's.
    parser.set_defaults(**{**TOY_TRAINING_DEFAULTS, "output_dir": "runs/gen_ssd"}, chunk_size=24, max_new_tokens=192,
                        teacher_temperature=1.0)
    script_args, pipeline, config = parser.parse_args_and_config()
    student, tokenizer = load_model_and_tokenizer(script_args.student)
    student = student.to("cuda") if torch.cuda.is_available() else student
    teacher = load_teacher(script_args, pipeline, tokenizer)
    accuracy(student, tokenizer, script_args, "student before")

    train = load_dataset_spec(script_args.train_data)
    distinct = len({str(p) for p in train["prompt"]})
    cold, rest = split_cold_start(train, math.floor(pipeline.cold_start_fraction * distinct), seed=config.seed)
    if len(cold):  # spec §2.2 step 2: verified teacher samples (rejection sampling, Eq. 2), SFT from the base
        cold_path = pipeline.cold_start_data or str(Path(config.output_dir) / "cold_start_data.jsonl")
        data = rejection_sample(teacher, tokenizer, cold, n=pipeline.cold_start_samples,
                                temperature=config.teacher_temperature, top_p=config.teacher_top_p,
                                max_new_tokens=config.max_new_tokens, seed=config.seed, output_jsonl=cold_path,
                                overwrite=pipeline.overwrite)
        print(f"cold start: {len(data)} verified teacher samples from {len(cold)} problems")
        student = sft(student, tokenizer, config, data, "cold start")
        student.save_pretrained(Path(config.output_dir) / "cold_start")
        accuracy(student, tokenizer, script_args, "student after cold start")

    if pipeline.online:  # the selection inside training, scored by the current student
        if pipeline.teacher_backend != "hf":
            raise ValueError("--online true needs the transformers teacher (GenSSDTrainer computes on it).")
        trainer = GenSSDTrainer(model=student, teacher_model=teacher, args=config,
                                train_dataset=rest.select_columns(["prompt", config.answer_column]),
                                processing_class=tokenizer)
        trainer.train()
        student = trainer.model
    else:  # spec §2.2 steps 3-4: Gen-SSD data with the cold-started student as frozen scorer, then SFT on it
        path = pipeline.sampled_data or str(Path(config.output_dir) / "gen_ssd_data.jsonl")
        sampler = GenSSDSampler(teacher, student, tokenizer, config.chunk_sampling(), config.selection_callback(),
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
            student = sft(student, tokenizer, config, data, "Gen-SSD")

    student.save_pretrained(config.output_dir)
    tokenizer.save_pretrained(config.output_dir)
    accuracy(student, tokenizer, script_args, "student after Gen-SSD")


if __name__ == "__main__":
    main()
