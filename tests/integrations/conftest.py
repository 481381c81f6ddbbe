"""Shared setup of the Flower integration tests (their plumbing is tests/support/flower_plumbing.py):
the task identity Flower stamps on new messages."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def server_identity():
    """Flower stamps new instruction messages with the running task's identity (set by the
    ServerApp process in deployment); give the in-process strategies one."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:  # flwr is optional: its tests skip themselves
        yield
        return
    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old
