"""Baselines every method is compared with.

- **Standard KD** (sequence-level KD / rejection-sampling fine-tuning): sample the teacher on the training prompts,
  keep the samples whose final answer is verified correct, and fine-tune the student on them with TRL's `SFTTrainer`
  (loss on completion tokens only). `rejection_sample` builds that data set; Gen-SSD's cold start and BRTS's pools
  reuse it.
- **GKD** (on-policy distillation, https://huggingface.co/papers/2306.13649): our `KDTrainer`.
"""

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .evaluation import check_prompt_answer_rows, encode_prompts
from .generation import Generator, HFGenerator
from .verify import extract_answer, grade


def rejection_sample(
    model: PreTrainedModel | Generator,
    tokenizer: PreTrainedTokenizerBase,
    dataset,
    n: int = 4,
    keep_per_prompt: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    extraction: str = "auto",
) -> Dataset:
    """Verified samples of `model` on `dataset` (`prompt`, `answer` columns): `n` samples per prompt, the first
    `keep_per_prompt` correct ones kept.

    Returns:
        `Dataset` with `prompt`, `completion` (assistant messages), `answer`, `id` (when the input has it) and
        `tokens_generated` (every sampled token of that prompt, kept or not: the teacher cost).
    """
    if keep_per_prompt < 1 or keep_per_prompt > n:
        raise ValueError(f"keep_per_prompt must be in [1, n={n}], got {keep_per_prompt}.")
    rows = [dict(r) for r in dataset]
    check_prompt_answer_rows(rows, "the rejection-sampling dataset")
    generator = model if isinstance(model, Generator) else HFGenerator(model, tokenizer)
    samples = generator.generate(encode_prompts(tokenizer, [r["prompt"] for r in rows]), n=n,
                                 max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    kept = []
    for row, group in zip(rows, samples):
        correct = [s for s in group if s.finish_reason == "eos" and grade(extract_answer(s.text, extraction),
                                                                          str(row["answer"]))]
        cost = sum(len(s.token_ids) for s in group)
        for sample in correct[:keep_per_prompt]:
            kept.append({**row, "completion": [{"role": "assistant", "content": sample.text}],
                         "tokens_generated": cost})
    if kept:
        return Dataset.from_list(kept)
    return Dataset.from_dict({name: [] for name in [*rows[0], "completion", "tokens_generated"]})
