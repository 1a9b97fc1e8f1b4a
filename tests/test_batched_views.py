"""Per-row masks: one batch in which every row has its own plan equals each row run alone."""

import pytest
import torch

from conftest import run_at_once
from reap_core.chat import GenerationSettings, build_inputs, left_pad_batch, stream_variants
from reap_core.errors import InvalidPlan
from reap_core.masking import masked_rows, masked_view
from reap_core.observer import observe
from reap_core.plan import make_plan

CONVERSATIONS = [
    [{"role": "user", "content": "def add(a, b):"}],
    [{"role": "user", "content": "Paris is the capital of"}, {"role": "assistant", "content": "France."},
     {"role": "user", "content": "and Madrid?"}],
    [{"role": "user", "content": "12 + 30 ="}],
]


@pytest.fixture(scope="module")
def plans(tiny, calib):
    stats = observe(tiny, calib, batch_size=4)
    return [None, make_plan(stats, 0.5, "reap"), make_plan(stats, 0.75, "frequency")]


def greedy(loaded, batch, new_tokens=12):
    with torch.no_grad():
        out = loaded.model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=loaded.tokenizer.pad_token_id, output_logits=True,
                                    return_dict_in_generate=True)
    prompt = batch["input_ids"].shape[1]
    return out.sequences[:, prompt:], torch.stack(out.logits, dim=1)       # [B, N], [B, N, V]


def test_batched_rows_equal_each_row_alone(tiny, plans):
    encs = [build_inputs(tiny, c) for c in CONVERSATIONS]
    assert len({e["input_ids"].shape[1] for e in encs}) == 3          # different prompt lengths: left padding
    alone = []
    for enc, plan in zip(encs, plans):
        with masked_view(tiny, plan):
            alone.append(greedy(tiny, enc))
    batch = left_pad_batch(encs, tiny.tokenizer.pad_token_id)
    with masked_rows(tiny, plans):
        tokens, logits = greedy(tiny, batch)
    for row, (a_tokens, a_logits) in enumerate(alone):
        assert torch.equal(tokens[row], a_tokens[0]), row
        assert (logits[row] - a_logits[0]).abs().max().item() <= 1e-5, row
    # the plans really differ: the same prompt under each plan gives different logits
    same = left_pad_batch([encs[0]] * 3, tiny.tokenizer.pad_token_id)
    with masked_rows(tiny, plans):
        _, per_plan = greedy(tiny, same, 2)
    assert (per_plan[0] - per_plan[1]).abs().max() > 1e-3 and (per_plan[1] - per_plan[2]).abs().max() > 1e-3


def test_a_batch_with_the_wrong_number_of_rows_is_refused(tiny, plans):
    enc = build_inputs(tiny, CONVERSATIONS[0])
    with masked_rows(tiny, plans), pytest.raises(InvalidPlan, match="one row per plan"):
        with torch.no_grad():
            tiny.model(**left_pad_batch([enc, enc], 0))
    with pytest.raises(InvalidPlan, match="at least one plan"):
        with masked_rows(tiny, []):
            pass


def final_texts(loaded, conversations, plans, settings):
    return list(stream_variants(loaded, conversations, plans, settings))[-1]


def test_chat_panes_in_one_batch_equal_each_pane_alone(tiny, plans):
    settings = GenerationSettings(max_new_tokens=16)
    convs = [CONVERSATIONS[0], CONVERSATIONS[1]]
    pair = [None, plans[1]]
    alone = [final_texts(tiny, [c], [p], settings)[0] for c, p in zip(convs, pair)]
    assert final_texts(tiny, convs, pair, settings) == alone
    assert alone[0] != final_texts(tiny, [convs[0]], [plans[1]], settings)[0]   # the pruned pane differs


def test_a_pane_that_ends_early_stops_at_its_own_end_token(tiny, plans):
    """Row 0's end token comes first; the batch continues for row 1, row 0's text stops."""
    import queue

    from reap_core import chat
    eos = chat.end_token_ids(tiny.model, tiny.tokenizer)
    streamer_steps = []
    q = queue.Queue()
    s = chat._QueueStreamer(q, eos)
    s.put(torch.tensor([[5, 6], [7, 8]]))                 # the prompt: ignored
    s.put(torch.tensor([min(eos), 9]))
    s.put(torch.tensor([tiny.tokenizer.pad_token_id, 10]))
    s.end()
    while (item := q.get()) is not None:
        streamer_steps.append(item)
    assert streamer_steps == [[(0, min(eos)), (1, 9)], [(1, 10)]]


def test_two_sessions_batching_at_once_never_cross(tiny, plans):
    settings = GenerationSettings(max_new_tokens=12)
    jobs = {"a": ([CONVERSATIONS[0], CONVERSATIONS[2]], [None, plans[1]]),
            "b": ([CONVERSATIONS[1], CONVERSATIONS[0]], [plans[2], plans[1]])}
    alone = {k: final_texts(tiny, c, p, settings) for k, (c, p) in jobs.items()}
    results = run_at_once({k: (lambda c=c, p=p: final_texts(tiny, c, p, settings)) for k, (c, p) in jobs.items()},
                          repeats=3)
    for key, runs in results.items():
        assert runs == [alone[key]] * 3, key
