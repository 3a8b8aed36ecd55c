"""AutoTinyBERT model config: a BERT config plus `qkv_size`, the attention scheme and `fit_size`.

This file, `layers.py` and `modeling.py` import only torch and transformers, so an extracted
model directory carries copies of them and loads with `trust_remote_code=True` where this
package is not installed.
"""
from __future__ import annotations

from transformers import PretrainedConfig


class AutoTinyBertConfig(PretrainedConfig):
    """BERT hyper-parameters with a Q/K/V width that may differ from the hidden size.

    qkv_size: total Q/K/V width (heads x head width); defaults to hidden_size as in BERT.
    attention_scheme: how a supernet is sliced, "mlm" (first h heads of fixed width) or "kd"
        (all heads, leading qkv/H dims of each). A dense (extracted) model runs at its full
        size, where both schemes compute the same thing.
    fit_size: output width of `dense_fit`, the projection of the last hidden state onto the
        KD teacher's width; None for models trained without a teacher.
    classifier_pooling: what the sequence classifier reads: "cls", BERT's pooler over the
        [CLS] vector, "mean", the mean of the last layer's token vectors over the attention
        mask (what sentence-embedding models such as all-MiniLM-L6-v2 were trained to give), or
        "pair", [mean of segment A, mean of segment B, |A - B|, A * B] (token types 0 and 1;
        B is zeros for a single sentence), 4 x hidden features for sentence-pair tasks.
    """

    model_type = "autotinybert"

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 768,
                 num_hidden_layers: int = 8, num_attention_heads: int = 12,
                 intermediate_size: int = 3072, hidden_act: str = "gelu",
                 hidden_dropout_prob: float = 0.1, attention_probs_dropout_prob: float = 0.1,
                 max_position_embeddings: int = 512, type_vocab_size: int = 2,
                 initializer_range: float = 0.02, layer_norm_eps: float = 1e-12,
                 pad_token_id: int = 0, qkv_size: int | None = None,
                 attention_scheme: str = "mlm", fit_size: int | None = None,
                 classifier_dropout: float | None = None, tie_word_embeddings: bool = True,
                 classifier_pooling: str = "cls", **kwargs):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        # The MLM decoder is the word embedding matrix (transformers 5 reads this to tie them).
        self.tie_word_embeddings = tie_word_embeddings
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.qkv_size = hidden_size if qkv_size is None else qkv_size
        self.attention_scheme = str(attention_scheme).lower()
        self.fit_size = fit_size
        self.classifier_dropout = classifier_dropout
        self.classifier_pooling = classifier_pooling
