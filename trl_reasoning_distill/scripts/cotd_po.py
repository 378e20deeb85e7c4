"""CoTD-PO: chain-of-thought distillation with preference optimization, offline rounds with `CoTDPOTrainer`.

Each round the student samples K answers to fresh prompts, each continuing the prompt and the teacher's rationale;
a teacher scorer rates them; the student learns the teacher's rationale (NLL) and, listwise, the teacher's ranking
of its own answers (no reference model). Rounds resume where they stopped (`<output_dir>/round_NN/`), and only under
the prompts, scorer and settings that made them (`<output_dir>/fingerprint.json`; `--overwrite` starts afresh).
The rounds fine-tune every weight (paper §3): --use_peft and 4/8-bit loading are refused.

Toy world, CPU, about ten minutes (teacher rationales from the toy teacher, exact correctness as the teacher's
score):
    trl-distill train cotd_po
    trl-distill train cotd_po --use_teacher_rationale false --rationale_weight 0   # No-Teacher-CoT ablation
    trl-distill train cotd_po --loss_mode pairwise_simpo                           # pairwise ablation (Table 3)
Paper scale (rationales precomputed by the teacher in a `rationale` column, a teacher-aligned reward model):
    python examples/data/cotd_po.py --output data/ultrafeedback_rationales.jsonl --rationales <id, rationale JSONL>
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/cotd_po.py \\
        --config examples/configs/cotd_po_paper.yaml
"""

from dataclasses import dataclass, field

HINT = "make the paper's prompts with `python examples/data/cotd_po.py`"


@dataclass
class TeacherArguments:
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher model (writes the rationales the data lacks; the 'teacher-logprob' "
                                        "scorer): a path, a Hub id or 'toy-teacher'; '' when neither is needed."})
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


def make_parser(prog: str = "cotd_po.py"):
    from ..cotd_po import CoTDPOConfig, CoTDPORoundsConfig
    from ..toy_recipes import CHOSEN, COTD_PO, COTD_PO_TOY, SFT_STEPS
    from .common import DistillScriptArguments, ModelConfig, make_parser

    # The toy world's format (the teacher's `<think>` steps are the rationale, the boxed number is the answer) and the
    # toy reproduction's CoTD-PO run (reproduce.py: run_cotd_po): 2 rounds of SFT_STEPS / 2 steps of batch 16,
    # one fresh prompt per sequence (toy:train:8000), K = 4 answers of <= 24 tokens, its chosen learning rate.
    rounds = 2
    return make_parser(prog, (DistillScriptArguments, TeacherArguments, CoTDPORoundsConfig, CoTDPOConfig, ModelConfig,
                              OutputArguments), __doc__,
                       output_dir="runs/cotd_po", max_steps=SFT_STEPS // rounds, per_device_train_batch_size=16,
                       warmup_steps=0.1, learning_rate=CHOSEN[COTD_PO], logging_steps=25, **COTD_PO_TOY,
                       gradient_accumulation_steps=1, num_rounds=rounds, prompts_per_round=SFT_STEPS * 16 // rounds,
                       num_candidates=4, max_new_tokens=24, dataset_name=f"toy:train:{SFT_STEPS * 16}")


def make_scorer(teacher_args: TeacherArguments, teacher, teacher_tokenizer, config):
    from ..cotd_po import LogProbTeacherScorer, RewardModelScorer, ToyCorrectnessScorer

    if teacher_args.scorer == "toy":
        return ToyCorrectnessScorer()
    if teacher_args.scorer == "teacher-logprob":
        return LogProbTeacherScorer(teacher, teacher_tokenizer, max_length=config.max_length)
    return RewardModelScorer.from_pretrained(teacher_args.scorer, trust_remote_code=config.trust_remote_code,
                                             device=config.device)


def train(script_args, teacher_args: TeacherArguments, rounds, config, model_args, output: OutputArguments):
    import json
    from pathlib import Path

    import torch

    from ..cotd_po import TeacherRationales, run_rounds
    from ..utils import tune_cpu_allocator
    from .common import accuracy, ignore_bias_buffers, load_eval_data, load_student, load_teacher, load_train_data

    if model_args.use_peft or model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError("CoTD-PO's rounds fine-tune every weight (paper §3): drop --use_peft / --load_in_4bit / "
                         "--load_in_8bit.")
    if config.device.type == "cpu":  # toy-sized matrices: one thread, freed memory kept (several times faster)
        tune_cpu_allocator()
        torch.set_num_threads(1)
    pool = load_train_data(script_args, HINT)
    eval_rows = load_eval_data(script_args)
    student, tokenizer = load_student(model_args, config.trust_remote_code)
    ignore_bias_buffers(student, script_args)
    needs_teacher = teacher_args.scorer == "teacher-logprob" or (
        config.use_teacher_rationale and "rationale" not in pool.column_names)
    teacher, teacher_tokenizer = (load_teacher(teacher_args.teacher_model_name_or_path, model_args, None,
                                               config.trust_remote_code) if needs_teacher else (None, None))
    rationales = None
    if config.use_teacher_rationale and "rationale" not in pool.column_names:
        rationales = TeacherRationales(teacher.to(config.device), teacher_tokenizer, config,
                                       temperature=teacher_args.rationale_temperature,
                                       max_new_tokens=teacher_args.rationale_max_new_tokens)
    scorer = make_scorer(teacher_args, teacher, teacher_tokenizer, config)
    accuracy(student, tokenizer, eval_rows, script_args, "student before")
    student = run_rounds(student, tokenizer, pool, scorer, config, rounds, rationales=rationales,
                         overwrite=output.overwrite)
    if config.process_index == 0:  # each round's trainer saved its own model and card under round_NN/
        student.save_pretrained(config.output_dir)
        tokenizer.save_pretrained(config.output_dir)
        Path(config.output_dir, "training_args.json").write_text(
            json.dumps({"rounds": vars(rounds), "training": json.loads(config.to_json_string())}, indent=2,
                       default=str))
    accuracy(student, tokenizer, eval_rows, script_args, f"student after {rounds.num_rounds} CoTD-PO rounds")
    return student
