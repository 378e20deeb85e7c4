"""Run several trainers for 2 optimizer steps on a fixed global batch of 8 rows under one backend, alone or under
torchrun (gloo, CPU), and write what `tests/test_distributed.py` compares.

    python tests/distributed/matrix.py OUT_DIR BACKEND PER_DEVICE GRAD_ACCUM CASE [CASE ...]
    torchrun --nproc_per_node 2 tests/distributed/matrix.py OUT_DIR fsdp2 2 2 kd tsd_kd ...

BACKEND is `ddp` (plain data parallel, or one process), `fsdp2`, `zero2` or `zero3`. accelerate turns FSDP and
DeepSpeed on only for GPU-like devices, so on CPU this script forces the accelerator state to FSDP (`fsdp2`) or
runs DeepSpeed's CPU accelerator (`DS_ACCELERATOR=cpu`) without `use_cpu`. Rank 0 writes OUT_DIR/CASE.pt per case:
the logged losses, the updated student weights gathered whole, and whether student and teacher were sharded.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch
from datasets import Dataset

from trl_reasoning_distill.toy import load_toy_student, load_toy_teacher
from trl_reasoning_distill.toy.models import STUDENT_SHAPE, TEACHER_SHAPE, build_model, build_student, build_teacher
from trl_reasoning_distill.toy.task import sample_problems, solution
from trl_reasoning_distill.toy.tokenizer import build_tokenizer

COMMON = dict(max_steps=2, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", report_to="none",
              save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True, dataloader_num_workers=0, bf16=False,
              fp16=False, activation_checkpointing=False)
TOY_FORMAT = dict(instruction_template="{prompt}", thought_prefix="<think>", answer_prefix="</think>")


def zero_config(stage: int) -> dict:
    """DeepSpeed config as accelerate's `deepspeed_zero{2,3}.yaml` builds it, with every parameter partitioned (the
    toy models' matrices are under DeepSpeed's default persistence threshold) and the batch sizes left to the
    Trainer ("auto")."""
    zero = {"stage": stage}
    if stage == 3:
        zero.update(stage3_param_persistence_threshold=0, stage3_gather_16bit_weights_on_model_save=True)
    return {"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "zero_allow_untested_optimizer": True}


def backend_args(backend: str) -> dict:
    if backend == "ddp":
        return {"use_cpu": True}
    if backend == "fsdp2":
        return {"use_cpu": True, "fsdp": "full_shard auto_wrap",
                "fsdp_config": {"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["Qwen2DecoderLayer"],
                                "reshard_after_forward": True}}
    return {"use_cpu": True, "deepspeed": zero_config(int(backend[-1]))}


def force_backend_on_cpu() -> None:
    """accelerate turns FSDP and DeepSpeed on only for GPU-like distributed types: on CPU (MULTI_CPU, gloo) it would
    silently train with DDP. Set the state to FSDP or DeepSpeed whenever a plugin is passed, as on GPUs."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
        if self.distributed_type != DistributedType.MULTI_CPU:
            return
        if fsdp_plugin is not None:
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
        elif deepspeed_plugin is not None:  # as AcceleratorState does for DeepSpeed on a GPU
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
            deepspeed_plugin.set_mixed_precision(self._mixed_precision)
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin

    AcceleratorState.__init__ = init


def uneven_rows(n: int = 8) -> list:
    """Problems whose solutions differ a lot in length, so processes hold very different token counts."""
    problems = sample_problems("train", n, seed=5, min_ops=2, max_ops=6)
    styles = ["ltr", "verbose", "split", "grouped"] * (n // 4)
    return list(zip(problems, styles))


def untied(shape: dict, tokenizer, seed: int):
    model = build_model(tokenizer, seed=seed, **shape)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return model


def greedy(trainer) -> None:
    """Greedy samples: the same rows give the same samples whichever process draws them."""
    for config in (trainer._student_generation_config, trainer._teacher_generation_config):
        config.do_sample = False
        config.temperature, config.top_k, config.top_p = None, None, None
    if hasattr(trainer, "_hf_completions"):  # sampling at an explicit temperature: 0 is greedy
        original = trainer._hf_completions
        trainer._hf_completions = lambda prompts, who, temperature, top_p: original(prompts, who, 0.0, top_p)


def kd_case(tokenizer, base: dict, variant: str):
    from trl_reasoning_distill.kd_config import KDConfig
    from trl_reasoning_distill.kd_trainer import KDTrainer

    rows = Dataset.from_list([{"prompt": p.prompt, "completion": solution(p, s)} for p, s in uneven_rows()])
    student, teacher = build_student(tokenizer, seed=1), build_teacher(tokenizer, seed=2)
    if variant == "onpolicy":  # trained models: peaked distributions, so greedy samples do not hinge on rounding
        student, teacher = load_toy_student(), load_toy_teacher()
    if variant in ("untied", "lora_head"):  # FSDP2 cannot put a tied head, trained apart by PEFT, in its own unit
        student, teacher = untied(STUDENT_SHAPE, tokenizer, 1), untied(TEACHER_SHAPE, tokenizer, 2)
    kwargs, overrides = {}, {"lmbda": 0.0}
    if variant == "full":
        overrides["loss_chunk_size"] = 0
    if variant == "onpolicy":
        overrides.update(lmbda=1.0, max_new_tokens=12)
    if variant == "gc":
        overrides["activation_checkpointing"] = True
    if variant.startswith("lora"):
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           modules_to_save=["lm_head"] if variant == "lora_head" else None)
    args = KDConfig(**{**base, "beta": 0.5, "temperature": 1.0, "max_length": 256, **overrides})
    trainer = KDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=rows,
                        processing_class=tokenizer, **kwargs)
    if variant == "onpolicy":
        greedy(trainer)
    if variant == "reshard":
        reshard_student_head(trainer)
    return trainer


def reshard_student_head(trainer) -> None:
    """Free every FSDP2 unit of the student after its forward, the head's included (accelerate 1.16 keeps the head
    and the root gathered; older releases do not), and count the loss's head reads that find a DTensor."""
    from torch.distributed.tensor import DTensor
    from transformers import TrainerCallback

    class Reshard(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            units = [module for module in model.modules() if hasattr(module, "reshard")]
            model.register_forward_hook(lambda *_: [unit.reshard() for unit in units] and None)

    original = trainer.output_weight
    trainer.dtensor_head_reads = 0

    def output_weight(model):
        if model is not trainer.teacher_model:
            head = trainer.accelerator.unwrap_model(model).get_output_embeddings()
            trainer.dtensor_head_reads += isinstance(head.weight, DTensor)
        return original(model)

    trainer.output_weight = output_weight
    trainer.add_callback(Reshard())


def tsd_kd_case(tokenizer, base: dict, variant: str):
    from trl_reasoning_distill.tsd_kd import TSDKDConfig, TSDKDTrainer

    rows = Dataset.from_list([{"prompt": p.prompt, "completion": solution(p, s)} for p, s in uneven_rows()])
    kwargs = {}
    if variant.startswith("lora"):
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    args = TSDKDConfig(**{**base, "lmbda": 0.0, "top_k": 4, "max_length": 256})
    return TSDKDTrainer(model=build_student(tokenizer, seed=1), teacher_model=build_teacher(tokenizer, seed=2),
                        args=args, train_dataset=rows, processing_class=tokenizer, **kwargs)


def vcrd_case(tokenizer, base: dict, variant: str):
    from trl_reasoning_distill.vcrd import VCRDConfig, VCRDTrainer

    rows = []
    for i, (p, style) in enumerate(uneven_rows()):
        bad = solution(p, "ltr").replace(f"{{{p.answer}}}", f"{{{p.answer + 1}}}")
        rows.append({"prompt": [{"role": "user", "content": p.prompt}], "teacher_completion": solution(p, style),
                     "student_completion": solution(p, "verbose") if i % 2 else bad})
    args = VCRDConfig(**{**base, "validity_judge": "teacher_prob", "max_length": 320, "max_prompt_length": 48})
    return VCRDTrainer(model=build_student(tokenizer, seed=1), teacher_model=build_teacher(tokenizer, seed=2),
                       args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def brts_case(tokenizer, base: dict, variant: str):
    from trl_reasoning_distill.brts import BRTSConfig, BRTSTrainer

    rows = Dataset.from_list([{"prompt": p.prompt, "answer": str(p.answer)} for p, _ in uneven_rows()])
    args = BRTSConfig(**{**base, "top_k": 4, "max_new_tokens": 10, "max_length": 128, "num_teacher_rollouts": 2,
                         "teacher_temperature": 1e-4})
    trainer = BRTSTrainer(model=load_toy_student(), teacher_model=load_toy_teacher(),  # greedy: trained, see kd
                          args=args, train_dataset=rows, processing_class=tokenizer)
    greedy(trainer)
    return trainer


def gen_ssd_case(tokenizer, base: dict, variant: str):
    from trl_reasoning_distill.gen_ssd import GenSSDConfig, GenSSDTrainer

    rows = Dataset.from_list([{"prompt": p.prompt, "answer": str(p.answer)} for p, _ in uneven_rows()])
    args = GenSSDConfig(**{**base, "max_length": 128, "chunk_size": 6, "max_new_tokens": 12,
                           "num_candidates": [2, 2], "teacher_temperature": 0.0, "selection_rule": "low",
                           "keep_only_correct": False})
    return GenSSDTrainer(model=build_student(tokenizer, seed=1), teacher_model=build_teacher(tokenizer, seed=2),
                         args=args, train_dataset=rows, processing_class=tokenizer)


def cotd_po_case(tokenizer, base: dict, variant: str):
    from trl_reasoning_distill.cotd_po import CoTDPOConfig, CoTDPOTrainer

    rows = []
    for p, style in uneven_rows():
        answers = [p.answer + j * (j % 2 * 2 - 1) * 7 for j in range(3)]
        rows.append({"prompt": [{"role": "user", "content": p.prompt}],
                     "rationale": solution(p, style).removeprefix("<think>").split("</think>")[0],
                     "completions": [f"\\boxed{{{a}}}" for a in answers],
                     "rewards": [float(a == p.answer) for a in answers]})
    args = CoTDPOConfig(**{**base, "warmup_steps": 0, "max_length": 256, **TOY_FORMAT})
    return CoTDPOTrainer(model=build_student(tokenizer, seed=1), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)


CASES = {"kd": kd_case, "tsd_kd": tsd_kd_case, "vcrd": vcrd_case, "brts": brts_case, "gen_ssd": gen_ssd_case,
         "cotd_po": cotd_po_case}


def is_sharded(model) -> bool:
    """Every parameter matrix of `model` held in part: an FSDP2 DTensor with a Shard placement and fewer local
    elements, or a ZeRO-3 partition smaller than the parameter."""
    from torch.distributed.tensor import DTensor, Shard

    sharded = []
    for param in model.parameters():
        if param.ndim < 2 and not hasattr(param, "ds_numel"):
            continue
        if isinstance(param, DTensor):
            sharded.append(any(isinstance(p, Shard) for p in param.placements)
                           and param.to_local().numel() < param.numel())
        elif hasattr(param, "ds_numel"):
            sharded.append(param.ds_tensor.numel() < param.ds_numel)
        else:
            sharded.append(False)
    return bool(sharded) and all(sharded)


def full_weights(model) -> dict:
    """Every student parameter, gathered whole, in float32 on the CPU (collective: all ranks call it)."""
    from torch.distributed.tensor import DTensor

    weights = {}
    for name, param in model.named_parameters():
        if isinstance(param, DTensor):
            value = param.full_tensor()
        elif hasattr(param, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                value = param.detach().clone()
        else:
            value = param.detach()
        weights[name] = value.float().cpu().clone()
    return weights


def run(out_dir: str, backend: str, per_device: int, grad_accum: int, cases: list[str]) -> None:
    torch.set_num_threads(1)
    force_backend_on_cpu()
    tokenizer = build_tokenizer()
    summary = {}
    for case in cases:
        name, _, variant = case.partition(":")
        base = {**COMMON, **backend_args(backend), "output_dir": os.path.join(out_dir, case.replace(":", "_")),
                "per_device_train_batch_size": per_device, "gradient_accumulation_steps": grad_accum}
        trainer = CASES[name](tokenizer, base, variant)
        initial = full_weights(trainer.accelerator.unwrap_model(trainer.model))  # ZeRO-3 partitioned it already
        trainer.train()
        model = trainer.model_wrapped
        teacher = getattr(trainer, "teacher_model", None)
        result = {
            "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
            "distributed_type": str(trainer.accelerator.distributed_type),
            "num_processes": trainer.accelerator.num_processes,
            "student_sharded": is_sharded(model),
            "dtensor_head_reads": getattr(trainer, "dtensor_head_reads", None),
            "teacher_sharded": None if teacher is None else is_sharded(teacher),
        }
        weights = full_weights(trainer.accelerator.unwrap_model(model))
        result["max_update"] = max((weights[n] - initial[n]).abs().max().item() for n in weights)
        if trainer.accelerator.is_main_process:
            torch.save({**result, "weights": weights}, os.path.join(out_dir, case.replace(":", "_") + ".pt"))
            summary[case] = result
        trainer.accelerator.wait_for_everyone()
        del trainer, model, teacher
    if summary:
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
    if torch.distributed.is_initialized():  # gloo's threads may abort the process at exit otherwise
        torch.distributed.destroy_process_group()
