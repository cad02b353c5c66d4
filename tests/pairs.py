"""The loss functions take the doubled tensor of one forward over [x; x]; the tests state
their cases as two passes. These wrappers concatenate the passes (batch dimension)."""
import torch

from fairseq_lrdrop.losses import (
    attention_consistency,
    attention_distance,
    hidden_state_consistency,
    hidden_state_distance,
    output_consistency,
)


def output_pair(lp1, lp2, mask):
    return output_consistency(torch.cat([lp1, lp2]), mask)


def hidden_pair(h1, h2, mask):
    return hidden_state_distance(torch.cat([h1, h2], 1), mask)


def attention_pair(a1, a2, mask):
    return attention_distance(torch.cat([a1, a2], 1), mask)


def hidden_layers(layers):
    return hidden_state_consistency([(torch.cat([a, b], 1), mask) for a, b, mask in layers])


def attention_modules(modules):
    return attention_consistency([(torch.cat([a, b], 1), mask) for a, b, mask in modules])
