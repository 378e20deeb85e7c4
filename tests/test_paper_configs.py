"""The paper-scale configs (`examples/configs/<method>_paper.yaml`), checked on CPU so that a typo, a removed TRL field
or a bad value fails here and not on a cluster.

Each YAML is parsed by the parser of its own script (`trl_reasoning_distill.scripts.<method>`, which
`examples/<method>.py` and `trl-distill train <method>` run) with `--config <yaml>`, so the dataclasses, the script's
`set_defaults` and TRL's YAML handling are exactly the launch command's. Then: every YAML key must land in the parsed
objects with its value, no toy default of the script may reach a paper run, a few paper values are spot-checked, and
each trainer is built from the parsed config on random models of the paper's architectures at tiny size and trained
for one step.
"""

import dataclasses
import enum
import importlib
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification

from trl_reasoning_distill import (
    BRTSTrainer,
    CoTDPOTrainer,
    GenSSDTrainer,
    TSDKDTrainer,
    VCRDTrainer,
    load_toy_tokenizer,
)
from trl_reasoning_distill._trl import get_peft_config
from trl_reasoning_distill.scripts.common import DistillParser
from trl_reasoning_distill.toy import problem_rows, sample_problems, solution

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PAPER_YAMLS = {path.name.removesuffix("_paper.yaml"): path for path in (EXAMPLES / "configs").glob("*_paper.yaml")}
METHODS = ("brts", "cotd_po", "gen_ssd", "tsd_kd", "vcrd")  # <method>_paper.yaml is the config of examples/<method>.py
# Other runs of a method (e.g. the authors' released launchers), checked like the paper YAMLs: {yaml name: method}.
OTHER_YAMLS = {"brts_released": "brts"}
YAMLS = {**{f"{method}_paper": (method, PAPER_YAMLS[method]) for method in METHODS if method in PAPER_YAMLS},
         **{name: (method, EXAMPLES / "configs" / f"{name}.yaml") for name, method in OTHER_YAMLS.items()}}

# What a CPU test cannot run, overridden on the command line after `--config` as a user would (TRL: the command line
# wins over the YAML): bf16 (no bf16 autocast on this CPU path: slow and not what is checked) and the GPU (use_cpu,
# so a GPU machine runs the same test). `parse_paper_config` also sets output_dir to the test's tmp_path: the YAML's
# runs/... folder would be written into the repository.
CPU_ARGS = ["--bf16", "false", "--use_cpu", "true"]

# --- parsing exactly as the example script does ------------------------------------------------------------------


@dataclasses.dataclass
class Parsed:
    objects: tuple  # the parsed dataclasses, in the script's order
    leftover: list[str]  # YAML keys and command-line strings that no dataclass took
    script_defaults: dict  # every option's default after the script's `set_defaults`, before the YAML
    dataclass_defaults: dict  # every option's default in a bare parser of the same dataclasses

    def owner(self, key: str):
        """The one parsed object with a field `key`."""
        owners = [obj for obj in self.objects if key in {f.name for f in dataclasses.fields(obj)}]
        assert len(owners) == 1, f"{key!r} is a field of {[type(o).__name__ for o in owners]}"
        return owners[0]

    def __getitem__(self, cls_name: str):
        return next(obj for obj in self.objects if type(obj).__name__ == cls_name)


def example_module(method: str):
    """The script of `examples/<method>.py` (and of `trl-distill train <method>`)."""
    return importlib.import_module(f"trl_reasoning_distill.scripts.{method}")


def parse_paper_config(name: str, tmp_path, *overrides: str):
    """`python examples/<method>.py --config <name>.yaml <overrides>` (`name` as `brts` or `brts_released`), parsed;
    returns (module, Parsed)."""
    method, path = YAMLS.get(name) or YAMLS[f"{name}_paper"]
    module = example_module(method)
    parser = module.make_parser(f"{method}.py")
    script_defaults = {action.dest: action.default for action in parser._actions}
    *objects, leftover = parser.parse_args_and_config(
        ["--config", str(path), "--output_dir", str(tmp_path / "out"), *CPU_ARGS, *overrides],
        return_remaining_strings=True)
    bare = {action.dest: action.default for action in DistillParser(parser.dataclass_types)._actions}
    assert leftover == [], f"keys of {name}.yaml no dataclass takes"
    return module, Parsed(tuple(objects), leftover, script_defaults, bare)


def expected(key: str, value):
    """A YAML value as TrainingArguments stores it: `report_to: none` is the empty list of integrations."""
    return [] if (key, value) == ("report_to", "none") else value


def plain(value):
    """A parsed value as YAML writes it: TrainingArguments turns strings such as `cosine` into enums."""
    if isinstance(value, enum.Enum):
        return value.value
    return [plain(v) for v in value] if isinstance(value, list) else value


# --- coverage, keys and values -----------------------------------------------------------------------------------


def test_every_paper_yaml_has_a_method_here():
    assert sorted(PAPER_YAMLS) == sorted(METHODS), "add the new paper YAML to METHODS and to the tables of this file"
    assert all((EXAMPLES / f"{method}.py").exists() for method in METHODS)
    assert set(PAPER_VALUES) == set(METHOD_SPEED_ARGS) == set(METHODS)
    others = {path.stem for path in (EXAMPLES / "configs").glob("*.yaml")} - {f"{m}_paper" for m in METHODS}
    assert others == set(OTHER_YAMLS) == set(OTHER_VALUES), "add the new YAML to OTHER_YAMLS and OTHER_VALUES"


@pytest.mark.parametrize("method", YAMLS)
def test_every_model_a_yaml_names_has_a_tiny_architecture_here(method):
    config = yaml.safe_load(YAMLS[method][1].read_text())
    models = {config[key] for key in ("model_name_or_path", "teacher_model_name_or_path", "prm_model_name_or_path")
              if config.get(key)}
    assert models - set(ARCHITECTURES) == set(), "add the checkpoint's architecture to ARCHITECTURES"


@pytest.mark.parametrize("method", YAMLS)
def test_every_yaml_key_reaches_the_config_with_its_value(method, tmp_path):
    _, parsed = parse_paper_config(method, tmp_path)
    overridden = {arg.removeprefix("--") for arg in ["--output_dir", *CPU_ARGS] if arg.startswith("--")}
    config = yaml.safe_load(YAMLS[method][1].read_text())
    wrong = {key: (value, plain(getattr(parsed.owner(key), key))) for key, value in config.items()
             if key not in overridden and plain(getattr(parsed.owner(key), key)) != expected(key, value)}
    assert wrong == {}, "YAML value vs parsed value"


@pytest.mark.parametrize("method", YAMLS)
def test_no_toy_default_of_the_script_reaches_a_paper_run(method, tmp_path):
    """The examples default to the toy world (`set_defaults`); a paper YAML must set every value they change."""
    _, parsed = parse_paper_config(method, tmp_path)
    toy = {k: v for k, v in parsed.script_defaults.items() if v != parsed.dataclass_defaults[k]}
    config = yaml.safe_load(YAMLS[method][1].read_text())
    assert {k: v for k, v in toy.items() if k not in config} == {}


# A few of each paper's values (see the YAML comments for their sources), read back from the parsed objects.
PAPER_VALUES = {
    "brts": {"BRTSConfig": dict(learning_rate=1e-6, teacher_context_coef=0.05, top_k=16, num_teacher_rollouts=2,
                                teacher_temperature=0.7, teacher_top_p=0.95, lmbda=1.0, max_new_tokens=7168,
                                max_steps=50, recovery=False)},
    "cotd_po": {"CoTDPOConfig": dict(learning_rate=5e-5, apa_lambda=0.5, alpha=1.0, loss_mode="apa",
                                     reward_normalization="minmax", use_teacher_rationale=True, thought_prefix=
                                     "My thought: ", per_device_train_batch_size=2, gradient_accumulation_steps=32),
                "CoTDPORoundsConfig": dict(num_rounds=6, prompts_per_round=8000, num_candidates=8, top_p=0.95)},
    "gen_ssd": {"GenSSDConfig": dict(learning_rate=1e-5, chunk_size=4096, max_new_tokens=16384,
                                     num_candidates=[16, 8, 4], beam_width=2, selection_rule="low",
                                     teacher_temperature=0.6, teacher_top_p=0.95, teacher_top_k=30,
                                     keep_only_correct=True, completion_only_loss=True, max_length=17408,
                                     teacher_generation_backend="vllm", teacher_vllm_gpu_memory_utilization=0.6),
                "PipelineArguments": dict(num_samples=8500, cold_start_samples=4)},
    "tsd_kd": {"TSDKDConfig": dict(learning_rate=5e-6, lmbda=1.0, beta=0.9, top_k=10, opener_ratio=0.1,
                                   entropy_ratio=0.1, indirect_coef=0.1, entropy_coef=1.0, num_train_epochs=3,
                                   max_length=1024)},
    "vcrd": {"VCRDConfig": dict(learning_rate=5e-5, lambda_teacher=1.0, lambda_student=1.0, skew_alpha=0.1,
                                validity_judge="prm", weighting_rule="ratio", max_length=1024, max_prompt_length=512,
                                num_train_epochs=2),
             "ModelConfig": dict(use_peft=True, lora_r=16, lora_alpha=128, lora_dropout=0.05, dtype="bfloat16")},
}


# The same for the other YAMLs, keyed by name: what sets them apart from the paper's run.
OTHER_VALUES = {
    "brts_released": {"BRTSConfig": dict(num_generations=2, main_teacher_context="auto_overlap",
                                         teacher_context_coef=0.0, num_teacher_rollouts=2, recovery=False,
                                         learning_rate=1e-6, top_k=16, max_new_tokens=7168)},
}


@pytest.mark.parametrize("name", YAMLS)
def test_paper_values_reach_the_config(name, tmp_path):
    _, parsed = parse_paper_config(name, tmp_path)
    method = name.removesuffix("_paper")
    for cls_name, values in {**PAPER_VALUES, **OTHER_VALUES}[method].items():
        obj = parsed[cls_name]
        assert {k: plain(getattr(obj, k)) for k in values} == values, cls_name
    if method == "cotd_po":  # K = 8 temperatures spread over [0.6, 1.2] (spec §7 item 5)
        temperatures = parsed["CoTDPORoundsConfig"].temperatures()
        assert len(temperatures) == 8 and (temperatures[0], temperatures[-1]) == (0.6, 1.2)
    if method == "gen_ssd":  # what the example hands the sampler at paper scale
        assert parsed["GenSSDConfig"].chunk_sampling().num_candidates == (16, 8, 4)
        parsed["GenSSDConfig"].selection_callback()


# --- tiny models of the paper's architectures --------------------------------------------------------------------

# Each checkpoint a YAML names, from its config.json, kept where it is cheap: the config class, the GQA ratio (query
# heads per key/value head; one KV head here), tied embeddings, RoPE, the context length, and the embedding rows past
# the tokenizer (Qwen2.5's tokenizer has 151,665 tokens: the 1.5B models have 151,936 rows, the larger ones 152,064, so
# teacher and student rows differ; Llama 3.1 has exactly its 128,256 tokens). Width and depth are tiny.
QWEN2_1_5B = dict(heads_per_kv=6, tie_word_embeddings=True, rope=dict(rope_theta=1e6), max_position_embeddings=32768,
                  extra_rows=271)
QWEN2_MATH_1_5B = {**QWEN2_1_5B, "rope": dict(rope_theta=10000.0), "max_position_embeddings": 4096}
R1_DISTILL_1_5B = {**QWEN2_1_5B, "tie_word_embeddings": False, "rope": dict(rope_theta=10000.0),
                   "max_position_embeddings": 131072}
ARCHITECTURES = {
    "Qwen/QwQ-32B": (Qwen2Config, dict(heads_per_kv=5, tie_word_embeddings=False, rope=dict(rope_theta=1e6),
                                       max_position_embeddings=40960, extra_rows=399)),
    "Qwen/Qwen2.5-Math-1.5B": (Qwen2Config, QWEN2_MATH_1_5B),
    "Qwen/Qwen2.5-14B-Instruct": (Qwen2Config, dict(heads_per_kv=5, tie_word_embeddings=False,
                                                    rope=dict(rope_theta=1e6), max_position_embeddings=32768,
                                                    extra_rows=399)),
    "Qwen/Qwen2.5-1.5B-Instruct": (Qwen2Config, QWEN2_1_5B),
    "Qwen/Qwen2.5-Math-7B-Instruct": (Qwen2Config, dict(heads_per_kv=7, tie_word_embeddings=False,
                                                        rope=dict(rope_theta=10000.0), max_position_embeddings=4096,
                                                        extra_rows=399)),
    "Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B": (Qwen2Config, QWEN2_MATH_1_5B),  # a Qwen2.5-Math-1.5B backbone
    "meta-llama/Llama-3.1-8B-Instruct": (LlamaConfig, dict(
        heads_per_kv=4, tie_word_embeddings=False, max_position_embeddings=131072, extra_rows=0,
        rope=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                  original_max_position_embeddings=8192))),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": (Qwen2Config, R1_DISTILL_1_5B),
    "hbx/JustRL-DeepSeek-1.5B": (Qwen2Config, R1_DISTILL_1_5B),  # RL-trained from DeepSeek-R1-Distill-Qwen-1.5B
}
MODEL_CLASSES = {(Qwen2Config, "causal"): Qwen2ForCausalLM, (Qwen2Config, "token"): Qwen2ForTokenClassification,
                 (LlamaConfig, "causal"): LlamaForCausalLM}
HEAD_DIM = 8


def tiny_model(model_id: str, tokenizer, head: str = "causal", **config_kwargs):
    """A random 2-layer model of `model_id`'s architecture and shape features, on the toy tokenizer."""
    config_cls, arch = ARCHITECTURES[model_id]
    heads = arch["heads_per_kv"]
    config = config_cls(
        vocab_size=len(tokenizer) + arch["extra_rows"], hidden_size=heads * HEAD_DIM, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=1,
        rope_parameters={"rope_type": "default", **arch["rope"]},
        max_position_embeddings=arch["max_position_embeddings"], tie_word_embeddings=arch["tie_word_embeddings"],
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **config_kwargs,
    )
    model = MODEL_CLASSES[config_cls, head](config)
    if head == "causal":
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def skywork_like_prm(model_id: str, tokenizer, path: Path) -> Path:
    """A tiny PRM saved as Skywork's checkpoints are: its value head under `v_head.summary` (vcrd_paper.yaml renames
    it with `prm_model_init_kwargs`)."""
    tiny_model(model_id, tokenizer, head="token", num_labels=1).save_pretrained(path)
    weights = load_file(path / "model.safetensors")
    save_file({k.replace("score.", "v_head.summary."): v for k, v in weights.items()}, path / "model.safetensors",
              metadata={"format": "pt"})
    return path


# --- one training step per trainer ---------------------------------------------------------------------------------

# Speed only, on the command line like CPU_ARGS: one optimizer step of two rows (the paper's accumulation of up to 32
# micro-batches would be 32 forward passes), a log at that step, and generation lengths a random model fills to the
# end (the paper's 16K-token budgets). Everything else, losses, schedules, checkpointing and saving, is the paper's.
SPEED_ARGS = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
              "--logging_steps", "1"]
METHOD_SPEED_ARGS = {
    "brts": ["--max_new_tokens", "16"],
    "cotd_po": [],
    "gen_ssd": ["--chunk_size", "8", "--max_new_tokens", "16", "--teacher_generation_backend", "hf"],  # no vLLM here
    "tsd_kd": ["--max_new_tokens", "16"],
    "vcrd": [],
}


def toy_problems(n: int = 4):
    return sample_problems("train", n, seed=1)


def prompt_rows(columns=("prompt", "answer")) -> Dataset:
    return Dataset.from_list(problem_rows(toy_problems(), "train")).select_columns(list(columns))


def vcrd_rows() -> Dataset:
    """One teacher and one (worse) student response per prompt, as in the paper's offline data."""
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}],
                               "teacher_completion": solution(p, "ltr"), "student_completion": solution(p, "verbose")}
                              for p in toy_problems()])


def cotd_po_rows(num_candidates: int) -> Dataset:
    """Groups as the rounds write them: prompt, the teacher's rationale, K student answers and their rewards."""
    return Dataset.from_list([{"prompt": p.prompt, "rationale": p.text,
                               "completions": [f"\\boxed{{{p.answer + k}}}" for k in range(num_candidates)],
                               "rewards": [float(-k) for k in range(num_candidates)]} for p in toy_problems()])


def build_trainer(method: str, module, parsed: Parsed, tokenizer, tmp_path: Path):
    student = parsed["ModelConfig"].model_name_or_path
    if method == "cotd_po":  # the teacher is GPT-4o: its rationales come in the data (no teacher model)
        config = parsed["CoTDPOConfig"]
        return CoTDPOTrainer(model=tiny_model(student, tokenizer), args=config, processing_class=tokenizer,
                             train_dataset=cotd_po_rows(parsed["CoTDPORoundsConfig"].num_candidates))
    teacher = next(o for o in parsed.objects if hasattr(o, "teacher_model_name_or_path")).teacher_model_name_or_path
    models = dict(model=tiny_model(student, tokenizer), teacher_model=tiny_model(teacher, tokenizer))
    if method == "brts":
        return BRTSTrainer(**models, args=parsed["BRTSConfig"], train_dataset=prompt_rows(),
                           processing_class=tokenizer)
    if method == "gen_ssd":  # the on-line variant; the paper's offline pipeline ends in the SFT of the next test
        return GenSSDTrainer(**models, args=parsed["GenSSDConfig"], train_dataset=prompt_rows(),
                             processing_class=tokenizer)
    if method == "tsd_kd":  # on-policy: prompts only (the paper's UltraInteract prompts)
        return TSDKDTrainer(**models, args=parsed["TSDKDConfig"], train_dataset=prompt_rows(["prompt"]),
                            processing_class=tokenizer)
    config = parsed["VCRDConfig"]  # the hub PRM cannot be downloaded: its architecture, saved as Skywork stores it
    config.prm_model_name_or_path = str(skywork_like_prm(config.prm_model_name_or_path, tokenizer, tmp_path / "prm"))
    return VCRDTrainer(**models, args=config, train_dataset=vcrd_rows(), processing_class=tokenizer,
                       peft_config=get_peft_config(parsed["ModelConfig"]))


@pytest.fixture(scope="module")
def toy_tokenizer():
    return load_toy_tokenizer()


@pytest.mark.parametrize("name", YAMLS)
def test_trainer_builds_from_the_paper_config_and_trains_one_step(name, tmp_path, toy_tokenizer):
    method = YAMLS[name][0]
    module, parsed = parse_paper_config(name, tmp_path, *SPEED_ARGS, *METHOD_SPEED_ARGS[method])
    trainer = build_trainer(method, module, parsed, toy_tokenizer, tmp_path)
    trainer.train()
    logs = trainer.state.log_history[0]
    assert trainer.state.global_step == 1 and any(key.startswith(f"{method}/") for key in logs), logs
    if method == "gen_ssd":  # a random teacher is never right, so Eq. 5 drops every trajectory (the SFT test trains)
        assert logs["gen_ssd/correct_frac"] == 0 and logs["gen_ssd/pruned"] > 0 and logs["loss"] == 0, logs
    else:  # the loss has a gradient (the paper's 10 % warm-up gives the first step a learning rate of 0)
        assert torch.isfinite(torch.tensor(logs["loss"])) and logs["grad_norm"] > 0, logs
    if method == "vcrd":  # LoRA as the example builds it, and the PRM loaded with the YAML's key mapping
        assert trainer.model.peft_config["default"].r == 16
        assert torch.equal(trainer.validity_scorer.model.score.weight,
                           load_file(tmp_path / "prm" / "model.safetensors")["v_head.summary.weight"])


def test_gen_ssd_paper_sft_trains_one_step(tmp_path, toy_tokenizer):
    """The paper's Gen-SSD training: the example's SFT (cold start and final stage) on prompt/completion rows."""
    # two steps: the paper's 10 % warm-up makes the first step's learning rate 0
    module, parsed = parse_paper_config("gen_ssd", tmp_path, *SPEED_ARGS, "--max_steps", "2")
    student = tiny_model(parsed["ModelConfig"].model_name_or_path, toy_tokenizer)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}],
                               "completion": [{"role": "assistant", "content": solution(p, "ltr")}]}
                              for p in toy_problems()])
    before = {n: p.clone() for n, p in student.named_parameters()}
    trained = module.sft(student, toy_tokenizer, parsed["GenSSDConfig"], data, "paper SFT").model
    assert any(not torch.equal(p, trained.get_parameter(n)) for n, p in before.items())
