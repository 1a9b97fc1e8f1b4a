"""Statistics files are untrusted input: every way a file can be damaged, oversized or lying is one
clear StatisticsError, and what it claims must hold for the model it is used with.

The files are written here with numpy and zipfile directly (the .npz layout: a 0-d text array
`meta` holding the JSON header, plus six [C, L, E] arrays), not with ExpertStats.save, so a bug
in the writer cannot hide the same bug in the reader.
"""

import json
import math
import zipfile

import numpy as np
import pytest

from reap_core.errors import StatisticsError
from reap_core.stats import ExpertStats

NAMES = ("count", "gate_sum", "norm_sum", "gated_norm_sum", "norm_max", "act_max")
C, L, E, K = 2, 3, 16, 4           # the tiny model of conftest: 3 MoE layers x 16 experts, top-4


def header(**changes) -> dict:
    meta = dict(format=1, model_id="tiny", layer_indices=[0, 1, 2], num_experts=E, top_k=K,
                categories=["code", "prose"], tokens_per_category=[40, 60],
                calibration={"spec": "test", "fingerprint": "abc123", "max_tokens": 80, "samples": 5},
                top_tokens=None)
    meta.update(changes)
    return meta


def arrays(**changes) -> dict:
    rng = np.random.default_rng(0)
    out = {name: rng.uniform(0.0, 3.0, size=(C, L, E)) for name in NAMES}
    out.update(changes)
    return out


def write(path, meta=None, data=None, raw_meta=None):
    """An .npz as numpy writes it; `raw_meta` puts any text in the header slot."""
    meta_text = raw_meta if raw_meta is not None else json.dumps(header() if meta is None else meta)
    with open(path, "wb") as f:
        np.savez_compressed(f, meta=np.array(meta_text), **(arrays() if data is None else data))
    return path


def snippet(**changes) -> dict:
    item = {"score": 0.5, "category": "code", "before": "def f(", "token": "x", "after": "):"}
    item.update(changes)
    return item


def snippets(item=None) -> list:
    return [[[item or snippet()] for _ in range(E)] for _ in range(L)]


def refused(path, **kwargs) -> str:
    with pytest.raises(StatisticsError) as err:
        ExpertStats.load(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith(path.name + ":"), message
    return message


def test_a_valid_file_loads_with_every_value(tmp_path):
    data = arrays()
    stats = ExpertStats.load(write(tmp_path / "ok.npz", header(top_tokens=snippets()), data))
    assert (stats.layer_indices, stats.num_experts, stats.top_k) == ([0, 1, 2], E, K)
    assert stats.categories == ["code", "prose"] and stats.tokens_per_category == [40, 60]
    assert all(np.array_equal(stats.arrays[n], data[n]) for n in NAMES)
    assert stats.top_tokens[2][15] == [snippet()]


# --- damaged files --------------------------------------------------------------------------------

def test_truncated_file(tmp_path):
    good = write(tmp_path / "good.npz").read_bytes()
    for cut in (len(good) // 2, len(good) - 10, 30):
        path = tmp_path / f"cut{cut}.npz"
        path.write_bytes(good[:cut])
        assert "not a REAP Studio statistics file, or a damaged one" in refused(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    assert refused(path) == "empty.npz: the file is empty: not a REAP Studio statistics file"


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert "not a REAP Studio statistics file" in refused(path)


def test_zip_without_the_arrays(tmp_path):
    path = tmp_path / "other.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    assert refused(path) == ("other.npz: not a REAP Studio statistics file (no meta, count, gate_sum, norm_sum, "
                             "gated_norm_sum, norm_max, act_max inside)")
    data = arrays()
    del data["act_max"]
    assert refused(write(tmp_path / "five.npz", data=data)).endswith("(no act_max inside)")


def test_malformed_json_header(tmp_path):
    assert "its header is not valid JSON" in refused(write(tmp_path / "j.npz", raw_meta="{'format': 1,"))
    assert refused(write(tmp_path / "list.npz", raw_meta="[1, 2]")) == \
        "list.npz: its header is a JSON list, not an object"


def test_arrays_that_are_not_numbers_or_have_another_shape(tmp_path):
    text = arrays(count=np.full((C, L, E), "abc"))
    assert refused(write(tmp_path / "t.npz", data=text)) == "t.npz: count holds <U3 values, not numbers"
    wrong = arrays(norm_max=np.zeros((C, L, E + 1)))
    assert refused(write(tmp_path / "s.npz", data=wrong)) == \
        "s.npz: norm_max has the shape (2, 3, 17), but its header says (2, 3, 16) (categories, layers, experts)"


# --- headers that lie or have the wrong types ---------------------------------------------------------

@pytest.mark.parametrize("changes,message", [
    ({"format": 2}, "unsupported statistics format 2 (this version reads format 1)"),
    ({"num_experts": "abc"}, 'num_experts in its header must be a whole number >= 1, not "abc"'),
    ({"num_experts": 16.0}, "num_experts in its header must be a whole number >= 1, not 16.0"),
    ({"top_k": 0}, "top_k in its header must be a whole number >= 1, not 0"),
    ({"top_k": True}, "top_k in its header must be a whole number >= 1, not true"),
    ({"top_k": 17}, "its header says top_k=17, more than its num_experts=16"),
    ({"layer_indices": "abc"}, 'layer_indices in its header must be a non-empty list of distinct non-negative '
                               'whole numbers, not "abc"'),
    ({"layer_indices": [0, 0, 1]}, "layer_indices in its header must be a non-empty list of distinct"),
    ({"layer_indices": [-1, 0, 1]}, "layer_indices in its header must be a non-empty list of distinct"),
    ({"layer_indices": [0, 1.5, 2]}, "layer_indices in its header must be a non-empty list of distinct"),
    ({"categories": "ab"}, 'categories in its header must be a non-empty list of texts (at most 2000 characters '
                           'each), not "ab"'),
    ({"categories": ["code", "x" * 2001]}, "categories in its header must be a non-empty list of texts"),
    ({"categories": ["code", "code"]}, "categories in its header lists the same name twice"),
    ({"tokens_per_category": [40]}, "its header lists 2 categories but 1 tokens_per_category values"),
    ({"tokens_per_category": [40, -1]}, "tokens_per_category in its header must be a list of non-negative"),
    ({"model_id": 7}, "model_id in its header must be a text of at most 2000 characters"),
    ({"model_id": "m" * 2001}, "model_id in its header must be a text of at most 2000 characters"),
    ({"calibration": []}, "calibration in its header must be an object"),
    ({"calibration": {"max_tokens": "abc"}}, 'calibration.max_tokens in its header must be a non-negative whole '
                                             'number, not "abc"'),
    ({"calibration": {"spec": 3}}, "calibration.spec in its header must be a text of at most 2000 characters, "
                                   "not 3"),
])
def test_header_values_are_checked(tmp_path, changes, message):
    assert message in refused(write(tmp_path / "h.npz", header(**changes)))


def test_layer_count_in_header_must_match_the_arrays(tmp_path):
    assert "count has the shape (2, 3, 16), but its header says (2, 2, 16)" in \
        refused(write(tmp_path / "l.npz", header(layer_indices=[0, 1])))


# --- values -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,value,word", [("gate_sum", math.nan, "NaN"), ("norm_max", math.inf, "infinite"),
                                             ("act_max", -math.inf, "infinite"), ("count", -1.0, "negative")])
def test_nan_infinite_and_negative_values_are_refused(tmp_path, name, value, word):
    bad = arrays()
    bad[name][1, 2, 3] = value
    assert f"contains {word} values in {name}" in refused(write(tmp_path / "v.npz", data=bad))


# --- top_tokens: text the app shows ---------------------------------------------------------------------

@pytest.mark.parametrize("top_tokens,message", [
    ("text", "top_tokens must be a list with one entry per MoE layer (3)"),
    ([[]] * L, "top_tokens[0] must be a list with one entry per expert (16)"),
    (snippets(snippet(score=math.nan)), "top_tokens[0][0][0] has the score NaN, not a finite number"),
    (snippets(snippet(score="high")), 'top_tokens[0][0][0] has the score "high", not a finite number'),
    (snippets(snippet(token=5)), "top_tokens[0][0][0] has a token that is not a text"),
    (snippets(snippet(after="x" * 2001)), "top_tokens[0][0][0] has a after longer than 2000 characters"),
    (snippets(snippet(category="wizard")), "top_tokens[0][0][0] names the category 'wizard', which is not in"),
    (snippets({"score": 1.0, "token": "x"}), "top_tokens[0][0][0] must be an object with exactly after, before, "
                                             "category, score, token"),
])
def test_malformed_top_tokens_are_refused(tmp_path, top_tokens, message):
    text = refused(write(tmp_path / "t.npz", header(top_tokens=top_tokens)))
    assert message in text and "refusing the file" in text


# --- size limits --------------------------------------------------------------------------------------------

def test_max_bytes_is_checked_before_reading(tmp_path, monkeypatch):
    path = write(tmp_path / "big.npz")
    size = path.stat().st_size
    monkeypatch.setattr(zipfile, "ZipFile", lambda *a, **k: pytest.fail("the file was opened"))
    assert refused(path, max_bytes=size - 1) == \
        f"big.npz: the file is {size / 1e6:.1f} MB, larger than the {(size - 1) / 1e6:.1f} MB accepted for statistics"


def test_max_bytes_also_bounds_what_the_archive_unpacks_to(tmp_path):
    """A zip bomb: six arrays of 2 x 3 x 500,000 float64 zeros (6 x 24 MB = 144 MB) compress to well
    under 1 MB; with a 1 MB limit (10 MB unpacked) they must not be inflated."""
    shape = (C, L, 500_000)
    data = {name: np.zeros(shape) for name in NAMES}
    path = write(tmp_path / "bomb.npz", header(num_experts=500_000), data)
    assert path.stat().st_size < 10**6
    message = refused(path, max_bytes=10**6)
    assert "the archive unpacks to 144.0 MB, more than the 10.0 MB accepted" in message
    assert ExpertStats.load(path).num_experts == 500_000      # no limit given: it is read


# --- claims against the model ---------------------------------------------------------------------------------

def test_check_matches_compares_layers_experts_and_top_k(tmp_path):
    stats = ExpertStats.load(write(tmp_path / "s.npz"))
    stats.check_matches([0, 1, 2], E, K)                       # the tiny model: passes
    with pytest.raises(StatisticsError, match=r"top_k=4 experts \(tiny\), but the model routes each token to 8"):
        stats.check_matches([0, 1, 2], E, 8)
    with pytest.raises(StatisticsError, match=r"MoE layers \[0, 1, 2\] \(3\) \(tiny\), but the model's MoE layers "
                                              r"are \[0, 2, 4\] \(3\)"):
        stats.check_matches([0, 2, 4], E, K)
    with pytest.raises(StatisticsError, match="3 MoE layers x 16 experts .* but the model has 3 x 32"):
        stats.check_matches([0, 1, 2], 32, K)
    with pytest.raises(StatisticsError, match="3 MoE layers x 16 experts .* but the model has 4 x 16"):
        stats.check_matches([0, 1, 2, 3], E, K)


def test_a_header_claiming_another_top_k_is_refused_for_the_model(tmp_path, tiny_dir):
    """top_k=2 in the header would let ratio 0.85 keep 3 experts, fewer than the 4 the model routes to."""
    from reap_core.model import load_model

    stats = ExpertStats.load(write(tmp_path / "k2.npz", header(top_k=2)))
    loaded = load_model(str(tiny_dir))
    with pytest.raises(StatisticsError) as err:
        stats.check_matches(loaded.moe_layer_indices, loaded.num_experts, loaded.top_k)
    assert "top_k=2" in str(err.value) and "routes each token to 4" in str(err.value)
