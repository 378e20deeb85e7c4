"""Standard KD baseline: fine-tune the student on verified teacher samples (rejection sampling + TRL's SFTTrainer).

Toy world, CPU, a few minutes:
    trl-distill train standard_kd
    accelerate launch examples/standard_kd.py --samples_per_prompt 8 --max_steps 300
Real models: --model_name_or_path, --teacher_model_name_or_path and --dataset_name (prompt + answer columns) as in
examples/gkd.py. The teacher samples on vLLM with --teacher_generation_backend vllm: on a `trl vllm-serve` of it at
--teacher_model_server_url, else on an engine in this process (--teacher_vllm_gpu_memory_utilization, ...).
"""

from dataclasses import dataclass, field


@dataclass
class SamplingArguments:
    samples_per_prompt: int = field(default=4, metadata={"help": "Teacher samples drawn per training prompt."})
    sample_temperature: float = field(default=1.0, metadata={"help": "Teacher sampling temperature."})
    sample_max_new_tokens: int = field(default=192, metadata={"help": "Teacher sampling budget per sample."})


def make_parser(prog: str = "standard_kd.py"):
    from .._trl import SFTConfig
    from ..toy_recipes import CHOSEN, SFT_STEPS, STANDARD_KD
    from .common import DistillScriptArguments, ModelConfig, TeacherArguments, make_parser

    return make_parser(prog, (DistillScriptArguments, SFTConfig, ModelConfig, TeacherArguments, SamplingArguments,
                              teacher_generation_arguments()),
                       __doc__, output_dir="runs/standard_kd", completion_only_loss=True, max_steps=SFT_STEPS,
                       learning_rate=CHOSEN[STANDARD_KD])  # the toy reproduction's budget and chosen rate


def teacher_generation_arguments():
    """The `TeacherGenerationConfig` fields of the distillation configs (which backend samples the teacher), as an
    argument class of their own: the SFTConfig of Standard KD has none."""
    from dataclasses import dataclass

    from ..generation.base import TeacherGenerationConfig, check_teacher_generation_fields

    @dataclass
    class TeacherGenerationArguments(TeacherGenerationConfig):
        def __post_init__(self):  # the mixin's checks, with no config class after it
            check_teacher_generation_fields(self)

    return TeacherGenerationArguments


def train(script_args, config, model_args, teacher_args, sampling: SamplingArguments, teacher_generation):
    from .._trl import SFTTrainer
    from ..baselines import rejection_sample
    from .common import (
        accuracy,
        check_model_args,
        get_peft_config,
        ignore_bias_buffers,
        load_eval_data,
        load_student,
        load_train_data,
        save,
        teacher_sampler,
    )

    check_model_args(model_args)
    prompts = load_train_data(script_args)
    eval_rows = load_eval_data(script_args)
    student, tokenizer = load_student(model_args, config.trust_remote_code)
    ignore_bias_buffers(student, script_args)
    # the transformers teacher, or the VLLMGenerator that --teacher_generation_backend vllm asks for
    teacher = teacher_sampler(teacher_args.teacher_model_name_or_path, model_args, teacher_generation, tokenizer,
                              trust_remote_code=config.trust_remote_code, num_processes=config.world_size)
    accuracy(student, tokenizer, eval_rows, script_args, "student before")
    data = rejection_sample(teacher, tokenizer, prompts, n=sampling.samples_per_prompt, seed=config.seed,
                            temperature=sampling.sample_temperature, max_new_tokens=sampling.sample_max_new_tokens)
    print(f"{len(data)} verified teacher samples, {sum(data['tokens_generated'])} teacher tokens generated")
    trainer = SFTTrainer(model=student, args=config, train_dataset=data.select_columns(["prompt", "completion"]),
                         processing_class=tokenizer, peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    save(trainer, config.output_dir, script_args, "standard_kd")
    accuracy(trainer.model, tokenizer, eval_rows, script_args, "student after Standard KD")
    return trainer
