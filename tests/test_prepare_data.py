"""The data-preparation scripts of the paper recipes (`examples/data/<method>.py`), offline: each reads a small
synthetic sample in the format of the Hub data set its paper used (the same columns), writes the file its paper YAML
reads, and that YAML, with the models replaced by tiny random models of the paper architectures, reaches the first
training step through the example's own script."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.test_paper_configs import PAPER_YAMLS, skywork_like_prm, tiny_model
from trl_reasoning_distill import load_toy_tokenizer
from trl_reasoning_distill.scripts import run_script
from trl_reasoning_distill.toy import sample_problems, solution

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
BOXED = "Please reason step by step, and put your final answer within \\boxed{}."


def data_script(method: str):
    spec = importlib.util.spec_from_file_location(f"_prepare_{method}", DATA / f"{method}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(DATA))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(DATA))
    return module


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PROBLEMS = sample_problems("train", 6, seed=3)


# --- samples in the Hub data sets' formats (their cards' columns) --------------------------------------------------


def dapo_rows() -> list[dict]:
    """BytedTsinghua-SIA/DAPO-Math-17k: the problem in DAPO's answer-format wrapper, each problem repeated."""
    wrap = ("Solve the following math problem step by step. The last line of your response should be of the form "
            "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\nRemember to put "
            "your answer on its own line after \"Answer:\".")
    return [{"data_source": "math_dapo", "prompt": [{"content": wrap.format(p.prompt), "role": "user"}],
             "ability": "MATH", "reward_model": {"ground_truth": str(p.answer), "style": "rule-lighteval/MATH_v2"},
             "extra_info": {"index": f"{i}-{k}"}} for k in range(3) for i, p in enumerate(PROBLEMS)]


def openmathreasoning_rows() -> list[dict]:
    """nvidia/OpenMathReasoning (cot): problems 0-3 have 16 distinct R1 solutions, problem 4 has 15 distinct (one
    repeated), problem 5 only QwQ solutions."""
    rows = []
    for i, p in enumerate(PROBLEMS):
        model = "QwQ-32B" if i == 5 else "DeepSeek-R1"
        for k in range(16):
            text = f"{solution(p, 'ltr')} (solution {min(k, 14) if i == 4 else k})"
            rows.append({"problem": p.prompt, "expected_answer": str(p.answer), "problem_type": "has_answer_extracted",
                         "problem_source": "aops_c4", "generation_model": model, "generated_solution": text,
                         "inference_mode": "cot", "pass_rate_72b_tir": "0.9", "used_in_kaggle": False})
    return rows


def ultrainteract_rows() -> list[dict]:
    """Minsang/TSD-KD-Qwen2.5-1.5B-Instruct-Gen: instruction, the student's response, the rendered prompt."""
    return [{"instruction": p.prompt, "response": solution(p, "ltr"), "prompt": f"<|im_start|>user\n{p.prompt}"}
            for p in PROBLEMS for _ in range(20)]


def metamathqa_rows() -> list[dict]:
    return [{"type": "GSM_Rephrased", "query": p.prompt, "original_question": p.prompt,
             "response": f"{solution(p, 'ltr')} The answer is: {p.answer}"} for p in PROBLEMS]


def ultrafeedback_rows() -> list[dict]:
    return [{"source": "evol_instruct", "instruction": p.prompt, "models": ["a", "b"], "completions": [],
             "correct_answers": ["None"], "incorrect_answers": ["None"]} for p in PROBLEMS]


SAMPLES = {"brts": dapo_rows, "gen_ssd": openmathreasoning_rows, "tsd_kd": ultrainteract_rows,
           "vcrd": metamathqa_rows, "cotd_po": ultrafeedback_rows}


def prepared(method: str, tmp_path: Path, *extra: str) -> list[dict]:
    source = write(tmp_path / f"{method}_hub.jsonl", SAMPLES[method]())
    out = tmp_path / f"{method}.jsonl"
    data_script(method).main(["--dataset_name", source, "--output", str(out), *extra])
    return [json.loads(line) for line in out.read_text().splitlines()]


# --- the transformations -------------------------------------------------------------------------------------------


def test_brts_dapo_prompts_deduplicated_unwrapped_boxed(tmp_path):
    rows = prepared("brts", tmp_path)
    assert [r["prompt"] for r in rows] == [f"{p.prompt} {BOXED}" for p in PROBLEMS]
    assert [r["answer"] for r in rows] == [str(p.answer) for p in PROBLEMS]
    assert len({r["id"] for r in rows}) == len(rows)


def test_gen_ssd_keeps_problems_with_16_distinct_r1_solutions(tmp_path):
    rows = prepared("gen_ssd", tmp_path)
    assert [r["answer"] for r in rows] == [str(p.answer) for p in PROBLEMS[:4]]
    assert rows[0]["prompt"] == f"{PROBLEMS[0].prompt} {BOXED}"
    assert len(prepared("gen_ssd", tmp_path, "--num_problems", "2")) == 2  # seeded subsample (spec: 25K)


def test_tsd_kd_prompts_and_a_seeded_held_out_split(tmp_path):
    out = tmp_path / "eval.jsonl"
    rows = prepared("tsd_kd", tmp_path, "--eval_output", str(out))
    held = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) + len(held) == 120 and len(held) == 1 and set(rows[0]) == {"id", "prompt"}
    assert rows == prepared("tsd_kd", tmp_path, "--eval_output", str(out))


def test_vcrd_and_cotd_po_prompt_pools(tmp_path):
    assert [r["prompt"] for r in prepared("vcrd", tmp_path, "--num_prompts", "50")] == [p.prompt for p in PROBLEMS]
    assert len(prepared("vcrd", tmp_path, "--num_prompts", "4")) == 4
    assert [r["prompt"] for r in prepared("cotd_po", tmp_path)] == [p.prompt for p in PROBLEMS]
    rationales = write(tmp_path / "r.jsonl", [{"id": f"uf-{i}", "rationale": f"thought {i}"} for i in range(6)])
    assert prepared("cotd_po", tmp_path, "--rationales", rationales)[2]["rationale"] == "thought 2"
    short = write(tmp_path / "short.jsonl", [{"id": "uf-0", "rationale": "t"}])
    with pytest.raises(SystemExit, match="5 prompts have no rationale"):
        prepared("cotd_po", tmp_path, "--rationales", short)


def test_missing_hub_dataset_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit) as stop:
        data_script("vcrd").main(["--dataset_name", "no-such-org/MetaMathQA", "--output", str(tmp_path / "x.jsonl")])
    message = str(stop.value.code)
    assert "huggingface-cli download --repo-type dataset no-such-org/MetaMathQA" in message and "\n" not in message


# --- paper YAML + prepared data + tiny paper-architecture models: the first training step -------------------------

SPEED = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
         "--logging_steps", "1", "--max_new_tokens", "16"]
METHOD_ARGS = {
    "brts": [],
    "tsd_kd": [],
    "gen_ssd": ["--online", "true", "--teacher_generation_backend", "hf", "--chunk_size", "8", "--cold_start_samples",
                "1"],
    "vcrd": [],
    # the scorer: the teacher's log-likelihood stands in for the paper's teacher-aligned reward model; no warm-up, so
    # that the one step moves the weights the test compares (the paper's 10 % warm-up gives step 1 a rate of 0)
    "cotd_po": ["--scorer", "teacher-logprob", "--num_rounds", "1", "--prompts_per_round", "4", "--num_candidates",
                "2", "--warmup_steps", "0"],
}


@pytest.mark.parametrize("method", sorted(SAMPLES))
def test_paper_yaml_on_prepared_data_reaches_the_first_step(method, tmp_path):
    import yaml

    config = yaml.safe_load(PAPER_YAMLS[method].read_text())
    tokenizer = load_toy_tokenizer()
    paths = {}
    for role, key in (("student", "model_name_or_path"), ("teacher", "teacher_model_name_or_path")):
        model_id = config[key] or config["model_name_or_path"]  # CoTD-PO's teacher is an API: a stand-in scorer
        tiny_model(model_id, tokenizer).save_pretrained(tmp_path / role)
        tokenizer.save_pretrained(tmp_path / role)
        paths[role] = str(tmp_path / role)
    data = tmp_path / "prepared.jsonl"
    rationales = []  # CoTD-PO: the teacher's (GPT-4o's) rationales come from its API as a file of id, rationale
    if method == "cotd_po":
        rationales = ["--rationales", write(tmp_path / "r.jsonl", [{"id": f"uf-{i}", "rationale": solution(p, "ltr")}
                                                                   for i, p in enumerate(PROBLEMS)])]
    data_script(method).main(["--dataset_name", write(tmp_path / "hub.jsonl", SAMPLES[method]()), "--output",
                              str(data), *rationales])
    extra = list(METHOD_ARGS[method])
    if method == "vcrd":
        extra += ["--prm_model_name_or_path",
                  str(skywork_like_prm(config["prm_model_name_or_path"], tokenizer, tmp_path / "prm"))]
    argv = ["--config", str(PAPER_YAMLS[method]), "--dataset_name", str(data), "--model_name_or_path",
            paths["student"], "--teacher_model_name_or_path", paths["teacher"], "--output_dir", str(tmp_path / "out"),
            *SPEED, *extra]
    with pytest.warns(UserWarning, match="bf16"):  # the YAML's bf16: true, on this CPU machine
        result = run_script(method, argv, prog=f"{method}.py")
    if method == "cotd_po":  # one round trained: its summary written, and the saved student moved
        from safetensors.torch import load_file

        assert json.loads((tmp_path / "out" / "round_01" / "round.json").read_text())["round"] == 1
        before, after = (load_file(Path(path) / "model.safetensors") for path in (paths["student"], tmp_path / "out"))
        assert any(not torch.equal(before[name].to(after[name].dtype), after[name]) for name in before)
    else:
        assert result.state.global_step == 1 and "loss" in result.state.log_history[0]
