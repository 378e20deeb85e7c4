"""Validation before compute (`validation.py`): every bad input is a `ValueError` naming the field, the row or the
path, raised at construction, never a silently wrong number or an error deep inside TRL or torch."""

import math

import pytest
import torch
from conftest import CPU_TRAINING
from datasets import Dataset

from trl_reasoning_distill.brts import BRTSConfig, BRTSTrainer
from trl_reasoning_distill.cotd_po import CoTDPOConfig, CoTDPOTrainer
from trl_reasoning_distill.evaluation import check_prompt_answer_rows
from trl_reasoning_distill.gen_ssd import GenSSDConfig, GenSSDTrainer
from trl_reasoning_distill.kd_config import KDConfig
from trl_reasoning_distill.kd_trainer import KDTrainer
from trl_reasoning_distill.toy.models import build_teacher
from trl_reasoning_distill.toy.task import sample_problems, solution
from trl_reasoning_distill.tsd_kd import TSDKDConfig
from trl_reasoning_distill.validation import check_finite_fields, check_output_dir
from trl_reasoning_distill.vcrd import VCRDConfig

COMMON = dict(max_steps=1, per_device_train_batch_size=2, max_length=64, **CPU_TRAINING)
TINY = dict(max_new_tokens=8, **COMMON)
LONG_PROMPT = "+".join(["19"] * 30) + "-14-28=?"  # its chat-templated row is past max_length=64


def rows(n=4, answers=True, completions=False) -> list[dict]:
    problems = sample_problems("train", n, seed=1)
    out = [{"prompt": p.prompt} for p in problems]
    for row, p in zip(out, problems):
        row.update({"answer": str(p.answer)} if answers else {})
        row.update({"completion": solution(p, "ltr")} if completions else {})
    return out


def kd_trainer(tmp_path, student, teacher, tokenizer, data=None, eval_data=None, config_cls=KDConfig, **overrides):
    args = config_cls(output_dir=str(tmp_path / "out"), **{**TINY, **overrides})
    return KDTrainer(model=student, teacher_model=teacher, args=args,
                     train_dataset=Dataset.from_list(rows(completions=True)) if data is None else data,
                     eval_dataset=eval_data, processing_class=tokenizer)


def method_trainer(method, tmp_path, student, teacher, tokenizer, data):
    if method == "gen_ssd":
        args = GenSSDConfig(output_dir=str(tmp_path / "out"), chunk_size=4, num_candidates=[2], **TINY)
        return GenSSDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                             processing_class=tokenizer)
    args = BRTSConfig(output_dir=str(tmp_path / "out"), **TINY)
    return BRTSTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tokenizer)


# --- config values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_cls, field, value", [
    (KDConfig, "lmbda", math.nan), (KDConfig, "temperature", math.inf), (KDConfig, "beta", math.nan),
    (KDConfig, "skew_alpha", math.nan), (KDConfig, "learning_rate", math.nan),
    (TSDKDConfig, "indirect_coef", math.nan), (TSDKDConfig, "entropy_coef", math.inf),
    (TSDKDConfig, "opener_ratio", math.nan), (VCRDConfig, "lambda_teacher", math.inf),
    (VCRDConfig, "teacher_prob_gamma", math.nan), (BRTSConfig, "teacher_context_coef", math.inf),
    (BRTSConfig, "teacher_top_p", math.nan), (GenSSDConfig, "teacher_temperature", math.inf),
    (CoTDPOConfig, "apa_lambda", math.inf), (CoTDPOConfig, "rationale_weight", math.nan),
    (CoTDPOConfig, "simpo_gamma", math.nan),
])  # fmt: skip
def test_non_finite_config_values_are_refused_by_name(tmp_path, config_cls, field, value):
    with pytest.raises(ValueError, match=f"`{field}` must be a finite number"):
        config_cls(output_dir=str(tmp_path), use_cpu=True, **{field: value})


def test_the_finite_check_reads_every_float_field_and_those_in_lists():
    from dataclasses import dataclass, field

    @dataclass
    class Config:
        ratio: float = 0.5
        weights: list = field(default_factory=lambda: [1.0, math.inf])

    with pytest.raises(ValueError, match="`weights`"):
        check_finite_fields(Config())
    check_finite_fields(Config(weights=[1.0, 2]))


def test_vocab_size_below_the_tokenizer_is_refused(tmp_path, tiny_student, tiny_teacher, tokenizer):
    with pytest.raises(ValueError, match=rf"`vocab_size={len(tokenizer) - 3}` is smaller than the tokenizer's"):
        kd_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, vocab_size=len(tokenizer) - 3)


# --- datasets ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gen_ssd", "brts"])
def test_a_prompt_over_max_length_is_refused_not_cut(tmp_path, tiny_student, tiny_teacher, tokenizer, method):
    data = rows()
    data[2]["prompt"] = LONG_PROMPT
    with pytest.raises(ValueError, match=r"row 2's prompt has \d+ tokens, over max_length=64"):
        method_trainer(method, tmp_path, tiny_student, tiny_teacher, tokenizer, Dataset.from_list(data))


def test_vcrd_refuses_a_prompt_over_max_prompt_length(tmp_path, tokenizer):
    from test_vcrd_trainer import make_trainer, vcrd_rows

    data = vcrd_rows(4).to_list()
    data[1]["prompt"] = [{"role": "user", "content": LONG_PROMPT}]  # VCRD's collator keeps the last 32 tokens
    with pytest.raises(ValueError, match=r"row 1's prompt has \d+ tokens, over max_prompt_length=32"):
        make_trainer(tmp_path, tokenizer, dataset=Dataset.from_list(data), validity_judge="teacher_prob")


def test_kd_refuses_a_completion_that_would_push_the_prompt_out(tmp_path, tiny_student, tiny_teacher, tokenizer):
    data = rows(completions=True)
    data[1]["completion"] = "<think>" + "1+1=2\n" * 20 + "</think>\\boxed{2}"  # GKD's collator keeps the last 64
    with pytest.raises(ValueError, match="the training dataset: row 1's prompt"):
        kd_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, data=Dataset.from_list(data))


def test_a_dataset_given_to_evaluate_later_is_checked_like_the_training_one(tmp_path, tiny_student, tiny_teacher,
                                                                            tokenizer):
    trainer = kd_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer)
    data = rows(completions=True)
    data[3]["prompt"] = LONG_PROMPT
    with pytest.raises(ValueError, match=r"the evaluation dataset: row 3's prompt( \+ completion)? has \d+ tokens"):
        trainer.evaluate(Dataset.from_list(data))


def test_cotd_po_refuses_a_prompt_over_max_length(tmp_path, tiny_student, tokenizer):
    groups = []
    for p in sample_problems("train", 3, seed=1):
        groups.append({"prompt": p.prompt, "rationale": "", "completions": [f"\\boxed{{{p.answer}}}"],
                       "rewards": [1.0]})
    groups[1]["prompt"] = LONG_PROMPT
    args = CoTDPOConfig(output_dir=str(tmp_path / "out"), instruction_template="{prompt}", **COMMON)
    with pytest.raises(ValueError, match="the train dataset: row 1's prompt has"):
        CoTDPOTrainer(model=tiny_student, args=args, train_dataset=Dataset.from_list(groups),
                      processing_class=tokenizer)


@pytest.mark.parametrize("method", ["gen_ssd", "brts"])
@pytest.mark.parametrize("answer", [None, "", "  "])
def test_training_rows_without_a_gold_answer_are_refused(tmp_path, tiny_student, tiny_teacher, tokenizer, method,
                                                         answer):
    data = rows()
    data[1]["answer"] = answer
    with pytest.raises(ValueError, match="row 1 has (no|an empty) gold answer"):
        method_trainer(method, tmp_path, tiny_student, tiny_teacher, tokenizer, Dataset.from_list(data))


@pytest.mark.parametrize("bad, match", [
    ({"answer": None}, r"row 1 has no gold answer \(None\)"), ({"answer": ""}, "row 1 has an empty gold answer"),
    ({"answer": math.nan}, r"row 1 has no gold answer \(nan\)"), ({"prompt": None}, r"row 1 has no prompt \(None\)"),
    (None, "row 1 is None"),
])  # fmt: skip
def test_prompt_answer_rows_name_none_and_empty_values(bad, match):
    """The check of evaluation, rejection sampling and the Gen-SSD sampler (imported from evaluation.py)."""
    data = rows(3)
    data[1] = None if bad is None else {**data[1], **bad}
    with pytest.raises(ValueError, match=match):
        check_prompt_answer_rows(data, "the evaluation dataset")


@pytest.mark.parametrize("which", ["train", "eval"])
def test_an_empty_dataset_is_named(tmp_path, tiny_student, tiny_teacher, tokenizer, which):
    empty = Dataset.from_dict({"prompt": [], "completion": []})
    data, eval_data = (empty, None) if which == "train" else (None, empty)
    name = "training" if which == "train" else "evaluation"
    with pytest.raises(ValueError, match=f"the {name} dataset is empty"):
        kd_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, data=data, eval_data=eval_data)


def test_an_empty_cotd_po_dataset_is_named(tmp_path, tiny_student, tokenizer):
    args = CoTDPOConfig(output_dir=str(tmp_path / "out"), **COMMON)
    empty = Dataset.from_dict({"prompt": [], "rationale": [], "completions": [], "rewards": []})
    with pytest.raises(ValueError, match="the training dataset is empty"):
        CoTDPOTrainer(model=tiny_student, args=args, train_dataset=empty, processing_class=tokenizer)


@pytest.mark.parametrize("which", ["train", "eval"])
def test_a_none_prompt_is_named_by_row(tmp_path, tiny_student, tiny_teacher, tokenizer, which):
    data = rows(completions=True)
    data[3]["prompt"] = None
    bad = Dataset.from_list(data)
    train, eval_data = (bad, None) if which == "train" else (None, bad)
    name = "training" if which == "train" else "evaluation"
    with pytest.raises(ValueError, match=rf"the {name} dataset: row 3 has no prompt \(None\)"):
        kd_trainer(tmp_path, tiny_student, tiny_teacher, tokenizer, data=train, eval_data=eval_data)


# --- VCRD judges -------------------------------------------------------------------------------------------------


class MiscountingJudge:
    """Scores every step 1, but for one rollout too few (`drop_rollout`) or one step too few (`drop_step`)."""

    def __init__(self, drop_rollout: bool):
        self.drop_rollout = drop_rollout

    def __call__(self, prompts, pairs):
        from trl_reasoning_distill.vcrd import ProposalScores

        scores = [ProposalScores(torch.ones(len(p)), torch.ones(len(p) - (not self.drop_rollout))) for p in pairs]
        return scores[:-1] if self.drop_rollout else scores


@pytest.mark.parametrize("drop_rollout, match", [
    (True, "MiscountingJudge returned scores for 7 rollouts, expected 8"),
    (False, r"MiscountingJudge returned \d+ student scores for rollout 0, expected \d+ \(one per step\)"),
])  # fmt: skip
def test_a_vcrd_judge_with_the_wrong_number_of_scores_is_named(tmp_path, tokenizer, drop_rollout, match):
    from test_vcrd_trainer import first_batch, make_trainer

    trainer = make_trainer(tmp_path, tokenizer, validity_judge="prm", proposal_source="aligned_rollout",
                           trainer_kwargs={"validity_scorer": MiscountingJudge(drop_rollout)})
    with pytest.raises(ValueError, match=match):
        trainer.compute_loss(trainer.model, first_batch(trainer))


# --- teacher, student and output folder --------------------------------------------------------------------------


def test_a_teacher_folder_without_tokenizer_files_is_compared_by_its_config(tmp_path, tiny_student, tiny_teacher,
                                                                            tokenizer):
    tiny_teacher.save_pretrained(tmp_path / "teacher")  # weights and config only
    trainer = kd_trainer(tmp_path, tiny_student, str(tmp_path / "teacher"), tokenizer)
    assert trainer.teacher_model.config.vocab_size == tiny_teacher.config.vocab_size
    small = build_teacher(tokenizer)
    small.resize_token_embeddings(len(tokenizer) - 4)
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match=rf"no tokenizer files and its config has {len(tokenizer) - 4} vocabulary"):
        kd_trainer(tmp_path, tiny_student, str(tmp_path / "small"), tokenizer)


@pytest.mark.parametrize("who", ["teacher", "student"])
def test_a_model_on_the_meta_device_is_refused(tmp_path, tiny_student, tiny_teacher, tokenizer, who):
    with torch.device("meta"):
        empty = build_teacher(tokenizer)
    student, teacher = (tiny_student, empty) if who == "teacher" else (empty, tiny_teacher)
    with pytest.raises(ValueError, match=f"the {who} has weights on the meta device"):
        kd_trainer(tmp_path, student, teacher, tokenizer)


def test_an_unwritable_output_dir_is_refused_at_construction(tmp_path, tiny_student, tiny_teacher, tokenizer):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    args = KDConfig(output_dir=str(blocker / "out"), **TINY)
    with pytest.raises(ValueError, match=r"`output_dir` '.*a_file/out' cannot be created or written"):
        KDTrainer(model=tiny_student, teacher_model=tiny_teacher, args=args,
                  train_dataset=Dataset.from_list(rows(completions=True)), processing_class=tokenizer)
    cotd_args = CoTDPOConfig(output_dir=str(blocker / "out"), **COMMON)
    with pytest.raises(ValueError, match="`output_dir`"):
        CoTDPOTrainer(model=tiny_student, args=cotd_args, train_dataset=Dataset.from_list(rows()),
                      processing_class=tokenizer)


def test_a_missing_output_dir_is_created(tmp_path):
    check_output_dir(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run").is_dir() and not any((tmp_path / "new" / "run").iterdir())


def _generation_entry_points(student, teacher, tokenizer, tmp_path):
    from trl_reasoning_distill.baselines import rejection_sample
    from trl_reasoning_distill.evaluation import evaluate
    from trl_reasoning_distill.gen_ssd.sampler import GenSSDSampler
    from trl_reasoning_distill.vcrd.data import sample_vcrd_rollouts

    return {
        "evaluation": lambda data: evaluate(student, tokenizer, data, progress=False),
        "rejection-sampling": lambda data: rejection_sample(teacher, tokenizer, data),
        "Gen-SSD": lambda data: GenSSDSampler(teacher, student, tokenizer, progress=False).sample(
            data, tmp_path / "gen_ssd.jsonl"),
        "VCRD rollout": lambda data: sample_vcrd_rollouts(teacher, None, tokenizer, data),
    }


@pytest.mark.parametrize("entry", ["evaluation", "rejection-sampling", "Gen-SSD", "VCRD rollout"])
def test_a_none_row_in_a_list_is_named_before_generation(tmp_path, tiny_student, tiny_teacher, tokenizer, entry):
    run = _generation_entry_points(tiny_student, tiny_teacher, tokenizer, tmp_path)[entry]
    with pytest.raises(ValueError, match=rf"{entry} dataset: row 2 is None"):
        run([*rows(2), None, *rows(1)])
