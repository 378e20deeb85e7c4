import pytest
import reference as ref
import torch

from trl_reasoning_distill.divergence import (
    DIVERGENCES,
    entropy,
    forward_kl,
    generalized_jsd,
    global_token_mean,
    masked_mean,
    masked_sum,
    per_token_divergence,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    tvd,
)

SHAPES = [(1, 1, 2), (2, 3, 7), (3, 17, 31)]
COEFFICIENTS = [0.0, 0.1, 0.5, 0.9, 1.0]
TEMPERATURES = [1.0, 2.0]

# (name, package function, reference, coefficient keyword or None)
CASES = [
    ("forward_kl", forward_kl, ref.forward_kl_ref, None),
    ("reverse_kl", reverse_kl, ref.reverse_kl_ref, None),
    ("generalized_jsd", generalized_jsd, ref.generalized_jsd_ref, "beta"),
    ("skew_kl", skew_kl, ref.skew_kl_ref, "alpha"),
    ("skew_reverse_kl", skew_reverse_kl, ref.skew_reverse_kl_ref, "alpha"),
    ("tvd", tvd, ref.tvd_ref, None),
]
MATRIX = [
    pytest.param(fn, ref_fn, {} if key is None else {key: value}, id=f"{name}-{key}={value}" if key else name)
    for name, fn, ref_fn, key in CASES
    for value in (COEFFICIENTS if key else [None])
]


def _logits(B, T, V, dtype=torch.float64, scale=2.0):
    student_BTV = (scale * torch.randn(B, T, V, dtype=dtype)).requires_grad_()
    teacher_BTV = scale * torch.randn(B, T, V, dtype=dtype)
    return student_BTV, teacher_BTV


def _student_grad(fn, student_BTV, teacher_BTV, weight_BT, **kwargs):
    (grad_BTV,) = torch.autograd.grad((fn(student_BTV, teacher_BTV, **kwargs) * weight_BT).sum(), student_BTV)
    return grad_BTV


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("B, T, V", SHAPES)
@pytest.mark.parametrize("fn, ref_fn, kwargs", MATRIX)
def test_divergence_matches_reference(fn, ref_fn, kwargs, B, T, V, temperature):
    student_BTV, teacher_BTV = _logits(B, T, V)
    out_BT = fn(student_BTV, teacher_BTV, **kwargs, temperature=temperature)
    expected_BT = ref_fn(student_BTV, teacher_BTV, **kwargs, temperature=temperature)
    assert out_BT.shape == (B, T) and out_BT.dtype == torch.float64
    torch.testing.assert_close(out_BT, expected_BT)
    weight_BT = torch.rand(B, T, dtype=torch.float64)
    (grad_BTV,) = torch.autograd.grad((out_BT * weight_BT).sum(), student_BTV)
    (expected_grad_BTV,) = torch.autograd.grad((expected_BT * weight_BT).sum(), student_BTV)
    torch.testing.assert_close(grad_BTV, expected_grad_BTV)
    if fn is skew_reverse_kl and kwargs["alpha"] > 0:
        return  # the detached mixture makes SRKL's gradient a surrogate that finite differences cannot reproduce
    assert torch.autograd.gradcheck(
        lambda s: fn(s, teacher_BTV, **kwargs, temperature=temperature), (student_BTV,), fast_mode=True
    )


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_skew_reverse_kl_gradient_treats_the_mixture_as_a_constant(alpha):
    student_BTV, teacher_BTV = _logits(2, 3, 7)
    p_BTV, q_BTV = teacher_BTV.softmax(-1), student_BTV.detach().softmax(-1)
    frozen_mixture_BTV = (1 - alpha) * p_BTV + alpha * q_BTV

    def kl_to_frozen_mixture(s_BTV):  # KL(q(s) || m) with m held at its value for the current student
        q_s_BTV = s_BTV.softmax(-1)
        return (q_s_BTV * (q_s_BTV / frozen_mixture_BTV).log()).sum(-1)

    assert torch.autograd.gradcheck(kl_to_frozen_mixture, (student_BTV,))
    weight_BT = torch.rand(2, 3, dtype=torch.float64)
    grad_BTV = _student_grad(skew_reverse_kl, student_BTV, teacher_BTV, weight_BT, alpha=alpha)
    (expected_grad_BTV,) = torch.autograd.grad((kl_to_frozen_mixture(student_BTV) * weight_BT).sum(), student_BTV)
    torch.testing.assert_close(grad_BTV, expected_grad_BTV)
    q_s_BTV = student_BTV.softmax(-1)  # the gradient through both q's, which DistiLLM-2 does not use, differs
    undetached_BT = (q_s_BTV * (q_s_BTV / ((1 - alpha) * p_BTV + alpha * q_s_BTV)).log()).sum(-1)
    (undetached_grad_BTV,) = torch.autograd.grad((undetached_BT * weight_BT).sum(), student_BTV)
    assert not torch.allclose(grad_BTV, undetached_grad_BTV)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("B, T, V", SHAPES)
def test_entropy_matches_reference(B, T, V, temperature):
    logits_BTV, _ = _logits(B, T, V)
    out_BT = entropy(logits_BTV, temperature=temperature)
    torch.testing.assert_close(out_BT, ref.entropy_ref(logits_BTV, temperature=temperature))
    (grad_BTV,) = torch.autograd.grad(out_BT.sum(), logits_BTV)
    (grad_ref_BTV,) = torch.autograd.grad(ref.entropy_ref(logits_BTV, temperature=temperature).sum(), logits_BTV)
    torch.testing.assert_close(grad_BTV, grad_ref_BTV)
    assert torch.autograd.gradcheck(lambda s: entropy(s, temperature=temperature), (logits_BTV,), fast_mode=True)


@pytest.mark.parametrize("fn, ref_fn, kwargs", MATRIX)
def test_identical_distributions_give_zero_and_zero_gradient(fn, ref_fn, kwargs):
    student_BTV, _ = _logits(2, 3, 7)
    shifted_BTV = student_BTV.detach() + 3.0  # a shift of the logits leaves the distribution unchanged
    zeros_BT = torch.zeros(2, 3, dtype=torch.float64)
    torch.testing.assert_close(fn(student_BTV, shifted_BTV, **kwargs), zeros_BT)
    out_BT = fn(student_BTV, student_BTV.detach().clone(), **kwargs)
    torch.testing.assert_close(out_BT, zeros_BT)
    (grad_BTV,) = torch.autograd.grad(out_BT.sum(), student_BTV)
    torch.testing.assert_close(grad_BTV, torch.zeros_like(grad_BTV))


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_endpoints_are_exactly_the_kl_divergences(temperature):
    student_BTV, teacher_BTV = _logits(2, 3, 7, dtype=torch.float32)
    fkl_BT = forward_kl(student_BTV, teacher_BTV, temperature=temperature)
    rkl_BT = reverse_kl(student_BTV, teacher_BTV, temperature=temperature)
    assert torch.equal(generalized_jsd(student_BTV, teacher_BTV, beta=0.0, temperature=temperature), fkl_BT)
    assert torch.equal(generalized_jsd(student_BTV, teacher_BTV, beta=1.0, temperature=temperature), rkl_BT)
    assert torch.equal(skew_kl(student_BTV, teacher_BTV, alpha=0.0, temperature=temperature), fkl_BT)
    assert torch.equal(skew_reverse_kl(student_BTV, teacher_BTV, alpha=0.0, temperature=temperature), rkl_BT)


def test_alpha_one_gives_zero():
    student_BTV, teacher_BTV = _logits(2, 3, 7)
    zeros_BT = torch.zeros(2, 3, dtype=torch.float64)
    torch.testing.assert_close(skew_kl(student_BTV, teacher_BTV, alpha=1.0), zeros_BT)
    torch.testing.assert_close(skew_reverse_kl(student_BTV, teacher_BTV, alpha=1.0), zeros_BT)


@pytest.mark.parametrize("fn, ref_fn, kwargs", MATRIX)
def test_masked_vocabulary_is_finite_and_matches_the_unmasked_part(fn, ref_fn, kwargs):
    student_BTV, teacher_BTV = _logits(2, 3, 7)
    masked_V = torch.tensor([False, True, False, False, True, True, False])
    student_masked_BTV = student_BTV.masked_fill(masked_V, float("-inf"))
    teacher_masked_BTV = teacher_BTV.masked_fill(masked_V, float("-inf"))
    out_BT = fn(student_masked_BTV, teacher_masked_BTV, **kwargs)
    (grad_BTV,) = torch.autograd.grad(out_BT.sum(), student_BTV)
    assert torch.isfinite(out_BT).all() and torch.isfinite(grad_BTV).all()
    assert (grad_BTV[..., masked_V] == 0).all()
    kept_BTV = student_BTV[..., ~masked_V]
    expected_BT = ref_fn(kept_BTV, teacher_BTV[..., ~masked_V], **kwargs)
    torch.testing.assert_close(out_BT, expected_BT)
    (expected_grad_BTV,) = torch.autograd.grad(expected_BT.sum(), kept_BTV)
    torch.testing.assert_close(grad_BTV[..., ~masked_V], expected_grad_BTV)


def test_entropy_of_masked_vocabulary_is_finite():
    logits_BTV, _ = _logits(2, 3, 7)
    masked_BTV = logits_BTV.masked_fill(torch.tensor([True, False, False, True, False, False, False]), float("-inf"))
    out_BT = entropy(masked_BTV)
    (grad_BTV,) = torch.autograd.grad(out_BT.sum(), logits_BTV)
    assert torch.isfinite(out_BT).all() and torch.isfinite(grad_BTV).all()
    torch.testing.assert_close(out_BT, ref.entropy_ref(logits_BTV[..., [1, 2, 4, 5, 6]]))


@pytest.mark.parametrize("name", DIVERGENCES)
def test_bf16_inputs_give_float32_close_to_float64(name):
    student_BTV, teacher_BTV = _logits(2, 5, 33, dtype=torch.bfloat16)
    out_BT = per_token_divergence(name, student_BTV, teacher_BTV, beta=0.3, alpha=0.2, temperature=2.0)
    expected_BT = per_token_divergence(
        name, student_BTV.double(), teacher_BTV.double(), beta=0.3, alpha=0.2, temperature=2.0
    )
    assert out_BT.dtype == torch.float32 and expected_BT.dtype == torch.float64
    torch.testing.assert_close(out_BT.double(), expected_BT, atol=1e-2, rtol=0)


def test_output_dtypes():
    student_BTV, teacher_BTV = _logits(2, 3, 7, dtype=torch.float16)
    assert forward_kl(student_BTV, teacher_BTV).dtype == torch.float32
    assert entropy(student_BTV).dtype == torch.float32
    assert entropy(student_BTV.double()).dtype == torch.float64
    assert tvd(student_BTV.float(), teacher_BTV.float()).dtype == torch.float32
    assert forward_kl(torch.randn(4, 5), torch.randn(4, 5)).shape == (4,)  # any leading dimensions


@pytest.mark.parametrize("name, fn, ref_fn, key", CASES)
def test_per_token_divergence_dispatches(name, fn, ref_fn, key):
    student_BTV, teacher_BTV = _logits(2, 3, 7)
    kwargs = {} if key is None else {key: 0.3}
    torch.testing.assert_close(
        per_token_divergence(name, student_BTV, teacher_BTV, **kwargs, temperature=2.0),
        fn(student_BTV, teacher_BTV, **kwargs, temperature=2.0),
    )


def test_invalid_arguments_raise():
    student_BTV, teacher_BTV = _logits(2, 3, 7)
    with pytest.raises(ValueError, match="7.*5"):
        forward_kl(student_BTV, teacher_BTV[..., :5])
    with pytest.raises(ValueError, match="forward_kl"):
        per_token_divergence("kl", student_BTV, teacher_BTV)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            generalized_jsd(student_BTV, teacher_BTV, beta=bad)
        with pytest.raises(ValueError, match="alpha"):
            skew_kl(student_BTV, teacher_BTV, alpha=bad)
        with pytest.raises(ValueError, match="alpha"):
            skew_reverse_kl(student_BTV, teacher_BTV, alpha=bad)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            tvd(student_BTV, teacher_BTV, temperature=bad)
        with pytest.raises(ValueError, match="temperature"):
            entropy(student_BTV, temperature=bad)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_generalized_jsd_matches_trl(beta, temperature):
    from trl.experimental.gkd import GKDTrainer

    student_BTV, teacher_BTV = _logits(2, 3, 7, dtype=torch.float32)
    trl_BTV = GKDTrainer.generalized_jsd_loss(
        student_BTV, teacher_BTV, beta=beta, temperature=temperature, reduction="none"
    )
    assert trl_BTV.shape == (2, 3, 7)  # TRL's reduction="none" keeps the vocabulary dimension
    out_BT = generalized_jsd(student_BTV, teacher_BTV, beta=beta, temperature=temperature)
    torch.testing.assert_close(out_BT, trl_BTV.sum(-1))


def test_masked_sum_and_mean_match_reference():
    values_BT = torch.randn(3, 5, dtype=torch.float64)
    mask_BT = torch.rand(3, 5) > 0.4
    weights_BT = torch.rand(3, 5, dtype=torch.float64) * mask_BT
    torch.testing.assert_close(masked_sum(values_BT, weights_BT), (values_BT * weights_BT).sum())
    torch.testing.assert_close(masked_mean(values_BT, mask_BT), ref.masked_mean_ref(values_BT, mask_BT))
    torch.testing.assert_close(masked_mean(values_BT, mask_BT.float()), ref.masked_mean_ref(values_BT, mask_BT))
    torch.testing.assert_close(masked_mean(values_BT, mask_BT, 11), ref.masked_mean_ref(values_BT, mask_BT, 11))
    torch.testing.assert_close(
        masked_mean(values_BT, mask_BT, torch.tensor(11)), ref.masked_mean_ref(values_BT, mask_BT, 11)
    )


def test_masked_reductions_ignore_non_finite_values_at_masked_positions():
    values_BT = torch.tensor([[1.0, float("inf")], [float("nan"), 3.0]])
    mask_BT = torch.tensor([[True, False], [False, True]])
    assert masked_sum(values_BT, mask_BT).item() == 4.0
    assert masked_mean(values_BT, mask_BT).item() == 2.0


def test_all_masked_batch_gives_zero_not_nan():
    values_BT = torch.ones(2, 3, requires_grad=True)
    for out in (
        masked_mean(values_BT, torch.zeros(2, 3)),
        masked_mean(values_BT, torch.zeros(2, 3, dtype=torch.bool)),
        masked_mean(values_BT, torch.zeros(2, 3), num_items_in_batch=0),
        global_token_mean(values_BT, torch.zeros(2, 3), num_items_in_batch=0, num_processes=2),
        global_token_mean(values_BT, torch.zeros(2, 3), num_items_in_batch=torch.tensor(0), num_processes=2),
    ):
        assert out.item() == 0.0
        (grad_BT,) = torch.autograd.grad(out, values_BT)
        assert torch.isfinite(grad_BT).all()


def test_global_token_mean_is_correct_under_accumulation_and_ddp():
    V, H = 11, 4
    weight_HV = torch.randn(H, V, dtype=torch.float64, requires_grad=True)  # the shared student parameter
    lengths = [[3, 7], [1, 5]]  # [process][micro-batch] rows of uneven length
    micro_batches = [[_micro_batch(length, H, V) for length in row] for row in lengths]
    num_items = sum(int(mask_BT.sum()) for row in micro_batches for _, _, mask_BT in row)

    def loss(hidden_BTH, teacher_BTV, mask_BT, num_items_in_batch, num_processes):
        values_BT = forward_kl(hidden_BTH @ weight_HV, teacher_BTV)
        return global_token_mean(values_BT, mask_BT, num_items_in_batch, num_processes)

    per_process_grads = []
    for row in micro_batches:  # each process sums its micro-batch gradients, as gradient accumulation does
        grads = [torch.autograd.grad(loss(*batch, torch.tensor(num_items), 2), weight_HV)[0] for batch in row]
        per_process_grads.append(torch.stack(grads).sum(0))
    ddp_grad_HV = torch.stack(per_process_grads).mean(0)  # DDP all-reduce averages over processes

    all_batches = [batch for row in micro_batches for batch in row]
    hidden_NTH, teacher_NTV, mask_NT = (torch.cat(parts) for parts in zip(*all_batches, strict=True))
    (global_grad_HV,) = torch.autograd.grad(loss(hidden_NTH, teacher_NTV, mask_NT, num_items, 1), weight_HV)
    torch.testing.assert_close(ddp_grad_HV, global_grad_HV, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        loss(hidden_NTH, teacher_NTV, mask_NT, num_items, 1),
        masked_mean(forward_kl(hidden_NTH @ weight_HV, teacher_NTV), mask_NT),
    )


def _micro_batch(num_tokens, H, V, T=8):
    """One row with `num_tokens` loss tokens out of `T` positions."""
    mask_BT = torch.zeros(1, T, dtype=torch.bool)
    mask_BT[0, :num_tokens] = True
    return torch.randn(1, T, H, dtype=torch.float64), torch.randn(1, T, V, dtype=torch.float64), mask_BT


def test_global_token_mean_without_a_count_is_the_micro_batch_mean():
    values_BT, mask_BT = torch.randn(2, 5), torch.rand(2, 5) < 0.6
    torch.testing.assert_close(global_token_mean(values_BT, mask_BT, None, num_processes=4),
                               masked_mean(values_BT, mask_BT))
