"""The pre-training run's configuration: pre_training.py's flags, declared once and validated
once (`PretrainConfig`), and the run's directory names under --cache_dir."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..arch import SPACE_FLAGS, Scheme
from ..cli import check_non_negative, check_positive, flag
from ..distill import KDObjective
from ..errors import UserError
from ..growth import Measure
from ..outputs import Output


# ---- the configuration of a run ----------------------------------------------------------------
DATA = "data and models"
OBJECTIVE = "objective"
SPACE = "search space (inclusive ranges; default: the seed README's, clipped to the supernet)"
GROW = "growing from a pretrained BERT"
OPTIM = "optimisation"
RUN = "run control"


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """Everything a pre-training run is: pre_training.py's flags, declared once here
    (`superbert.cli.flag`) and validated once, in `__post_init__`, before anything is read or
    written. The `--*_space` ranges are declared by `arch.add_space_args` and passed in."""

    # data and models
    pregenerated_data: str = flag(
        group=DATA, help="directory written by generate_data.py (token-id shards or the "
                         "original's train_doc_tokens_ngrams_*.json)")
    student_model: str = flag(
        group=DATA, help="supernet directory: config.json + vocab.txt (fresh weights), or with "
                         "weights (any Hugging Face BERT or ELECTRA encoder, an AutoTinyBERT "
                         "checkpoint: the supernet starts from them, with its dims); with "
                         "--further_train, an extracted model directory with weights")
    teacher_model: str | None = flag(
        None, group=DATA,
        help="KD teacher: any Hugging Face BERT or ELECTRA encoder directory or name (may be "
             "--student_model itself: self-distillation)")
    cache_dir: str = flag("experiments/output", group=DATA,
                          help="root of the outputs (output/superbert/checkpoints/<run>/...)",
                          # only output/superbert/ is written there: other files are never touched
                          output=Output.dir(shared=True, when=lambda c: not c.reorder_only,
                                            also=lambda c: [(
                                                "--cache_dir's run folder",
                                                Path(c.cache_dir) / "output" / "superbert",
                                                Output.dir(shared=True))]))
    max_seq_length: int = flag(512, group=DATA, type=int,
                               help="padding length; every stored sequence must fit")
    do_lower_case: bool = flag(False, group=DATA,
                               help="lower-cased vocab (recorded in the saved tokenizer files)")
    debug: bool = flag(False, group=DATA, help="use only the first 20000 sequences of the data")
    debug_limit: int = 20000

    # objective
    mlm_loss: bool = flag(False, group=OBJECTIVE,
                          help="masked-LM objective; without it, distillation from --teacher_model")
    kd: bool = flag(False, group=OBJECTIVE,
                    help="distillation objective (the default; contradicts --mlm_loss)")
    super_model: Scheme | None = flag(
        None, group=OBJECTIVE, type=str.lower, choices=[s.value for s in Scheme],
        help="slicing scheme, must agree with the objective (default: MLM with --mlm_loss, "
             "else KD)")
    scratch: bool = flag(False, group=OBJECTIVE,
                         help="build the supernet from its config with fresh weights even when "
                              "--student_model holds weights (without it, weights there are "
                              "the start; a config-only directory always starts fresh)")
    further_train: bool = flag(False, group=OBJECTIVE,
                               help="load --student_model's weights (MLM head and dense_fit "
                                    "included) and train it at its own fixed arch")
    masked_lm_prob: float = flag(0.0, group=OBJECTIVE, type=float,
                                 help="masking rate (README: 0.15 for MLM, 0 for KD)")
    max_predictions_per_seq: int = flag(77, group=OBJECTIVE, type=int)
    original_masking: bool = flag(False, group=OBJECTIVE,
                                  help="the original's masking quirks (at least one masked token "
                                       "even at --masked_lm_prob 0; never the first and last "
                                       "position)")
    kd_objective: KDObjective = flag(
        KDObjective.HIDDEN_ATTENTION.value, group=OBJECTIVE, type=str.lower,
        choices=[k.value for k in KDObjective],
        help="what a KD student matches of the teacher's last layer: hidden_attention (the "
             "original's: hidden state through dense_fit + attention scores, MSE) or relation "
             "(MiniLMv2: Q-Q, K-K, V-V relations, KL; any student width and head count)")
    relation_heads: int = flag(12, group=OBJECTIVE, type=int,
                               help="relation heads student and teacher Q/K/V are re-split into "
                                    "(--kd_objective relation); must divide the teacher's width "
                                    "and every sampled qkv size")
    original_input_order: bool = flag(False, group=OBJECTIVE,
                                      help="the original's swapped arguments: no attention mask "
                                           "and the input mask as segment ids, for student and "
                                           "teacher")

    # search space (the --*_space ranges come from arch.add_space_args)
    layer_num_space: tuple[int, int] | None = None
    hidden_size_space: tuple[int, int] | None = None
    qkv_size_space: tuple[int, int] | None = None
    intermediate_size_space: tuple[int, int] | None = None
    head_num_space: tuple[int, int] | None = None
    hidden_step: int = flag(4, group=SPACE, type=int, help="grid step of the hidden size")
    ffn_step: int = flag(4, group=SPACE, type=int, help="grid step of the FFN size")
    qkv_step: int | None = flag(None, group=SPACE, type=int,
                                help="grid step of the KD qkv size (default: the supernet's head "
                                     "count, 12)")
    sample_times_per_batch: int = flag(1, group=SPACE, type=int,
                                       help="sub-archs per step, run on the same batch "
                                            "(gradients add)")
    num_subnets: int | None = flag(
        None, group=SPACE, type=int, metavar="K",
        help="sub-archs per step on the same batch, gradients added: 1 = the original's one "
             "random arch; K >= 2 = the largest, the smallest and K-2 random ones (default: "
             "--sample_times_per_batch random ones, plus largest and smallest with --sandwich)")
    sandwich: bool = flag(False, group=SPACE,
                          help="extension: also train the largest and smallest sub-arch every "
                               "step; MLM: the smaller ones distilled in place from the "
                               "largest's predictions; KD: the teacher stays the target")
    inplace_distill: bool = flag(False, group=SPACE,
                                 help="KD with --sandwich: the smaller archs also match the "
                                      "largest arch's outputs (the --kd_objective loss, the "
                                      "largest as a second teacher)")

    # growing from a pretrained BERT
    reorder: bool = flag(False, group=GROW,
                         help="before the first step of a fresh run, sort the pretrained units "
                              "(hidden features, FFN neurons, heads or head dims) by importance "
                              "so the supernet's leading slices keep the important ones; the "
                              "outputs are unchanged, the permutation is saved in every "
                              "checkpoint (permutation.json)")
    reorder_samples: int = flag(256, group=GROW, type=int,
                                help="sequences of --pregenerated_data (drawn with --seed) the "
                                     "importance is measured on")
    reorder_importance: Measure = flag(
        Measure.TAYLOR.value, group=GROW, type=str.lower, choices=[m.value for m in Measure],
        help="taylor: |activation x gradient| of a random output probe; magnitude: mean "
             "|activation| x the weights reading the unit")
    reorder_only: str | None = flag(None, group=GROW, metavar="OUT_DIR",
                                    help="write a reordered full copy of --student_model to "
                                         "OUT_DIR and exit without training (scheme: "
                                         "--super_model, --mlm_loss or --kd, else the saved one)",
                                    output=Output.dir(overwrite="overwrite_output_dir",
                                                      inputs=("student_model", "teacher_model",
                                                              "pregenerated_data")))

    # optimisation
    epochs: int = flag(2, group=OPTIM, type=int)
    train_batch_size: int = flag(16, group=OPTIM, type=int,
                                 help="sequences per rank per optimizer step (split into "
                                      "--gradient_accumulation_steps micro-batches)")
    gradient_accumulation_steps: int = flag(1, group=OPTIM, type=int)
    learning_rate: float = flag(1e-4, group=OPTIM, type=float)
    optimizer: str = flag("bertadam", group=OPTIM, type=str.lower, choices=["bertadam", "adamw"],
                          help="bertadam: the original's (no bias correction, per-tensor clip); "
                               "adamw: torch's fused/foreach AdamW")
    adam_epsilon: float = flag(1e-8, group=OPTIM, type=float)
    weight_decay: float = flag(0.01, group=OPTIM, type=float,
                               help="decoupled weight decay (none on biases and LayerNorm)")
    max_grad_norm: float = flag(1.0, group=OPTIM, type=float,
                                help="global gradient clip (and BertAdam's per-tensor clip); "
                                     "<= 0: off")
    warmup_steps: int | None = flag(None, group=OPTIM, type=int,
                                    help="linear warm-up steps (default 10000; switches to "
                                         "--warmup_proportion, with a warning, when the run is "
                                         "shorter)")
    warmup_proportion: float | None = flag(None, group=OPTIM, type=float,
                                           help="warm-up as a share of all steps (default 0.1); "
                                                "used alone when given without --warmup_steps")
    seed: int = flag(42, group=OPTIM, type=int)
    fp16: bool = flag(False, group=OPTIM,
                      help="float16 autocast + GradScaler (on CPU: bfloat16, with a warning)")
    bf16: bool = flag(False, group=OPTIM, help="bfloat16 autocast")
    loss_scale: float = flag(0.0, group=OPTIM, type=float,
                             help="initial fp16 loss scale (0: GradScaler's default; always "
                                  "dynamic)")

    # run control
    logging_steps: int = flag(500, group=RUN, type=int)
    save_steps: int = flag(0, group=RUN, type=int,
                           help="also checkpoint every N optimizer steps (0: per epoch only)")
    max_steps: int = flag(0, group=RUN, type=int,
                          help="stop after N optimizer steps, with a checkpoint of step N (the "
                               "schedule still spans --epochs)")
    resume: str | None = flag(None, group=RUN, metavar="DIR|auto",
                              help="continue exactly from a checkpoint directory, or the newest "
                                   "complete one of this run (auto)")
    resume_changed_settings: bool = flag(
        False, group=RUN,
        help="with --resume, continue under this run's settings where they differ from the "
             "checkpoint's (schedule, search space, data, objective; each logged) instead of "
             "refusing; the batch layout cannot change")
    overwrite_output_dir: bool = flag(False, group=RUN,
                                      help="start over even if this run already has checkpoints")
    num_workers: int = flag(2, group=RUN, type=int, help="DataLoader worker processes")
    threads: int | None = flag(None, group=RUN, type=int, help="torch CPU threads per process")
    no_cuda: bool = flag(False, group=RUN, help="run on CPU even if a GPU is there")
    no_progress: bool = flag(False, group=RUN,
                             help="no progress bar (there is none when stdout is not a terminal "
                                  "either): a progress line with the ETA every ~20 s instead")

    def __post_init__(self) -> None:
        """Flag combinations that cannot work; raised before anything is read or written."""
        if self.kd and self.mlm_loss:
            raise UserError("--kd and --mlm_loss contradict each other")
        if self.further_train and self.scratch:
            raise UserError("--scratch and --further_train contradict each other")
        if self.super_model is not None:
            object.__setattr__(self, "super_model", Scheme.parse(self.super_model))
        object.__setattr__(self, "reorder_importance", Measure.parse(self.reorder_importance))
        object.__setattr__(self, "kd_objective", KDObjective.parse(self.kd_objective))
        self._check_reorder()
        self._check_subnets()
        for name in SPACE_FLAGS:
            value = getattr(self, f"{name}_space")
            if value is not None:
                if len(value) != 2:
                    raise UserError(f"--{name}_space takes two values (min max), got "
                                    f"{list(value)}")
                object.__setattr__(self, f"{name}_space", tuple(value))
        check_positive(**{name: getattr(self, name) for name in (
            "epochs", "train_batch_size", "gradient_accumulation_steps", "learning_rate",
            "max_seq_length", "sample_times_per_batch", "logging_steps")})
        check_non_negative(adam_epsilon=self.adam_epsilon, weight_decay=self.weight_decay,
                           max_grad_norm=self.max_grad_norm, warmup_steps=self.warmup_steps)
        if self.warmup_proportion is not None and not 0 <= self.warmup_proportion < 1:
            raise UserError(f"--warmup_proportion must be in [0, 1), got {self.warmup_proportion}")
        if self.train_batch_size % self.gradient_accumulation_steps:
            raise UserError(f"--train_batch_size {self.train_batch_size} is not divisible by "
                            f"--gradient_accumulation_steps {self.gradient_accumulation_steps} "
                            f"(the batch per optimizer step is split into equal micro-batches)")
        if not 0 <= self.masked_lm_prob <= 1:
            raise UserError(f"--masked_lm_prob must be in [0, 1], got {self.masked_lm_prob}")
        if (self.mlm_loss and self.masked_lm_prob == 0 and not self.original_masking
                and not self.reorder_only):
            raise UserError("--mlm_loss with --masked_lm_prob 0 masks nothing to predict; pass "
                            "--masked_lm_prob 0.15 (as the README)")
        if self.max_predictions_per_seq < 0:
            raise UserError("--max_predictions_per_seq must be >= 0")
        if self.fp16 and self.bf16:
            raise UserError("--fp16 and --bf16 exclude each other")
        if self.save_steps < 0 or self.max_steps < 0:
            raise UserError("--save_steps and --max_steps must be >= 0")
        if self.num_workers < 0:
            raise UserError("--num_workers must be >= 0")
        if self.optimizer not in ("bertadam", "adamw"):
            raise UserError(f"--optimizer must be bertadam or adamw, got {self.optimizer!r}")
        if self.reorder_only:
            return  # no training: the objective, the teacher and the space do not apply
        if (self.super_model is not None and self.super_model != self.objective
                and not self.further_train):
            how = "with --mlm_loss" if self.super_model == Scheme.MLM else \
                "by distillation (no --mlm_loss)"
            raise UserError(f"--super_model {self.super_model.name} contradicts the objective: "
                            f"a {self.super_model.name} supernet is trained {how}")
        if self.objective == Scheme.KD and not self.teacher_model:
            raise UserError("knowledge distillation (no --mlm_loss) needs --teacher_model")
        if self.objective == Scheme.MLM and self.kd_objective != KDObjective.HIDDEN_ATTENTION:
            raise UserError(f"--kd_objective {self.kd_objective} is a distillation objective; "
                            f"--mlm_loss trains without a teacher")
        if self.further_train:
            extra = [f"--{n}_space" for n in SPACE_FLAGS if getattr(self, f"{n}_space") is not None]
            extra += ["--sandwich"] if self.sandwich else []
            extra += ["--sample_times_per_batch"] if self.sample_times_per_batch > 1 else []
            extra += ["--num_subnets"] if (self.num_subnets or 1) > 1 else []
            if extra:
                raise UserError(f"--further_train trains the model at its own fixed arch; "
                                f"{', '.join(extra)} do not apply")

    def _check_subnets(self) -> None:
        check_positive(num_subnets=self.num_subnets, relation_heads=self.relation_heads)
        if self.inplace_distill and not self.sandwich:
            raise UserError("--inplace_distill distils the smaller archs from the largest one "
                            "of --sandwich; pass --sandwich")
        if self.inplace_distill and self.mlm_loss:
            raise UserError("--inplace_distill is for KD: with --mlm_loss, --sandwich already "
                            "distils the smaller archs from the largest's predictions")
        if self.num_subnets is None:
            return
        if self.sample_times_per_batch != 1:
            raise UserError("--num_subnets and --sample_times_per_batch both set the archs per "
                            "step; pass one")
        if self.sandwich and self.num_subnets < 2:
            raise UserError(f"--sandwich trains the largest and the smallest sub-arch every "
                            f"step: it needs --num_subnets 2 or more, got {self.num_subnets}")

    def _check_reorder(self) -> None:
        if self.reorder_samples < 1:
            raise UserError(f"--reorder_samples must be positive, got {self.reorder_samples}")
        flag_name = "--reorder_only" if self.reorder_only else "--reorder"
        if (self.reorder or self.reorder_only) and self.scratch:
            raise UserError(f"{flag_name} sorts pretrained units by importance; with --scratch "
                            f"the weights are random and have none")
        if self.reorder and self.further_train:
            raise UserError("--reorder does not apply to --further_train: the extracted model "
                            "trains at its own fixed arch, so reordering its units would not "
                            "change which units its slices keep (reorder the supernet before "
                            "extracting, e.g. with --reorder_only)")
        if not self.reorder_only:
            return
        if self.reorder:
            raise UserError("--reorder_only writes a reordered copy without training; "
                            "--reorder (reorder, then train) does not apply")
        unused = [name for name, given in (("--further_train", self.further_train),
                                           ("--resume", self.resume),
                                           ("--teacher_model", self.teacher_model)) if given]
        if unused:
            raise UserError(f"--reorder_only trains nothing; {', '.join(unused)} do not apply")
        asked = Scheme.MLM if self.mlm_loss else Scheme.KD if self.kd else None
        if self.super_model is not None and asked is not None and self.super_model != asked:
            raise UserError(f"--super_model {self.super_model.name} contradicts "
                            f"{'--mlm_loss' if self.mlm_loss else '--kd'}")

    @property
    def reorder_scheme(self) -> Scheme | None:
        """The scheme --reorder_only slices by: --super_model, --mlm_loss or --kd (None: the
        checkpoint's own, else KD)."""
        return self.super_model or (Scheme.MLM if self.mlm_loss else
                                    Scheme.KD if self.kd else None)

    @property
    def objective(self) -> Scheme:
        """MLM with --mlm_loss, else knowledge distillation (a supernet's scheme follows it)."""
        return Scheme.MLM if self.mlm_loss else Scheme.KD

    @property
    def archs_per_step(self) -> int:
        """Sub-archs trained on every micro-batch."""
        if self.num_subnets is not None:
            return self.num_subnets
        return self.sample_times_per_batch + (2 if self.sandwich else 0)

    @property
    def micro_batch_size(self) -> int:
        return self.train_batch_size // self.gradient_accumulation_steps

    @property
    def progress(self) -> bool:
        return not self.no_progress


def save_name(cfg: PretrainConfig, world_size: int) -> str:
    """The original's run name (built from the per-GPU batch before the GAS division)."""
    return (f"superbert_epoch_{cfg.epochs}_lr_{cfg.learning_rate}_bsz_{cfg.train_batch_size}"
            f"_grad_accu_{cfg.gradient_accumulation_steps}_{cfg.max_seq_length}"
            f"_gpu_{world_size}")


def run_dirs(cfg: PretrainConfig, world_size: int) -> tuple[Path, Path]:
    """(checkpoint dir, TensorBoard dir) under --cache_dir, as the original's layout."""
    root = Path(cfg.cache_dir) / "output" / "superbert"
    name = save_name(cfg, world_size)
    return root / "checkpoints" / name, root / "tensorboard" / name
