"""The bundled model sees: it loads offline with its processor, answers picture questions, and image
chats calibrate like text ones (their pictures reach the experts, batched or not)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

from reap_core import toy_tasks, toy_vision  # noqa: E402
from reap_core.calibration import build_calibration, load_samples  # noqa: E402
from reap_core.calibration_sources import BUILTIN_DIR  # noqa: E402
from reap_core.errors import CalibrationError  # noqa: E402
from reap_core.model import BUNDLED_MODEL, BUNDLED_MODEL_DIR, load_model  # noqa: E402
from reap_core.observer import observe  # noqa: E402
from reap_core.plan import make_plan  # noqa: E402
from reap_core.task_eval import run_suite  # noqa: E402
from reap_core.vision_eval import image_fidelity, wilson  # noqa: E402


@pytest.fixture(scope="module")
def bundled():
    torch.manual_seed(0)
    return load_model(BUNDLED_MODEL)


def test_model_and_processor_load_offline(bundled):
    from transformers import AutoProcessor

    assert type(bundled.model).__name__ == "Gemma4ForConditionalGeneration" and bundled.is_multimodal
    processor = bundled.processor
    assert type(processor).__name__ == "Gemma4Processor" and bundled.processor_error is None
    assert processor.image_token == "<|image|>" and processor.tokenizer.image_token_id == bundled.config.image_token_id
    try:
        import torchvision  # noqa: F401
    except ImportError:   # AutoProcessor needs torchvision for Gemma 4's video processor: the fallback is used
        with pytest.raises(ImportError, match="orchvision"):
            AutoProcessor.from_pretrained(BUNDLED_MODEL_DIR)
    else:
        assert type(AutoProcessor.from_pretrained(BUNDLED_MODEL_DIR)).__name__ == "Gemma4Processor"
    picture = toy_tasks.generate("shapes", 1, 0)[0].image
    enc = processor.image_processor(picture, return_tensors="pt")
    assert int(enc["num_soft_tokens_per_image"][0]) == 64          # 64x64: 16x16 patches of 4, pooled 2x2
    size = sum(f.stat().st_size for f in BUNDLED_MODEL_DIR.iterdir() if f.is_file())
    assert size <= 60 * 2**20


def test_picture_questions_are_answered(bundled):
    result = run_suite(bundled.model, bundled.tokenizer, "toy", items_per_domain=6, processor=bundled.processor,
                       domains=toy_tasks.IMAGE_DOMAINS)
    assert set(result.per_domain) == set(toy_tasks.IMAGE_DOMAINS) and not result.skipped
    for domain, (correct, total) in result.per_domain.items():
        assert correct >= 4, f"{domain}: {correct}/{total}"      # chance: 1/6 colours x 1/3 shapes, 1/5, 1/4
    without = run_suite(bundled.model, bundled.tokenizer, "toy", items_per_domain=1, domains=("shapes", "facts"))
    assert without.skipped == ("shapes",) and set(without.per_domain) == {"facts"}


def test_checkers_grade_the_picture_facts():
    spec = toy_vision.make_spec("counting", __import__("random").Random(3))
    n = spec["count"]
    assert toy_vision.check("counting", spec, f"There are {n} shapes.")
    assert not toy_vision.check("counting", spec, f"There are {n + 1} shapes.")
    assert not toy_vision.check("counting", spec, f"{n} or {n + 1}")
    shape = toy_vision.make_spec("shapes", __import__("random").Random(4))
    other = next(c for c in toy_vision.COLOURS if c != shape["colour"])
    assert toy_vision.check("shapes", shape, f"A {shape['colour']} {shape['kind']}.")
    assert not toy_vision.check("shapes", shape, f"A {other} {shape['kind']}.")
    assert not toy_vision.check("shapes", shape, f"A {shape['colour']} or {other} {shape['kind']}.")


def _image_calibration(tmp_path, n: int = 3):
    """A .jsonl of image chats whose pictures sit next to it, and the same chats without pictures."""
    rows = [json.loads(line) for line in (BUILTIN_DIR / "toy-counting.jsonl").read_text().splitlines()[:n]]
    (tmp_path / "pics").mkdir()
    for row in rows:
        src = row["messages"][0]["content"][0]["image"]
        shutil.copy(BUILTIN_DIR / src, tmp_path / "pics" / src.split("/")[-1])
        row["messages"][0]["content"][0]["image"] = "pics/" + src.split("/")[-1]
    with_images = tmp_path / "with.jsonl"
    with_images.write_text("\n".join(json.dumps(r) for r in rows))
    pictures = [r["messages"][0]["content"][0]["image"] for r in rows]
    swapped = json.loads(json.dumps(rows))           # the same chats, each with the next one's picture
    for r, pic in zip(swapped, pictures[1:] + pictures[:1]):
        r["messages"][0]["content"][0]["image"] = pic
    (tmp_path / "swapped.jsonl").write_text("\n".join(json.dumps(r) for r in swapped))
    for row in rows:
        row["messages"][0]["content"] = row["messages"][0]["content"][1:]
    text_only = tmp_path / "without.jsonl"
    text_only.write_text("\n".join(json.dumps(r) for r in rows))
    return with_images, text_only


def test_image_samples_are_observed_like_text(bundled, tmp_path):
    with_images, text_only = _image_calibration(tmp_path)
    calib = build_calibration(str(with_images), bundled.tokenizer, processor=bundled.processor)
    assert calib.num_images == 3 and calib.summary["toy-counting"]["images"] == 3
    image_id = bundled.config.image_token_id
    assert all(ids.count(image_id) == 64 for ids in calib.token_ids)     # each picture became its 64 tokens
    one_by_one, batched = observe(bundled, calib, batch_size=1), observe(bundled, calib, batch_size=3)
    for name, arr in one_by_one.arrays.items():
        assert torch.allclose(torch.from_numpy(arr), torch.from_numpy(batched.arrays[name]), rtol=1e-4,
                              atol=1e-5), name
    plain = observe(bundled, build_calibration(str(text_only), bundled.tokenizer, processor=bundled.processor))
    assert one_by_one.num_tokens == plain.num_tokens + 3 * (64 + 2)      # the pictures' tokens were routed too
    assert not torch.allclose(torch.from_numpy(one_by_one.arrays["gated_norm_sum"]),
                              torch.from_numpy(plain.arrays["gated_norm_sum"]))
    assert calib.fingerprint() != build_calibration(str(text_only), bundled.tokenizer).fingerprint()
    # the pixels themselves reach the experts: the same tokens with other pictures give other statistics
    swapped = build_calibration(str(tmp_path / "swapped.jsonl"), bundled.tokenizer, processor=bundled.processor)
    assert swapped.token_ids == calib.token_ids and swapped.fingerprint() != calib.fingerprint()
    assert not torch.allclose(torch.from_numpy(observe(bundled, swapped).arrays["gated_norm_sum"]),
                              torch.from_numpy(one_by_one.arrays["gated_norm_sum"]))


@pytest.mark.parametrize("name, message", [
    ("/etc/passwd.png", "must be a relative path"), ("../x.png", "must be a relative path"),
    ("missing.png", "not found next to the calibration file"), ("notes.txt", "is not a picture file"),
])
def test_bad_image_paths_are_refused(tmp_path, name, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": [{"type": "image", "image": name},
                                                                          {"type": "text", "text": "hi"}]}]}))
    with pytest.raises(CalibrationError, match=message):
        load_samples(str(path))


def test_unreadable_picture_and_text_only_model_are_clear_errors(bundled, tmp_path):
    (tmp_path / "fake.png").write_text("not a picture")
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": [{"type": "image", "image": "fake.png"},
                                                                          {"type": "text", "text": "hi"}]}]}))
    with pytest.raises(CalibrationError, match="fake.png is not a picture that opens"):
        build_calibration(str(path), bundled.tokenizer, processor=bundled.processor)
    with pytest.raises(CalibrationError, match="takes no images"):
        build_calibration("builtin:toy-shapes", bundled.tokenizer, samples_per_category=1)


def test_image_fidelity_is_zero_for_the_original_and_moves_when_pruned(bundled, tmp_path):
    calib = build_calibration("builtin:toy-shapes,toy-math", bundled.tokenizer, samples_per_category=4,
                              processor=bundled.processor)
    plan = make_plan(observe(bundled, calib), 0.5)
    items = toy_tasks.generate("shapes", 2, toy_tasks.EVAL_SEED)
    same, pruned = image_fidelity(bundled, [None, plan], items)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["top1"] == 1.0
    assert pruned["kl"] > 1e-3


def test_wilson_interval():
    lo, hi = wilson(8, 10)
    assert 0.49 < lo < 0.5 and 0.94 < hi < 0.95          # the textbook values for 8/10: 0.490, 0.943
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
