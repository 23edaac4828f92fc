"""A tiny random BERT folder (safetensors + config + tokenizer) and a numpy forward pass.

Used by test_model.py and test_embed.py to check the ONNX graph qflume builds against an
independent reference, for a model other than all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

WORDS = [f"w{i}" for i in range(60)]


def make_tiny_bert(
    folder: Path,
    *,
    hidden: int = 32,
    heads: int = 4,
    layers: int = 2,
    intermediate: int = 48,
    act: str = "gelu",
    prefix: str = "bert.",
    pooling: str | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write a random BERT into ``folder``; return its weights (without prefix)."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS]
    max_pos = 40

    def r(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": r(len(vocab), hidden),
        "embeddings.position_embeddings.weight": r(max_pos, hidden),
        "embeddings.token_type_embeddings.weight": r(2, hidden),
        "embeddings.LayerNorm.weight": 1 + r(hidden, scale=0.1),
        "embeddings.LayerNorm.bias": r(hidden, scale=0.1),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for name, (o, n) in {
            "attention.self.query": (hidden, hidden),
            "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden),
            "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (intermediate, hidden),
            "output.dense": (hidden, intermediate),
        }.items():
            w[f"{p}.{name}.weight"] = r(o, n, scale=1 / math.sqrt(n))
            w[f"{p}.{name}.bias"] = r(o, scale=0.1)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}.{ln}.weight"] = 1 + r(hidden, scale=0.1)
            w[f"{p}.{ln}.bias"] = r(hidden, scale=0.1)
    save_file({prefix + k: v for k, v in w.items()}, str(folder / "model.safetensors"))
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate,
        "hidden_act": act,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": max_pos,
        "type_vocab_size": 2,
        "vocab_size": len(vocab),
    }
    (folder / "config.json").write_text(json.dumps(config))
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(folder / "tokenizer.json"))
    if pooling is not None:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "pooling_mode_cls_token": pooling == "cls",
                    "pooling_mode_mean_tokens": pooling == "mean",
                }
            )
        )
        (folder / "modules.json").write_text(
            json.dumps(
                [
                    {"idx": 0, "name": "0", "path": "", "type": "x.models.Transformer"},
                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "x.models.Pooling"},
                ]
            )
        )
    return w


def _ln(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


def forward(
    w: dict[str, np.ndarray],
    ids: np.ndarray,
    mask: np.ndarray,
    *,
    heads: int,
    layers: int,
    act: str = "gelu",
) -> np.ndarray:
    """BERT's last_hidden_state in float64 numpy, written from the paper's equations."""
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    b, s = ids.shape
    x = (
        w64["embeddings.word_embeddings.weight"][ids]
        + w64["embeddings.position_embeddings.weight"][np.arange(s)][None]
        + w64["embeddings.token_type_embeddings.weight"][0]
    )
    x = _ln(x, w64["embeddings.LayerNorm.weight"], w64["embeddings.LayerNorm.bias"])
    h = x.shape[-1]
    d = h // heads
    bias = (1.0 - mask[:, None, None, :]) * -10000.0

    def lin(t: np.ndarray, p: str) -> np.ndarray:
        return t @ w64[p + ".weight"].T + w64[p + ".bias"]

    def split(t: np.ndarray) -> np.ndarray:
        return t.reshape(b, s, heads, d).transpose(0, 2, 1, 3)

    for i in range(layers):
        p = f"encoder.layer.{i}"
        q = split(lin(x, f"{p}.attention.self.query"))
        k = split(lin(x, f"{p}.attention.self.key"))
        v = split(lin(x, f"{p}.attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias
        scores -= scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
        a = lin(ctx, f"{p}.attention.output.dense")
        x = _ln(a + x, w64[f"{p}.attention.output.LayerNorm.weight"],
                w64[f"{p}.attention.output.LayerNorm.bias"])  # fmt: skip
        f = lin(x, f"{p}.intermediate.dense")
        if act == "gelu":
            f = 0.5 * f * (1 + _erf(f / math.sqrt(2)))
        elif act == "relu":
            f = np.maximum(f, 0)
        else:
            f = 0.5 * f * (1 + np.tanh(math.sqrt(2 / math.pi) * (f + 0.044715 * f**3)))
        f = lin(f, f"{p}.output.dense")
        x = _ln(f + x, w64[f"{p}.output.LayerNorm.weight"], w64[f"{p}.output.LayerNorm.bias"])
    return x


def built_tiny_model(folder: Path) -> Path:
    """A ready model folder (model.onnx + tokenizer.json, fp32) of the tiny BERT, built under
    ``folder``: the fast model for end-to-end runs through the CLI (``--model``)."""
    from qflume import model as qmodel

    make_tiny_bert(folder / "src")
    return qmodel.build(folder / "src", out=folder / "built", quiet=True)


def tiny_corpus(folder: Path, docs: int, paragraphs: int = 10, seed: int = 0) -> Path:
    """``docs`` text files of the tiny model's words, ``paragraphs`` paragraphs each."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        paras = [
            "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(3))
            for _ in range(paragraphs)
        ]
        (folder / f"d{i:03d}.txt").write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return folder
