"""TSD-KD: token-selective dual knowledge distillation (https://huggingface.co/papers/2603.13260) with `TSDKDTrainer`.

On-policy: the student samples a response; it is trained with an entropy-gap-gated generalized JSD on every token, a
Plackett-Luce loss that follows the teacher's ranking of the student's own top-10 candidates on the opener (the
first 10 % of the response's entropy), and the entropy of its 10 % most uncertain tokens.

Toy world, CPU, a few minutes:
    trl-distill train tsd_kd
    accelerate launch examples/tsd_kd.py --max_steps 300 --adaptive_opener true
Paper scale (Qwen2.5-14B-Instruct -> Qwen2.5-1.5B-Instruct on UltraInteract prompts, 8 GPUs):
    python examples/data/tsd_kd.py --output data/ultrainteract_prompts.jsonl
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/tsd_kd.py \\
        --config examples/configs/tsd_kd_paper.yaml
"""

HINT = "make the paper's prompts with `python examples/data/tsd_kd.py`"


def make_parser(prog: str = "tsd_kd.py"):
    from ..toy_recipes import CHOSEN, ON_POLICY_STEPS, TSD_KD, TSD_KD_TOY
    from ..tsd_kd import TSDKDConfig
    from .common import DistillScriptArguments, ModelConfig, make_parser

    # The paper's loss defaults (beta 0.9, K 10, p = rho = 0.1, alpha 0.1, lmbda 1.0) come from TSDKDConfig itself;
    # on the toy world the extra terms are toy-scaled (K 3, gamma 0.015, alpha 0.01: the paper's collapse the toy
    # student, benchmarks/tsd_kd_toy.py), at the toy reproduction's budget and chosen learning rate.
    return make_parser(prog, (DistillScriptArguments, TSDKDConfig, ModelConfig), __doc__, output_dir="runs/tsd_kd",
                       learning_rate=CHOSEN[TSD_KD], max_new_tokens=128, max_steps=ON_POLICY_STEPS, **TSD_KD_TOY)


def train(script_args, config, model_args):
    from ..tsd_kd import TSDKDTrainer
    from .common import train_kd

    return train_kd(TSDKDTrainer, "tsd_kd", "TSD-KD", script_args, config, model_args,
                    ("messages", "prompt", "completion"), HINT)
