"""bench.process: the one context that sets and restores the process's threads and gc freeze."""

import gc

import pytest
import torch

from bench.process import process_settings


@pytest.fixture
def clean_process():
    """Two threads and nothing frozen before the test; whatever the test left, restored after it."""
    threads = torch.get_num_threads()
    frozen = gc.get_freeze_count() > 0
    gc.unfreeze()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)
    if frozen:
        gc.freeze()


def test_sets_threads_and_freezes_within_and_restores_after(clean_process):
    with process_settings(threads=1, freeze_gc=True):
        assert torch.get_num_threads() == 1
        assert gc.get_freeze_count() > 0
    assert torch.get_num_threads() == 2
    assert gc.get_freeze_count() == 0


def test_restores_when_the_block_raises(clean_process):
    with pytest.raises(RuntimeError, match="boom"), process_settings(threads=1, freeze_gc=True):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    assert gc.get_freeze_count() == 0


def test_leaves_what_it_was_not_asked_to_change(clean_process):
    with process_settings():
        assert torch.get_num_threads() == 2
        assert gc.get_freeze_count() == 0
    with process_settings(threads=1):
        assert gc.get_freeze_count() == 0
    assert torch.get_num_threads() == 2


def test_a_nested_freeze_leaves_the_enclosing_freeze_in_place(clean_process):
    with process_settings(freeze_gc=True):
        outer = gc.get_freeze_count()
        with process_settings(threads=1, freeze_gc=True):
            assert torch.get_num_threads() == 1
        assert gc.get_freeze_count() >= outer > 0  # the inner block did not unfreeze the outer one's objects
        assert torch.get_num_threads() == 2
    assert gc.get_freeze_count() == 0


def test_an_earlier_freeze_is_not_undone(clean_process):
    gc.freeze()
    try:
        with process_settings(freeze_gc=True):
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_refuses_a_thread_count_below_one(clean_process):
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"), process_settings(threads=0):
        pass
    assert torch.get_num_threads() == 2
