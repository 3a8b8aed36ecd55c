"""Model directories: resolve names, read configs and weights in every layout we meet, save
complete directories that Hugging Face transformers loads, and load the tokenizer.

Layouts read (config.json + model.safetensors or pytorch_model.bin):
- ours: model_type "autotinybert" (or "bert" when qkv_size == hidden_size), HF BERT key names;
- Hugging Face BERT / ELECTRA checkpoints (no `qkv_size`: qkv = hidden);
- the released AutoTinyBERT checkpoints (HF BERT names + `qkv_size` in config.json);
- the original code's supernet and extractor files (`encoder.layers.`, `.embedding.weight`,
  no `bert.` prefix, `gamma`/`beta`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import snapshot_download
from safetensors.torch import load_file, save_file
from transformers import BertTokenizer, BertTokenizerFast

from .arch import Arch, Scheme, validate_arch
from .cli import flag
from .configuration import AutoTinyBertConfig
from .errors import UserError
from .io import atomic_path, check_fields, file_digest, read_text, staging_dir
from .outputs import Output
from .modeling import (CLASSIFIER_POOLINGS, AutoTinyBertForMaskedLM,
                       AutoTinyBertForQuestionAnswering, AutoTinyBertForSequenceClassification,
                       AutoTinyBertModel, AutoTinyBertPreTrainedModel, extract_submodel)

logger = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent / "resources"
VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"  # bert-base-uncased vocab.txt
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# Names whose vocab and config the project can build offline (they all use the
# bert-base-uncased vocab); their weights still need the hub or a local copy.
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "bert-base-uncased": dict(model_type="bert", hidden_size=768, num_hidden_layers=12,
                              num_attention_heads=12, intermediate_size=3072),
    "bert-large-uncased": dict(model_type="bert", hidden_size=1024, num_hidden_layers=24,
                               num_attention_heads=16, intermediate_size=4096),
    "google/electra-base-discriminator": dict(model_type="electra", hidden_size=768,
                                              embedding_size=768, num_hidden_layers=12,
                                              num_attention_heads=12, intermediate_size=3072),
}
BUILTIN_CONFIGS["google-bert/bert-base-uncased"] = BUILTIN_CONFIGS["bert-base-uncased"]
BUILTIN_CONFIGS["google-bert/bert-large-uncased"] = BUILTIN_CONFIGS["bert-large-uncased"]

AUTO_CLASSES = {
    "AutoModel": AutoTinyBertModel,
    "AutoModelForMaskedLM": AutoTinyBertForMaskedLM,
    "AutoModelForSequenceClassification": AutoTinyBertForSequenceClassification,
    "AutoModelForQuestionAnswering": AutoTinyBertForQuestionAnswering,
}
REMOTE_CODE_FILES = ("configuration.py", "layers.py", "modeling.py")


def register_auto_classes() -> None:
    """Make transformers' Auto classes build our models for model_type "autotinybert"."""
    try:
        transformers.AutoConfig.register("autotinybert", AutoTinyBertConfig)
    except ValueError:
        return  # already registered
    for auto_name, cls in AUTO_CLASSES.items():
        getattr(transformers, auto_name).register(AutoTinyBertConfig, cls)


register_auto_classes()


# ---- names and directories ---------------------------------------------------------------------
def bundled_vocab_path() -> Path:
    return RESOURCES / "vocab.txt"


def file_md5(path: str | os.PathLike) -> str:
    return file_digest(path, "md5")


def read_vocab(vocab_file: str | os.PathLike) -> list[str]:
    """The tokens of a vocab.txt, one per line, in id order (as BERT's loader reads it)."""
    text = read_text(vocab_file, "vocab file")
    # Split on "\n" only, as readline does: str.splitlines would also split on rare separators
    # (U+2028, \x1c ...) that can be tokens.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def has_weights(model_dir: str | os.PathLike) -> bool:
    return any((Path(model_dir) / f).is_file() for f in WEIGHT_FILES)


def resolve_model_dir(name_or_path: str, need_weights: bool = False) -> Path:
    """A local directory for `name_or_path`: the path itself, the Hugging Face cache, a
    directory the project builds offline (vocab + config of known uncased models), or a hub
    download when online. Anything else is one clear UserError."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if need_weights and not has_weights(path):
            raise UserError(f"{path} holds no weights ({' or '.join(WEIGHT_FILES)})")
        return path
    if path.exists():
        raise UserError(f"{path} is a file; expected a model directory "
                        f"(config.json, vocab.txt{', weights' if need_weights else ''})")
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise UserError(f"model directory not found: {name_or_path}")
    cached = _from_hf_cache(name_or_path, need_weights)
    if cached is not None:
        return cached
    if not need_weights and name_or_path in BUILTIN_CONFIGS:
        return _builtin_dir(name_or_path)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True", "YES", "yes"):
        downloaded = _from_hub(name_or_path)
        if downloaded is not None:
            return downloaded
    hint = (" (only its vocab and config can be built offline)"
            if name_or_path in BUILTIN_CONFIGS else "")
    raise UserError(f"cannot find model {name_or_path!r} locally, in the Hugging Face cache or "
                    f"on the hub{hint}; pass a local directory with config.json, vocab.txt and "
                    f"weights")


def _from_hf_cache(repo_id: str, need_weights: bool) -> Path | None:
    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id: the caller tries the next source
        return None
    if not (path / "config.json").is_file() or (need_weights and not has_weights(path)):
        return None
    return path


def _from_hub(repo_id: str) -> Path | None:
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[
            "config.json", "vocab.txt", "tokenizer*", "special_tokens_map.json",
            "model.safetensors", "pytorch_model.bin"]))
    except Exception as err:  # offline or unknown name: reported by the caller
        logger.debug("hub download of %s failed: %s", repo_id, err)
        return None


def _builtin_dir(name: str) -> Path:
    """Write (once) a config + vocab directory for a known uncased model name."""
    root = Path(os.environ.get("SUPERBERT_CACHE", Path.home() / ".cache" / "superbert"))
    target = root / "builtin" / name.replace("/", "--")
    if not (target / "config.json").is_file():
        fields = dict(BUILTIN_CONFIGS[name])
        model_type = fields.pop("model_type")
        config = dict(vocab_size=30522, hidden_act="gelu", hidden_dropout_prob=0.1,
                      attention_probs_dropout_prob=0.1, max_position_embeddings=512,
                      type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12,
                      pad_token_id=0, model_type=model_type, **fields)
        with atomic_path(target) as tmp:
            tmp.mkdir()
            shutil.copyfile(bundled_vocab_path(), tmp / "vocab.txt")
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            (tmp / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}) + "\n")
    return target


# ---- configs -----------------------------------------------------------------------------------
CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "hidden_act", "hidden_dropout_prob",
                 "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
                 "initializer_range", "layer_norm_eps", "pad_token_id", "qkv_size",
                 "attention_scheme", "fit_size", "classifier_dropout", "classifier_pooling",
                 "num_labels", "id2label", "label2id")


REQUIRED_CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "intermediate_size")
# Every field the models read, and what it must be (io.check_fields).
CONFIG_KINDS = {**{k: "positive int" for k in REQUIRED_CONFIG_FIELDS},
                "max_position_embeddings": "positive int", "type_vocab_size": "positive int",
                "qkv_size": "positive int", "fit_size": "positive int", "num_labels": "positive int",
                "pad_token_id": "count", "hidden_dropout_prob": "probability",
                "attention_probs_dropout_prob": "probability", "classifier_dropout": "probability",
                "initializer_range": "positive number", "layer_norm_eps": "positive number",
                "hidden_act": "string", "attention_scheme": "string", "model_type": "string",
                "classifier_pooling": "string",
                "id2label": "object", "label2id": "object"}


def read_config_json(model_dir: str | os.PathLike) -> dict[str, Any]:
    if not Path(model_dir).is_dir():
        raise UserError(f"model directory not found: {model_dir}")
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise UserError(f"no config.json in {model_dir} (run setup_superbert_model.sh to make "
                        f"a supernet directory)")
    try:
        data = json.loads(read_text(path, "model config"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def config_from_dict(data: dict[str, Any], scheme: str | Scheme | None = None,
                     source: str = "config") -> AutoTinyBertConfig:
    """An AutoTinyBertConfig from any BERT-like config dict, checked for consistency."""
    check_fields(data, CONFIG_KINDS, source, required=REQUIRED_CONFIG_FIELDS)
    model_type = data.get("model_type", "bert")
    if model_type not in ("bert", "autotinybert", "electra"):
        raise UserError(f"{source}: field 'model_type' is {model_type!r}, not a BERT-style "
                        f"encoder (bert, autotinybert, electra)")
    if model_type == "electra" and data.get("embedding_size", data.get("hidden_size")) != data.get("hidden_size"):
        raise UserError(f"{source}: ELECTRA models with embedding_size != hidden_size cannot be "
                        f"sliced as a SuperBERT (use it only as a KD teacher)")
    fields = {k: data[k] for k in CONFIG_FIELDS if k in data and data[k] is not None}
    if "id2label" in fields:
        try:
            fields["id2label"] = {int(k): str(v) for k, v in fields["id2label"].items()}
        except (TypeError, ValueError):
            raise UserError(f"{source}: field 'id2label' must map class numbers to names, got "
                            f"{data['id2label']!r}") from None
    if "label2id" in fields and not all(isinstance(v, int) and not isinstance(v, bool)
                                        for v in fields["label2id"].values()):
        raise UserError(f"{source}: field 'label2id' must map names to class numbers, got "
                        f"{data['label2id']!r}")
    try:
        saved = Scheme.parse(data["attention_scheme"]) if data.get("attention_scheme") else None
    except UserError as err:
        raise UserError(f"{source}: field 'attention_scheme': {err}") from None
    # A plain str in the config (and config.json); a contradiction with `scheme` fails here.
    fields["attention_scheme"] = Scheme.resolve(saved, scheme, what=source).value
    if fields.get("hidden_act", "gelu") not in ("gelu", "relu", "swish", "silu", "gelu_new"):
        raise UserError(f"{source}: field 'hidden_act' is {fields['hidden_act']!r}, not one of "
                        f"gelu, relu, swish, silu, gelu_new")
    if fields.get("classifier_pooling", "cls") not in CLASSIFIER_POOLINGS:
        raise UserError(f"{source}: field 'classifier_pooling' is "
                        f"{fields['classifier_pooling']!r}, not one of "
                        f"{', '.join(CLASSIFIER_POOLINGS)}")
    config = AutoTinyBertConfig(**fields)
    if config.qkv_size % config.num_attention_heads:
        raise UserError(f"{source}: qkv_size {config.qkv_size} is not divisible by "
                        f"num_attention_heads {config.num_attention_heads}")
    return config


def load_config(model_dir: str | os.PathLike,
                scheme: str | Scheme | None = None) -> AutoTinyBertConfig:
    """The config of a model directory; checks it against the directory's vocab.txt."""
    config = config_from_dict(read_config_json(model_dir), scheme, f"{model_dir}/config.json")
    vocab = Path(model_dir) / "vocab.txt"
    if vocab.is_file():
        n = count_vocab(vocab)
        if n != config.vocab_size:
            raise UserError(f"{vocab} has {n} tokens but config.json says vocab_size "
                            f"{config.vocab_size}")
    return config


def count_vocab(vocab_file: str | os.PathLike) -> int:
    """The number of tokens of a vocab.txt (read as `read_vocab` reads it, errors included)."""
    return len(read_vocab(vocab_file))


# ---- weights -----------------------------------------------------------------------------------
def read_state_dict(model_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    model_dir = Path(model_dir)
    path = next((model_dir / f for f in WEIGHT_FILES if (model_dir / f).is_file()), None)
    if path is None:
        raise UserError(f"no weights in {model_dir}: expected {' or '.join(WEIGHT_FILES)}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or truncated file: any reader error means "unreadable"
        raise UserError(f"cannot read weights {path}: {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'corrupt file'}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return state


_HEAD_PREFIXES = ("bert.", "cls.", "classifier.", "qa_outputs.")


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map every known layout onto our (= Hugging Face BERT) parameter names."""
    out = {}
    for key, tensor in state.items():
        k = key
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("electra."):
            k = "bert." + k[len("electra."):]
        k = k.replace(".gamma", ".weight").replace(".beta", ".bias")
        k = k.replace("encoder.layers.", "encoder.layer.").replace(".embedding.weight", ".weight")
        if k.startswith("bert.cls."):  # the original loader's renaming of the MLM head
            k = k[len("bert."):]
        if not k.startswith(_HEAD_PREFIXES):
            k = "bert." + k
        out[k] = tensor
    # The decoder is tied to the word embeddings and its bias to cls.predictions.bias.
    out.pop("cls.predictions.decoder.weight", None)
    if "cls.predictions.decoder.bias" in out:
        out.setdefault("cls.predictions.bias", out["cls.predictions.decoder.bias"])
        del out["cls.predictions.decoder.bias"]
    return out


# Parameters a model may lack in its checkpoint and initialise fresh (task heads, pooler,
# the MLM head of an encoder-only checkpoint, dense_fit for a new teacher).
_NEW_OK = ("cls.", "classifier.", "qa_outputs.", "bert.pooler.", "bert.dense_fit.", "pooler.",
           "dense_fit.")


def load_model(model_dir: str | os.PathLike, cls: type[AutoTinyBertPreTrainedModel] = AutoTinyBertForMaskedLM,
               scheme: str | Scheme | None = None,
               **config_overrides: Any) -> AutoTinyBertPreTrainedModel:
    """Build `cls` from a model directory's config and load its weights by name."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"model directory not found: {model_dir}")
    config = load_config(model_dir, scheme)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    state = normalize_keys(read_state_dict(model_dir))
    if config.fit_size is None and "bert.dense_fit.weight" in state:
        config.fit_size = int(state["bert.dense_fit.weight"].shape[0])
    model = cls(config)
    load_weights(model, state, str(model_dir))
    return model.eval()


def load_weights(model: AutoTinyBertPreTrainedModel, state: dict[str, torch.Tensor],
                 source: str) -> None:
    if model.base_model is model:  # a bare encoder: its own names carry no `bert.` prefix
        state = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    own = model.state_dict()
    own.pop("cls.predictions.decoder.weight", None)
    own.pop("cls.predictions.decoder.bias", None)
    usable = {}
    for key, tensor in state.items():
        if key not in own:
            continue
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise UserError(f"{source}: weight {key} has shape {tuple(tensor.shape)} but the "
                            f"config implies {tuple(own[key].shape)}")
        usable[key] = tensor
    missing = [k for k in own if k not in usable]
    fatal = [k for k in missing if not k.startswith(_NEW_OK)]
    if fatal:
        raise UserError(f"{source}: the checkpoint lacks {len(fatal)} weights the model needs, "
                        f"e.g. {fatal[0]} (is it a BERT-style checkpoint?)")
    if missing:
        logger.info("%s: initialised fresh: %s", source, ", ".join(sorted({k.rsplit('.', 1)[0] for k in missing})))
    skipped = sorted(k for k in state if k not in own)
    if skipped:
        logger.info("%s: ignored %d checkpoint entries not used by %s (e.g. %s)", source,
                    len(skipped), type(model).__name__, skipped[0])
    with torch.no_grad():
        for key, tensor in usable.items():
            own[key].copy_(tensor)
    if isinstance(model, AutoTinyBertForMaskedLM):
        model.tie_mlm_decoder()


# ---- saving ------------------------------------------------------------------------------------
def config_to_json_dict(config: AutoTinyBertConfig) -> dict[str, Any]:
    """The BERT fields (what the original's tools and transformers read), nothing else."""
    data = {k: getattr(config, k) for k in CONFIG_FIELDS
            if k not in ("num_labels", "id2label", "label2id")}
    if data["classifier_pooling"] == "cls":
        del data["classifier_pooling"]  # BERT's own head: no field transformers' BERT lacks
    labels = config.id2label
    if labels and any(v != f"LABEL_{k}" for k, v in labels.items()) or config.num_labels != 2:
        data["id2label"] = {str(k): v for k, v in labels.items()}
        data["label2id"] = {v: int(k) for k, v in labels.items()}
    data["model_type"] = "autotinybert"
    return data


def _config_json(config: AutoTinyBertConfig, model: AutoTinyBertPreTrainedModel) -> dict[str, Any]:
    data = config_to_json_dict(config)
    data["architectures"] = [type(model).__name__]
    if config.qkv_size == config.hidden_size and config.classifier_pooling == "cls":
        # Identical maths to transformers' own BERT: a plain `bert` checkpoint. (A mean- or
        # pair-pooling classifier is not BertForSequenceClassification: it keeps our classes.)
        data["model_type"] = "bert"
        data["architectures"] = [type(model).__name__.replace("AutoTinyBert", "Bert")]
    else:
        data["model_type"] = "autotinybert"
        data["auto_map"] = {"AutoConfig": "configuration.AutoTinyBertConfig",
                            **{auto: f"modeling.{c.__name__}" for auto, c in AUTO_CLASSES.items()}}
    return data


def save_model(model: AutoTinyBertPreTrainedModel, out_dir: str | os.PathLike,
               vocab_source: str | os.PathLike | None = None, do_lower_case: bool = True,
               extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a complete model directory atomically (staged beside it, then moved in).

    config.json, model.safetensors, pytorch_model.bin (what the original's tools read),
    vocab.txt + tokenizer files, and, when qkv_size != hidden_size, the model code for
    `trust_remote_code=True`.
    """
    out_dir = Path(out_dir)
    vocab = vocab_path(vocab_source)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = model.config
    with staging_dir(out_dir) as tmp:
        # Tied entries are written once (safetensors refuses shared storage).
        unique = {k: v for k, v in state.items() if not k.startswith("cls.predictions.decoder.")}
        save_file(unique, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save(state, tmp / "pytorch_model.bin")
        tokenizer = load_tokenizer(vocab, do_lower_case)
        tokenizer.save_pretrained(str(tmp))
        shutil.copyfile(vocab, tmp / "vocab.txt")
        data = _config_json(config, model)
        if "auto_map" in data:
            here = Path(__file__).resolve().parent
            for name in REMOTE_CODE_FILES:
                shutil.copyfile(here / name, tmp / name)
        for name, payload in (extra_files or {}).items():
            (tmp / name).write_bytes(payload)
        (tmp / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        _move_into(tmp, out_dir)
    return out_dir


def _move_into(staged: Path, out_dir: Path) -> None:
    """Move staged files into `out_dir` (config.json last, so a reader never sees a config
    whose weights are not there yet)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in staged.iterdir())
    names.sort(key=lambda n: n == "config.json")
    for name in names:
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staged / name, target)


def vocab_path(source: str | os.PathLike | None) -> Path:
    """The vocab.txt of a model directory or vocab path; None is the bundled vocab."""
    if source is None:
        return bundled_vocab_path()
    path = Path(source)
    if path.is_dir():
        path = path / "vocab.txt"
    if not path.is_file():
        raise UserError(f"vocab file not found: {path}")
    return path


# ---- tokenizer ---------------------------------------------------------------------------------
def load_tokenizer(model_dir_or_vocab: str | os.PathLike | None = None, do_lower_case: bool = True):
    """The fast (Rust) WordPiece tokenizer of a model directory or vocab.txt.

    Built from vocab.txt directly (transformers' `BertTokenizerFast(vocab_file=...)` silently
    builds a 5-token vocab in 5.x), and checked to hold every line of the vocab.
    """
    vocab = vocab_path(model_dir_or_vocab)
    try:
        if getattr(BertTokenizer, "__module__", "").endswith("tokenization_bert") and \
                "TokenizersBackend" in [c.__name__ for c in BertTokenizer.__mro__]:
            tokenizer = BertTokenizer(vocab=str(vocab), do_lower_case=do_lower_case)
        else:  # transformers 4.x
            tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=do_lower_case)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"cannot build a tokenizer from {vocab}: {err}") from None
    expected = count_vocab(vocab)
    if len(tokenizer) != expected:
        raise UserError(f"tokenizer built from {vocab} has {len(tokenizer)} tokens, the file "
                        f"has {expected} lines (duplicate or malformed entries?)")
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise UserError(f"{vocab} lacks the BERT special tokens ([PAD], [MASK], ...)")
    return tokenizer


# ---- a fresh supernet directory ----------------------------------------------------------------
def make_supernet_dir(out_dir: str | os.PathLike, config: AutoTinyBertConfig,
                      vocab_source: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Write config.json + vocab.txt (+ tokenizer files) for a supernet trained from scratch.

    An existing directory with a different config is left alone unless `force`.
    """
    out_dir = Path(out_dir)
    vocab = vocab_path(vocab_source)
    if vocab_source is None and file_md5(vocab) != VOCAB_MD5:
        raise UserError(f"the bundled vocab {vocab} is damaged (md5 mismatch); reinstall")
    n = count_vocab(vocab)
    if n != config.vocab_size:
        raise UserError(f"{vocab} has {n} tokens but the config asks for vocab_size "
                        f"{config.vocab_size}")
    data = config_to_json_dict(config)
    existing = out_dir / "config.json"
    if existing.is_file() and not force:
        if read_config_json(out_dir) != data:
            raise UserError(f"{existing} exists with a different config; pass --force to "
                            f"overwrite it")
    with staging_dir(out_dir) as tmp:
        load_tokenizer(vocab).save_pretrained(str(tmp))
        shutil.copyfile(vocab, tmp / "vocab.txt")
        (tmp / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        _move_into(tmp, out_dir)
    return out_dir


# ---- extraction to a directory -----------------------------------------------------------------
EXTRACTION_RECORD = "extraction.json"
# What an extraction (and its --onnx export) writes; the same names found in a directory
# without EXTRACTION_RECORD belong to someone else.
EXTRACTED_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "vocab.txt",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "model.onnx", "model.onnx.json", "model.int8.onnx", "model.int8.onnx.json",
                   *REMOTE_CODE_FILES)
ONNX_FILES = ("model.onnx", "model.onnx.json", "model.int8.onnx", "model.int8.onnx.json")


@dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    """The extraction stage (submodel_extractor.py): its flags, declared once; `arch` is
    parsed here (Python repr or JSON dict, or an Arch)."""

    model: str = flag(help="supernet directory (config.json + weights)")
    arch: Arch = flag(help="the sub-arch, as the original's dict (Python repr or JSON)")
    output: str = flag(help="directory to write (created if missing)",
                       output=Output.dir(owns=(*EXTRACTED_FILES, EXTRACTION_RECORD, "*.onnx",
                                               "*.onnx.json", "*.onnx.data"),
                                         marker=EXTRACTION_RECORD, overwrite="force",
                                         beside=True, inputs=("model",)))
    kd: bool = flag(False, help="the supernet uses the KD scheme (all heads, per-head slices); "
                                "it is recorded in the supernet config, so this only "
                                "double-checks it")
    force: bool = flag(False, help="write into --output even when it holds files this "
                                   "extractor did not write (model files among them are "
                                   "overwritten)")
    onnx: bool = flag(False, group="deploy",
                      help="also export the extracted encoder to <output>/model.onnx (needs onnx "
                           "and onnxruntime)")
    int8: bool = flag(False, group="deploy",
                      help="with --onnx: also write model.int8.onnx (dynamic INT8 quantisation)")
    opset: int = flag(17, type=int, group="deploy", help="with --onnx: the ONNX opset")

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", Arch.coerce(self.arch))
        if self.int8 and not self.onnx:
            raise UserError("--int8 needs --onnx")
        if self.opset != 17 and not self.onnx:
            raise UserError("--opset needs --onnx")

    @property
    def scheme(self) -> Scheme | None:
        """The scheme asked for: KD with --kd, else whatever the supernet was saved with."""
        return Scheme.KD if self.kd else None


# Written into every extracted directory: a later extraction into it knows the files are ours.


def check_extraction_output(output: Path, force: bool = False) -> None:
    """Refuse (without `force`) an output directory holding model files that an earlier
    extraction did not write: a foreign config.json or weights would be silently replaced."""
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file, not a directory")
    if not output.is_dir() or (output / EXTRACTION_RECORD).is_file():
        return
    foreign = sorted(n for n in EXTRACTED_FILES if (output / n).exists())
    if foreign and not force:
        raise UserError(f"--output {output} holds {', '.join(foreign)} that submodel_extractor "
                        f"did not write; choose another directory, or pass --force to "
                        f"overwrite them")


def extract_to_dir(model_dir: str | os.PathLike, arch: Any, output: str | os.PathLike,
                   scheme: str | Scheme | None = None,
                   force: bool = False) -> tuple[AutoTinyBertPreTrainedModel, Path]:
    """Slice `arch` out of the supernet in `model_dir` and save it as a complete directory
    (MLM head and dense_fit kept, so further training continues from them), with an
    `extraction.json` record. ONNX files of an earlier extraction into the same directory no
    longer match its weights and are removed."""
    arch = Arch.coerce(arch)
    model_dir, output = Path(model_dir), Path(output)
    if output.resolve() == model_dir.resolve():
        raise UserError("--output is the supernet directory itself; choose another directory")
    config = load_config(model_dir, scheme)  # fails early, before reading the weights
    validate_arch(arch, config)
    check_extraction_output(output, force)
    supernet = load_model(model_dir, AutoTinyBertForMaskedLM, scheme)
    sub = extract_submodel(supernet, arch)
    vocab = model_dir / "vocab.txt" if (model_dir / "vocab.txt").is_file() else None
    if vocab is None:
        if sub.config.vocab_size != count_vocab(bundled_vocab_path()):
            raise UserError(f"{model_dir} has no vocab.txt and its vocab_size "
                            f"{sub.config.vocab_size} is not the bundled vocab's")
        logger.warning("%s has no vocab.txt; writing the bundled bert-base-uncased vocab", model_dir)
    lower = _do_lower_case(model_dir)
    record = {"format": "superbert-extraction", "source": str(model_dir.resolve()),
              "arch": str(arch), "scheme": str(sub.config.attention_scheme)}
    stale = [output / n for n in ONNX_FILES if (output / n).exists()]
    record_bytes = (json.dumps(record, indent=2) + "\n").encode()
    out = save_model(sub, output, vocab, do_lower_case=lower,
                     extra_files={EXTRACTION_RECORD: record_bytes})
    for path in stale:
        logger.warning("removing %s: it was exported from an earlier extraction", path)
        path.unlink()
    return sub, out


def _do_lower_case(model_dir: Path) -> bool:
    path = model_dir / "tokenizer_config.json"
    try:
        return bool(json.loads(path.read_text()).get("do_lower_case", True))
    except (OSError, json.JSONDecodeError):
        return True
