"""The training scripts whose teacher samples outside the trainer (Gen-SSD's cold start and proposals, Standard KD's
rejection sampling, VCRD's offline rollouts) sample it on vLLM from the config alone, `--teacher_generation_backend
vllm`, run in-process at a tiny budget through the fake engine of `fake_vllm.py`: the teacher's samples come from the
engine (colocated, or a `trl vllm-serve` of the teacher), and a colocated teacher engine gets the teacher's
`--teacher_vllm_gpu_memory_utilization`, not the student's `--vllm_gpu_memory_utilization`."""

import json

import pytest

from trl_reasoning_distill.scripts import common, run_script
from trl_reasoning_distill.toy import load_toy_teacher

SERVER = "http://fake-teacher:8000"
TEACHER_SHARE, STUDENT_SHARE = 0.55, 0.4


@pytest.fixture
def teacher_path(tmp_path, tokenizer):
    """The toy teacher saved with its tokenizer: vLLM starts from a folder."""
    path = tmp_path / "teacher"
    load_toy_teacher().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def no_hf_teacher(monkeypatch):
    """The scripts that sample the teacher only do not load its weights in this process when vLLM samples it."""

    def refused(*args, **kwargs):
        raise AssertionError("the transformers teacher was loaded although vLLM samples it")

    monkeypatch.setattr(common, "load_teacher", refused)


def argv(tmp_path, teacher_path, mode, fake, prompts=8):
    """The tiny run: `prompts` toy problems, one optimizer step, the teacher on vLLM (a colocated engine with its own
    GPU share, or the fake server of `teacher_path`)."""
    args = ["--teacher_model_name_or_path", teacher_path, "--dataset_name", f"toy:train:{prompts}",
            "--eval_dataset_name", "", "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--logging_steps", "1", "--teacher_generation_backend", "vllm"]
    if mode == "server":
        fake.serve(SERVER, teacher_path)
        return [*args, "--teacher_model_server_url", SERVER]
    return [*args, "--teacher_vllm_gpu_memory_utilization", str(TEACHER_SHARE)]


def teacher_engine(fake, mode, teacher_path):
    """The one engine built, serving the teacher: the server's, or the colocated one with the teacher's GPU share."""
    assert len(fake.ENGINES) == 1, [e.init_args["model"] for e in fake.ENGINES]
    engine = fake.SERVERS[SERVER] if mode == "server" else fake.ENGINES[0]
    assert engine.init_args["model"] == teacher_path
    if mode == "colocate":
        assert engine.init_args["gpu_memory_utilization"] == TEACHER_SHARE != STUDENT_SHARE
    return engine


def sampled_by_vllm(fingerprint_path) -> bool:
    return '"backend": "vllm"' in json.dumps(json.loads(fingerprint_path.read_text()))


def test_gen_ssd_cold_start_and_proposals_on_a_colocated_vllm_teacher(tmp_path, teacher_path, fake_vllm,
                                                                    no_hf_teacher):
    run_script("gen_ssd", [*argv(tmp_path, teacher_path, "colocate", fake_vllm),
                           "--vllm_gpu_memory_utilization", str(STUDENT_SHARE), "--cold_start_fraction", "0.25",
                           "--cold_start_samples", "2", "--chunk_size", "16", "--max_new_tokens", "32",
                           "--num_candidates", "4", "2"], prog="gen_ssd.py")
    calls = teacher_engine(fake_vllm, "colocate", teacher_path).calls
    cold = calls[0]  # the cold start: 2 of the 8 problems, 2 rejection samples each, in one seeded batch
    assert (len(cold["prompt_token_ids"]), cold["sampling_params"].n) == (2, 2)
    proposals = calls[1:]  # Gen-SSD on the other 6: the first chunk's 4 candidates per problem, then 2 per prefix
    assert proposals and proposals[0]["sampling_params"].max_tokens == 16
    assert sum(len(c["prompt_token_ids"]) * c["sampling_params"].n for c in proposals[:1]) == 6 * 4
    out = tmp_path / "out"
    assert sampled_by_vllm(out / "cold_start_data.fingerprint.json")
    assert sampled_by_vllm(out / "gen_ssd_data.fingerprint.json")
    assert (out / "model.safetensors").exists()


def test_gen_ssd_online_trainer_proposes_on_the_scripts_vllm_teacher(tmp_path, teacher_path, fake_vllm):
    """`--online true`: the cold start and the trainer's proposals share the script's sampler (the trainer computes
    on the transformers teacher too, so it is loaded)."""
    trainer = run_script("gen_ssd", [*argv(tmp_path, teacher_path, "server", fake_vllm, prompts=4), "--online",
                                     "true", "--cold_start_fraction", "0.25", "--cold_start_samples", "2",
                                     "--chunk_size", "16", "--max_new_tokens", "32", "--num_candidates", "4", "2",
                                     "--keep_only_correct", "false"], prog="gen_ssd.py")
    calls = teacher_engine(fake_vllm, "server", teacher_path).calls
    assert trainer.teacher_generator.client is not None and trainer.state.global_step == 1
    assert (len(calls[0]["prompt_token_ids"]), calls[0]["sampling_params"].n) == (1, 2)  # the cold start
    first = calls[1]  # the first chunk of the step's 2 prompts: 4 candidates each
    assert len(first["prompt_token_ids"]) * first["sampling_params"].n == 2 * 4


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_standard_kd_rejection_sampling_on_a_vllm_teacher(tmp_path, teacher_path, fake_vllm, no_hf_teacher, mode):
    trainer = run_script("standard_kd", [*argv(tmp_path, teacher_path, mode, fake_vllm), "--samples_per_prompt", "2",
                                         "--sample_max_new_tokens", "96"], prog="standard_kd.py")
    calls = teacher_engine(fake_vllm, mode, teacher_path).calls
    assert [(len(c["prompt_token_ids"]), c["sampling_params"].n) for c in calls] == [(8, 2)]  # one unseeded call
    assert calls[0]["sampling_params"].max_tokens == 96
    assert trainer.state.global_step == 1 and len(trainer.train_dataset) > 0


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_vcrd_offline_teacher_rollouts_on_a_vllm_teacher(tmp_path, teacher_path, fake_vllm, mode):
    trainer = run_script("vcrd", [*argv(tmp_path, teacher_path, mode, fake_vllm), "--vllm_gpu_memory_utilization",
                                  str(STUDENT_SHARE), "--max_new_tokens", "24", "--line_proposal_max_new_tokens",
                                  "8"], prog="vcrd.py")
    calls = teacher_engine(fake_vllm, mode, teacher_path).calls
    # the teacher's responses, one per prompt (the student's own are sampled by the student with HF generate)
    assert [(len(c["prompt_token_ids"]), c["sampling_params"].n) for c in calls] == [(8, 1)]
    params = calls[0]["sampling_params"]
    assert (params.temperature, params.top_p, params.max_tokens) == (0.8, 0.95, 24)
    assert sampled_by_vllm(tmp_path / "out" / "rollouts.fingerprint.json")
    assert trainer.state.global_step == 1
