"""The consistency terms of LR-Drop as pure functions: tensors in, scalar tensor out.

Shapes follow fairseq: hidden states are T x B x C, attention probabilities H x B x T x S
(heads, batch, query positions, key positions), masks are B x T booleans that are True at
real (non-padding) positions. Every term is a SUM over positions, so its weight keeps its
meaning when the batch size changes, and is computed in float32 (or float64 for float64 inputs) whatever the input dtype.
Nothing here imports fairseq.
"""
from typing import Iterable, Tuple

import torch
from torch import Tensor

# log(0) is -inf and 0 * -inf is NaN: clamp probabilities at the smallest normal float32.
_TINY = torch.finfo(torch.float32).tiny


def _wide(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32; float32 and float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _SymmetricKL(torch.autograd.Function):
    """Row-wise 0.5 * sum_k (e^a_k - e^b_k) * (a_k - b_k) over the last dimension.

    Autograd of the plain expression keeps four N x V temporaries alive for the backward pass
    (the output term runs over the whole vocabulary); this keeps only its two inputs and
    recomputes the rest: d/da = 0.5 * (e^a (a - b) + e^a - e^b), d/db = -0.5 * (e^b (a - b) + e^a - e^b).
    """

    @staticmethod
    def forward(ctx, log_p, log_q):
        ctx.save_for_backward(log_p, log_q)
        return 0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        log_p, log_q = ctx.saved_tensors
        p, q, diff = log_p.exp(), log_q.exp(), log_p - log_q
        common = p - q
        half = 0.5 * grad.unsqueeze(-1)
        return p.mul_(diff).add_(common).mul_(half), q.mul_(diff).add_(common).mul_(-half)


def symmetric_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """0.5 * (KL(p || q) + KL(q || p)) over the last dimension, from log-probabilities.

    Uses the identity KL(p||q) + KL(q||p) = sum_k (p_k - q_k) * (log p_k - log q_k),
    which is finite wherever the log-probabilities are.
    """
    return _SymmetricKL.apply(log_p, log_q)


def output_consistency(lprobs1: Tensor, lprobs2: Tensor, mask: Tensor) -> Tensor:
    """L_OR, R-Drop's term: sum over target tokens of SKL(P1 || P2).

    lprobs1, lprobs2: N x V log-probabilities of the two passes (N = B*T flattened).
    mask: N, True at real target tokens.
    """
    kl = symmetric_kl(_wide(lprobs1), _wide(lprobs2))
    return torch.where(mask, kl, 0.0).sum()


def hidden_state_distance(states1: Tensor, states2: Tensor, mask: Tensor) -> Tensor:
    """One layer's hidden-state distance: sum over real positions of the mean squared
    difference over the model dimension.

    states1, states2: T x B x C outputs of the same layer in the two passes.
    mask: B x T, True at real positions.
    """
    # Subtract in the input dtype (near-equal values subtract exactly), square in float32.
    mse = _wide(states1 - states2).pow(2).mean(-1)  # T x B
    return torch.where(mask.t(), mse, 0.0).sum()


def attention_distance(probs1: Tensor, probs2: Tensor, query_mask: Tensor) -> Tensor:
    """One attention module's distance: symmetric KL between the two passes' attention
    distributions (each query row is a distribution over keys), summed over real query
    positions and averaged over heads.

    probs1, probs2: H x B x T x S attention probabilities; padded keys hold probability 0.
    query_mask: B x T, True at real query positions.
    """
    log_p1 = _wide(probs1).clamp_min(_TINY).log()
    log_p2 = _wide(probs2).clamp_min(_TINY).log()
    kl = symmetric_kl(log_p1, log_p2).mean(0)  # B x T, averaged over heads
    return torch.where(query_mask, kl, 0.0).sum()


def hidden_state_consistency(layers: Iterable[Tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """L_HSR = mean over layers l of hidden_state_distance(H1^l, H2^l, mask^l).

    layers: (states1 T x B x C, states2 T x B x C, mask B x T) per regularized layer.
    """
    return torch.stack([hidden_state_distance(*layer) for layer in layers]).mean()


def attention_consistency(modules: Iterable[Tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """L_MHAR = mean over attention modules m of attention_distance(A1^m, A2^m, mask^m).

    modules: (probs1 H x B x T x S, probs2 H x B x T x S, query_mask B x T) per module.
    """
    return torch.stack([attention_distance(*module) for module in modules]).mean()


def split_passes(x: Tensor, dim: int) -> Tuple[Tensor, Tensor]:
    """Split a tensor computed on the concatenated batch [x; x] into the two passes."""
    first, second = x.chunk(2, dim=dim)
    return first, second
