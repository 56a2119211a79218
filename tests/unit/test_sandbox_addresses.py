"""The sandbox VM runner's loopback addresses: each claimed by a held, never-listening socket, so two processes
(test workers, a demo) never hand out the same address — whose fixed scheduler ports both VMs would listen on."""

from __future__ import annotations

import itertools
import socket

import pytest

from guard.sandbox import vms


@pytest.fixture
def fresh_range(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The allocator starts at the beginning of a range no other test uses; its first addresses."""
    monkeypatch.setattr(vms, "_next_address", itertools.count())
    monkeypatch.setattr(vms, "_FIRST_OCTET", 200)
    return ["127.200.0.1", "127.200.0.2", "127.200.0.3"]


def test_an_address_claimed_by_another_process_is_skipped(fresh_range: list[str]) -> None:
    first, second, _ = fresh_range
    with socket.socket() as other:  # what another process's allocator holds for an address it handed out
        other.bind((first, vms.CLAIM_PORT))
        ip = vms.allocate_address((8786, 8787))
    try:
        assert ip == second
        with socket.socket() as late, pytest.raises(OSError):  # claimed: nobody else gets it meanwhile
            late.bind((ip, vms.CLAIM_PORT))
    finally:
        vms.release_address(ip)
    with socket.socket() as after:  # released once its VM ended
        after.bind((ip, vms.CLAIM_PORT))


def test_an_address_whose_ports_are_taken_is_skipped(fresh_range: list[str]) -> None:
    first, second, _ = fresh_range
    with socket.create_server((first, 8786)):  # a scheduler of a process that made no claim
        ip = vms.allocate_address((8786, 8787))
    vms.release_address(ip)
    assert ip == second
    with socket.socket() as sock:  # the skipped address's claim was not kept
        sock.bind((first, vms.CLAIM_PORT))
