"""VCRD: validity-calibrated reasoning distillation (https://huggingface.co/papers/2605.04078) with `VCRDTrainer`.

Offline, as in the paper: one teacher response and one student response per prompt are sampled before training
(unless the data has them as `teacher_completion`/`student_completion`, or DistiLLM-2's `chosen`/`rejected`). The
student then learns with skew KL on the teacher's responses and skew reverse KL on its own, each token weighted by
how a judge rates the student's proposed step against the teacher's under the same prefix (w = r_S / r_T): here the
toy world's PRM-free teacher-probability weight (as the reproduction), at paper scale a PRM (Skywork-o1-Open-PRM), or
the toy world's exact step checker.
LoRA (the paper's Table 9) with TRL's --use_peft true --lora_r 16 --lora_alpha 128 ...

Toy world, CPU, a few minutes:
    trl-distill train vcrd
    trl-distill train vcrd --validity_judge step_checker --weight_clip_max 2   # the exact step checker as judge
The sampled rollouts are a resumable file (default <output_dir>/rollouts.jsonl), fingerprinted with the models and
settings that made them: a rerun under other ones stops and names what differs; `--overwrite` starts afresh.
Paper scale (Qwen2.5-Math-7B-Instruct -> Qwen2.5-Math-1.5B, Skywork PRM, LoRA, 4 GPUs):
    python examples/data/vcrd.py --output data/metamathqa_vcrd.jsonl
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/vcrd.py \\
        --config examples/configs/vcrd_paper.yaml
"""

from dataclasses import dataclass, field
from pathlib import Path

HINT = "make the paper's prompts with `python examples/data/vcrd.py`"


@dataclass
class RolloutArguments:
    """Where the offline rollouts are written (resumable and fingerprinted)."""

    rollouts_data: str = field(
        default="", metadata={"help": "Rollout JSONL (resumed if present); default <output_dir>/rollouts.jsonl."})
    overwrite: bool = field(
        default=False, metadata={"help": "Delete rollouts made under other models or settings and start afresh "
                                         "(without it such a file stops the run, naming what differs)."})


def make_parser(prog: str = "vcrd.py"):
    from ..toy_recipes import CHOSEN, ON_POLICY_STEPS, VCRD
    from ..vcrd import VCRDConfig
    from .common import DistillScriptArguments, ModelConfig, make_parser

    # Toy settings (ours): the toy world has no PRM; the PRM-free weight (paper §10.4) is the reproduction's judge and
    # the better one in the toy study (its exact step checker's {0, 1} scores give w = 0 wherever the student errs,
    # benchmarks/vcrd_toy.py). Toy prompts are ~20 tokens, solutions < 192.
    return make_parser(prog, (DistillScriptArguments, VCRDConfig, ModelConfig, RolloutArguments), __doc__,
                       output_dir="runs/vcrd", learning_rate=CHOSEN[VCRD], validity_judge="teacher_prob",
                       max_prompt_length=64, max_new_tokens=192, max_steps=ON_POLICY_STEPS)


def train(script_args, config, model_args, rollouts: RolloutArguments):
    from ..generation.vllm import teacher_generator_from_config
    from ..vcrd import VCRDTrainer
    from ..vcrd.data import TEACHER_COLUMNS, sample_vcrd_rollouts
    from .common import train_kd

    def training_data(student, teacher, tokenizer, data):
        """The training rows; without teacher responses, both models' responses are sampled first (paper §12)."""
        if set(TEACHER_COLUMNS) & set(data.column_names):
            return data
        offline_student = student if config.student_rollout == "offline" else None
        print(f"sampling offline rollouts for {len(data)} prompts", flush=True)
        # --teacher_generation_backend vllm: the teacher's responses from a vLLM server or a colocated engine
        sampler = teacher_generator_from_config(config, teacher, tokenizer, config.world_size) or teacher
        return sample_vcrd_rollouts(sampler, offline_student, tokenizer, data, max_new_tokens=config.max_new_tokens,
                                    temperature=config.rollout_temperature, top_p=config.rollout_top_p,
                                    seed=config.seed, overwrite=rollouts.overwrite,
                                    output_jsonl=rollouts.rollouts_data or Path(config.output_dir) / "rollouts.jsonl")

    from .common import load_train_data

    data = load_train_data(script_args, HINT)
    return train_kd(VCRDTrainer, "vcrd", "VCRD", script_args, config, model_args, tuple(data.column_names),
                    train_data=data, train_dataset=training_data)
