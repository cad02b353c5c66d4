"""The fused output head of the [x; x] forward: from the decoder's features and the output
projection's weight to the label-smoothed cross-entropy of both passes and R-Drop's output
term, without ever holding a 2N x V tensor (logits, log-probabilities or their gradients).
It serves plain training's single pass too (N x V, no output term).

Rows are taken in blocks of pairs (row i of pass 1 with row i of pass 2, which the output term
compares; with one pass, blocks of rows). For each block: logits in float32 (float64 for
float64 inputs), log-softmax, the loss, and the gradient of the loss with respect to the
logits, which is immediately turned into this block's share of the gradients of the features
(2b x C) and of the weight (V x C, accumulated). Both gradients are kept from the forward, and backward only scales them
by the incoming gradient (which carries fp16 loss scaling): the logits are computed once.
Liger Kernel's fused linear cross-entropy does the same (its blocks hold about as many logits
as the features have elements); Cut Cross-Entropy recomputes the logits in backward instead,
which saves the V x C weight gradient's memory at the cost of a second pass over the logits.

Per real target row with log-probabilities a (pass 1), b (pass 2), probabilities p = exp(a),
q = exp(b), target t, label smoothing eps over V classes (fairseq's: eps_i = eps / (V - 1)):
  CE   = (1 - eps - eps_i) * (-a_t) + eps_i * sum_k (-a_k)            (and the same for b)
  SKL  = 0.5 * sum_k (p_k - q_k)(a_k - b_k)
  dCE/dz_j   = p_j (1 - eps - eps_i + V eps_i) - (1 - eps - eps_i) [j = t] - eps_i
  dSKL/dz1_j = 0.5 (p_j (a_j - b_j) + p_j - q_j) - 0.5 p_j KL(p || q)
  dSKL/dz2_j = 0.5 (q_j (b_j - a_j) + q_j - p_j) - 0.5 q_j KL(q || p)
Nothing here imports fairseq.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# On CPU a block's temporaries should stay in cache-sized pieces while the matrix products stay
# large enough to be efficient: about 2^21 logits per block (8 MiB in float32). On a GPU,
# Liger Kernel's rule: a block holds about as many logits as the features have elements.
_CPU_BLOCK_LOGITS = 2**21


def pairs_per_block(pairs: int, channels: int, vocabulary: int, device: torch.device, passes: int = 2) -> int:
    """How many row pairs (rows, with one pass) one block takes: at most the rule's size, and
    the rows split evenly (576 rows at 524 a block: 2 blocks of 288, not 524 + 52)."""
    if device.type == "cpu":
        largest = max(1, _CPU_BLOCK_LOGITS // (passes * vocabulary))
    else:
        largest = max(1, min(pairs, (pairs * channels) // vocabulary))
    blocks = -(-pairs // largest)  # ceil
    return max(1, -(-pairs // max(blocks, 1)))


class HeadLosses(NamedTuple):
    loss: Tensor  # ce + output_weight * skl, differentiable w.r.t. features and weight
    ce: Tensor  # label-smoothed CE summed over real rows of both passes (detached)
    nll: Tensor  # NLL summed likewise (detached)
    skl: Tensor  # the output term: SKL summed over real target positions (detached; 0, not
    #              computed, when output_weight is 0)
    n_correct: Tensor  # rows of both passes whose argmax is the target (0 unless asked)


class _FusedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, target, padding_idx, epsilon, output_weight, block, count_correct):
        pairs = target.numel()
        passes = features.size(0) // max(pairs, 1)  # 2: the [x; x] forward, 1: a plain one
        vocabulary = weight.size(0)
        wide = torch.promote_types(features.dtype, torch.float32)
        w = weight.to(wide)
        grad_features = torch.empty(features.shape, dtype=wide, device=features.device)
        grad_weight = torch.zeros(w.shape, dtype=wide, device=w.device)
        sums = torch.zeros(3, dtype=wide, device=features.device)  # ce, nll, skl
        n_correct = torch.zeros((), dtype=torch.long, device=features.device)
        eps_i = epsilon / (vocabulary - 1)
        keep = 1.0 - epsilon - eps_i
        for start in range(0, pairs, block):
            rows = slice(start, min(start + block, pairs))
            size = rows.stop - rows.start
            pass_rows = [slice(k * pairs + rows.start, k * pairs + rows.stop) for k in range(passes)]
            x = (features[rows] if passes == 1 else torch.cat([features[r] for r in pass_rows])).to(wide)  # 2b x C
            t = target[rows]
            real = t.ne(padding_idx)
            real2 = real.repeat(passes)
            t2 = t.repeat(passes).masked_fill(~real2, 0).unsqueeze(1)
            logp = torch.log_softmax(x @ w.t(), dim=-1)  # 2b x V
            nll = -logp.gather(1, t2).squeeze(1)
            smooth = -logp.sum(1)
            sums[0] += torch.where(real2, keep * nll + eps_i * smooth, 0.0).sum()
            sums[1] += torch.where(real2, nll, 0.0).sum()
            if count_correct:
                n_correct += (logp.argmax(1) == t2.squeeze(1))[real2].sum()
            if output_weight:
                grad_z = logp.exp()  # p; q
                p, q = grad_z[:size], grad_z[size:]
                log_ratio = logp[:size] - logp[size:]
                p_log_ratio, q_log_ratio = p * log_ratio, q * log_ratio
                sums[2] += torch.where(real, 0.5 * ((p - q) * log_ratio).sum(1), 0.0).sum()
                half = 0.5 * output_weight
                skl_p = half * (p_log_ratio + p - q - p * p_log_ratio.sum(1, keepdim=True))
                skl_q = half * (-q_log_ratio + q - p + q * q_log_ratio.sum(1, keepdim=True))
                grad_z.mul_(keep + vocabulary * eps_i).sub_(eps_i)
                grad_z[:size] += skl_p
                grad_z[size:] += skl_q
            else:
                grad_z = logp.exp_()  # p, in place: the log-probabilities are not needed any more
                grad_z.mul_(keep + vocabulary * eps_i).sub_(eps_i)
            grad_z.scatter_add_(1, t2, grad_z.new_full(t2.shape, -keep))
            if not bool(real2.all()):
                grad_z[~real2] = 0  # padded rows get and give no gradient (only their rows are written)
            grad_x = grad_z @ w  # 2b x C
            for k, r in enumerate(pass_rows):
                grad_features[r] = grad_x[k * size:(k + 1) * size]
            grad_weight.addmm_(grad_z.t(), x)
        ctx.save_for_backward(grad_features, grad_weight)
        ctx.dtypes = (features.dtype, weight.dtype)
        loss = sums[0] + output_weight * sums[2]
        ce, nll, skl = (sums[i].clone() for i in range(3))
        ctx.mark_non_differentiable(ce, nll, skl, n_correct)
        return loss, ce, nll, skl, n_correct

    @staticmethod
    @once_differentiable  # fairseq needs first derivatives only
    def backward(ctx, grad_loss, *_):
        grad_features, grad_weight = ctx.saved_tensors
        features_dtype, weight_dtype = ctx.dtypes
        return ((grad_features * grad_loss).to(features_dtype), (grad_weight * grad_loss).to(weight_dtype),
                None, None, None, None, None, None)


def fused_output_losses(features: Tensor, weight: Tensor, target: Tensor, padding_idx: int, epsilon: float,
                        output_weight: float, count_correct: bool = False,
                        block: Optional[int] = None) -> HeadLosses:
    """Label-smoothed CE of both passes + output_weight * SKL(pass 1 || pass 2), fused with
    the output projection.

    features: 2N x C decoder features, rows of pass 1 then the same rows of pass 2; or N x C,
    one pass (plain training: output_weight must be 0).
    weight: V x C output projection (no bias). target: N, the target of ONE pass.
    block: row pairs per block (default: pairs_per_block).
    """
    pairs = target.numel()
    if (features.dim() != 2 or features.size(0) not in (pairs, 2 * pairs) or weight.dim() != 2
            or weight.size(1) != features.size(1)):
        raise ValueError(f"features {tuple(features.shape)}, weight {tuple(weight.shape)} and target "
                         f"{tuple(target.shape)} do not fit (2N x C or N x C, V x C, N)")
    if features.size(0) == pairs and output_weight and pairs:
        raise ValueError("the output term compares two passes: one pass (N x C features) takes output_weight 0")
    block = block or pairs_per_block(pairs, features.size(1), weight.size(0), features.device,
                                     passes=features.size(0) // max(pairs, 1) or 2)
    # The head picks its own precision (float32, float64 for float64 inputs): under --amp's
    # autocast the matrix products would otherwise run in half precision, and the in-place
    # weight-gradient update would mix dtypes.
    with torch.autocast(features.device.type, enabled=False):
        return HeadLosses(*_FusedHead.apply(features, weight, target, padding_idx, float(epsilon),
                                            float(output_weight), block, count_correct))


class OutputHeadRequest(NamedTuple):
    """What a model's forward needs to run the fused head on its own decoder features, so that
    the output projection is used inside the forward (where DistributedDataParallel sees
    every parameter the loss uses):

        model(..., output_head=OutputHeadRequest(...)) -> (features, extra)

    with extra["output_head"] the HeadLosses. target: B x T, the target of ONE pass; the
    first prefix positions of every row (--ignore-prefix-size) are left out.
    """

    target: Tensor
    padding_idx: int
    epsilon: float
    output_weight: float
    count_correct: bool = False
    prefix: int = 0

    def scored_target(self) -> Tensor:
        """The B x T' target the head scores (the prefix left out)."""
        return self.target[:, self.prefix:]

    def losses(self, features: Tensor, weight: Tensor) -> HeadLosses:
        """features: P*B x T x C decoder features of P passes; weight: V x C."""
        features = features[:, self.prefix:, :]
        return fused_output_losses(features.reshape(-1, features.size(-1)), weight,
                                   self.scored_target().reshape(-1), self.padding_idx, self.epsilon,
                                   self.output_weight, self.count_correct)
