"""Fixtures for application tests."""

from __future__ import annotations

import pytest

from cifer.app.application import CiferApp
from cifer.base.store.state import StateStore

from .helpers import Chain, genesis


@pytest.fixture
def app() -> CiferApp:
    a = CiferApp(StateStore(":memory:"))
    a.init_chain(genesis())
    return a


@pytest.fixture
def chain(app: CiferApp) -> Chain:
    return Chain(app)
