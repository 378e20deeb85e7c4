"""Teacher scorers for CoTD-PO: the scores `r_t(y | x)` of the K student answers of each prompt (spec §2.9, §9.6).

Scoring runs offline, between student sampling and training, so the trainer only sees a `rewards` column. Four
scorers share the [`TeacherScorer`] protocol: a sequence reward model (the paper's route, §2.9), an open-weights
teacher's log-likelihood (an extension, spec §9.6) and the toy world's exact correctness here, and an
OpenAI-compatible chat API judge for a closed teacher in `api_judge.py` (the paper's "scalar quality ratings" route,
not evaluated there). A failed score is NaN, which [`cotd_po_loss`] treats as an invalid candidate.
[`rescale_rewards`] applies the per-prompt rescaling of the loss (spec §2.4) to such lists.
"""

import inspect
import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from ..toy.task import parse_problem
from ..verify import extract_boxed, grade
from ._groups import Prompt, check_groups, prompt_messages, regroup
from .loss import normalize_rewards, token_log_probs

__all__ = [
    "LogProbTeacherScorer",
    "RewardModelScorer",
    "TeacherScorer",
    "ToyCorrectnessScorer",
    "rescale_rewards",
]


@runtime_checkable
class TeacherScorer(Protocol):
    """Scores the candidate answers of each prompt: one list of floats per prompt, NaN where scoring failed."""

    def score(
        self, prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]], rationales: Sequence[str] | None = None
    ) -> list[list[float]]: ...


def _chat_template(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("The tokenizer has no chat template; set `tokenizer.chat_template` before scoring.")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _batches(items: list[int], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _EvalMode:
    """`model.eval()` for the duration of a block, restoring the previous mode."""

    def __init__(self, model):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


# --- open-weights teacher: log-likelihood (spec §9.6, an extension) --------------------------------------------------


class LogProbTeacherScorer:
    """
    `r_t(y | x, CoT_t)`: the teacher's log-likelihood of each answer, mean per token by default (spec §9.6).

    The context is the tokenizer's chat template of the prompt with the generation prompt, followed verbatim by the
    rationale text when given (e.g. `"My thought: ...My answer:"`); the scored tokens are the answer and, by default,
    the end-of-turn token (`tokenizer.eos_token`), as the answer mask of spec §2.12. Rows are left-padded with explicit
    position ids and only the answer window's logits are computed, so a score does not depend on the batch it is in.
    Sum scores make the target nearly one-hot towards short answers; use the mean with `reward_normalization="none"`
    and a temperature (`reward_scale = 1 / τ_t`) in the loss (spec §9.6).

    Args:
        model (`PreTrainedModel`):
            The teacher, a causal LM.
        tokenizer (`PreTrainedTokenizerBase`):
            The teacher's tokenizer, with a chat template.
        length_normalize (`bool`, *optional*, defaults to `True`):
            Mean log-prob per scored token (spec §9.6 "length-normalized mode"); `False` gives the sum.
        append_eos (`bool`, *optional*, defaults to `True`):
            Score the end-of-turn token after the answer.
        batch_size (`int`, *optional*, defaults to `8`):
            Sequences per forward pass.
        max_length (`int` or `None`, *optional*, defaults to `None`):
            Longest context + answer allowed; longer rows raise `ValueError` before any forward pass.
    """

    def __init__(self, model, tokenizer, *, length_normalize: bool = True, append_eos: bool = True,
                 batch_size: int = 8, max_length: int | None = None):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if append_eos and tokenizer.eos_token_id is None:
            raise ValueError("`append_eos=True` needs `tokenizer.eos_token_id`; set it or pass `append_eos=False`.")
        self.model, self.tokenizer = model, tokenizer
        self.length_normalize, self.append_eos = length_normalize, append_eos
        self.batch_size, self.max_length = batch_size, max_length
        self._accepts_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    def identity(self) -> dict:
        """What decides the scores: the teacher's weights, its tokenizer and the scoring mode."""
        from ..fingerprint import model_identity, tokenizer_identity

        return {"scorer": type(self).__name__, "model": model_identity(self.model),
                "tokenizer": tokenizer_identity(self.tokenizer), "length_normalize": self.length_normalize,
                "append_eos": self.append_eos, "max_length": self.max_length}

    def score(
        self, prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]], rationales: Sequence[str] | None = None
    ) -> list[list[float]]:
        """
        Args:
            prompts (`Sequence[str | list[dict]]`):
                Instructions `x`: plain strings (one user turn) or chat messages.
            candidates (`Sequence[Sequence[str]]`):
                The answers of each prompt.
            rationales (`Sequence[str]` or `None`, *optional*, defaults to `None`):
                Text between the generation prompt and the answer (teacher CoT and its markers), one per prompt.

        Returns:
            `list[list[float]]`: Scores, same nesting as `candidates`; NaN for an answer with no scored token.
        """
        check_groups(prompts, candidates, rationales)
        rows: list[tuple[list[int], list[int]]] = []
        for i, (prompt, group) in enumerate(zip(prompts, candidates)):
            context = _chat_template(self.tokenizer, prompt_messages(prompt), add_generation_prompt=True)
            context_ids = _encode(self.tokenizer, context + (rationales[i] if rationales is not None else ""))
            eos_ids = [self.tokenizer.eos_token_id] if self.append_eos else []
            if not context_ids:
                raise ValueError(f"Prompt {i} renders to no tokens; the first answer token needs a context.")
            for j, answer in enumerate(group):
                answer_ids = _encode(self.tokenizer, answer) + eos_ids
                if self.max_length is not None and len(context_ids) + len(answer_ids) > self.max_length:
                    raise ValueError(
                        f"Prompt {i}, answer {j}: {len(context_ids)} context + {len(answer_ids)} answer tokens exceed "
                        f"`max_length={self.max_length}`; raise it or shorten the inputs."
                    )
                rows.append((context_ids, answer_ids))
        sums, counts = self._log_likelihoods(rows)
        flat = [
            math.nan if n == 0 else (s / n if self.length_normalize else s) for s, n in zip(sums, counts, strict=True)
        ]
        return regroup(flat, candidates)

    @torch.inference_mode()
    def _log_likelihoods(self, rows: list[tuple[list[int], list[int]]]) -> tuple[list[float], list[int]]:
        """Summed log-probs and token counts of the answer part of each `(context, answer)` row."""
        sums, counts = [0.0] * len(rows), [0] * len(rows)
        device = _model_device(self.model)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        order = sorted(range(len(rows)), key=lambda r: -(len(rows[r][0]) + len(rows[r][1])))  # similar lengths batch
        with _EvalMode(self.model):
            for batch in _batches(order, self.batch_size):
                sequences = [rows[r][0] + rows[r][1] for r in batch]
                answer_lens = [len(rows[r][1]) for r in batch]
                width = max(len(s) for s in sequences)
                keep = min(max(answer_lens) + 1, width)  # the logit before the first answer token is needed too
                ids_NL = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention_NL = torch.zeros((len(batch), width), dtype=torch.long)
                labels_NL = torch.full((len(batch), width), -100, dtype=torch.long)
                for n, (sequence, answer_len) in enumerate(zip(sequences, answer_lens)):
                    ids_NL[n, width - len(sequence) :] = torch.tensor(sequence)
                    attention_NL[n, width - len(sequence) :] = 1
                    if answer_len:
                        labels_NL[n, width - answer_len :] = ids_NL[n, width - answer_len :]
                position_ids_NL = (attention_NL.cumsum(dim=-1) - 1).clamp_min(0)  # left padding keeps positions 0..
                inputs = {"input_ids": ids_NL.to(device), "attention_mask": attention_NL.to(device),
                          "position_ids": position_ids_NL.to(device)}
                if self._accepts_logits_to_keep:
                    inputs["logits_to_keep"] = keep
                logits_NKV = self.model(**inputs).logits[:, -keep:]
                logp_NK = token_log_probs(logits_NKV, labels_NL[:, -keep:].to(device))
                for n, r in enumerate(batch):
                    sums[r], counts[r] = logp_NK[n].sum().item(), answer_lens[n]
        return sums, counts


# --- reward model (paper §2.9: QRM fine-tuned on teacher-relabelled pairs) -------------------------------------------


class RewardModelScorer:
    """
    `r_t(y | x)` from a sequence reward model (`AutoModelForSequenceClassification` with one output, or a custom RM
    whose output has a `score`), the paper's route for a closed teacher (spec §2.9).

    The RM sees the chat `[user: x, assistant: y]` through the tokenizer's chat template, never the rationale (spec
    §7 item 11). Rows are right-padded with `model.config.pad_token_id`, so the model pools each row's last real token.

    Args:
        model (`PreTrainedModel`):
            The reward model.
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer, with a chat template.
        batch_size (`int`, *optional*, defaults to `8`):
            Sequences per forward pass.
        max_length (`int` or `None`, *optional*, defaults to `None`):
            Longest chat allowed; longer ones raise `ValueError` before any forward pass.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_length: int | None = None):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        if batch_size > 1 and getattr(model.config, "pad_token_id", None) is None:
            raise ValueError(
                "The reward model has no `config.pad_token_id`, needed to pool padded rows; set it or use "
                "`batch_size=1`."
            )
        self.model, self.tokenizer, self.batch_size, self.max_length = model, tokenizer, batch_size, max_length

    def identity(self) -> dict:
        """What decides the scores: the reward model's weights, its tokenizer and the length limit."""
        from ..fingerprint import model_identity, tokenizer_identity

        return {"scorer": type(self).__name__, "model": model_identity(self.model),
                "tokenizer": tokenizer_identity(self.tokenizer), "max_length": self.max_length}

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, trust_remote_code: bool = False, dtype: str | torch.dtype = "auto",
                        device: str | torch.device | None = None, **kwargs) -> "RewardModelScorer":
        """Load an RM and its tokenizer (e.g. `nicolinho/QRM-Llama3.1-8B`, which needs `trust_remote_code=True`)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, dtype=dtype
        )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
                tokenizer.eos_token_id)
        return cls(model.to(device) if device is not None else model, tokenizer, **kwargs)

    def score(
        self, prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]], rationales: Sequence[str] | None = None
    ) -> list[list[float]]:
        """
        Args:
            prompts (`Sequence[str | list[dict]]`):
                Instructions `x`.
            candidates (`Sequence[Sequence[str]]`):
                The answers of each prompt.
            rationales (`Sequence[str]` or `None`, *optional*, defaults to `None`):
                Ignored: the RM scores `(x, y)` only (spec §7 item 11).

        Returns:
            `list[list[float]]`: The RM's scalar score of each answer, same nesting as `candidates`.
        """
        check_groups(prompts, candidates, rationales)
        rows: list[list[int]] = []
        for i, (prompt, group) in enumerate(zip(prompts, candidates)):
            messages = prompt_messages(prompt)
            for j, answer in enumerate(group):
                chat = [*messages, {"role": "assistant", "content": answer}]
                ids = _encode(self.tokenizer, _chat_template(self.tokenizer, chat, add_generation_prompt=False))
                if self.max_length is not None and len(ids) > self.max_length:
                    raise ValueError(
                        f"Prompt {i}, answer {j}: {len(ids)} tokens exceed `max_length={self.max_length}`."
                    )
                rows.append(ids)
        return regroup(self._scores(rows), candidates)

    @torch.inference_mode()
    def _scores(self, rows: list[list[int]]) -> list[float]:
        scores = [0.0] * len(rows)
        device = _model_device(self.model)
        pad_id = self.model.config.pad_token_id if self.model.config.pad_token_id is not None else 0
        order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
        with _EvalMode(self.model):
            for batch in _batches(order, self.batch_size):
                width = max(len(rows[r]) for r in batch)
                ids_NL = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention_NL = torch.zeros((len(batch), width), dtype=torch.long)
                for n, r in enumerate(batch):
                    ids_NL[n, : len(rows[r])] = torch.tensor(rows[r])
                    attention_NL[n, : len(rows[r])] = 1
                output = self.model(input_ids=ids_NL.to(device), attention_mask=attention_NL.to(device))
                values = getattr(output, "score", None)
                values = output.logits if values is None else values
                if values.dim() == 2 and values.shape[-1] == 1:
                    values = values.squeeze(-1)
                if values.shape != (len(batch),):
                    raise ValueError(
                        f"Expected one scalar score per sequence, got an output of shape {tuple(values.shape)}; use a "
                        f"reward model with `num_labels=1`."
                    )
                for n, r in enumerate(batch):
                    scores[r] = values[n].float().item()
        return scores


# --- the toy world's exact correctness -------------------------------------------------------------------------------


class ToyCorrectnessScorer:
    """
    The toy task's verified correctness: `correct_reward` if the last `\\boxed{}` of the answer equals the problem's
    value ([`grade`]), else `incorrect_reward`; the problem is parsed from the prompt (`47+38-19+25=?`), so no gold
    column is needed. Answers without a box count as incorrect and are counted in `num_unboxed`.

    Args:
        correct_reward (`float`, *optional*, defaults to `1.0`):
            Score of a correct answer.
        incorrect_reward (`float`, *optional*, defaults to `0.0`):
            Score of an incorrect or unboxed answer.
    """

    def __init__(self, correct_reward: float = 1.0, incorrect_reward: float = 0.0):
        if not correct_reward > incorrect_reward:
            raise ValueError(f"`correct_reward` must exceed `incorrect_reward`, got {correct_reward} and "
                             f"{incorrect_reward}.")
        self.correct_reward, self.incorrect_reward = correct_reward, incorrect_reward
        self.num_unboxed = 0

    def identity(self) -> dict:
        """The two rewards (the check itself is exact)."""
        return {"scorer": type(self).__name__, "correct_reward": self.correct_reward,
                "incorrect_reward": self.incorrect_reward}

    def score(
        self, prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]], rationales: Sequence[str] | None = None
    ) -> list[list[float]]:
        """
        Args:
            prompts (`Sequence[str | list[dict]]`):
                Toy prompts (`"47+38-19+25=?"`, or chat messages whose last user turn is one).
            candidates (`Sequence[Sequence[str]]`):
                The answers of each prompt.
            rationales (`Sequence[str]` or `None`, *optional*, defaults to `None`):
                Ignored.

        Returns:
            `list[list[float]]`: `correct_reward` / `incorrect_reward` per answer.
        """
        check_groups(prompts, candidates, rationales)
        out = []
        for prompt, group in zip(prompts, candidates):
            user_turns = [m["content"] for m in prompt_messages(prompt) if m.get("role", "user") == "user"]
            if not user_turns:
                raise ValueError(f"No user turn in prompt {prompt!r:.200}.")
            gold = str(parse_problem(user_turns[-1]).answer)
            scores = []
            for answer in group:
                boxed = extract_boxed(answer)
                self.num_unboxed += boxed is None
                scores.append(self.correct_reward if grade(boxed, gold) else self.incorrect_reward)
            out.append(scores)
        return out


# --- per-prompt rescaling of score lists -----------------------------------------------------------------------------


def rescale_rewards(
    rewards: Sequence[Sequence[float]], *, method: str = "minmax", scale: float = 5.0, eps: float = 1e-3
) -> list[list[float]]:
    """
    [`normalize_rewards`] (the loss's per-prompt rescaling, spec §2.4, §7 item 3) on ragged score lists.

    Non-finite scores stay NaN and take no part in their prompt's min, max, mean or std. Store raw scores in the
    dataset (the loss rescales them); this is for inspecting targets, or for writing already-rescaled scores to be
    trained with `reward_normalization="none"` and `reward_scale=1`.

    Args:
        rewards (`Sequence[Sequence[float]]`):
            Scores per prompt, any number per prompt.
        method (`str`, *optional*, defaults to `"minmax"`), scale (`float`, *optional*, defaults to `5.0`),
        eps (`float`, *optional*, defaults to `1e-3`):
            As in [`normalize_rewards`].

    Returns:
        `list[list[float]]`: Rescaled scores, same nesting.
    """
    width = max((len(group) for group in rewards), default=0)
    if width == 0:
        return [[] for _ in rewards]
    padded_BG = torch.full((len(rewards), width), math.nan, dtype=torch.float64)
    for b, group in enumerate(rewards):
        padded_BG[b, : len(group)] = torch.tensor([float(r) for r in group], dtype=torch.float64)
    finite_BG = torch.isfinite(padded_BG)
    rescaled_BG = normalize_rewards(padded_BG, finite_BG, method=method, scale=scale, eps=eps)
    rescaled_BG = torch.where(finite_BG, rescaled_BG, math.nan)
    return [rescaled_BG[b, : len(group)].tolist() for b, group in enumerate(rewards)]
