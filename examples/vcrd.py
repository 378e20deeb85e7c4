"""VCRD: validity-calibrated reasoning distillation (https://huggingface.co/papers/2605.04078) with `VCRDTrainer`.

Offline, as in the paper: one teacher response and one student response per prompt are sampled before training
(unless the data has them as `teacher_completion`/`student_completion`, or DistiLLM-2's `chosen`/`rejected`). The
student then learns with skew KL on the teacher's responses and skew reverse KL on its own, each token weighted by
how a judge rates the student's proposed step against the teacher's under the same prefix (w = r_S / r_T): here the
toy world's exact step checker, at paper scale a PRM (Skywork-o1-Open-PRM), or the PRM-free teacher-probability weight.

Toy world, CPU, a few minutes:
    python examples/vcrd.py
    python examples/vcrd.py --validity_judge teacher_prob --max_steps 300
The sampled rollouts are a resumable file (default <output_dir>/rollouts.jsonl), fingerprinted with the models and
settings that made them: a rerun under other ones stops and names what differs; `--overwrite` starts afresh.
Paper scale (Qwen2.5-Math-7B-Instruct -> Qwen2.5-Math-1.5B, Skywork PRM, LoRA, 4 GPUs):
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/vcrd.py \
        --config examples/configs/vcrd_paper.yaml
"""

from dataclasses import dataclass, field
from pathlib import Path

from _common import TOY_TRAINING_DEFAULTS, ScriptArguments, accuracy, load_models

from trl_reasoning_distill._trl import TrlParser
from trl_reasoning_distill.cli import load_dataset_spec
from trl_reasoning_distill.vcrd import VCRDConfig, VCRDTrainer
from trl_reasoning_distill.vcrd.data import TEACHER_COLUMNS, sample_vcrd_rollouts


@dataclass
class LoraArguments:
    """LoRA adapters, as the paper trains them (Table 9; module names from the DistiLLM-2 configs, spec §3)."""

    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank: 16 (paper Table 9)."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha: 128 (paper Table 9)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout: 0.05 (paper Table 9)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Adapted modules: every attention and MLP projection (paper; DL2 configs)."},
    )


@dataclass
class RolloutArguments:
    """Where the offline rollouts are written (resumable and fingerprinted)."""

    rollouts_data: str = field(
        default="", metadata={"help": "Rollout JSONL (resumed if present); default <output_dir>/rollouts.jsonl."})
    overwrite: bool = field(
        default=False, metadata={"help": "Delete rollouts made under other models or settings and start afresh "
                                         "(without it such a file stops the run, naming what differs)."})


def peft_config(lora: LoraArguments):
    if not lora.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                      target_modules=lora.lora_target_modules, task_type="CAUSAL_LM")


def training_data(script_args: ScriptArguments, rollouts: RolloutArguments, config: VCRDConfig, student, teacher,
                  tokenizer):
    """The training rows; without teacher responses, both models' responses are sampled first (paper §12)."""
    data = load_dataset_spec(script_args.train_data)
    if set(TEACHER_COLUMNS) & set(data.column_names):
        return data
    offline_student = student if config.student_rollout == "offline" else None
    print(f"sampling offline rollouts for {len(data)} prompts", flush=True)
    return sample_vcrd_rollouts(teacher, offline_student, tokenizer, data, max_new_tokens=config.max_new_tokens,
                                temperature=config.rollout_temperature, top_p=config.rollout_top_p, seed=config.seed,
                                output_jsonl=rollouts.rollouts_data or Path(config.output_dir) / "rollouts.jsonl",
                                overwrite=rollouts.overwrite)


def main():
    parser = TrlParser((ScriptArguments, VCRDConfig, LoraArguments, RolloutArguments))
    # Toy settings (ours): the toy world has an exact step checker and no PRM; its {0, 1} scores make Eq. (1) give
    # 0, ~1 or 1/eps, so w is capped at 2 (the PRM-free bound). Toy prompts are ~20 tokens, solutions < 192.
    parser.set_defaults(**{**TOY_TRAINING_DEFAULTS, "output_dir": "runs/vcrd", "learning_rate": 5e-4},
                        validity_judge="step_checker", weight_clip_max=2.0, max_prompt_length=64, max_new_tokens=192)
    script_args, config, lora, rollouts = parser.parse_args_and_config()
    student, teacher, tokenizer = load_models(script_args)
    accuracy(student, tokenizer, script_args, "student before")
    trainer = VCRDTrainer(model=student, teacher_model=teacher, args=config, processing_class=tokenizer,
                          train_dataset=training_data(script_args, rollouts, config, student, teacher, tokenizer),
                          peft_config=peft_config(lora))
    trainer.train()
    trainer.save_model(config.output_dir)
    accuracy(trainer.model, tokenizer, script_args, "student after VCRD")


if __name__ == "__main__":
    main()
