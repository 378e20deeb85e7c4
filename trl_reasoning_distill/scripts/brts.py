"""BRTS: on-policy distillation with best-of-N teacher rollout selection (https://huggingface.co/papers/2605.09725).

On-policy: the student samples a response and is trained on it with the teacher's top-K reverse KL (L_S). The teacher
samples N = 2 rollouts per prompt (temperature 0.7, top-p 0.95); they are graded against the `answer` column, and the
correct one closest to the student's top-16 tokens is kept (else, with --recovery, a rollout of the teacher shown the
answer as a silent key; else the closest one). The student then learns the teacher's top-16 on that rollout, placed
after the original prompt (L_T, weight lambda = 0.05).

Toy world, CPU, a few minutes (200 steps of 16 prompts):
    trl-distill train brts
    trl-distill train brts --num_teacher_rollouts 4 --recovery true
    accelerate launch examples/brts.py --max_steps 300
Paper scale (JustRL-DeepSeek-1.5B -> DeepSeek-R1-Distill-Qwen-1.5B on DAPO-Math-17K, 8 GPUs):
    python examples/data/brts.py --output data/dapo_math_17k.jsonl
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/brts.py \\
        --config examples/configs/brts_paper.yaml
"""

HINT = "make the paper's data with `python examples/data/brts.py`"


def make_parser(prog: str = "brts.py"):
    from ..brts import BRTSConfig
    from ..toy_recipes import BRTS, CHOSEN, ON_POLICY_STEPS
    from .common import DistillScriptArguments, ModelConfig, make_parser

    # The paper's defaults (N 2, K 16, lambda 0.05, teacher 0.7 / 0.95, lmbda 1.0) come from BRTSConfig itself; the
    # toy reproduction's budget, chosen learning rate and Tier-2 recovery (its BRTS row) on the toy world.
    return make_parser(prog, (DistillScriptArguments, BRTSConfig, ModelConfig), __doc__, output_dir="runs/brts",
                       learning_rate=CHOSEN[BRTS], max_new_tokens=128, max_steps=ON_POLICY_STEPS, recovery=True)


def train(script_args, config, model_args):
    from ..brts import BRTSTrainer
    from .common import train_kd

    # prompts and their ground truth; BRTSTrainer checks both
    return train_kd(BRTSTrainer, "brts", "BRTS", script_args, config, model_args, ("prompt", config.answer_column),
                    HINT)
