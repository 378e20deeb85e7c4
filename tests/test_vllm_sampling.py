"""On-policy sampling: one generation call per global batch on every backend, the KV cache whatever gradient
checkpointing says, and TRL's `VLLMGeneration` (`use_vllm=True`) driven through the fake vLLM of `fake_vllm.py`
(colocate and server): weight sync after every optimizer step, padded vocabulary rows never sampled, greedy samples
equal to the HF path's, and KD, TSD-KD, BRTS and VCRD (online) runs end to end."""

import dataclasses
import math

import pytest
import torch
from conftest import CPU_TRAINING
from test_brts_trainer import toy_rows as answer_rows
from test_kd_trainer import toy_rows
from test_vcrd_trainer import vcrd_rows
from transformers import AutoModelForCausalLM

from trl_reasoning_distill.brts import BRTSConfig, BRTSTrainer
from trl_reasoning_distill.kd_config import KDConfig
from trl_reasoning_distill.kd_trainer import KDTrainer
from trl_reasoning_distill.toy import load_toy_student, load_toy_teacher
from trl_reasoning_distill.tsd_kd import TSDKDConfig, TSDKDTrainer
from trl_reasoning_distill.vcrd import VCRDConfig, VCRDTrainer

SERVER = "http://fake-student:8000"
STEPS = dict(max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_new_tokens=12,
             max_length=128)


def student_folder(tmp_path, tokenizer, padded_rows_logit: float | None = None):
    """The toy student saved with its tokenizer (vLLM starts from a folder) and loaded back from there."""
    student = load_toy_student()
    if padded_rows_logit is not None:
        with torch.no_grad():  # tied embedding rows past the tokenizer dominate every logit
            student.lm_head.weight[len(tokenizer):] = padded_rows_logit
    path = tmp_path / "student"
    student.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def kd_trainer(tmp_path, tokenizer, config=KDConfig, trainer=KDTrainer, student=None, dataset=None, **overrides):
    args = config(output_dir=str(tmp_path / "out"), **{**CPU_TRAINING, **STEPS, "lmbda": 1.0, **overrides})
    student = student if student is not None else student_folder(tmp_path, tokenizer)
    return trainer(model=student, teacher_model=load_toy_teacher(), args=args,
                   train_dataset=dataset if dataset is not None else toy_rows(8), processing_class=tokenizer)


def watch_syncs(trainer, fake) -> list[bool]:
    """After every weight sync, whether the engine's weights equal the student's."""
    equal, sync = [], trainer.vllm_generation.sync_weights

    def checked():
        sync()
        engine = fake.SERVERS[SERVER] if trainer.args.vllm_mode == "server" else fake.ENGINES[-1]
        served = dict(engine.model.named_parameters())
        equal.append(all(torch.equal(p.detach(), served[n]) for n, p in trainer.model.named_parameters()))

    trainer.vllm_generation.sync_weights = checked
    return equal


def count_generate(monkeypatch, model) -> list[int]:
    """The number of rows of every `model.generate` call."""
    rows, generate = [], model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: rows.append(k["input_ids"].shape[0]) or generate(*a, **k))
    return rows


# --- configuration -----------------------------------------------------------------------------------------------


def test_vllm_fields_have_trls_names_and_defaults(tmp_path):
    from trl.trainer.distillation_config import DistillationConfig

    ours = {f.name: f for f in dataclasses.fields(KDConfig) if f.name.startswith(("use_vllm", "vllm_"))}
    trl = {f.name: f for f in dataclasses.fields(DistillationConfig)}
    assert {"use_vllm", "vllm_mode", "vllm_gpu_memory_utilization", "vllm_tensor_parallel_size",
            "vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout",
            "vllm_enable_sleep_mode", "vllm_max_model_length", "vllm_group_port", "vllm_model_impl"} == set(ours)
    for name, f in ours.items():
        assert (f.default, f.metadata["help"]) == (trl[name].default, trl[name].metadata["help"]), name


@pytest.mark.parametrize("field, value, match", [
    ("vllm_mode", "remote", "vllm_mode"), ("vllm_gpu_memory_utilization", 0.0, "vllm_gpu_memory_utilization"),
    ("vllm_gpu_memory_utilization", 1.5, "vllm_gpu_memory_utilization"), ("vllm_tensor_parallel_size", 0, "tensor"),
    ("vllm_server_port", 70000, "vllm_server_port"), ("vllm_group_port", 0, "vllm_group_port"),
    ("vllm_server_timeout", 0.0, "vllm_server_timeout"), ("vllm_max_model_length", 12, "vllm_max_model_length"),
    ("vllm_model_impl", "tensorrt", "vllm_model_impl"), ("vllm_server_base_url", "fake:8000", "http"),
])  # fmt: skip
def test_bad_vllm_values_raise(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        KDConfig(output_dir=str(tmp_path), max_new_tokens=12, **{field: value})


def test_use_vllm_without_vllm_names_the_extra(tmp_path, tokenizer, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    with pytest.raises(ImportError, match=r"trl-reasoning-distill\[vllm\]"):
        kd_trainer(tmp_path, tokenizer, use_vllm=True)


def test_colocate_needs_a_student_with_a_path(tmp_path, tokenizer, tiny_student, fake_vllm):
    tiny_student.name_or_path = ""
    with pytest.raises(ValueError, match="name_or_path"):
        kd_trainer(tmp_path, tokenizer, student=tiny_student, use_vllm=True)


# --- every backend: the KV cache and one call per global batch -----------------------------------------------


def test_generation_uses_the_kv_cache_under_gradient_checkpointing(tmp_path, tokenizer, monkeypatch):
    trainer = kd_trainer(tmp_path, tokenizer, activation_checkpointing=True, max_steps=1)
    assert trainer.args.gradient_checkpointing  # the inherited default GKD turns the cache off for
    seen, generate = [], trainer.model.generate
    monkeypatch.setattr(trainer.model, "generate",
                        lambda *a, **k: seen.append(k["generation_config"].use_cache) or generate(*a, **k))
    trainer.train()
    assert seen == [True]


def test_hf_samples_each_global_batch_in_one_call(tmp_path, tokenizer, monkeypatch):
    trainer = kd_trainer(tmp_path, tokenizer)
    rows = count_generate(monkeypatch, trainer.model)
    trainer.train()
    assert rows == [4, 4]  # 2 steps, each 2 micro-batches x 2 rows in one call


def test_mixed_lmbda_gathers_on_policy_and_teacher_micro_batches(tmp_path, tokenizer, monkeypatch):
    trainer = kd_trainer(tmp_path, tokenizer, lmbda=0.5, seq_kd=True, per_device_train_batch_size=1,
                         gradient_accumulation_steps=4, dataset=toy_rows(8))
    student, teacher = count_generate(monkeypatch, trainer.model), count_generate(monkeypatch, trainer.teacher_model)
    coins = []
    trainer.train()
    for step_index in range(2):  # the coins each micro-batch drew, recomputed
        trainer.state.global_step = step_index
        coins.append([trainer.lmbda_coin(i) for i in range(4)])
    on_policy = [sum(c) for c in coins]
    assert student == [n for n in on_policy if n] and teacher == [4 - n for n in on_policy if n < 4]
    assert 0 < sum(on_policy) < 8  # seed 0 mixes both sources


# --- vLLM through TRL's VLLMGeneration, on the fake engine ---------------------------------------------------


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_vllm_one_call_per_step_with_synced_weights(tmp_path, tokenizer, fake_vllm, mode):
    extra = {"vllm_mode": mode}
    if mode == "server":
        student = student_folder(tmp_path, tokenizer)
        fake_vllm.serve(SERVER, str(tmp_path / "student"))
        extra.update(vllm_server_base_url=SERVER, student=student)
    trainer = kd_trainer(tmp_path, tokenizer, use_vllm=True, **extra)
    equal = watch_syncs(trainer, fake_vllm)
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    engine = fake_vllm.SERVERS[SERVER] if mode == "server" else fake_vllm.ENGINES[-1]
    assert [len(call["prompt_token_ids"]) for call in engine.calls] == [4, 4]  # one call per global batch
    assert equal == [True, True] and engine.syncs == 2  # a sync after each optimizer step, before sampling
    assert any(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())
    params = engine.calls[0]["sampling_params"]
    assert params.stop_token_ids == [tokenizer.eos_token_id]
    assert params.allowed_token_ids == list(range(len(tokenizer)))
    assert trainer.state.log_history[0]["kd/on_policy"] == 1.0


def test_vllm_greedy_samples_equal_the_hf_path(tmp_path, tokenizer, fake_vllm):
    trainer = kd_trainer(tmp_path, tokenizer, use_vllm=True)
    batches = [trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in rows]))
               for rows in ([0, 1], [2, 3, 4])]
    got = trainer.generate_batches(batches, "student", temperature=0.0)
    assert len(fake_vllm.ENGINES[-1].calls) == 1
    trainer.vllm_generation = None  # the HF path of the same trainer
    expected = trainer.generate_batches(batches, "student", temperature=0.0)
    for got_batch, expected_batch in zip(got, expected, strict=True):
        for a, b in zip(got_batch, expected_batch, strict=True):
            assert torch.equal(a, b)
    assert (got[1][2][:, batches[1]["prompts"].shape[1]:] != -100).sum() > 0


def test_vllm_never_samples_padded_rows(tmp_path, tokenizer, fake_vllm):
    student = student_folder(tmp_path, tokenizer, padded_rows_logit=50.0)
    trainer = kd_trainer(tmp_path, tokenizer, student=student, use_vllm=True)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    (ids, _, _), = trainer.generate_batches([batch], "student")
    assert ids.max().item() < len(tokenizer)
    unmasked = fake_vllm.ENGINES[-1].generate([{"prompt_token_ids": [5, 6, 7]}],
                                              fake_vllm.SamplingParams(max_tokens=4))
    assert max(unmasked[0].outputs[0].token_ids) >= len(tokenizer)  # without the mask the engine would sample them


def test_vllm_sleep_mode_resyncs_before_each_call(tmp_path, tokenizer, fake_vllm):
    trainer = kd_trainer(tmp_path, tokenizer, use_vllm=True, vllm_enable_sleep_mode=True)
    trainer.train()  # level-2 sleep discards the weights (NaN in the fake): sampling works only if they are re-pushed
    engine = fake_vllm.ENGINES[-1]
    assert len(engine.calls) == 2 and engine.syncs == 2 and engine.asleep == {"weights", "kv_cache"}
    assert all(math.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)


def test_tsd_kd_and_brts_train_through_vllm(tmp_path, tokenizer, fake_vllm):
    tsd = kd_trainer(tmp_path / "tsd", tokenizer, TSDKDConfig, TSDKDTrainer, use_vllm=True)
    tsd.train()
    assert len(fake_vllm.ENGINES[-1].calls) == 2 and "tsd_kd/gate_mean" in str(tsd.state.log_history)
    brts = kd_trainer(tmp_path / "brts", tokenizer, BRTSConfig, BRTSTrainer, dataset=answer_rows(8), use_vllm=True,
                      num_teacher_rollouts=2)
    brts.train()
    assert [len(call["prompt_token_ids"]) for call in fake_vllm.ENGINES[-1].calls] == [4, 4]
    assert "brts/student_context" in brts.state.log_history[0]


def test_vcrd_online_rollouts_through_vllm(tmp_path, tokenizer, fake_vllm):
    trainer = kd_trainer(tmp_path, tokenizer, VCRDConfig, VCRDTrainer, dataset=vcrd_rows(8), max_length=192,
                         use_vllm=True, lmbda=0.0, student_rollout="online", validity_judge="teacher_prob",
                         max_prompt_length=32, max_new_tokens=16)
    trainer.train()
    calls = fake_vllm.ENGINES[-1].calls
    assert [len(call["prompt_token_ids"]) for call in calls] == [4, 4]
    assert (calls[0]["sampling_params"].temperature, calls[0]["sampling_params"].top_p) == (0.8, 0.95)
    assert "vcrd/completion_length" in trainer.state.log_history[0]


# --- teacher-side sampling from the config: teacher_generation_backend ------------------------------------------


def teacher_folder(tmp_path, tokenizer):
    teacher, path = load_toy_teacher(), tmp_path / "teacher"
    teacher.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.mark.parametrize("field, value, match", [
    ("teacher_generation_backend", "sglang", "teacher_generation_backend"),
    ("teacher_model_server_url", "http://teacher:8000", "set it to 'vllm'"),
    ("teacher_vllm_gpu_memory_utilization", 2.0, "teacher_vllm_gpu_memory_utilization"),
    ("teacher_vllm_tensor_parallel_size", 0, "teacher_vllm_tensor_parallel_size"),
])  # fmt: skip
def test_bad_teacher_backend_values_raise(tmp_path, field, value, match):
    from trl_reasoning_distill.cotd_po import CoTDPOConfig
    from trl_reasoning_distill.gen_ssd import GenSSDConfig

    for config in (BRTSConfig, GenSSDConfig, VCRDConfig, CoTDPOConfig):
        with pytest.raises(ValueError, match=match):
            config(output_dir=str(tmp_path), **{field: value})


def test_brts_teacher_pool_on_a_vllm_server_from_the_config(tmp_path, tokenizer, fake_vllm):
    from trl_reasoning_distill.generation import VLLMGenerator

    teacher = teacher_folder(tmp_path, tokenizer)
    server = fake_vllm.serve("http://teacher:8000", str(tmp_path / "teacher"))
    args = BRTSConfig(output_dir=str(tmp_path / "out"), num_teacher_rollouts=2, teacher_generation_backend="vllm",
                      teacher_model_server_url="http://teacher:8000", **{**CPU_TRAINING, **STEPS, "max_steps": 1})
    trainer = BRTSTrainer(model=load_toy_student(), teacher_model=teacher, args=args, train_dataset=answer_rows(8),
                          processing_class=tokenizer)
    assert isinstance(trainer.teacher_generator, VLLMGenerator) and trainer.teacher_generator.client is not None
    trainer.train()
    first = server.calls[0]  # the pool of the first micro-batch: its 2 prompts, N=2 rollouts each
    assert (len(first["prompt_token_ids"]), first["sampling_params"].n) == (2, 2)
    assert trainer.state.log_history[0]["brts/teacher_rollouts"] > 0


def test_gen_ssd_and_cotd_po_teachers_colocated_from_the_config(tmp_path, tokenizer, fake_vllm):
    from trl_reasoning_distill.cotd_po import CoTDPOConfig, TeacherRationales
    from trl_reasoning_distill.gen_ssd import GenSSDConfig, GenSSDTrainer

    teacher = teacher_folder(tmp_path, tokenizer)
    args = GenSSDConfig(output_dir=str(tmp_path / "out"), teacher_generation_backend="vllm", keep_only_correct=False,
                        **{**CPU_TRAINING, "max_steps": 1, "per_device_train_batch_size": 2})
    trainer = GenSSDTrainer(model=load_toy_student(), teacher_model=teacher, args=args,
                            train_dataset=answer_rows(4), processing_class=tokenizer)
    engine = fake_vllm.ENGINES[-1]
    assert trainer.teacher_generator.llm is engine and engine.init_args["model"] == str(tmp_path / "teacher")
    config = CoTDPOConfig(output_dir=str(tmp_path / "cotd"), teacher_generation_backend="vllm", **CPU_TRAINING)
    rationales = TeacherRationales(teacher, tokenizer, config, max_new_tokens=8)
    assert rationales.generator.llm is fake_vllm.ENGINES[-1] is not engine
    rationales.rationales([answer_rows(1)[0]["prompt"]])
    assert len(fake_vllm.ENGINES[-1].calls) == 1
