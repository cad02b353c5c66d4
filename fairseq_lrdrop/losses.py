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
from typing import Iterable, Optional, Tuple

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


def summed_row_distance(rows: Tensor, query_mask: Tensor) -> Tensor:
    """One attention module's distance from its per-row distances: mean over heads, summed
    over real query positions.

    rows: H x B x T distances between the two passes' attention rows (row_skl / row_squared).
    query_mask: B x T, True at real query positions.
    """
    return torch.where(query_mask, rows.mean(0), 0.0).sum()


def attention_distance(probs: Tensor, query_mask: Tensor) -> Tensor:
    """One attention module's distance: symmetric KL between the two passes' attention
    distributions (each query row is a distribution over keys), summed over real query
    positions and averaged over heads.

    probs: H x 2B x T x S attention probabilities on [x; x]; padded keys hold probability 0.
    query_mask: B x T, True at real query positions.
    """
    return summed_row_distance(_SymmetricKLFromProbs.apply(_wide(probs)), query_mask)


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
    return summed_row_distance(row_squared(first, second), query_mask)


ATTENTION_DISTANCES = {"skl": attention_distance, "mse": attention_squared_distance}


def attention_row_distances(probs: Tensor, distance: str) -> Tensor:
    """H x 2B x T x S probabilities on [x; x] -> H x B x T distances between the two passes'
    rows: "skl" (symmetric KL, as attention_distance) or "mse" (as attention_squared_distance)."""
    if distance == "skl":
        return _SymmetricKLFromProbs.apply(_wide(probs))
    first, second = split_passes(_wide(probs), 1)
    return row_squared(first, second)


# ---------------------------------------------------------------------------------------------
# The attention term without holding the maps: attention core and row distances in one
# function, computed over blocks of query rows, the probabilities recomputed in backward.
# ---------------------------------------------------------------------------------------------


def row_skl(p: Tensor, q: Tensor) -> Tensor:
    """... x S probabilities of the two passes -> ... values 0.5 * sum_k (p_k - q_k) log(p_k / q_k),
    logs of probabilities clamped at the smallest normal float32 (as _SymmetricKLFromProbs)."""
    log_ratio = p.clamp_min(_TINY).log_().sub_(q.clamp_min(_TINY).log_())
    return 0.5 * (p - q).mul_(log_ratio).sum(-1)


def row_skl_grad_times_probs(p: Tensor, q: Tensor, grad: Tensor) -> Tuple[Tensor, Tensor]:
    """p * d(row_skl)/dp and q * d(row_skl)/dq for the incoming gradient grad (one per row), the
    form the softmax backward takes (d/ds = p * g - p * sum(p * g)), without dividing by p:
    p * d/dp = 0.5 g (p log(p/q) + p - q), q * d/dq = -0.5 g (q log(p/q) + p - q).
    (_SymmetricKLFromProbs drops the p - q part where p underflows below float32's smallest
    normal; with both passes under the same masks that happens only where p = q = 0.)"""
    log_ratio = p.clamp_min(_TINY).log_().sub_(q.clamp_min(_TINY).log_())
    half, common = 0.5 * grad.unsqueeze(-1), p - q
    return (p * log_ratio).add_(common).mul_(half), (q * log_ratio).add_(common).mul_(half.neg())


def row_squared(p: Tensor, q: Tensor) -> Tensor:
    """... x S rows of the two passes -> ... values sum_k (p_k - q_k)^2."""
    return (p - q).pow(2).sum(-1)


def row_squared_grad_times_probs(p: Tensor, q: Tensor, grad: Tensor) -> Tuple[Tensor, Tensor]:
    """p * d(row_squared)/dp and q * d(row_squared)/dq: d/dp = 2 g (p - q) = -d/dq."""
    grad_p = (p - q).mul_(2 * grad.unsqueeze(-1))
    return p * grad_p, q * grad_p.neg_()


ROW_DISTANCES = {"skl": (row_skl, row_skl_grad_times_probs), "mse": (row_squared, row_squared_grad_times_probs)}


def dropout_keep_mask(shape, p: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The keep mask (bool) that F.dropout(x, p) draws for an x of this shape and dtype, from
    the same random numbers, so that the model trains exactly as with F.dropout."""
    if device.type == "cpu":  # F.dropout on CPU draws empty_like(x).bernoulli_(1 - p)
        return torch.empty(shape, dtype=torch.bool).bernoulli_(1 - p)
    return torch.nn.functional.dropout(torch.ones(shape, dtype=dtype, device=device), p).ne(0)


def _rng_state(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _redraw_keep_mask(state, shape, p, dtype, device) -> Tensor:
    """dropout_keep_mask drawn again from a saved generator state, leaving the generator as it is."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if device.type == "cuda":
            torch.cuda.set_rng_state(state, device)
        else:
            torch.set_rng_state(state)
        return dropout_keep_mask(shape, p, dtype, device)


# One block of query rows holds about this many elements per pass on CPU, so that the block's
# elementwise passes (softmax, distance, dropout) stay in cache; on a GPU one block is fastest.
_CPU_ATTENTION_BLOCK = 2**20


def _attention_blocks(batch: int, heads: int, tgt_len: int, src_len: int, device: torch.device):
    """(batch items, query rows) slices of one pass covering batch x tgt_len, in blocks of about
    _CPU_ATTENTION_BLOCK probabilities (all heads of an item stay in one block)."""
    if device.type != "cpu":
        return [(slice(0, batch), slice(0, tgt_len))]
    rows = min(tgt_len, max(32, _CPU_ATTENTION_BLOCK // (heads * src_len)))
    items = min(batch, max(1, _CPU_ATTENTION_BLOCK // (heads * rows * src_len)))
    # the last block of items stops at the batch: past it lie the other pass's items
    return [(slice(b, min(b + items, batch)), slice(t, min(t + rows, tgt_len)))
            for b in range(0, batch, items) for t in range(0, tgt_len, rows)]


def _all_masked_rows(bias: Optional[Tensor], padding: Optional[Tensor], rows: int, tgt_len: int) -> Optional[Tensor]:
    """N x T x 1, True at query rows whose keys are all masked (-inf in bias or padded), or None
    when there are none. Counted from the masks (a small matmul), not from the N x T x S scores.

    bias: T x S or None; padding: N x 1 x S or None; rows: N; tgt_len: T."""
    if (bias is None or not torch.isneginf(bias).any()) and (padding is None or not padding.any()):
        return None
    allowed_by_bias = (~torch.isneginf(bias)).float() if bias is not None else None  # T x S
    real_keys = (~padding[:, 0]).float() if padding is not None else None  # N x S
    if allowed_by_bias is None:
        seen = real_keys.sum(-1, keepdim=True).expand(rows, tgt_len)
    elif real_keys is None:
        seen = allowed_by_bias.sum(-1)[None].expand(rows, -1)
    else:
        seen = real_keys @ allowed_by_bias.t()  # N x T: keys each row may attend to (exact counts)
    masked = seen.eq(0).unsqueeze(-1)
    return masked if masked.any() else None


def _block_probs(q: Tensor, k: Tensor, bias: Optional[Tensor], padding: Optional[Tensor],
                 all_masked: Optional[Tensor]) -> Tensor:
    """Attention probabilities of one block, as fairseq's explicit path and the recorder compute
    them: scores q k^T (+ bias), -inf at padded keys, softmax in float32; a row whose keys are
    all masked gets 0 (not softmax's NaN).

    q: N x R x D (scaled), k: N x S x D, bias: R x S or None, padding: N x 1 x S (True at pads)
    or None, all_masked: N x R x 1 or None. Returns N x R x S float32.
    """
    scores = torch.bmm(q, k.transpose(1, 2))
    if bias is not None:
        scores += bias
    if padding is not None:
        scores.masked_fill_(padding, float("-inf"))
    if all_masked is None or not all_masked.any():
        return torch.softmax(scores, dim=-1, dtype=torch.float32)
    return torch.softmax(scores.masked_fill_(all_masked, 0.0), dim=-1, dtype=torch.float32).masked_fill_(all_masked, 0.0)


def _dropout_scale(p: float, dtype: torch.dtype) -> float:
    """1 / (1 - p) rounded as F.dropout's noise holds it: 1 / (1 - p) computed in `dtype`."""
    return float(torch.ones((), dtype=dtype).div_(1 - p))


class _AttentionWithRowDistance(torch.autograd.Function):
    """Attention on [x; x] and the distance between the two passes' attention rows, without
    keeping any float T x S map for backward.

    Inputs (2B*H leading, pass 1 then pass 2, item-major as fairseq's heads): q 2BH x T x D
    (already scaled), k 2BH x S x D, v 2BH x S x Dv; bias T x S (additive, e.g. the causal
    mask) or None; padding 2BH x 1 x S (True at padded keys) or None.
    Outputs: attended = dropout(P) v (2BH x T x Dv, q's dtype), rows = distance(P1, P2) per
    row (BH x T, float32), head mean of P (2B x T x S, float32; empty unless asked).
    Saves q, k, v and the dropout's keep mask (bool, on CPU, where drawing it again would cost
    as much as the attention's matmuls) or the generator state to draw it again (elsewhere).
    Backward recomputes P block by block and chains the gradients of the values, the dropout
    and the distance through the softmax.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, padding, dropout_p, heads, distance, head_mean):
        ctx.set_materialize_grads(False)
        pairs, tgt_len, _ = q.shape
        pairs //= 2
        batch, src_len = pairs // heads, k.size(1)
        row_distance = ROW_DISTANCES[distance][0]
        dropout_state = _rng_state(q.device) if dropout_p > 0 else None
        keep = dropout_keep_mask((2 * pairs, tgt_len, src_len), dropout_p, q.dtype, q.device) if dropout_p > 0 else None
        scale = _dropout_scale(dropout_p, q.dtype) if dropout_p > 0 else 1.0
        all_masked = _all_masked_rows(bias, padding, 2 * pairs, tgt_len)
        attended = q.new_empty(2 * pairs, tgt_len, v.size(-1))
        rows = q.new_empty(pairs, tgt_len, dtype=torch.promote_types(q.dtype, torch.float32))
        mean = q.new_empty((2 * batch, tgt_len, src_len) if head_mean else (0,), dtype=rows.dtype)
        for items, queries in _attention_blocks(batch, heads, tgt_len, src_len, q.device):
            probs = []
            for first in (0, batch):  # the block's items in pass 1, then in pass 2
                index = slice((first + items.start) * heads, (first + items.stop) * heads)
                block = _block_probs(q[index, queries], k[index], None if bias is None else bias[queries],
                                     None if padding is None else padding[index],
                                     None if all_masked is None else all_masked[index, queries])
                if keep is None:
                    dropped = block.to(q.dtype)
                else:  # as F.dropout: P * (keep / (1 - p)), a new tensor (the block stays for the distance)
                    dropped = block.to(q.dtype).mul(scale).mul_(keep[index, queries])
                attended[index, queries] = torch.bmm(dropped, v[index])
                if head_mean:
                    mean[first + items.start:first + items.stop, queries] = block.unflatten(0, (-1, heads)).mean(1)
                probs.append(block)
            rows[items.start * heads:items.stop * heads, queries] = row_distance(*probs)
        keep_saved = keep if keep is not None and q.device.type == "cpu" else None
        ctx.save_for_backward(q, k, v, bias, padding, keep_saved)
        ctx.setup = (dropout_p, dropout_state, heads, distance)
        return attended, rows, mean

    @staticmethod
    @once_differentiable  # fairseq needs first derivatives only; a second one is an error, not 0
    def backward(ctx, grad_attended, grad_rows, grad_mean):
        q, k, v, bias, padding, keep = ctx.saved_tensors
        dropout_p, dropout_state, heads, distance = ctx.setup
        pairs, tgt_len, _ = q.shape
        pairs //= 2
        batch, src_len = pairs // heads, k.size(1)
        distance_grad = ROW_DISTANCES[distance][1]
        if keep is None and dropout_p > 0 and grad_attended is not None:
            keep = _redraw_keep_mask(dropout_state, (2 * pairs, tgt_len, src_len), dropout_p, q.dtype, q.device)
        scale = _dropout_scale(dropout_p, q.dtype) if dropout_p > 0 else 1.0
        all_masked = _all_masked_rows(bias, padding, 2 * pairs, tgt_len)
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for items, queries in _attention_blocks(batch, heads, tgt_len, src_len, q.device):
            indices = [slice((first + items.start) * heads, (first + items.stop) * heads) for first in (0, batch)]
            blocks = [_block_probs(q[index, queries], k[index], None if bias is None else bias[queries],
                                   None if padding is None else padding[index],
                                   None if all_masked is None else all_masked[index, queries]) for index in indices]
            # P * (gradient by P), float32, summed over the uses of P: the distance, the values
            # (through the dropout) and the head mean; then the softmax backward
            # d/ds = P * g - P * sum(P * g), which is 0 in masked rows and at masked keys (P = 0)
            weighted = [None, None]
            if grad_rows is not None:
                weighted = list(distance_grad(blocks[0], blocks[1],
                                              grad_rows[items.start * heads:items.stop * heads, queries]))
            for side, (index, probs) in enumerate(zip(indices, blocks)):
                grad = None
                if grad_mean is not None:
                    mean_rows = grad_mean[side * batch + items.start:side * batch + items.stop, queries]
                    grad = (mean_rows / heads).repeat_interleave(heads, 0)
                if grad_attended is not None:
                    dropped = probs.to(q.dtype)
                    grad_dropped = torch.bmm(grad_attended[index, queries], v[index].transpose(1, 2))
                    if keep is not None:
                        dropped = dropped.mul(scale).mul_(keep[index, queries])
                        grad_dropped.mul_(scale).mul_(keep[index, queries])
                    grad_v[index].baddbmm_(dropped.transpose(1, 2), grad_attended[index, queries])
                    grad = grad_dropped.float() if grad is None else grad.add_(grad_dropped)
                weighted_probs = weighted[side]
                if grad is not None:
                    grad.mul_(probs)
                    weighted_probs = grad if weighted_probs is None else weighted_probs.add_(grad)
                if weighted_probs is None:
                    grad_q[index, queries] = 0.0
                    continue
                grad_scores = weighted_probs.sub_(probs * weighted_probs.sum(-1, keepdim=True)).to(q.dtype)
                grad_q[index, queries] = torch.bmm(grad_scores, k[index])
                grad_k[index].baddbmm_(grad_scores.transpose(1, 2), q[index, queries])
        return grad_q, grad_k, grad_v, None, None, None, None, None, None


def attention_with_row_distances(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], padding: Optional[Tensor],
                                 dropout_p: float, heads: int, distance: str = "skl", head_mean: bool = False):
    """Attention over [x; x] with the per-row distance between the two passes' attention
    probabilities P1, P2, holding no T x S map for backward (see _AttentionWithRowDistance).

    q: 2BH x T x D (scaled), k: 2BH x S x D, v: 2BH x S x Dv, pass 1 then pass 2, item-major;
    bias: T x S additive mask or None; padding: 2BH x 1 x S, True at padded keys, or None;
    dropout_p: attention dropout applied to P before the values (0: none).
    Returns (dropout(P) v: 2BH x T x Dv, rows: H x B x T float32 distance(P1, P2) per row,
    the mean of P over heads: 2B x T x S float32 if head_mean else None).
    """
    attended, rows, mean = _AttentionWithRowDistance.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), bias, padding, float(dropout_p), heads, distance, head_mean)
    batch = q.size(0) // heads // 2
    return attended, rows.view(batch, heads, -1).transpose(0, 1), mean if head_mean else None


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
