"""How a bank's step slices reach the model (streaming.StepFeed), driven on a machine without CUDA through a
recorder of the device's side (copies queued, waits): the next step's copy is queued before the current step's
model call returns, on a hit as on a miss; a call waits on the slices it uses only, never on a later step's; a
disk table is read one step ahead on the side; slices already given are dropped, and a window smaller than a step keeps the feed to a slice and the window
however large the bank."""
from __future__ import annotations

import torch

from comfyui_pnp.pnp_injection import disk
from comfyui_pnp.pnp_injection.streaming import StepFeed

KEYS = ("a", "b", "c")


class Recorder:
    """The device side of a StepFeed, recorded: each copy queued and each wait, in order."""

    def __init__(self):
        self.log = []

    def copy(self, source, like, tag):
        self.log.append(("copy", tag))
        return source.to(dtype=like.dtype), tag

    def wait(self, tensor, event, tag):
        self.log.append(("wait", event))


def tables(steps=5):
    return {key: torch.arange(steps * 6, dtype=torch.float32).reshape(steps, 2, 3) + i * 100
            for i, key in enumerate(KEYS)}


def run(feed, steps, like):
    """A sampling run: per step, one model call that uses every key's slice; its end is logged."""
    for step in range(steps):
        for key in KEYS:
            got = feed.get(step, key, like)
            assert torch.equal(got, feed.tables[key][step].to(like.dtype))
        feed.transfers.log.append(("call returns", step))


def test_the_next_step_is_queued_before_the_current_call_returns_and_calls_wait_on_their_own_slices():
    """Fails if read-ahead waits for a miss, if it is skipped on a hit, or if a call waits on another step's copy."""
    feed = StepFeed(tables(), Recorder())
    run(feed, 5, torch.zeros(2, 3, dtype=torch.float64))
    log = feed.transfers.log
    for step in range(4):
        returned = log.index(("call returns", step))
        queued = [i for i, entry in enumerate(log) if entry[0] == "copy" and entry[1][0] == step + 1]
        assert len(queued) == len(KEYS) and max(queued) < returned, f"step {step + 1} not read ahead of call {step}"
    calls = [0] + [log.index(("call returns", s)) + 1 for s in range(5)]
    for step in range(5):
        waits = [entry[1] for entry in log[calls[step]:calls[step + 1]] if entry[0] == "wait"]
        assert waits == [(step, key) for key in KEYS], f"call {step} waited on {waits}"
    assert sum(entry[0] == "copy" for entry in log) == 5 * len(KEYS)  # each slice copied once


def test_a_miss_reads_ahead_too_and_steps_behind_are_dropped():
    """A run that starts at step 2 (a sampler on part of the schedule) still queues step 3 before its call
    returns; after step 3 only steps 3 and 4 are held."""
    feed = StepFeed(tables(), Recorder())
    like = torch.zeros(2, 3)
    for key in KEYS:
        feed.get(2, key, like)
    assert any(entry == ("copy", (3, "a")) for entry in feed.transfers.log)
    feed.get(3, "a", like)
    assert {step for step, _ in feed._slices} == {3, 4}
    feed.release()
    assert feed._slices == {}


def test_a_disk_table_is_read_one_step_ahead():
    """Tables in a bank file: each slice read back equals what was written, the next step's read is submitted
    before the current call returns, and the feed's reader thread ends with the run."""
    source = tables()
    written = disk.DiskTables(lambda key: 5)
    for key, table in source.items():
        for slot in range(5):
            written.put(key, slot, table[slot])
    on_disk = {key: written.complete(key, 5, key) for key in KEYS}
    feed = StepFeed(on_disk, Recorder())
    like = torch.zeros(2, 3, dtype=torch.float64)
    for step in range(5):
        for key in KEYS:
            assert torch.equal(feed.get(step, key, like), source[key][step].double())
        assert step == 4 or (step + 1, "a") in feed._slices
    feed.release()
    assert feed._reader is None


def test_a_small_window_holds_one_slice_ahead_and_a_second_call_reads_again():
    """With a window of one slice the feed never holds more than the slice in use and the next one, each slice is
    copied once and on its way before it is asked for (after the first); a second model call in the same step gets
    the same slices, fetched again, in another order too."""
    source = tables()
    feed = StepFeed(source, Recorder(), ahead_bytes=6 * 4)  # one [2, 3] float32 slice
    like = torch.zeros(2, 3)
    for step in range(5):
        for key in KEYS:
            before = sum(entry[0] == "copy" for entry in feed.transfers.log)
            assert torch.equal(feed.get(step, key, like), source[key][step])
            assert len(feed._slices) <= 2
            if (step, key) != (0, "a"):  # read ahead: the get itself copies only the next one
                assert sum(entry[0] == "copy" for entry in feed.transfers.log) == before + ((step, key) != (4, "c"))
    assert sum(entry[0] == "copy" for entry in feed.transfers.log) == 5 * len(KEYS)
    for key in reversed(KEYS):  # the step's second call
        assert torch.equal(feed.get(4, key, like), source[key][4])
