"""Every trainer's model card (`trainer.create_model_card()`, TRL's `_name`/`_paper`) cites its paper."""

import pytest
from conftest import CPU_TRAINING
from datasets import Dataset
from test_cotd_po_trainer import TOY_FORMAT, group_rows
from test_kd_trainer import toy_rows
from test_vcrd_trainer import vcrd_rows

from trl_reasoning_distill.brts import BRTSConfig, BRTSTrainer
from trl_reasoning_distill.cotd_po import CoTDPOConfig, CoTDPOTrainer
from trl_reasoning_distill.gen_ssd import GenSSDConfig, GenSSDTrainer
from trl_reasoning_distill.kd_config import KDConfig
from trl_reasoning_distill.kd_trainer import KDTrainer
from trl_reasoning_distill.toy import load_toy_student, load_toy_teacher, problem_rows, sample_problems
from trl_reasoning_distill.tsd_kd import TSDKDConfig, TSDKDTrainer
from trl_reasoning_distill.vcrd import VCRDConfig, VCRDTrainer

TRAINERS = ["kd", "tsd_kd", "vcrd", "brts", "gen_ssd", "cotd_po"]

CITATIONS = {  # the BibTeX key and a title fragment of each paper (shared/papers/)
    "kd": ("agarwal2024on-policy", "On-Policy Distillation of Language Models"),  # GKD's, inherited
    "tsd_kd": ("kim2026explain", "Token-Selective Dual"),
    "vcrd": ("saadi2026validity", "Validity-Calibrated Reasoning Distillation"),
    "brts": ("zhang2026brts", "Best-of-N Teacher Rollout Selection"),
    "gen_ssd": ("he2026genssd", "Generation-Time Selection"),
    "cotd_po": ("niu_cotd_po", "Chain-of-Thought Distillation with Preference Optimization"),
}


def answer_rows(n: int = 4) -> Dataset:
    return Dataset.from_list(problem_rows(sample_problems("train", n, seed=1), "train")).select_columns(
        ["prompt", "answer"])


def make_trainer(method: str, output_dir, tokenizer, model=None):
    """A trainer of `method` on the trained toy models (`model`: the student, default the shipped one), unstarted."""
    model = model if model is not None else load_toy_student()
    common = {**CPU_TRAINING, "output_dir": str(output_dir), "max_steps": 1, "per_device_train_batch_size": 2}
    if method == "cotd_po":
        args = CoTDPOConfig(max_length=128, gradient_accumulation_steps=1, **common, **TOY_FORMAT)
        return CoTDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(group_rows(n=4)),
                             processing_class=tokenizer)
    kd = {"max_new_tokens": 8, "max_length": 128, **common}
    if method == "vcrd":
        args = VCRDConfig(max_prompt_length=32, validity_judge="teacher_prob", **{**kd, "max_length": 160})
        return VCRDTrainer(model=model, teacher_model=load_toy_teacher(), args=args, train_dataset=vcrd_rows(4),
                           processing_class=tokenizer)
    config_cls, trainer_cls, dataset, extra = {
        "kd": (KDConfig, KDTrainer, toy_rows(4), {}),
        "tsd_kd": (TSDKDConfig, TSDKDTrainer, toy_rows(4), {"top_k": 4}),
        "brts": (BRTSConfig, BRTSTrainer, answer_rows(), {"top_k": 4}),
        "gen_ssd": (GenSSDConfig, GenSSDTrainer, answer_rows(),
                    {"chunk_size": 6, "num_candidates": [2, 2], "keep_only_correct": False}),
    }[method]
    return trainer_cls(model=model, teacher_model=load_toy_teacher(), args=config_cls(**kd, **extra),
                       train_dataset=dataset, processing_class=tokenizer)


@pytest.mark.parametrize("method", TRAINERS)
def test_model_card_cites_the_paper(tmp_path, tokenizer, method):
    trainer = make_trainer(method, tmp_path, tokenizer)
    citation = trainer._paper.get("citation")
    assert citation, f"{type(trainer).__name__} has no citation"
    key, title = CITATIONS[method]
    assert key in citation and title.lower() in citation.lower()
    trainer.create_model_card()
    card = (tmp_path / "README.md").read_text()
    assert citation in card
    assert trainer._name in card
    assert "trl-reasoning-distill" in card  # our tag, besides TRL's
