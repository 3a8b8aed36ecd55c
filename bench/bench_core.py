"""SuperBERT speed against transformers' BERT, measured in the same run (ratios, not times).

    python bench/bench_core.py [--size base|small] [--repeats 5]

1. training step (forward + backward, batch 8, seq 128) of the supernet at its full arch vs
   BertForMaskedLM of the same size (target ratio <= 1.0);
2. the same step for a mid-size sub-arch sliced from the supernet vs a dense BertForMaskedLM
   of that sub-arch's dims (target <= 1.1);
3. inference of the extracted sub-model (1 thread, batch 1, seq 128) vs transformers'
   BertModel of the same dims (target <= 1.0).

Timings alternate between the two subjects and take medians, so machine noise hits both.
Ratios are ours / theirs: below 1 means we are faster.

Measured here (quiet 2-core AMD EPYC VM, torch 2.13 CPU, three runs of the base size): full arch
0.999-1.08 (run-to-run spread about 5%), sliced mid sub-arch 1.09-1.13 (the supernet's gradients
are full-size tensors, zeros outside the slice, where the dense model's are not), extracted
inference 0.96-0.97; --size small: 1.03, 1.09, 0.92.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from superbert.arch import Arch
from superbert.configuration import AutoTinyBertConfig
from superbert.modeling import AutoTinyBertForMaskedLM, extract_submodel

SIZES = {  # supernet dims and the mid-size sub-arch sliced from it
    "base": (dict(layers=8, hidden=768, heads=12, ffn=3072), Arch(4, 384, 6, 384, 1536)),
    "small": (dict(layers=4, hidden=256, heads=4, ffn=1024), Arch(2, 128, 2, 128, 512)),
}


def hf_mlm(arch: Arch, vocab: int) -> BertForMaskedLM:
    return BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=arch.hidden,
                                      num_hidden_layers=arch.layers,
                                      num_attention_heads=arch.heads,
                                      intermediate_size=arch.ffn))


def median_pair(step_a, step_b, repeats: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        step_a()
        step_b()
    ta, tb = [], []
    for _ in range(repeats):
        for step, times in ((step_a, ta), (step_b, tb)):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def training_step(model, batch):
    def step():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=batch["ids"], attention_mask=batch["mask"], labels=batch["labels"])
        out.loss.backward()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    args = p.parse_args()
    dims, mid = SIZES[args.size]
    vocab = 30522
    torch.manual_seed(0)
    B, T = args.batch, args.seq
    ids = torch.randint(1000, vocab, (B, T))
    labels = torch.full_like(ids, -100)
    labels[:, ::7] = ids[:, ::7]  # ~15% masked
    batch = {"ids": ids, "mask": torch.ones_like(ids), "labels": labels}
    config = AutoTinyBertConfig(vocab_size=vocab, hidden_size=dims["hidden"],
                                num_hidden_layers=dims["layers"],
                                num_attention_heads=dims["heads"],
                                intermediate_size=dims["ffn"])
    supernet = AutoTinyBertForMaskedLM(config).train()
    full = Arch(dims["layers"], dims["hidden"], dims["heads"], dims["hidden"], dims["ffn"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {B}, seq {T}")

    rows = []
    supernet.set_sample_config(full)
    ours, theirs = median_pair(training_step(supernet, batch),
                               training_step(hf_mlm(full, vocab).train(), batch), args.repeats)
    rows.append((f"train step, full arch {full.short()}", ours, theirs, 1.0))

    supernet.set_sample_config(mid)
    ours, theirs = median_pair(training_step(supernet, batch),
                               training_step(hf_mlm(mid, vocab).train(), batch), args.repeats)
    rows.append((f"train step, sliced {mid.short()} vs dense", ours, theirs, 1.1))

    sub = extract_submodel(supernet, mid).bert.eval()
    dense = BertModel(BertConfig(vocab_size=vocab, hidden_size=mid.hidden,
                                 num_hidden_layers=mid.layers, num_attention_heads=mid.heads,
                                 intermediate_size=mid.ffn)).eval()
    one = ids[:1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.inference_mode():
        ours, theirs = median_pair(lambda: sub(one), lambda: dense(input_ids=one),
                                   args.repeats * 6, warmup=5)
    torch.set_num_threads(threads)
    rows.append((f"inference 1 thread, extracted {mid.short()}", ours, theirs, 1.0))

    print(f"{'measurement':<52} {'ours ms':>9} {'HF ms':>9} {'ratio':>7} {'target':>7}")
    for name, a, b, target in rows:
        ratio = a / b
        flag = "ok" if ratio <= target else "MISS"
        print(f"{name:<52} {a * 1e3:9.1f} {b * 1e3:9.1f} {ratio:7.3f} {'<=' + str(target):>7} {flag}")


if __name__ == "__main__":
    main()
