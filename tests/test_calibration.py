"""Calibration specs: built-in categories, local files, Hub specs, and every malformed input."""

import json

import pytest

from reap_core.calibration import (BUILTIN_DIR, Sample, build_calibration, builtin_categories, iter_batches,
                                   load_samples, render_sample, tokenize_samples)
from reap_core.errors import CalibrationError


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
