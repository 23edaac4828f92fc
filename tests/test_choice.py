"""The default build is chosen by measurement on the CPU at hand (qflume.choice), with the tiny
BERT: measured on first use, recorded per CPU, followed afterwards, skipped by the environment,
and fp32 whenever the int8 build misses the fidelity bar. The same measurement on
all-MiniLM-L6-v2 is in test_embed.py (test_the_default_model_gets_a_build_meeting_the_bar)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

import qflume
from qflume import choice
from qflume import model as qmodel
from tiny_bert import WORDS, make_tiny_bert

#: Texts of the tiny model's own vocabulary (the standard-library sample is all [UNK] to it).
rng = random.Random(0)
TINY_TEXTS = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(64)]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QFLUME_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(choice.ENV_KIND, raising=False)
    return tmp_path / "cache" / "models"


def outlier_bert(folder: Path) -> Path:
    """A tiny BERT whose int8 build is genuinely bad: one FFN channel of a quantized layer is
    1000x larger (its next MatMul scaled down to match), so the per-tensor activation scale of
    dynamic quantization crushes every other channel. fp32 computes the same function."""
    make_tiny_bert(folder)
    w = load_file(str(folder / "model.safetensors"))
    p = "bert.encoder.layer.1."  # layer 0's FFN output stays fp32 in the recipe; layer 1's not
    w[p + "intermediate.dense.weight"][0] *= 1000
    w[p + "intermediate.dense.bias"][0] = 1000 + 1000 * abs(w[p + "intermediate.dense.bias"][0])
    w[p + "output.dense.weight"][:, 0] /= 1000
    save_file(w, str(folder / "model.safetensors"))
    return folder


def _consistent(rec: dict) -> None:
    """A decision that follows its own figures: int8 only meeting the bar and faster."""
    cos, speed, bar = rec["cosine"], rec["chunks_per_s"], rec["bar"]
    meets = cos["mean"] >= bar["mean"] and cos["min"] >= bar["min"]
    faster = speed[rec["candidate"]] > speed["fp32"]
    assert rec["kind"] == (rec["candidate"] if meets and faster else "fp32"), rec
    if rec["kind"] == "fp32":
        assert ("misses the fidelity bar" if not meets else "is not faster") in rec["reason"]


def test_first_use_measures_records_per_cpu_and_is_followed(cache, tmp_path, capfd):
    src = tmp_path / "tiny"
    make_tiny_bert(src)
    emb = qflume.Embedder(src)  # a weights folder, no kind named: measured now
    err = capfd.readouterr().err
    assert f"measuring {qmodel.int8_kind()} vs fp32 on this CPU" in err
    assert "held-out passages" in err and choice.ENV_KIND in err  # says how to skip it
    decisions = json.loads(choice.choice_file(src).read_text())["cpus"]
    rec = decisions[choice.cpu_key()]
    assert list(decisions) == [choice.cpu_key()]
    assert rec["candidate"] == qmodel.int8_kind() and rec["cpu"] == choice.cpu_key()
    _consistent(rec)
    sample = rec["sample"]
    assert sample["texts"] == choice.SAMPLE_SIZE and "standard-library" in sample["from"]
    assert sample["chunk_tokens"] == 64 and rec["repeats"] == choice.REPEATS
    assert emb.model_path.name.endswith("-" + rec["kind"])
    # followed afterwards, silently: no second measurement, the same build
    assert qflume.Embedder(src).model_path == emb.model_path
    assert qmodel.default_kind(src) == rec["kind"] and capfd.readouterr().err == ""
    # the cache key of a CPU: its model name and the flags int8 kernels depend on
    f = qflume._core.cpu_features()
    assert choice.cpu_key().startswith(qmodel.cpu_model())
    assert ("avx512_vnni" in choice.cpu_key()) == f["avx512_vnni"]
    assert ("avx2" in choice.cpu_key()) == f["avx2"]


def test_the_sample_is_held_out_stdlib_text_chunked_as_ingest_chunks():
    tok = qmodel.default_source() / "tokenizer.json"
    texts, about = choice.sample_texts(tok)
    again, _ = choice.sample_texts(tok)
    assert texts == again and len(texts) == about["texts"] == choice.SAMPLE_SIZE  # fixed
    assert len(set(texts)) == len(texts)
    counter = qflume.Chunker(max_tokens=64, tokenizer=str(tok))
    assert all(len(counter.chunk(t)) == 1 for t in texts)  # each one ingest chunk
    # not the text the int8 recipe was tuned on (tests/data: python3.11-doc chunks)
    tuned = json.loads((Path(__file__).parent / "data" / "minilm_texts.json").read_text())
    assert not set(texts) & set(tuned)
    assert sum("Return" in t or "return" in t for t in texts) > len(texts) // 4  # docstrings


def test_an_int8_build_missing_the_bar_falls_back_to_fp32_with_the_reason(cache, tmp_path, capsys):
    src = outlier_bert(tmp_path / "outlier")
    rec = choice.choose(src, texts=TINY_TEXTS, repeats=1, quiet=True)
    assert rec["kind"] == "fp32" and rec["cosine"]["min"] < 0.98, rec
    assert rec["reason"].startswith(f"{qmodel.int8_kind()} misses the fidelity bar: cosine")
    _consistent(rec)
    assert qmodel.ensure_built(src).name.endswith("-fp32")
    assert qmodel.main(["info", str(src)]) == 0
    out = capsys.readouterr().out
    assert "default build  fp32 (measured on this CPU" in out and "misses the fidelity bar" in out
    # a sound build fails a bar it cannot reach too: a very strict bar
    good = tmp_path / "good"
    make_tiny_bert(good)
    strict = choice.choose(good, texts=TINY_TEXTS, repeats=1, bar=(0.999999, 0.999999), quiet=True)
    assert strict["kind"] == "fp32" and "misses the fidelity bar" in strict["reason"], strict
    assert strict["cosine"]["mean"] > 0.999  # it is close, just not that close
    lax = choice.choose(good, texts=TINY_TEXTS, repeats=1, bar=(0.0, -1.0), quiet=True)
    _consistent(lax)  # the bar met: chosen by speed alone


def test_the_environment_names_the_kind_and_skips_the_measurement(cache, tmp_path, monkeypatch,
                                                                  capfd):  # fmt: skip
    src = tmp_path / "tiny"
    make_tiny_bert(src)
    monkeypatch.setenv(choice.ENV_KIND, "int8-r7")
    assert qflume.Embedder(src).model_path.name.endswith("-int8-r7")
    assert "measuring" not in capfd.readouterr().err
    assert not choice.choice_file(src).exists()  # nothing measured, nothing recorded
    data = qmodel.info(src)
    assert data["default_kind"] == "int8-r7" and data["forced_by"] == "QFLUME_MODEL_KIND=int8-r7"
    monkeypatch.setenv(choice.ENV_KIND, "int4")
    with pytest.raises(qflume.ModelError, match=r"QFLUME_MODEL_KIND='int4' is not a model kind"):
        qflume.Embedder(src)
    assert qmodel.main(["info", str(src)]) == 0  # info still works and says what is wrong
    assert "QFLUME_MODEL_KIND='int4'" in capfd.readouterr().out
    monkeypatch.setenv(choice.ENV_KIND, "auto")  # measures
    choice.chosen_kind(src, quiet=True)
    assert choice.cpu_key() in choice.recorded(src)


def test_a_broken_choice_file_or_a_failed_measurement(cache, tmp_path, capsys):
    src = tmp_path / "tiny"
    make_tiny_bert(src)
    path = choice.choice_file(src)
    path.parent.mkdir(parents=True)
    for junk in ("{", "[1, 2]", '{"cpus": 3}', '{"cpus": {"x": {"kind": "int4"}}}'):
        path.write_text(junk)
        assert choice.recorded(src) == {}  # unreadable: decided again, not a crash
    path.write_text("{")
    assert choice.chosen_kind(src, quiet=True) in ("fp32", qmodel.int8_kind())
    assert choice.cpu_key() in json.loads(path.read_text())["cpus"]  # rewritten whole
    # the int8 candidate cannot be built (its cache folder is a file): fp32, and why
    fresh = tmp_path / "fresh"
    make_tiny_bert(fresh, seed=3)
    blocker = qmodel.cache_dir() / f"{qmodel.source_fingerprint(fresh)}-{qmodel.int8_kind()}"
    blocker.write_text("not a folder")
    rec = choice.choose(fresh, texts=TINY_TEXTS, repeats=1, quiet=True)
    assert rec["kind"] == "fp32" and "failed, fp32 is used: cannot build into" in rec["reason"]
    assert qmodel.main(["choose", str(tmp_path / "nope")]) == 1
    assert "nope is not a folder" in capsys.readouterr().err
    (fresh / "tokenizer.json").unlink()  # a bad weights folder is named before any measuring
    with pytest.raises(qflume.ModelError, match=r"fresh lacks tokenizer\.json"):
        qflume.Embedder(fresh)


def test_cli_choose_and_info(cache, tmp_path, capsys, monkeypatch):
    src = tmp_path / "tiny"
    make_tiny_bert(src)
    data = qmodel.info(src)
    assert data["default_kind"] is None and data["choice"] is None  # info measures nothing
    assert qmodel.main(["info", str(src)]) == 0
    assert "not measured on this CPU yet" in capsys.readouterr().out
    monkeypatch.setattr(choice, "SAMPLE_SIZE", 40)  # the CLI's default sample, smaller
    assert qmodel.main(["choose", str(src), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["sample"]["texts"] == 40 and rec["cpu"] == choice.cpu_key()
    data = qmodel.info(src)
    assert data["choice"] == rec and data["default_kind"] == rec["kind"]
    assert data["choice_file"] == str(choice.choice_file(src))
    assert qmodel.main(["info", str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == data
    assert qmodel.main(["info", str(src)]) == 0
    text = capsys.readouterr().out
    assert f"default build  {rec['kind']} (measured on this CPU, {rec['date']})" in text
    assert f"  why          {rec['reason']}" in text and "40 passages" in text
    assert qmodel.main(["choose", str(src)]) == 0  # plain: the kind alone on stdout
    assert capsys.readouterr().out.strip() in ("fp32", qmodel.int8_kind())
