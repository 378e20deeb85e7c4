"""CoTD-PO: chain-of-thought distillation with preference optimization, offline rounds with `CoTDPOTrainer`.

Each round the student samples K answers to fresh prompts, each continuing the prompt and the teacher's rationale;
a teacher scorer rates them; the student learns the teacher's rationale (NLL) and, listwise, the teacher's ranking
of its own answers (no reference model). Rounds resume where they stopped (`<output_dir>/round_NN/`), and only under
the prompts, scorer and settings that made them (`<output_dir>/fingerprint.json`; `--overwrite` starts afresh).

Toy world, CPU, about a minute (teacher rationales from the toy teacher, exact correctness as the teacher's score):
    python examples/cotd_po.py
    python examples/cotd_po.py --use_teacher_rationale false --rationale_weight 0   # No-Teacher-CoT ablation
    python examples/cotd_po.py --loss_mode pairwise_simpo                           # pairwise ablation (Table 3)
Paper scale (rationales precomputed by the teacher in a `rationale` column, a teacher-aligned reward model):
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/cotd_po.py \
        --config examples/configs/cotd_po_paper.yaml
"""

from dataclasses import dataclass, field

import torch
from _common import TOY_TRAINING_DEFAULTS, ScriptArguments, accuracy

from trl_reasoning_distill._trl import TrlParser
from trl_reasoning_distill.cli import load_dataset_spec, load_model_and_tokenizer
from trl_reasoning_distill.cotd_po import (
    CoTDPOConfig,
    CoTDPORoundsConfig,
    LogProbTeacherScorer,
    RewardModelScorer,
    TeacherRationales,
    ToyCorrectnessScorer,
    run_rounds,
)
from trl_reasoning_distill.utils import tune_cpu_allocator

# The toy world's format: the teacher's `<think>` steps are the rationale, the boxed number is the answer.
TOY_FORMAT = dict(instruction_template="{prompt}", thought_prefix="<think>", answer_prefix="</think>")


@dataclass
class TeacherArguments:
    scorer: str = field(
        default="toy",
        metadata={"help": "Teacher scores: 'toy' (exact correctness of toy answers), 'teacher-logprob' (the teacher's "
                          "log-likelihood of each answer), or the path / hub id of a reward model."},
    )
    rationale_temperature: float = field(default=0.0, metadata={"help": "Teacher rationale sampling (0: greedy)."})
    rationale_max_new_tokens: int = field(default=192, metadata={"help": "Longest teacher rationale."})


@dataclass
class OutputArguments:
    overwrite: bool = field(
        default=False, metadata={"help": "Delete rounds made under other prompts, scorer or settings and start "
                                         "afresh (without it such rounds stop the run, naming what differs)."})


def make_scorer(teacher_args: TeacherArguments, teacher, teacher_tokenizer, config: CoTDPOConfig):
    if teacher_args.scorer == "toy":
        return ToyCorrectnessScorer()
    if teacher_args.scorer == "teacher-logprob":
        return LogProbTeacherScorer(teacher, teacher_tokenizer, max_length=config.max_length)
    return RewardModelScorer.from_pretrained(teacher_args.scorer, trust_remote_code=config.trust_remote_code,
                                             device=config.device)


def main():
    parser = TrlParser((ScriptArguments, TeacherArguments, CoTDPORoundsConfig, CoTDPOConfig, OutputArguments))
    parser.set_defaults(**{**TOY_TRAINING_DEFAULTS, "output_dir": "runs/cotd_po", "max_steps": 30,
                           "per_device_train_batch_size": 8, "warmup_steps": 3, "learning_rate": 2e-4,
                           "logging_steps": 10}, **TOY_FORMAT, gradient_accumulation_steps=1, num_rounds=3,
                        prompts_per_round=128, num_candidates=4, max_new_tokens=24)
    script_args, teacher_args, rounds, config, output = parser.parse_args_and_config()
    if config.device.type == "cpu":  # toy-sized matrices: one thread, freed memory kept (several times faster)
        tune_cpu_allocator()
        torch.set_num_threads(1)
    student, tokenizer = load_model_and_tokenizer(script_args.student)
    pool = load_dataset_spec(script_args.train_data)
    needs_teacher = teacher_args.scorer == "teacher-logprob" or (
        config.use_teacher_rationale and "rationale" not in pool.column_names)
    teacher, teacher_tokenizer = load_model_and_tokenizer(script_args.teacher) if needs_teacher else (None, None)
    rationales = None
    if config.use_teacher_rationale and "rationale" not in pool.column_names:
        rationales = TeacherRationales(teacher.to(config.device), teacher_tokenizer, config,
                                       temperature=teacher_args.rationale_temperature,
                                       max_new_tokens=teacher_args.rationale_max_new_tokens)
    scorer = make_scorer(teacher_args, teacher, teacher_tokenizer, config)
    accuracy(student, tokenizer, script_args, "student before")
    student = run_rounds(student, tokenizer, pool, scorer, config, rounds, rationales=rationales,
                         overwrite=output.overwrite)
    if config.process_index == 0:
        student.save_pretrained(config.output_dir)
        tokenizer.save_pretrained(config.output_dir)
    accuracy(student, tokenizer, script_args, f"student after {rounds.num_rounds} CoTD-PO rounds")


if __name__ == "__main__":
    main()
