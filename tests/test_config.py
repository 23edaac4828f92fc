"""The config file (qflume.toml, or [tool.qflume] in pyproject.toml): where it is found, which
value wins (a flag, else the file, else the default), and errors that name the file and the key.

End-to-end runs go through the CLI in a subprocess with the tiny BERT (tests/tiny_bert.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import qflume
from qflume.config import find_config, load_config, parse_config
from qflume.exceptions import ConfigError
from tiny_bert import tiny_corpus


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Path:
    return tiny_model


def _cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qflume", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "QFLUME_PROGRESS_INTERVAL": "60", **(env or {})},
        check=False,
    )


def _chunks(folder: Path, chars: int) -> int:
    chunker = qflume.Chunker(max_chars=chars)
    return sum(len(chunker.chunk(f.read_text())) for f in sorted(folder.glob("*.txt")))


def _job(tmp_path: Path, model: Path, body: str = "", name: str = "qflume.toml") -> Path:
    job = tmp_path / "job"
    tiny_corpus(job / "docs", 6, paragraphs=6)
    (job / "docs" / "skip.md").write_text("w1 w2 w3 not included\n")
    (job / name).write_text(
        f'collection = "cfg"\nmodel = "{model}"\n\n[target]\nstore = "st"\n\n'
        '[chunking]\nchars = 300\n\n[[sources]]\npath = "docs"\ninclude = ["*.txt"]\n' + body
    )
    return job


def _status(cwd: Path, *args: str) -> dict:
    res = _cli(cwd, "status", "--json", *args)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_ingest_with_no_arguments_runs_the_config_and_flags_override_it(
    tmp_path: Path, model: Path
) -> None:
    job = _job(tmp_path, model)
    res = _cli(job, "ingest", "--json")
    assert res.returncode == 0, res.stderr
    first = json.loads(res.stdout)
    # sources, include, store, collection and chunking all came from the file
    assert first["documents_new"] == 6 and first["documents_seen"] == 6  # skip.md not included
    assert first["points_upserted"] == _chunks(job / "docs", 300)
    assert (job / "st" / "cfg.state.sqlite").is_file()
    # status and search take collection, target and model from the file too (the model: the
    # tiny one's 32-d vectors, which the default model could not search)
    st = _status(job)
    assert st["documents"] == 6 and st["points"] == first["points_upserted"]
    hits = _cli(job, "search", "w1 w2", "--json", "--limit", "2")
    assert hits.returncode == 0, hits.stderr
    assert len(json.loads(hits.stdout)["results"][0]) == 2
    # a flag given on the command line wins over the file
    res = _cli(job, "ingest", "--json", "--chunk-chars", "100")
    assert res.returncode == 0, res.stderr
    again = json.loads(res.stdout)
    assert again["documents_changed"] == 6
    assert _status(job)["points"] == _chunks(job / "docs", 100) != first["points_upserted"]
    # the same for the target: --store names another store, the file's stays as it was
    res = _cli(job, "ingest", "--json", "--store", "elsewhere", "-c", "other")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["documents_new"] == 6
    assert (job / "elsewhere" / "other.state.sqlite").is_file()
    # paths on the command line replace the file's sources (and --include its filters)
    res = _cli(job, "ingest", "docs", "--include", "*.md", "-c", "md", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["documents_new"] == 1


def test_discovery_pyproject_and_explicit_config(tmp_path: Path, model: Path) -> None:
    job = _job(tmp_path, model, name="settings.toml")
    text = (job / "settings.toml").read_text()
    # [tool.qflume] in pyproject.toml, with the keys named as they are written there
    (job / "pyproject.toml").write_text('[project]\nname = "x"\n\n' + _as_tool_table(text))
    assert find_config(cwd=job) == (job / "pyproject.toml", "tool.qflume.")
    res = _cli(job, "ingest", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["documents_new"] == 6
    # qflume.toml wins over pyproject.toml
    (job / "qflume.toml").write_text(text.replace('"cfg"', '"own"'))
    assert find_config(cwd=job) == (job / "qflume.toml", "")
    assert _status(job)["collection"] == "own"
    # --config from elsewhere: the file's relative paths are relative to the file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = _cli(elsewhere, "ingest", "--config", str(job / "settings.toml"), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["documents_unchanged"] == 6  # the same store as above
    assert not (elsewhere / "st").exists()
    # a pyproject.toml without [tool.qflume] is no config
    (job / "qflume.toml").unlink()
    (job / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_config(cwd=job) is None


def _as_tool_table(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("[["):
            line = "[[tool.qflume." + line[2:]
        elif line.startswith("["):
            line = "[tool.qflume." + line[1:]
        out.append(line)
    body = "\n".join(out)
    head, _, rest = body.partition("\n\n")
    return "[tool.qflume]\n" + head + "\n\n" + rest + "\n"


def test_records_sources_and_what_to_do_without_a_config(tmp_path: Path, model: Path) -> None:
    job = _job(
        tmp_path,
        model,
        '\n[[sources]]\nrecords = "a.jsonl"\n\n[[sources]]\nrecords = "b.jsonl"\n'
        "delete_missing = true\n",
    )
    (job / "a.jsonl").write_text('{"id": "r1", "text": "w1 w2"}\n{"id": "r2", "text": "w3"}\n')
    (job / "b.jsonl").write_text('{"id": "r3", "text": "w4 w5"}\n')
    with pytest.raises(ConfigError, match=r"sources'.*same delete_missing"):
        load_config(cwd=job)
    text = (job / "qflume.toml").read_text()
    (job / "qflume.toml").write_text(
        text.replace('records = "a.jsonl"\n', 'records = "a.jsonl"\ndelete_missing = true\n')
    )
    res = _cli(job, "ingest", "--json")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["documents_new"] == 6 + 3 and _status(job)["documents"] == 9
    # a source that is not there is named by its key
    (job / "b.jsonl").unlink()
    res = _cli(job, "ingest")
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "qflume: error: qflume.toml: 'sources[3].records' names b.jsonl, which does not exist"
    )
    # no paths and no config: one line saying what to do
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _cli(empty, "ingest")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "nothing to ingest: give folders or files" in res.stderr and "qflume.toml" in res.stderr
    res = _cli(empty, "status")
    assert res.returncode == 1 and "no collection given: pass --collection NAME" in res.stderr
    (empty / "qflume.toml").write_text('collection = "c"\n')
    res = _cli(empty, "ingest")
    assert res.returncode == 1 and "qflume.toml has no [[sources]]" in res.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('colection = "a"', "'colection' (did you mean 'collection'?)"),
        ("[chunking]\ntoken = 64", "'chunking.token' (did you mean 'chunking.tokens'?)"),
        ("[target]\nstroe = 'x'", "'target.stroe' (did you mean 'target.store'?)"),
        ("[[sources]]\npath = 'd'\nexlude = ['a']", "'sources[1].exlude' (did you mean "),
        ("zzz = 1", "unknown key 'zzz'; the keys are: alerts, chunking, collection, limits"),
        ('[chunking]\ntokens = "64"', "'chunking.tokens' must be an integer, not a string ('64')"),
        ("[chunking]\ntokens = 0", "'chunking.tokens' must be at least 1, not 0"),
        ("[chunking]\noverlap = 1.5", "'chunking.overlap' must be an integer, not a number"),
        (
            "[limits]\nmax_memory = true",
            "'limits.max_memory' must be an integer, not true or false",
        ),
        ("[target]\nwait = 'yes'", "'target.wait' must be true or false, not a string"),
        ("collection = 5", "'collection' must be a string, not an integer"),
        ("sparse = 'dense'", "'sparse' must be one of none, bm25, splade, not 'dense'"),
        ("progress = 'loud'", "'progress' must be one of auto, bar, lines, none"),
        ("target = 'x'", "'target' must be a table ([target]), not a string"),
        ("sources = 'docs'", "'sources' must be an array of tables"),
        ("[[sources]]\ninclude = ['*.md']", "'sources[1]' needs one of path"),
        ("[[sources]]\npath = 'a'\nrecords = 'b'", "not both"),
        ("[[sources]]\npath = 'a'\ninclude = [1]", "'sources[1].include' must be a glob or an"),
        ("[[sources]]\nrecords = 'r'\ninclude = '*'", "applies to path sources only"),
        ("[[sources]]\npath = 'a'\ndelete_missing = true", "unless keep_missing = true"),
        ("[chunking]\ntokens = 8\nchars = 100", "'chunking' sets both tokens and chars"),
        ("[target]\nstore = 'a'\nurl = 'http://q:6334'", "'target' sets both store and url"),
        ("[target]\napi_key_env = 'my key'", "must be the name of an environment variable"),
        ("model = ''", "'model' must not be empty"),
    ],
)
def test_validation_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str):
    f = tmp_path / "qflume.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(cwd=tmp_path)
    assert str(e.value).startswith(f"{f}: ") and message in str(e.value), str(e.value)
    assert e.value.file == f and isinstance(e.value, qflume.InvalidInputError)


def test_an_api_key_is_only_read_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    for text in ("[target]\napi_key = 's3cret-value'", "api_key = 's3cret-value'"):
        with pytest.raises(ConfigError, match='api_key_env = "QDRANT_API_KEY"') as e:
            parse_config(_toml(text), tmp_path / "qflume.toml")
        assert "s3cret" not in str(e.value) and "refused" in str(e.value)
    with pytest.raises(ConfigError, match="carries credentials") as e:
        parse_config(_toml("[target]\nurl = 'http://u:s3cret@q:6334'"), tmp_path / "q.toml")
    assert "s3cret" not in str(e.value) and "'target.url'" in str(e.value)
    cfg = parse_config(
        _toml("[target]\nurl = 'http://q:6334'\napi_key_env = 'QF_TEST_KEY'"), tmp_path / "q.toml"
    )
    monkeypatch.delenv("QF_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="QF_TEST_KEY, which is not set"):
        cfg.api_key()
    monkeypatch.setenv("QF_TEST_KEY", "k-123")
    assert cfg.pipeline_options() == {"url": "http://q:6334", "api_key": "k-123"}
    # through the CLI: a key given as a flag wins, the variable is not needed then
    f = tmp_path / "qflume.toml"
    f.write_text(
        "collection = 'c'\n[target]\nurl = 'http://127.0.0.1:1'\napi_key_env = 'QF_NONE'\n"
    )
    res = _cli(tmp_path, "status", env={"QF_NONE": ""})
    assert res.returncode == 1 and "QF_NONE, which is not set" in res.stderr
    assert "Traceback" not in res.stderr


def test_unreadable_files_are_one_line_errors(tmp_path: Path) -> None:
    f = tmp_path / "qflume.toml"
    f.write_text('collection = "a"\n[chunking\n')
    with pytest.raises(ConfigError, match=r"qflume.toml: not valid TOML: .*line 2"):
        load_config(cwd=tmp_path)
    f.write_bytes(b'collection = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"missing\.toml: does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool]\nqflume = 3\n")
    f.unlink()
    with pytest.raises(ConfigError, match=r"'tool\.qflume' must be a table"):
        load_config(cwd=tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.qflume.chunking]\ntoken = 3\n")
    with pytest.raises(ConfigError, match=r"'tool.qflume.chunking.token' \(did you mean 'tool"):
        load_config(cwd=tmp_path)
    # through the CLI: one line, no traceback, for every command
    for cmd in (["ingest"], ["status"], ["search", "q"], ["verify"]):
        res = _cli(tmp_path, *cmd)
        assert res.returncode == 1, res.stderr
        assert res.stderr.strip().splitlines() == [
            "qflume: error: pyproject.toml: unknown key 'tool.qflume.chunking.token' (did you "
            "mean 'tool.qflume.chunking.tokens'?); the keys in tool.qflume.chunking are: chars, "
            "overlap, tokens"
        ]


def _toml(text: str) -> dict:
    from qflume.config import tomllib

    return tomllib.loads(text)


def test_the_readme_example_config_is_valid() -> None:
    from qflume.config import tomllib

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = parse_config(tomllib.loads(block), Path("qflume.toml"))
    assert cfg.options["collection"] == "docs" and len(cfg.sources) == 2


def test_the_readme_alerts_table_is_valid() -> None:
    from qflume.alerts import DEFAULT_THRESHOLDS
    from qflume.config import tomllib

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```toml\n")[1:]]
    (block,) = [b for b in blocks if "[alerts]" in b]
    settings = parse_config(tomllib.loads(block), Path("qflume.toml")).options["alerts"]
    assert settings.interval == 5.0 and [t.kind for t in settings.thresholds] == [
        "latency",
        "memory",
    ]
    assert settings.all_thresholds()[: len(DEFAULT_THRESHOLDS)] == DEFAULT_THRESHOLDS
