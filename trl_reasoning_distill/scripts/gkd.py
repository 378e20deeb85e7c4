"""On-policy distillation baseline (GKD, https://huggingface.co/papers/2306.13649) with our `KDTrainer`.

Toy world, CPU, a few minutes:
    trl-distill train gkd
    accelerate launch examples/gkd.py --max_steps 300 --lmbda 1.0 --beta 0.5
Real models (a GPU; see examples/configs/ for paper-scale settings):
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/gkd.py \\
        --model_name_or_path Qwen/Qwen2.5-1.5B-Instruct --teacher_model_name_or_path Qwen/Qwen2.5-7B-Instruct \\
        --dataset_name openai/gsm8k --dataset_config main --eval_dataset_name '' --bf16 true --max_new_tokens 1024
"""


def make_parser(prog: str = "gkd.py"):
    from ..kd_config import KDConfig
    from ..toy_recipes import CHOSEN, GKD, ON_POLICY_STEPS
    from .common import DistillScriptArguments, ModelConfig, make_parser

    # GKD's on-policy setting (lmbda 1), the symmetric JSD (beta 0.5); ours for the toy run: 128 new tokens, and the
    # toy reproduction's budget and chosen learning rate (benchmarks/results/reproduce.csv).
    return make_parser(prog, (DistillScriptArguments, KDConfig, ModelConfig), __doc__, output_dir="runs/gkd",
                       lmbda=1.0, beta=0.5, temperature=1.0, max_new_tokens=128, max_steps=ON_POLICY_STEPS,
                       learning_rate=CHOSEN[GKD])


def train(script_args, config, model_args):
    from ..kd_trainer import KDTrainer
    from .common import train_kd

    return train_kd(KDTrainer, "gkd", "GKD", script_args, config, model_args, ("messages", "prompt", "completion"))
