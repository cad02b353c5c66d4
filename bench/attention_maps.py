"""One self-attention module, forward + backward with the attention term, in each way of
--attn-reg-maps, against the stock fused path (what R-Drop runs): median time and the bytes
saved for backward.

    python bench/attention_maps.py                  # the shapes of BENCHMARKS.md's table
    python bench/attention_maps.py --shapes 24,48,128,4 --repeats 60

Shapes are T(=S),2B,d,heads: the doubled batch [x; x], one key-padded item per pass. Ways are
interleaved within each repeat so that machine noise hits them alike.
"""
import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def module_step(way, module, x, padding, query_mask):
    """forward + attention term (or none, for stock) + backward; returns nothing."""
    from fairseq_lrdrop import losses
    from fairseq_lrdrop.modules.layer_states import _hook_head_probs, _replace_attention_forward

    store = {}
    if way == "stock":
        handles = []
    elif way == "keep":
        handles = _hook_head_probs(module, store, 0)
    else:
        handles = _replace_attention_forward(module, store, 0, way, "skl")
    out = module(x, x, x, key_padding_mask=padding, need_weights=False)[0]
    for handle in handles:
        handle.remove()
    loss = out.sum()
    if way == "keep":
        loss = loss + losses.attention_distance(store[0], query_mask)
    elif way != "stock":
        loss = loss + losses.summed_row_distance(store[0], query_mask)
    loss.backward()


def saved_mib(fn):
    """MiB of the distinct storages autograd saves for backward while fn runs."""
    sizes = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        sizes[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(sizes.values()) / 2**20


def main():
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="*", default=["24,48,128,4", "32,256,512,8", "128,16,512,8"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from fairseq.modules import MultiheadAttention

    ways = ("stock", "keep", "blockwise", "checkpoint")
    print(f"one self-attention module, forward + backward, median of {args.repeats - 1} (after 1 warm-up); "
          f"{torch.get_num_threads()} threads")
    for shape in args.shapes:
        length, doubled, dim, heads = map(int, shape.split(","))
        torch.manual_seed(0)
        module = MultiheadAttention(dim, heads, dropout=0.1, self_attention=True).train()
        x = torch.randn(length, doubled, dim, requires_grad=True)
        padding = torch.zeros(doubled, length, dtype=torch.bool)
        padding[1, :length // 3] = padding[doubled // 2 + 1, :length // 3] = True
        query_mask = torch.ones(doubled // 2, length, dtype=torch.bool)
        times = {way: [] for way in ways}
        for _ in range(args.repeats):
            for way in ways:
                start = time.perf_counter()
                module_step(way, module, x, padding, query_mask)
                times[way].append(time.perf_counter() - start)
        # the forward alone, to count what it saves (the backward then frees it)
        saved = {}
        for way in ways:
            saved[way] = saved_mib(lambda: module_step(way, module, x, padding, query_mask))
        print(f"T=S={length} 2B={doubled} d={dim} heads={heads}: " + ", ".join(
            f"{way} {1000 * statistics.median(times[way][1:]):.2f} ms / {saved[way]:.1f} MiB saved" for way in ways))


if __name__ == "__main__":
    main()
