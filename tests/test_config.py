"""Config flags: with-blocks, decorators, restoration on error, isolation per thread and per asyncio task."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import xdezero.functions as F
from xdezero import Config, Variable, no_grad, test_mode, using_config


def records_graph() -> bool:
    return F.sin(Variable(np.array(1.0))).creator is not None


def test_defaults():
    assert Config.enable_backprop is True and Config.train is True
    assert records_graph()


def test_no_grad_block_and_restore():
    with no_grad():
        assert Config.enable_backprop is False
        assert not records_graph()
    assert Config.enable_backprop is True and records_graph()


def test_test_mode_block():
    with test_mode():
        assert Config.train is False
    assert Config.train is True


def test_nested_blocks_restore_in_order():
    with using_config("train", False):
        with using_config("train", True):
            assert Config.train is True
        assert Config.train is False
    assert Config.train is True


def test_restored_when_the_block_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with no_grad():
            raise RuntimeError("boom")
    assert Config.enable_backprop is True


def test_decorators():
    @no_grad()
    def inside():
        return Config.enable_backprop

    @test_mode()
    def evaluating():
        return Config.train

    @using_config("train", False)
    def fails():
        raise ValueError("x")

    assert inside() is False and evaluating() is False
    with pytest.raises(ValueError, match=r"^x$"):
        fails()
    assert Config.enable_backprop is True and Config.train is True


def test_async_decorator_and_task_isolation():
    @no_grad()
    async def without_grad():
        await asyncio.sleep(0.01)
        return Config.enable_backprop

    async def with_grad():
        await asyncio.sleep(0.005)
        return records_graph()

    async def main():
        return await asyncio.gather(without_grad(), with_grad())

    assert asyncio.run(main()) == [False, True]


def test_no_grad_in_one_thread_does_not_affect_another():
    inside = threading.Event()
    checked = threading.Event()
    seen = {}

    def worker_without_grad():
        with no_grad():
            inside.set()
            checked.wait(5)
            seen["worker"] = Config.enable_backprop

    t = threading.Thread(target=worker_without_grad)
    t.start()
    inside.wait(5)
    seen["main"] = records_graph()
    checked.set()
    t.join()
    assert seen == {"main": True, "worker": False}


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown config name 'enable_backprob'.*'enable_backprop', 'train'"):
        using_config("enable_backprob", False)
    with pytest.raises(AttributeError, match="no flag 'trian'"):
        Config.trian  # noqa: B018


def test_config_attribute_assignment_sets_current_context():
    def body():
        Config.train = False
        return Config.train

    import contextvars

    assert contextvars.copy_context().run(body) is False
    assert Config.train is True
