"""BRTS: on-policy distillation with best-of-N teacher rollout selection (https://huggingface.co/papers/2605.09725).

On-policy: the student samples a response and is trained on it with the teacher's top-K reverse KL (L_S). The teacher
samples N = 2 rollouts per prompt (temperature 0.7, top-p 0.95); they are graded against the `answer` column, and the
correct one closest to the student's top-16 tokens is kept (else, with --recovery, a rollout of the teacher shown the
answer as a silent key; else the closest one). The student then learns the teacher's top-16 on that rollout, placed
after the original prompt (L_T, weight λ = 0.05).

Toy world, CPU, about ten minutes (150 steps of 16 prompts):
    python examples/brts.py
    python examples/brts.py --num_teacher_rollouts 4 --recovery true
    accelerate launch examples/brts.py --max_steps 300
Paper scale (JustRL-DeepSeek-1.5B -> DeepSeek-R1-Distill-Qwen-1.5B on DAPO-Math-17K, 8 GPUs):
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/brts.py \
        --config examples/configs/brts_paper.yaml
"""

from _common import TOY_TRAINING_DEFAULTS, ScriptArguments, accuracy, load_models

from trl_reasoning_distill._trl import TrlParser
from trl_reasoning_distill.brts import BRTSConfig, BRTSTrainer
from trl_reasoning_distill.cli import load_dataset_spec


def main():
    parser = TrlParser((ScriptArguments, BRTSConfig))
    # The paper's defaults (N 2, K 16, lambda 0.05, teacher 0.7 / 0.95, lmbda 1.0) come from BRTSConfig itself.
    parser.set_defaults(**{**TOY_TRAINING_DEFAULTS, "output_dir": "runs/brts", "learning_rate": 5e-4},
                        max_new_tokens=128)
    script_args, config = parser.parse_args_and_config()
    student, teacher, tokenizer = load_models(script_args)
    train = load_dataset_spec(script_args.train_data)  # prompts and their ground truth; BRTSTrainer checks both
    train = train.select_columns([c for c in ("prompt", config.answer_column) if c in train.column_names])
    accuracy(student, tokenizer, script_args, "student before")
    trainer = BRTSTrainer(model=student, teacher_model=teacher, args=config, train_dataset=train,
                          processing_class=tokenizer)
    trainer.train()
    trainer.save_model(config.output_dir)
    accuracy(trainer.model, tokenizer, script_args, "student after BRTS")


if __name__ == "__main__":
    main()
