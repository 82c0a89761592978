"""Shared fixtures: the PostgreSQL server the CI starts, and tools the report tests need."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

REQUIRE_ALL = os.environ.get("LLMJEPA_REQUIRE_ALL") == "1"  # set by .ci/run: nothing may skip


@pytest.fixture(scope="session")
def pg_url() -> str | None:
    """SQLAlchemy URL of a PostgreSQL server (postgresql+psycopg2://...), or None."""
    url = os.environ.get("LLMJEPA_TEST_PG")
    if url is None and REQUIRE_ALL:
        pytest.fail("LLMJEPA_TEST_PG is not set but LLMJEPA_REQUIRE_ALL=1")
    return url


def require_tool(name: str) -> None:
    if shutil.which(name) is None:
        if REQUIRE_ALL:
            pytest.fail(f"{name} is missing but LLMJEPA_REQUIRE_ALL=1")
        pytest.skip(f"{name} is not installed")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests' tensors are tiny: a second thread only contends with whatever else runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
