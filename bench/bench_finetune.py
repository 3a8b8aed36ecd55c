"""Fine-tuning throughput of a sub-arch: the evaluator's path vs transformers' dense BERT.

    python bench/bench_finetune.py [--size base|small] [--steps 10] [--repeats 5] [--device cpu|cuda]

The candidate evaluator fine-tunes each arch from its inherited supernet slice: the head is
drawn, `set_sample_config(arch)` selects the slice, `extract_submodel` copies it into a dense
model (`finetuning.model.inherit`, timed separately: once per arch), which is trained with BertAdam.
Subjects, all trained by the same step (forward, backward, BertAdam with the evaluator's
settings, warm-up-linear schedule) on the same batches:

1. the evaluator: our dense copy of the slice;
2. the baseline: the same weights in transformers' `BertForSequenceClassification` (sdpa;
   qkv == hidden so it can hold them);
3. for reference, the original's way: the slice trained in place in the supernet (views of
   the full weights, BertAdam over the full tensors), which this design replaced.

Throughput = training examples per second; ratio = evaluator / transformers (target >= 0.9).
Timings alternate between subjects and take medians, so machine noise hits all alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

from superbert.arch import Arch
from superbert.configuration import AutoTinyBertConfig
from superbert.finetuning.model import inherit
from superbert.finetuning.steps import BERT_ADAM_EPS
from superbert.modeling import AutoTinyBertForSequenceClassification
from superbert.optim import BertAdam, param_groups, warmup_linear

SIZES = {  # supernet dims, the sub-arch (qkv == hidden so transformers' BERT can hold it), batch
    "base": (dict(layers=8, hidden=768, heads=12, ffn=3072), Arch(4, 512, 8, 512, 2048), 32),
    "small": (dict(layers=4, hidden=256, heads=4, ffn=1024), Arch(2, 128, 2, 128, 512), 16),
}
EVALUATOR = "evaluator (dense copy of the slice)"
BASELINE = "transformers BERT, same weights"
IN_PLACE = "slice trained in place (original)"


def hf_dense(sub: AutoTinyBertForSequenceClassification) -> BertForSequenceClassification:
    c = sub.config
    hf = BertForSequenceClassification(BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings, num_labels=c.num_labels,
        attn_implementation="sdpa"))
    missing, unexpected = hf.load_state_dict(sub.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    assert not missing and not unexpected, (missing, unexpected)
    return hf


class Subject:
    """A model plus the evaluator's optimiser and schedule, stepping on fixed batches."""

    def __init__(self, name: str, model: torch.nn.Module, batches: list[dict], total: int):
        self.name, self.model, self.batches = name, model.train(), batches
        self.opt = BertAdam(param_groups(model, 0.01), lr=2e-5, eps=BERT_ADAM_EPS,
                            weight_decay=0.01, max_grad_norm=1.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: warmup_linear(s, total, total // 10))
        self.i = 0

    def step(self) -> None:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        loss = self.model(**batch).loss
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def time(self, steps: int, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=tuple(SIZES), default="small")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dims, arch, batch = SIZES[args.size]
    batch = args.batch or batch
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = AutoTinyBertConfig(hidden_size=dims["hidden"], num_hidden_layers=dims["layers"],
                             num_attention_heads=dims["heads"], intermediate_size=dims["ffn"],
                             num_labels=3)
    supernet = AutoTinyBertForSequenceClassification(cfg).eval()
    t0 = time.perf_counter()
    sub = inherit(supernet, arch, seed=42, device=device)
    inherit_s = time.perf_counter() - t0
    hf = hf_dense(sub.cpu()).to(device)
    sub = sub.to(device)
    supernet.set_sample_config(arch)

    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):  # realistic padding: lengths vary, batches cut to their longest row
        lengths = torch.randint(args.seq // 2, args.seq + 1, (batch,), generator=g)
        T = int(lengths.max())
        ids = torch.randint(1000, cfg.vocab_size, (batch, T), generator=g)
        mask = (torch.arange(T)[None] < lengths[:, None]).long()
        batches.append({"input_ids": ids.to(device), "attention_mask": mask.to(device),
                        "token_type_ids": torch.zeros_like(ids).to(device),
                        "labels": torch.randint(0, 3, (batch,), generator=g).to(device)})
    total = args.steps * (args.repeats + 1) * 10
    subjects = [Subject(EVALUATOR, sub, batches, total),
                Subject(BASELINE, hf, batches, total),
                Subject(IN_PLACE, supernet.to(device), batches, total)]
    for s in subjects:  # warm-up (allocator, kernels)
        s.time(2, device)
    times: dict[str, list[float]] = {s.name: [] for s in subjects}
    for _ in range(args.repeats):
        for s in subjects:
            times[s.name].append(s.time(args.steps, device))
    rate = {n: batch * args.steps / statistics.median(v) for n, v in times.items()}
    print(f"device {device} ({torch.get_num_threads()} threads), supernet {dims}, "
          f"sub-arch {arch.short()}, batch {batch}, seq <= {args.seq}, {args.steps} steps "
          f"x {args.repeats} repeats (medians)")
    for name, r in rate.items():
        print(f"  {name:36s} {r:9.1f} examples/s")
    print(f"  inherit (head + slice -> dense copy, once per arch): {1000 * inherit_s:.0f} ms")
    print(f"ratio evaluator / transformers dense: {rate[EVALUATOR] / rate[BASELINE]:.3f} "
          f"(target >= 0.9)")
    print(f"ratio in-place slice / transformers dense: {rate[IN_PLACE] / rate[BASELINE]:.3f} "
          f"(the original's way, for reference)")

if __name__ == "__main__":
    main()
