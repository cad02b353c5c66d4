"""The consistency terms of LR-Drop as pure functions: tensors in, scalar tensor out.

Every tensor comes from ONE forward over the concatenated batch [x; x]: the first half of its
batch dimension is pass 1, the second half pass 2. Shapes follow fairseq: hidden states are
T x 2B x C, attention probabilities H x 2B x T x S (heads, batch, query positions, key
positions), output log-probabilities 2N x V (N = B*T flattened target positions); masks
describe ONE pass: B x T (or N) booleans, True at real (non-padding) positions.

Every term is a SUM over positions, so its weight keeps its meaning when the batch size
changes, and is computed in float32 (float64 for float64 inputs) whatever the input dtype.
The gradients are written straight into one buffer of the doubled tensor's shape: splitting
[x; x] with autograd would make the backward pass concatenate two half-size gradients.
Nothing here imports fairseq.
"""
from typing import Iterable, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# log(0) is -inf and 0 * -inf is NaN: clamp probabilities at the smallest normal float32.
_TINY = torch.finfo(torch.float32).tiny


def _wide(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32; float32 and float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def split_passes(x: Tensor, dim: int) -> Tuple[Tensor, Tensor]:
    """The two passes of a tensor computed on [x; x]: views of its halves along `dim`."""
    first, second = x.chunk(2, dim=dim)
    return first, second


# On CPU the output term is bound by memory traffic: every elementwise op over 2N x V floats
# streams the whole tensor through DRAM. Taking rows in blocks of about this many elements
# keeps the temporaries in cache (3x faster at 2N x 32000). On a GPU one block is fastest.
_CPU_BLOCK_ELEMENTS = 2**20


def _row_blocks(rows: int, width: int, device: torch.device) -> Iterable[slice]:
    """Slices covering range(rows), each of about _CPU_BLOCK_ELEMENTS elements on CPU."""
    step = max(1, _CPU_BLOCK_ELEMENTS // width) if device.type == "cpu" else max(rows, 1)
    return (slice(start, start + step) for start in range(0, rows, step))


class _SymmetricKL(torch.autograd.Function):
    """2N x V log-probabilities [log p; log q] -> N values 0.5 * sum_k (p_k - q_k)(log p_k - log q_k).

    Keeps only its input for the backward pass (the output term spans the whole vocabulary)
    and recomputes the rest: d/dlog p = 0.5 * (p (log p - log q) + p - q),
    d/dlog q = -0.5 * (q (log p - log q) + p - q), written in place of exp(input).
    """

    @staticmethod
    def forward(ctx, lprobs):
        ctx.save_for_backward(lprobs)
        log_p, log_q = split_passes(lprobs, 0)
        out = lprobs.new_empty(log_p.shape[:-1])
        for rows in _row_blocks(len(out), lprobs.shape[-1], lprobs.device):
            diff = log_p[rows].exp().sub_(log_q[rows].exp())
            out[rows] = diff.mul_(log_p[rows] - log_q[rows]).sum(-1)
        return out.mul_(0.5)

    @staticmethod
    @once_differentiable  # fairseq needs first derivatives only; a second one is an error, not 0
    def backward(ctx, grad):
        (lprobs,) = ctx.saved_tensors
        log_p, log_q = split_passes(lprobs, 0)
        grad_in = torch.empty_like(lprobs)
        grad_p, grad_q = split_passes(grad_in, 0)
        for rows in _row_blocks(len(grad), lprobs.shape[-1], lprobs.device):
            p, q = torch.exp(log_p[rows], out=grad_p[rows]), torch.exp(log_q[rows], out=grad_q[rows])
            log_ratio, common = log_p[rows] - log_q[rows], p - q
            half = 0.5 * grad[rows].unsqueeze(-1)
            p.mul_(log_ratio).add_(common).mul_(half)
            q.mul_(log_ratio).add_(common).mul_(-half)
        return grad_in


def symmetric_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """0.5 * (KL(p || q) + KL(q || p)) over the last dimension, from log-probabilities.

    Uses the identity KL(p||q) + KL(q||p) = sum_k (p_k - q_k) * (log p_k - log q_k),
    which is finite wherever the log-probabilities are.
    """
    return _SymmetricKL.apply(torch.cat([log_p, log_q]))


def output_consistency(lprobs: Tensor, mask: Tensor) -> Tensor:
    """L_OR, R-Drop's term: sum over target tokens of SKL(P1 || P2).

    lprobs: 2N x V log-probabilities, rows of pass 1 then the same rows of pass 2.
    mask: N, True at real target tokens.
    """
    kl = _SymmetricKL.apply(_wide(lprobs))
    return torch.where(mask, kl, 0.0).sum()


def regression_consistency(predictions: Tensor) -> Tensor:
    """R-Drop's output term for a regression head (STS-B): sum over examples of (y1 - y2)^2.

    predictions: 2B values, the B of pass 1 then the same B of pass 2.
    """
    first, second = split_passes(_wide(predictions), 0)
    return (first - second).pow(2).sum()


class _SquaredDistance(torch.autograd.Function):
    """T x 2B x C states [h1, h2] -> T x B mean over C of (h1 - h2)^2, in float32 or wider.

    The difference is taken in the input dtype (near-equal values subtract exactly) and kept
    for the backward pass: d/dh1 = 2 (h1 - h2) / C = -d/dh2.
    """

    @staticmethod
    def forward(ctx, states):
        first, second = split_passes(states, 1)
        diff = _wide(first - second)
        ctx.save_for_backward(diff)
        ctx.dtype = states.dtype
        return diff.pow(2).mean(-1)

    @staticmethod
    @once_differentiable  # fairseq needs first derivatives only; a second one is an error, not 0
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        time, batch, channels = diff.shape
        grad_in = diff.new_empty((time, 2 * batch, channels), dtype=ctx.dtype)
        first, second = split_passes(grad_in, 1)
        torch.mul(diff, grad.unsqueeze(-1) * (2.0 / channels), out=first)
        torch.neg(first, out=second)
        return grad_in


def hidden_state_distance(states: Tensor, mask: Tensor) -> Tensor:
    """One layer's hidden-state distance: sum over real positions of the mean squared
    difference over the model dimension between the two passes.

    states: T x 2B x C output of the layer on [x; x].
    mask: B x T, True at real positions.
    """
    mse = _SquaredDistance.apply(states)  # T x B
    return torch.where(mask.t(), mse, 0.0).sum()


class _SymmetricKLFromProbs(torch.autograd.Function):
    """H x 2B x T x S probabilities [p, q] -> H x B x T values
    0.5 * sum_k (p_k - q_k) * (log p_k - log q_k).

    Attention rows hold many exact zeros (causal and padding masks); going through
    log-probabilities and back through exp would evaluate exp near float32's underflow, which
    is about 30x slower than an ordinary exp on CPU. Only logs are taken here, of
    probabilities clamped at the smallest normal float32 (the clamp is flat below it):
    d/dp = 0.5 * (log(p/q) + 1 - q/p) where p >= tiny, 0.5 * log(p/q) below; d/dq likewise.
    """

    @staticmethod
    def forward(ctx, probs):
        ctx.save_for_backward(probs)
        p, q = split_passes(probs, 1)
        log_ratio = p.clamp_min(_TINY).log_().sub_(q.clamp_min(_TINY).log_())
        return 0.5 * (p - q).mul_(log_ratio).sum(-1)

    @staticmethod
    @once_differentiable  # fairseq needs first derivatives only; a second one is an error, not 0
    def backward(ctx, grad):
        (probs,) = ctx.saved_tensors
        clamped = probs.clamp_min(_TINY)
        p, q = split_passes(probs, 1)
        p_clamped, q_clamped = split_passes(clamped, 1)
        log_ratio = p_clamped.log().sub_(q_clamped.log())
        half = 0.5 * grad.unsqueeze(-1)
        grad_in = torch.empty_like(probs)
        grad_p, grad_q = split_passes(grad_in, 1)
        torch.div(q, p_clamped, out=grad_p).neg_().add_(1).masked_fill_(p < _TINY, 0.0)
        torch.div(p, q_clamped, out=grad_q).neg_().add_(1).masked_fill_(q < _TINY, 0.0)
        grad_p.add_(log_ratio).mul_(half)
        grad_q.sub_(log_ratio).mul_(half)
        return grad_in


def attention_distance(probs: Tensor, query_mask: Tensor) -> Tensor:
    """One attention module's distance: symmetric KL between the two passes' attention
    distributions (each query row is a distribution over keys), summed over real query
    positions and averaged over heads.

    probs: H x 2B x T x S attention probabilities on [x; x]; padded keys hold probability 0.
    query_mask: B x T, True at real query positions.
    """
    kl = _SymmetricKLFromProbs.apply(_wide(probs)).mean(0)  # B x T, mean over heads
    return torch.where(query_mask, kl, 0.0).sum()


def attention_squared_distance(probs: Tensor, query_mask: Tensor) -> Tensor:
    """One attention module's distance, the squared-error reading: squared Euclidean distance
    between the two passes' attention rows, sum over keys of (A1 - A2)^2, summed over real
    query positions and averaged over heads. Padded keys hold 0 in both passes and add
    nothing, so the value does not depend on how much padding a batch has (a mean over keys
    would).

    probs: H x 2B x T x S attention probabilities on [x; x].
    query_mask: B x T, True at real query positions.
    """
    first, second = split_passes(_wide(probs), 1)
    squared = (first - second).pow(2).sum(-1).mean(0)  # B x T, mean over heads
    return torch.where(query_mask, squared, 0.0).sum()


ATTENTION_DISTANCES = {"skl": attention_distance, "mse": attention_squared_distance}


def hidden_state_consistency(layers: Iterable[Tuple[Tensor, Tensor]]) -> Tensor:
    """L_HSR = mean over layers l of hidden_state_distance(H^l, mask^l).

    layers: (states T x 2B x C, mask B x T) per regularized layer.
    """
    return torch.stack([hidden_state_distance(*layer) for layer in layers]).mean()


def attention_consistency(modules: Iterable[Tuple[Tensor, Tensor]], distance=attention_distance) -> Tensor:
    """L_MHAR = mean over attention modules m of distance(A^m, mask^m): attention_distance
    (symmetric KL, the default) or attention_squared_distance.

    modules: (probs H x 2B x T x S, query_mask B x T) per regularized module.
    """
    return torch.stack([distance(*module) for module in modules]).mean()
