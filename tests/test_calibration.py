"""Calibration specs: built-in categories, local files, Hub specs, and every malformed input."""

import codecs
import dataclasses
import json
import pathlib
import time

import pytest

from reap_core.calibration import (LOCAL_LIMITS, PUBLIC_LIMITS, CalibrationLimits, Sample,
                                   build_calibration, builtin_categories, iter_batches, load_samples, render_sample,
                                   tokenize_samples)
from reap_core.errors import CalibrationError
from reap_core.model import resolve_model_path
from reap_core.tiny import char_tokenizer

PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00\x90\x91h6"
LINES = [{"text": "first sample"}, {"messages": [{"role": "user", "content": "héllo"},
                                                  {"role": "assistant", "content": "wörld"}]}]


def test_jsonl_text_and_chat(calib_file, tokenizer):
    samples = load_samples(str(calib_file))
    assert [s.category for s in samples] == ["greek"] * 4 + ["data"] * 3   # default category: file stem
    assert samples[0].text and samples[-1].messages
    calib = tokenize_samples(samples, tokenizer, max_tokens=20)
    assert calib.truncated > 0 and max(len(t) for t in calib.token_ids) == 20
    assert calib.summary["greek"]["samples"] == 4


def test_chat_goes_through_the_chat_template(tokenizer):
    ids = render_sample(Sample("c", messages=({"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "yo"})), tokenizer)
    assert tokenizer.decode(ids) == "<bos><|turn>user\nhi<turn|>\n<|turn>model\nyo<turn|>\n"


def test_txt_blocks(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first block\nstill first\n\n\nsecond block\n  \nthird")
    assert [s.text for s in load_samples(str(path))] == ["first block\nstill first", "second block", "third"]


def test_samples_per_category(calib_file):
    samples = load_samples(str(calib_file), samples_per_category=2)
    assert [s.category for s in samples] == ["greek", "greek", "data", "data"]


@pytest.mark.parametrize("content,message", [
    ("", "no samples"),
    ("\n\n", "no samples"),
    ('{"text": "ok"}\n{"text": ', "line 2: not valid JSON"),
    ('["a list"]', "expected an object"),
    ('{"text": ""}', "non-empty 'text'"),
    ('{"messages": [{"content": "no role"}]}', "'role'"),
])
def test_malformed_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(CalibrationError, match=message):
        load_samples(str(path))


def test_missing_and_wrong_files(tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        load_samples(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CalibrationError, match="unsupported calibration file type"):
        load_samples(str(tmp_path / "x.csv"))
    with pytest.raises(CalibrationError, match="empty calibration spec"):
        load_samples("  ")


def test_builtin_set_has_twelve_general_categories():
    general = builtin_categories(include_toy=False)
    expected = {"general-coding", "code-reasoning", "math-reasoning", "science-reasoning", "tool-calling",
                "agentic-coding", "biomedical-qa", "science-qa", "grade-school-math", "competition-math",
                "code-correctness", "general-chat"}
    assert expected <= set(general)
    samples = load_samples("builtin")
    counts = {c: sum(s.category == c for s in samples) for c in expected}
    assert min(counts.values()) >= 16, counts
    assert not any(s.category.startswith("toy-") for s in samples)
    tool = [s for s in samples if s.category == "tool-calling"]
    assert all(s.tools for s in tool)


def test_builtin_selection_and_patterns():
    assert {s.category for s in load_samples("builtin:general-chat,science-qa")} == {"general-chat", "science-qa"}
    with pytest.raises(CalibrationError, match="unknown built-in category 'nope'; available:"):
        load_samples("builtin:nope")
    toy = [c for c in builtin_categories() if c.startswith("toy-")]
    if toy:
        assert {s.category for s in load_samples("builtin:toy-*")} == set(toy)


def test_builtin_renders_with_tools_through_template(tokenizer):
    calib = build_calibration("builtin:tool-calling,agentic-coding", tokenizer, max_tokens=4096,
                              samples_per_category=3)
    assert len(calib.token_ids) == 6 and all(len(t) > 50 for t in calib.token_ids)


def test_hub_spec_offline_is_a_clear_error():
    with pytest.raises(CalibrationError, match="could not load Hub dataset 'someone/data\\[x\\]\\(train\\):8'"):
        load_samples("someone/data[x](train):8")
    with pytest.raises(CalibrationError, match="cannot read dataset spec"):
        load_samples("bad spec with spaces")


def test_batches_pad_right_and_cover_every_sample(calib):
    seen = []
    for batch in iter_batches(calib, 3, pad_id=0):
        for row, sid in enumerate(batch.sample_ids.tolist()):
            n = len(calib.token_ids[sid])
            assert batch.attention_mask[row].sum() == n
            assert batch.input_ids[row, :n].tolist() == calib.token_ids[sid]
            seen.append(sid)
    assert sorted(seen) == list(range(len(calib.token_ids)))


def test_fingerprint_changes_with_data(tokenizer, calib_file):
    a = build_calibration(str(calib_file), tokenizer, max_tokens=64)
    b = build_calibration(str(calib_file), tokenizer, max_tokens=32)
    assert a.fingerprint() == build_calibration(str(calib_file), tokenizer, max_tokens=64).fingerprint()
    assert a.fingerprint() != b.fingerprint()


# --- file inputs: binary files, encodings -----------------------------------------------------------

@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_a_png_renamed_is_not_calibration_data(tmp_path, suffix):
    path = tmp_path / f"photo{suffix}"
    path.write_bytes(PNG_HEADER + bytes(range(256)) * 4)
    with pytest.raises(CalibrationError, match=f"photo\\{suffix} is not a text file \\(it looks like a PNG image\\)"):
        load_samples(str(path))


def test_other_binary_data_is_refused(tmp_path):
    path = tmp_path / "blob.txt"
    path.write_bytes(b"abc\x00\x01\x02" * 100)
    with pytest.raises(CalibrationError, match="blob.txt is not a text file \\(it looks like binary data"):
        load_samples(str(path))


def test_non_utf8_text_names_the_byte_and_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    # line 1 is 15 bytes with its newline, line 2 has 13 before the Latin-1 \xe9: byte 28
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(CalibrationError, match=r"latin.jsonl is not UTF-8 text \(byte 28, line 2\): save it as UTF-8"):
        load_samples(str(path))


@pytest.mark.parametrize("codec", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_byte_order_marks_are_read(tmp_path, codec):
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in LINES)
    data = text.encode(codec)
    if codec == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    assert data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) or data[:3] == codecs.BOM_UTF8
    path = tmp_path / "bom.jsonl"
    path.write_bytes(data)
    samples = load_samples(str(path))
    assert samples[0].text == "first sample"
    assert [m["content"] for m in samples[1].messages] == ["héllo", "wörld"]


def test_utf16_without_a_mark_says_so(tmp_path):
    path = tmp_path / "nomark.txt"
    path.write_bytes("some text".encode("utf-16-le"))
    with pytest.raises(CalibrationError, match="byte-order mark"):
        load_samples(str(path))


def test_txt_with_a_bom_and_crlf(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes(codecs.BOM_UTF8 + b"first\r\nline\r\n\r\nsecond\r\n")
    assert [s.text for s in load_samples(str(path))] == ["first\r\nline", "second"]


# --- messages -------------------------------------------------------------------------------------

@pytest.mark.parametrize("messages,message", [
    ([{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}],
     "line 2: message 2 has role 'wizard'; allowed roles: system, user, assistant, tool"),
    ([{"role": "user"}], "line 2: message 1 \\(user\\) has no 'content'"),
    ([{"role": "assistant"}], "line 2: message 1 \\(assistant\\) has no 'content'"),
    ([{"role": "user", "content": 42}], "line 2: message 1 \\(user\\): 'content' must be a string or a list"),
    ([{"role": "user", "content": [{"type": "image", "url": "x.png"}]}],
     "line 2: message 1 \\(user\\): each content part"),
    ([{"role": "user", "content": "hi", "tool_calls": "call"}], "'tool_calls' must be a list"),
    (["just a string"], "line 2: message 1: each message needs a 'role'"),
])
def test_bad_messages_name_the_line(tmp_path, messages, message):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"messages": messages}))
    with pytest.raises(CalibrationError, match=message):
        load_samples(str(path))


def test_valid_message_shapes(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]},
                          {"role": "assistant", "tool_calls": [{"type": "function",
                                                                "function": {"name": "f", "arguments": {}}}]},
                          {"role": "tool", "content": "result"}, {"role": "model", "content": "done"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    (sample,) = load_samples(str(path))
    assert [m["role"] for m in sample.messages] == ["user", "assistant", "tool", "assistant"]


@pytest.mark.parametrize("tok", ["bundled", "char"])
def test_model_role_renders_as_assistant(tmp_path, tok):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("toy-gemma4-moe")) if tok == "bundled" \
        else char_tokenizer()
    expected = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "yo"}], tokenize=False)
    assert "<|turn>model\nyo" in expected
    path = tmp_path / "gemma.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "model", "content": "yo"}]}))
    (sample,) = load_samples(str(path))
    assert tokenizer.decode(render_sample(sample, tokenizer)) == expected


def test_hub_rows_get_the_same_validation(monkeypatch):
    import datasets
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: iter(rows))
    with pytest.raises(CalibrationError, match=r"someone/chats:2 row 1: message 2 has role 'wizard'"):
        load_samples("someone/chats:2")
    (sample,) = load_samples("someone/chats:1")
    assert sample.messages == ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"})
    rows[0] = {"conversations": [{"from": "human"}]}
    with pytest.raises(CalibrationError, match="row 0: message 1 \\(user\\) has no 'content'"):
        load_samples("someone/chats:1")


# --- limits -------------------------------------------------------------------------------------

def test_limits_are_frozen_values():
    assert PUBLIC_LIMITS == CalibrationLimits(max_file_bytes=20_000_000, max_samples=2_000, max_chars_per_sample=50_000)
    assert LOCAL_LIMITS.max_file_bytes >= 10**9 and LOCAL_LIMITS.max_samples >= 100_000
    with pytest.raises(dataclasses.FrozenInstanceError):
        PUBLIC_LIMITS.max_samples = 10**9


def _spy_on_paths(monkeypatch, names: tuple[str, ...]) -> list[str]:
    """Record each call of these pathlib.Path methods (and still make it), into the returned list."""
    touched: list[str] = []

    def spy(name):
        original = getattr(pathlib.Path, name)

        def method(self, *args, **kwargs):
            touched.append(f"{name}({self})")
            return original(self, *args, **kwargs)
        return method
    for name in names:
        monkeypatch.setattr(pathlib.Path, name, spy(name))
    return touched


def test_a_big_file_fails_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * (50 * 2**20))  # one 50 MiB block: 52,428,800 bytes
    with monkeypatch.context() as m:
        reads = _spy_on_paths(m, ("read_bytes", "read_text", "open"))
        start = time.perf_counter()
        with pytest.raises(CalibrationError, match=r"big.txt is 52.4 MB; the limit here is 20 MB"):
            load_samples(str(path), limits=PUBLIC_LIMITS)
        elapsed = time.perf_counter() - start
    assert reads == [] and elapsed < 0.5


def test_sample_count_stops_early(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(['{"text": "s"}'] * 2_001) + "\n{not json, never reached")
    with pytest.raises(CalibrationError, match="many.jsonl holds more than 2,000 samples"):
        load_samples(str(path), limits=PUBLIC_LIMITS)
    limits = CalibrationLimits(max_file_bytes=10**6, max_samples=3, max_chars_per_sample=100)
    path = tmp_path / "many.txt"
    path.write_text("a\n\nb\n\nc\n\nd")
    with pytest.raises(CalibrationError, match="many.txt holds more than 3 samples"):
        build_calibration(str(path), char_tokenizer(), limits=limits)


def test_an_oversized_sample_is_refused_with_its_line(tmp_path):
    path = tmp_path / "long.jsonl"
    rows = [{"text": "ok"}, {"text": "fine"}, {"messages": [{"role": "user", "content": "x" * 49_999},
                                                            {"role": "assistant", "content": "yz"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    # every string of the sample counts: 49,999 + 2 characters of content, 4 + 9 of role names
    with pytest.raises(CalibrationError, match=r"long.jsonl line 3: the sample is 50,014 characters; "
                                               r"the limit here is 50,000 per sample"):
        load_samples(str(path), limits=PUBLIC_LIMITS)
    assert len(load_samples(str(path))) == 3  # locally it is fine
    path = tmp_path / "long.txt"
    path.write_text("short\n\n\n" + "y" * 50_001 + "\n\nshort")
    with pytest.raises(CalibrationError, match=r"long.txt block 2 \(line 4\): the sample is 50,001 characters"):
        load_samples(str(path), limits=PUBLIC_LIMITS)


def test_hub_row_count_is_limited_before_loading(monkeypatch):
    import datasets
    def refuse(*a, **k):
        raise AssertionError("loaded")
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(CalibrationError, match="'someone/data:5000' asks for 5,000 rows; the limit here is 2,000"):
        load_samples("someone/data:5000", limits=PUBLIC_LIMITS)


# --- server paths in public mode --------------------------------------------------------------------

def test_public_mode_never_touches_server_paths(tmp_path, monkeypatch):
    import datasets  # noqa: F401  (importing it reads files of its own; what matters is the spec's path)
    secret = tmp_path / "secret.txt"
    secret.write_text("db_password = hunter2")
    (tmp_path / "data").mkdir()
    specs = [str(secret), str(tmp_path / "missing.txt"), str(tmp_path / "data"), str(tmp_path / "nothing"),
             "~/notes.jsonl", "../secret.txt", "./data", "data.json", "C:\\x\\y.txt", "a/b/c", "text:5", "json",
             "someone/data:8,/etc/passwd", "x/../secret"]
    messages = set()
    with monkeypatch.context() as m:
        touched = _spy_on_paths(m, ("exists", "is_file", "is_dir", "stat", "open", "read_bytes", "read_text"))
        for spec in specs:
            try:
                load_samples(spec, allow_local_files=False)
                messages.add(f"{spec}: loaded")
            except CalibrationError as exc:
                messages.add(str(exc))
    assert touched == []
    assert messages == {"server paths are not accepted here: choose built-in categories, upload a file, "
                        "or give a Hub dataset id (name[subset](split):N)"}


def test_public_mode_keeps_datasets_off_the_local_disk(tmp_path, monkeypatch):
    """`datasets` loads a local folder named like the dataset, and its `text` builder reads the
    current directory: neither may happen for a typed Hub id."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "passwords.txt").write_text("db_password = hunter2\n")
    (tmp_path / "notes.txt").write_text("db_password = hunter2\n")
    monkeypatch.chdir(tmp_path)
    for spec in ("secrets:4", "text:4"):
        with pytest.raises(CalibrationError) as err:
            build_calibration(spec, char_tokenizer(), allow_local_files=False)
        assert "hunter2" not in str(err.value)


def test_public_mode_still_reads_builtin_and_hub_ids(monkeypatch):
    import datasets
    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, *a, **k: seen.append(path) or iter([{"text": "t"}]))
    assert load_samples("someone/data:1", allow_local_files=False)[0].text == "t"
    assert seen == ["hf://datasets/someone/data"]  # never resolved against the local disk
    assert load_samples("builtin:general-chat", allow_local_files=False)


def test_an_upload_is_read_with_public_limits(calib_file, tokenizer):
    calib = build_calibration(str(calib_file), tokenizer, max_tokens=64, allow_local_files=True, limits=PUBLIC_LIMITS)
    assert calib.fingerprint() == build_calibration(str(calib_file), tokenizer, max_tokens=64).fingerprint()


# --- the chat template ----------------------------------------------------------------------------

def test_a_failing_template_is_an_error_naming_the_sample(tmp_path):
    tokenizer = char_tokenizer()
    tokenizer.chat_template = "{{ raise_exception('this template takes no tools') }}"
    path = tmp_path / "chats.jsonl"
    rows = [{"text": "plain"}, {"messages": [{"role": "user", "content": "hi"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(CalibrationError, match="chats.jsonl line 2: the chat template could not render it "
                                               "\\(this template takes no tools\\)"):
        build_calibration(str(path), tokenizer)


def test_no_template_falls_back_to_role_and_content():
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("toy-gemma4-moe"))
    tokenizer.chat_template = None
    added = tokenizer.decode(tokenizer("", add_special_tokens=True)["input_ids"])  # what the tokenizer adds itself
    harmless = Sample("c", messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}))
    old = tokenizer("user: hi\n\nassistant: yo", add_special_tokens=True)["input_ids"]
    assert render_sample(harmless, tokenizer) == old
    typed = Sample("c", messages=({"role": "user", "content": "hi<eos><turn|>"},
                                  {"role": "assistant", "content": "yo"}))
    ids = render_sample(typed, tokenizer)
    assert not {tokenizer.convert_tokens_to_ids(t) for t in ("<eos>", "<turn|>")} & set(ids)  # typed, so text
    assert tokenizer.decode(ids).replace("\u2060", "") == added + "user: hi<eos><turn|>\n\nassistant: yo"


def test_builtin_tool_categories_render_through_the_bundled_template():
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("toy-gemma4-moe"))
    turn = tokenizer.convert_tokens_to_ids("<|turn>")
    for s in load_samples("builtin:tool-calling,agentic-coding"):
        ids = render_sample(s, tokenizer)
        # one turn per message, except that tool results and the model's reply to them continue the model turn
        # that made the call; the tools go into the system turn, opened for them if there is none
        roles = [m["role"] for m in s.messages if m["role"] != "tool"]
        continued = sum(a == b == "assistant" for a, b in zip(roles, roles[1:]))
        assert s.tools and ids.count(turn) == len(roles) - continued + (roles[0] != "system"), s.where
