"""Batched generation with continuous refill: the same completions as one prompt at a time."""

import pytest
import torch

from model.generate.backend import Settings
from model.generate.batched import Batch
from model.generate.torch_backend import TorchBackend, TorchBatchDecoder

PROMPTS = ["ROMEO:", "First Citizen:\nBefore we", "All:", "", "But, soft! what light through yonder window",
           "x", "Speak, speak.\n\nROMEO:\nBut", "hear me"]
# varied settings: greedy and sampled, top-k, top-p, stop strings, lengths that cross the
# 32-token window (a re-prefill mid-way) and ones that end early
SETTINGS = [Settings(temperature=0.0, max_new_tokens=40),
            Settings(temperature=0.9, top_k=5, max_new_tokens=25, seed=1),
            Settings(temperature=1.0, max_new_tokens=7, seed=2),
            Settings(temperature=0.8, top_p=0.9, max_new_tokens=50, seed=3, stop=("e",)),
            Settings(temperature=0.0, max_new_tokens=12),
            Settings(temperature=1.2, max_new_tokens=33, seed=4),
            Settings(temperature=0.7, max_new_tokens=3, seed=5),
            Settings(temperature=1.0, max_new_tokens=45, seed=6, stop=("\n",))]


def one_at_a_time(backend, jobs):
    out = []
    for prompt, settings in jobs:
        g = backend.stream(prompt, settings)
        out.append(([e.id for e in g], g.stop_reason))
    return out


def batched(backend, decoder, jobs):
    """Every job through a Batch, refilled as rows end; results in job order."""
    batch = Batch(decoder, backend.tokenizer)
    results, pending, ids, running = {}, list(enumerate(jobs)), {}, {}
    while pending or len(batch):
        while pending and batch.free:
            i, (prompt, settings) = pending.pop(0)
            g = batch.add(prompt, settings)
            running[id(g)], ids[i] = i, []
        for g, event in batch.step():
            i = running[id(g)]
            if event is None:
                results[i] = (ids[i], g.stop_reason)
            else:
                ids[i].append(event.id)
    return [results[i] for i in range(len(jobs))]


@pytest.fixture
def torch_backend(tiny_model, char_tok):
    return TorchBackend(tiny_model, char_tok)


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_batched_completions_equal_one_at_a_time(torch_backend, rows):
    jobs = list(zip(PROMPTS, SETTINGS, strict=True)) * 2
    expect = one_at_a_time(torch_backend, jobs)
    assert {reason for _, reason in expect} >= {"max_tokens", "stop_string"}
    assert batched(torch_backend, torch_backend.batch_decoder(rows), jobs) == expect


def prefilled(model, lengths, rows, seed):
    """A TorchBatchDecoder with random prompts of these lengths in rows 0.., and beside it a
    one-sequence decoder per prompt fed the same; each prefill checked against it."""
    g = torch.Generator().manual_seed(seed)
    alone = TorchBackend(model, None)
    batch, decoders = TorchBatchDecoder(model, rows), [alone.decoder() for _ in lengths]
    for b, n in enumerate(lengths):
        p = torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist()
        torch.testing.assert_close(batch.prefill(b, p), decoders[b].feed(p), rtol=0, atol=1e-6)
    return batch, decoders


def test_a_step_gives_each_row_the_logits_it_would_get_alone(tiny_model):
    batch, decoders = prefilled(tiny_model, (3, 9, 1), rows=4, seed=0)
    for _ in range(5):
        tokens = {0: 3, 2: 7}  # row 1 skips these steps: a dummy row, untouched
        got = batch.step(tokens)
        for b, t in tokens.items():
            torch.testing.assert_close(got[b], decoders[b].feed([t]), rtol=0, atol=1e-5)
    assert batch.lengths[:3] == [8, 9, 6]
    torch.testing.assert_close(batch.step({1: 4})[1], decoders[1].feed([4]), rtol=0, atol=1e-5)


def test_a_moved_row_carries_on_as_it_would_have_in_place(tiny_model):
    batch, decoders = prefilled(tiny_model, (4, 2, 7), rows=3, seed=1)
    batch.step({0: 5, 1: 6, 2: 7})
    for d, t in zip(decoders, (5, 6, 7), strict=True):
        d.feed([t])
    batch.release(0)
    batch.move(2, 0)  # the longest row into the shortest one's place
    assert batch.lengths == [8, 3, 0]
    got = batch.step({0: 8, 1: 9})
    torch.testing.assert_close(got[0], decoders[2].feed([8]), rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1], decoders[1].feed([9]), rtol=0, atol=1e-5)


def test_rows_are_packed_as_generations_end(torch_backend):
    class Recording:  # what the batch asks of the decoder
        def __init__(self, inner):
            self.inner, self.rows, self.block_size = inner, inner.rows, inner.block_size
            self.prefill, self.release, self.moves, self.steps = inner.prefill, inner.release, [], []

        def step(self, tokens):
            self.steps.append(sorted(tokens))
            return self.inner.step(tokens)

        def move(self, src, dst):
            self.moves.append((src, dst))
            self.inner.move(src, dst)

    decoder = Recording(torch_backend.batch_decoder(4))
    batch = Batch(decoder, torch_backend.tokenizer)
    gens = [batch.add("ROMEO:", Settings(temperature=0.0, max_new_tokens=n)) for n in (2, 3, 9, 9)]
    while len(batch):
        batch.step()
    # rows 0 and 1 end after their 2nd and 3rd tokens; rows 3 then 2 take their places
    assert decoder.moves == [(3, 0), (2, 1)]
    assert decoder.steps[-1] == [0, 1]
    assert [len(g.ids) for g in gens] == [2, 3, 9, 9]
    alone = [e.id for e in torch_backend.stream("ROMEO:", Settings(temperature=0.0, max_new_tokens=9))]
    assert gens[2].ids == gens[3].ids == alone


def test_add_refuses_when_every_row_is_busy(torch_backend):
    batch = Batch(torch_backend.batch_decoder(1), torch_backend.tokenizer)
    batch.add("ROMEO:", Settings())
    with pytest.raises(ValueError, match=r"all 1 rows are busy; step\(\) until one ends"):
        batch.add("JULIET:", Settings())


def test_close_ends_every_generation_and_frees_the_rows(torch_backend):
    batch = Batch(torch_backend.batch_decoder(2), torch_backend.tokenizer)
    gens = [batch.add(p, Settings(max_new_tokens=50)) for p in ("ROMEO:", "All:")]
    batch.step()
    batch.close()
    assert [g.stop_reason for g in gens] == ["stopped", "stopped"]
    assert batch.free == 2 and batch.step() == []


def test_cancel_frees_the_row_at_once_and_the_others_go_on_as_alone(torch_backend):
    jobs = [("ROMEO:", Settings(temperature=0.9, max_new_tokens=30, seed=1)),
            ("All:", Settings(temperature=0.9, max_new_tokens=30, seed=2))]
    batch = Batch(torch_backend.batch_decoder(2), torch_backend.tokenizer)
    first, second = (batch.add(p, s) for p, s in jobs)
    ids = [e.id for _, e in batch.step() if e is not None][1:]  # the second row's first token
    batch.cancel(first)
    assert first.stop_reason == "stopped" and batch.free == 1 and len(batch) == 1
    while len(batch):
        ids += [e.id for g, e in batch.step() if e is not None]
    assert ids == one_at_a_time(torch_backend, jobs[1:])[0][0]  # packed into row 0, unchanged
    batch.cancel(first)  # already gone: nothing happens
    assert batch.free == 2


@pytest.fixture(scope="module")
def ort_backend(tiny_ckpt, tmp_path_factory):
    from export.onnx_export import export_onnx
    from export.ort_backend import load_ort_backend

    path = export_onnx(tiny_ckpt, tmp_path_factory.mktemp("b") / "tiny.onnx", validate=False)
    return load_ort_backend(path, provider="cpu", threads=1)


@pytest.mark.slow
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_onnx_batched_completions_equal_one_at_a_time(ort_backend, rows):
    jobs = list(zip(PROMPTS, SETTINGS, strict=True)) * 2
    expect = one_at_a_time(ort_backend, jobs)
    assert batched(ort_backend, ort_backend.batch_decoder(rows), jobs) == expect


@pytest.mark.slow
def test_onnx_a_step_gives_each_row_the_logits_it_would_get_alone(ort_backend):
    """Rows left-aligned in the in-place cache, each at its own position; an idle row in between."""
    decoder = ort_backend.batch_decoder(4)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [13]]
    alone = [ort_backend.decoder() for _ in prompts]
    for b, p in enumerate(prompts):
        torch.testing.assert_close(decoder.prefill(b, p), alone[b].feed(p), rtol=0, atol=1e-5)
    for t in range(5):
        got = decoder.step({0: 20 + t, 2: 30 + t})  # row 1 sits these steps out: untouched
        torch.testing.assert_close(got[0], alone[0].feed([20 + t]), rtol=0, atol=1e-5)
        torch.testing.assert_close(got[2], alone[2].feed([30 + t]), rtol=0, atol=1e-5)
    assert decoder.lengths[:3] == [8, 9, 6]
    torch.testing.assert_close(decoder.step({1: 40})[1], alone[1].feed([40]), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_onnx_a_moved_row_carries_on_as_it_would_have_in_place(ort_backend):
    decoder = ort_backend.batch_decoder(3)
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9, 10, 11, 12]]
    for b, p in enumerate(prompts):
        decoder.prefill(b, p)
    decoder.release(0)
    decoder.move(2, 0)  # the longest row into the shortest one's place
    assert decoder.lengths == [6, 2, 0]
    expect = []
    for p, t in ((prompts[2], 13), (prompts[1], 14)):
        alone = ort_backend.decoder()
        alone.feed(p)
        expect.append(alone.feed([t]))
    got = decoder.step({0: 13, 1: 14})
    torch.testing.assert_close(got[0], expect[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1], expect[1], rtol=0, atol=1e-5)


def test_batch_mode_with_rows_writes_what_one_at_a_time_writes_in_input_order(torch_backend):
    import io
    import json

    from tui.batch import read_items, run_batch

    lines = [json.dumps({"prompt": p, "max_new_tokens": s.max_new_tokens, "temperature": s.temperature,
                         "top_k": s.top_k, "top_p": s.top_p, "seed": s.seed, "stop": list(s.stop)})
             for p, s in zip(PROMPTS, SETTINGS, strict=True)]
    lines.insert(3, '{"prompt": "caf\\u00e9"}')  # unknown characters: an error line, in its place
    lines.insert(6, "{not json")

    def outputs(**kwargs):
        out = io.StringIO()
        summary = run_batch(torch_backend, read_items(lines), Settings(), out, new_seed=lambda: 7, **kwargs)
        rows = [json.loads(line) for line in out.getvalue().splitlines()]
        for row in rows:
            del row["timing"]
        return rows, summary

    looped, _ = outputs()
    together, summary = outputs(batch_decoder=torch_backend.batch_decoder(3))
    assert together == looped
    assert [r["id"] for r in together] == list(range(1, len(lines) + 1))
    assert [r["error"] is not None for r in together].count(True) == 2
    assert (summary.done, summary.failed) == (len(lines), 2)


def test_ctrl_c_in_batch_mode_with_rows_keeps_the_lines_written(torch_backend):
    import io
    import json

    from tui.batch import EXIT_INTERRUPTED, read_items, run_batch

    class Interrupting:  # the decoder is where Ctrl+C lands: it is where the time goes
        def __init__(self, inner, steps):
            self.inner, self.steps = inner, steps
            self.rows, self.block_size = inner.rows, inner.block_size
            self.prefill, self.release, self.move = inner.prefill, inner.release, inner.move

        def step(self, tokens):
            self.steps -= 1
            if self.steps < 0:
                raise KeyboardInterrupt
            return self.inner.step(tokens)

    lines = [json.dumps({"prompt": "ROMEO:", "max_new_tokens": n}) for n in (2, 3, 50, 2)]
    out = io.StringIO()
    summary = run_batch(torch_backend, read_items(lines), Settings(seed=1), out,
                        batch_decoder=Interrupting(torch_backend.batch_decoder(2), steps=10))
    written = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["id"], r["tokens"]) for r in written] == [(1, 2), (2, 3)]  # 3 is cut short: no line
    assert summary.interrupted and summary.exit_code == EXIT_INTERRUPTED and summary.done == 2


def test_batch_mode_with_rows_answers_each_piped_line_before_it_reads_the_next(torch_backend):
    import io
    import threading

    from tui.batch import read_items, run_batch

    out = io.StringIO()
    answered = []

    def pipe():  # a client that sends a line, then waits for its answer before sending the next
        for n, line in enumerate(['{"prompt": "caf\\u00e9"}', '{"prompt": "ROMEO:"}', "{bad"], 1):
            yield line
            for _ in range(200):
                if out.getvalue().count("\n") >= n:
                    break
                threading.Event().wait(0.05)
            answered.append(out.getvalue().count("\n") >= n)

    summary = run_batch(torch_backend, read_items(pipe()), Settings(max_new_tokens=5, seed=1), out,
                        batch_decoder=torch_backend.batch_decoder(4))
    assert answered == [True, True, True] and summary.done == 3
