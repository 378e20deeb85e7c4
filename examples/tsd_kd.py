"""TSD-KD: token-selective dual knowledge distillation (https://huggingface.co/papers/2603.13260) with `TSDKDTrainer`.

On-policy: the student samples a response, then is trained with the entropy-gated generalized JSD on every token, a
Plackett-Luce loss that follows the teacher's ranking of the student's own top-10 candidates on the opener (the
first 10 % of the response's entropy), and the entropy of its 10 % most uncertain tokens.

Toy world, CPU, a few minutes:
    python examples/tsd_kd.py
    accelerate launch examples/tsd_kd.py --max_steps 300 --adaptive_opener true
Paper scale (Qwen2.5-14B-Instruct -> Qwen2.5-1.5B-Instruct on UltraInteract prompts, 8 GPUs):
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/tsd_kd.py \
        --config examples/configs/tsd_kd_paper.yaml
"""

from _common import TOY_TRAINING_DEFAULTS, ScriptArguments, accuracy, load_models, load_training_data

from trl_reasoning_distill._trl import TrlParser
from trl_reasoning_distill.tsd_kd import TSDKDConfig, TSDKDTrainer


def main():
    parser = TrlParser((ScriptArguments, TSDKDConfig))
    # The paper's loss defaults (beta 0.9, K 10, p = rho = 0.1, alpha 0.1, lmbda 1.0) come from TSDKDConfig itself.
    parser.set_defaults(**{**TOY_TRAINING_DEFAULTS, "output_dir": "runs/tsd_kd", "learning_rate": 5e-4},
                        max_new_tokens=128)
    script_args, config = parser.parse_args_and_config()
    student, teacher, tokenizer = load_models(script_args)
    accuracy(student, tokenizer, script_args, "student before")
    trainer = TSDKDTrainer(model=student, teacher_model=teacher, args=config,
                           train_dataset=load_training_data(script_args), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(config.output_dir)
    accuracy(trainer.model, tokenizer, script_args, "student after TSD-KD")


if __name__ == "__main__":
    main()
