"""Standard KD baseline: fine-tune the student on verified teacher samples (rejection sampling + TRL's SFTTrainer).

Toy world, CPU, a few minutes:
    python examples/standard_kd.py
    accelerate launch examples/standard_kd.py --samples_per_prompt 8 --max_steps 300
Real models: pass --teacher/--student/--train_data (prompt + answer columns) as in examples/gkd.py.
"""

from dataclasses import dataclass, field

from _common import TOY_TRAINING_DEFAULTS, ScriptArguments, accuracy, load_models

from trl_reasoning_distill import rejection_sample
from trl_reasoning_distill._trl import SFTConfig, SFTTrainer, TrlParser
from trl_reasoning_distill.cli import load_dataset_spec


@dataclass
class SamplingArguments:
    samples_per_prompt: int = field(default=4, metadata={"help": "Teacher samples drawn per training prompt."})
    sample_temperature: float = field(default=1.0, metadata={"help": "Teacher sampling temperature."})
    sample_max_new_tokens: int = field(default=192, metadata={"help": "Teacher sampling budget per sample."})


def main():
    parser = TrlParser((ScriptArguments, SamplingArguments, SFTConfig))
    parser.set_defaults(**{**TOY_TRAINING_DEFAULTS, "output_dir": "runs/standard_kd"}, completion_only_loss=True)
    script_args, sampling, config = parser.parse_args_and_config()
    student, teacher, tokenizer = load_models(script_args)
    accuracy(student, tokenizer, script_args, "student before")
    data = rejection_sample(teacher, tokenizer, load_dataset_spec(script_args.train_data),
                            n=sampling.samples_per_prompt, temperature=sampling.sample_temperature,
                            max_new_tokens=sampling.sample_max_new_tokens)
    print(f"{len(data)} verified teacher samples, {sum(data['tokens_generated'])} teacher tokens generated")
    trainer = SFTTrainer(model=student, args=config, train_dataset=data.select_columns(["prompt", "completion"]),
                         processing_class=tokenizer)
    trainer.train()
    trainer.save_model(config.output_dir)
    accuracy(trainer.model, tokenizer, script_args, "student after Standard KD")


if __name__ == "__main__":
    main()
