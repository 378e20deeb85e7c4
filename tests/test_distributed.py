"""Every trainer under DDP, FSDP2 and DeepSpeed ZeRO-3 (and KD under ZeRO-2) on 2 processes (gloo, CPU) equals one
process at the same global batch: 8 rows of uneven lengths, 2 SGD steps, the same losses and updated weights (1e-5);
one process at 8 rows x 1 micro-batch equals 4 x 2. Sampling trainers sample greedily.

Each backend is one torchrun launch running every case (`tests/distributed/matrix.py`), so the whole matrix takes a
few minutes; the tests below compare what the launches wrote. FSDP2 and DeepSpeed are forced on CPU (accelerate
enables them for GPU-like devices only), and the tests check that student and teacher really are sharded.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("distributed") / "matrix.py"
TRAINERS = ["kd", "kd:full", "kd:untied", "kd:onpolicy", "tsd_kd", "vcrd", "brts", "gen_ssd", "cotd_po"]
PEFT = ["kd:lora", "kd:lora_head", "tsd_kd:lora", "kd:gc"]
# name: (backend, per-device batch, accumulation, processes, cases)
LAUNCHES = {
    "one": ("ddp", 4, 2, 1, TRAINERS + PEFT),
    "one_8x1": ("ddp", 8, 1, 1, TRAINERS),
    "ddp": ("ddp", 2, 2, 2, TRAINERS + PEFT),
    "fsdp2": ("fsdp2", 2, 2, 2, TRAINERS + PEFT + ["kd:reshard"]),
    "zero3": ("zero3", 2, 2, 2, TRAINERS + ["kd:gc"]),
    "zero2": ("zero2", 2, 2, 2, ["kd", "kd:untied"]),
}
PORTS = {name: 29540 + i for i, name in enumerate(LAUNCHES)}
CONFIGS = Path(__file__).parents[1] / "examples" / "accelerate_configs"


@pytest.mark.parametrize(("name", "distributed_type", "setting"), [
    ("fsdp2.yaml", "FSDP", ("fsdp_config", "fsdp_version", 2)),
    ("deepspeed_zero2.yaml", "DEEPSPEED", ("deepspeed_config", "zero_stage", 2)),
    ("deepspeed_zero3.yaml", "DEEPSPEED", ("deepspeed_config", "zero_stage", 3)),
])
def test_accelerate_configs_load(name, distributed_type, setting):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    assert str(config.distributed_type).endswith(distributed_type)
    section, key, value = setting
    assert getattr(config, section)[key] == value


def test_output_head_weight_is_the_parameter_and_refuses_a_bias(tiny_student):
    from trl_reasoning_distill.distributed import output_head_weight

    assert output_head_weight(tiny_student) is tiny_student.lm_head.weight
    tiny_student.lm_head.bias = torch.nn.Parameter(torch.zeros(tiny_student.lm_head.out_features))
    with pytest.raises(ValueError, match="without bias"):
        output_head_weight(tiny_student)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Run each launch once, on first use; a launch that fails fails every test that needs it."""
    root, done = tmp_path_factory.mktemp("distributed"), {}

    def get(name: str) -> Path:
        if name not in done:
            backend, per_device, accumulation, processes, cases = LAUNCHES[name]
            out = root / name
            out.mkdir()
            env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[2]), "OMP_NUM_THREADS": "1",
                   "DS_ACCELERATOR": "cpu"}
            launcher = [sys.executable] if processes == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                str(PORTS[name])]
            proc = subprocess.run([*launcher, str(SCRIPT), str(out), backend, str(per_device), str(accumulation),
                                   *cases], capture_output=True, text=True, timeout=900, env=env)
            done[name] = (out, proc.returncode, proc.stdout[-3000:] + proc.stderr[-6000:])
        out, returncode, log = done[name]
        assert returncode == 0, log
        return out

    return get


def load(launched, launch: str, case: str) -> dict:
    return torch.load(launched(launch) / (case.replace(":", "_") + ".pt"))


def assert_same_run(one: dict, other: dict) -> None:
    assert len(one["losses"]) == len(other["losses"]) == 2
    assert other["losses"] == pytest.approx(one["losses"], rel=1e-5, abs=1e-6)
    assert one["max_update"] > 1e-4  # the comparison below is about weights that moved
    assert one["weights"].keys() == other["weights"].keys()
    for name, weight in one["weights"].items():
        torch.testing.assert_close(other["weights"][name], weight, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("case", TRAINERS)
def test_accumulation_does_not_change_the_step(launched, case):
    """One process: 8 rows in one micro-batch, or 4 rows in each of 2."""
    assert_same_run(load(launched, "one", case), load(launched, "one_8x1", case))


@pytest.mark.slow
@pytest.mark.parametrize("case", TRAINERS + PEFT)
def test_ddp_equals_one_process(launched, case):
    result = load(launched, "ddp", case)
    assert result["distributed_type"] == "DistributedType.MULTI_CPU" and result["num_processes"] == 2
    assert_same_run(load(launched, "one", case), result)


@pytest.mark.slow
@pytest.mark.parametrize("case", TRAINERS + PEFT + ["kd:reshard"])
def test_fsdp2_equals_one_process_with_student_and_teacher_sharded(launched, case):
    """`kd:reshard` reshards the student's head after its forward (as accelerate < 1.16 does), so the loss reads
    it as a DTensor."""
    result = load(launched, "fsdp2", case)
    assert result["distributed_type"] == "DistributedType.FSDP" and result["num_processes"] == 2
    assert result["student_sharded"]
    assert result["teacher_sharded"] in (True, None)  # None: CoTD-PO has no teacher
    if case == "kd:reshard":
        assert result["dtensor_head_reads"] > 0
    assert_same_run(load(launched, "one", case.replace(":reshard", "")), result)


@pytest.mark.slow
@pytest.mark.parametrize("case", TRAINERS + ["kd:gc"])
def test_zero3_equals_one_process_with_student_and_teacher_partitioned(launched, case):
    pytest.importorskip("deepspeed")  # the `dev` extra installs it
    result = load(launched, "zero3", case)
    assert result["distributed_type"] == "DistributedType.DEEPSPEED" and result["num_processes"] == 2
    assert result["student_sharded"] and result["teacher_sharded"] in (True, None)
    assert_same_run(load(launched, "one", case), result)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["kd", "kd:untied"])
def test_zero2_equals_one_process(launched, case):
    pytest.importorskip("deepspeed")  # the `dev` extra installs it
    result = load(launched, "zero2", case)
    assert result["distributed_type"] == "DistributedType.DEEPSPEED" and result["num_processes"] == 2
    assert_same_run(load(launched, "one", case), result)
