"""On-policy distillation baseline (GKD, https://huggingface.co/papers/2306.13649) with our `KDTrainer`.

Toy world, CPU, a few minutes:
    python examples/gkd.py
    accelerate launch examples/gkd.py --max_steps 300 --lmbda 1.0 --beta 0.5
Real models (a GPU; see examples/configs/ for paper-scale settings):
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/gkd.py \
        --teacher Qwen/Qwen2.5-7B-Instruct --student Qwen/Qwen2.5-1.5B-Instruct \
        --train_data data/train.jsonl --eval_data data/test.jsonl --bf16 true --max_new_tokens 1024
"""

from _common import TOY_TRAINING_DEFAULTS, ScriptArguments, accuracy, load_models, load_training_data

from trl_reasoning_distill import KDConfig, KDTrainer
from trl_reasoning_distill._trl import TrlParser


def main():
    parser = TrlParser((ScriptArguments, KDConfig))
    parser.set_defaults(**{**TOY_TRAINING_DEFAULTS, "output_dir": "runs/gkd"}, lmbda=1.0, beta=0.5, temperature=1.0,
                        max_new_tokens=128)
    script_args, config = parser.parse_args_and_config()
    student, teacher, tokenizer = load_models(script_args)
    accuracy(student, tokenizer, script_args, "student before")
    trainer = KDTrainer(model=student, teacher_model=teacher, args=config,
                        train_dataset=load_training_data(script_args), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(config.output_dir)
    accuracy(trainer.model, tokenizer, script_args, "student after GKD")


if __name__ == "__main__":
    main()
