"""The CNI attachment store (snapshot + journal), the batched netlink request, the namespace helper thread
and the MACs the wiring picks: the pieces that made ADD fast, checked without root."""

from __future__ import annotations

import errno
import json
import os
import struct
import threading
from ipaddress import ip_address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlayd.cni import nsopen, store as store_module
from overlayd.cni.records import Attachment
from overlayd.cni.store import AttachmentStore
from overlayd.cni.wiring import _random_mac
from overlayd.errors import KernelError
from overlayd.pods.rtnl import NetlinkError, Rtnl
from overlayd.statefile import StateError
from tests.unit.test_pods_rtnl import HEADER, ScriptedSocket, ack


def _attachment(n: int, network: str = "overlayd") -> Attachment:
    return Attachment(network=network, container_id=f"c{n}", ifname="eth0", netns=Path(f"/run/netns/c{n}"),
                      ip=ip_address(f"10.5.1.{n + 2}"), host_veth=f"ovlz{n:07x}", created="2026-01-01T00:00:00Z")


def _reopen(path: Path) -> dict:
    return AttachmentStore(path).load()


def test_adds_and_deletes_are_journal_lines_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cni.json"
    store = AttachmentStore(path)
    assert store.load() == {}
    current: dict = {}
    for n in range(3):
        a = _attachment(n)
        current[a.key] = a
        store.added(a, current.values())
    del current[_attachment(1).key]
    store.removed(_attachment(1).key, current.values())
    assert not path.exists()  # no snapshot needed yet
    assert len(store.journal.read_bytes().splitlines()) == 4
    assert _reopen(path) == current


def test_the_journal_is_compacted_into_the_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "cni.json"
    store = AttachmentStore(path, compact_after=4)
    store.load()
    current: dict = {}
    for n in range(10):
        a = _attachment(n)
        current[a.key] = a
        store.added(a, current.values())
    assert len(store.journal.read_bytes().splitlines()) < 4
    assert json.loads(path.read_text())["version"] == 1
    assert _reopen(path) == current


def test_an_old_store_without_a_journal_loads_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "cni.json"
    path.write_text(json.dumps({"version": 1, "attachments": [_attachment(0).to_dict()]}))
    assert list(_reopen(path)) == [_attachment(0).key]


def test_replaying_lines_the_snapshot_already_has_changes_nothing(tmp_path: Path) -> None:
    """A crash after writing the snapshot but before emptying the journal."""
    path = tmp_path / "cni.json"
    store = AttachmentStore(path)
    store.load()
    current: dict = {}
    a0, a1 = _attachment(0), _attachment(1)
    current[a0.key] = a0
    store.added(a0, current.values())
    current[a1.key] = a1
    store.added(a1, current.values())
    del current[a0.key]
    store.removed(a0.key, current.values())
    journal = store.journal.read_bytes()
    store.save(current.values())
    store.journal.write_bytes(journal)  # as if the truncate never happened
    assert _reopen(path) == current


def test_a_torn_last_line_is_ignored_and_a_corrupt_one_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cni.json"
    store = AttachmentStore(path)
    store.load()
    store.added(_attachment(0), [_attachment(0)])
    with store.journal.open("ab") as f:
        f.write(b'{"add": {"network": "over')  # a write a power loss cut short
    assert list(_reopen(path)) == [_attachment(0).key]
    for bad in (b"not json\n", b'{"add": {}}\n', b'{"del": ["a", "b", "c"]}\n', b'{"add": 1, "del": 2}\n',
                b'{"put": {}}\n', b"\xff\n"):
        store.journal.write_bytes(bad)
        with pytest.raises(StateError, match="corrupt: line 1"):
            _reopen(path)


def test_set_aside_moves_both_files(tmp_path: Path) -> None:
    path = tmp_path / "cni.json"
    store = AttachmentStore(path)
    store.load()
    store.added(_attachment(0), [_attachment(0)])
    store.save([_attachment(0)])
    store.added(_attachment(1), [_attachment(0), _attachment(1)])
    aside = store.set_aside()
    assert aside and aside.count("damaged") == 2
    assert not path.exists() and not store.journal.exists()


def test_a_failed_append_saves_a_snapshot_instead_and_leaves_no_partial_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cni.json"
    store = AttachmentStore(path)
    store.load()
    store.added(_attachment(0), [_attachment(0)])
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[:10])  # the disk filled up mid-line

    monkeypatch.setattr(store_module.os, "write", short_write)
    current = [_attachment(0), _attachment(1)]
    store.added(_attachment(1), current)
    monkeypatch.undo()
    assert store.journal.read_bytes() == b""  # cut back, then emptied by the snapshot
    assert _reopen(path) == {a.key: a for a in current}
    store.added(_attachment(2), current + [_attachment(2)])  # appending works again
    assert len(_reopen(path)) == 3


def test_when_nothing_can_be_written_the_change_is_refused_and_the_files_stay_readable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cni.json"
    store = AttachmentStore(path)
    store.load()
    store.added(_attachment(0), [_attachment(0)])

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module.os, "write", no_space)
    monkeypatch.setattr(store_module, "write_json_atomic", lambda *a, **k: (_ for _ in ()).throw(
        StateError(str(path), "cannot write: No space left on device")))
    with pytest.raises(StateError, match="No space"):
        store.added(_attachment(1), [_attachment(0), _attachment(1)])
    monkeypatch.undo()
    assert list(_reopen(path)) == [_attachment(0).key]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=40), st.integers(1, 8))
def test_any_sequence_of_changes_reads_back_as_the_state_in_memory(
        tmp_path_factory: pytest.TempPathFactory, changes: list[tuple[bool, int]], compact_after: int) -> None:
    path = tmp_path_factory.mktemp("store") / "cni.json"
    store = AttachmentStore(path, compact_after=compact_after)
    store.load()
    current: dict = {}
    for add, n in changes:
        a = _attachment(n)
        if add:
            current[a.key] = a
            store.added(a, current.values())
        elif current.pop(a.key, None) is not None:
            store.removed(a.key, current.values())
    store.close()
    assert _reopen(path) == current


# --- one datagram for the container's three requests ---------------------------------

def test_request_all_sends_one_datagram_and_reads_every_ack() -> None:
    sock = ScriptedSocket()
    rtnl = Rtnl(sock)  # type: ignore[arg-type]
    sock.replies = [ack(1), ack(2, errno.EEXIST, "exists"), ack(3)]
    with pytest.raises(NetlinkError) as info:
        rtnl.request_all([(16, b"aaaa", 0, "up"), (20, b"bbbbbb", 0x400, "address"), (24, b"cccc", 0, "route")])
    assert info.value.errno == errno.EEXIST and "address" in str(info.value)
    (datagram,) = sock.sent
    offset, seen = 0, []
    while offset < len(datagram):
        length, msg_type, flags, seq, _ = HEADER.unpack_from(datagram, offset)
        seen.append((msg_type, seq, datagram[offset + 16:offset + length]))
        assert flags & 0x5 == 0x5  # request, ack
        offset += (length + 3) & ~3
    assert seen == [(16, 1, b"aaaa"), (20, 2, b"bbbbbb"), (24, 3, b"cccc")]
    assert sock.replies == []  # all three acks read, so the next request starts clean
    sock.replies = [ack(4)]
    rtnl.request(16, b"", what="next")


# --- the namespace helper thread -----------------------------------------------------

class _FakeNs:
    """nsutil.setns and Rtnl stand-ins: which namespace the calling thread is 'in', per thread."""

    def __init__(self, home_fd: int, fail_home_after: int | None = None) -> None:
        self.home_fd = home_fd
        self.where: dict[int, int] = {}
        self.homecomings = 0
        self.fail_home_after = fail_home_after

    def setns(self, fd: int, nstype: int) -> None:
        if fd == self.home_fd:
            self.homecomings += 1
            if self.fail_home_after is not None and self.homecomings > self.fail_home_after:
                raise KernelError("setns: Cannot allocate memory")
        elif fd < 0:
            raise KernelError("setns: Bad file descriptor")
        self.where[threading.get_ident()] = fd

    def rtnl(self) -> tuple[threading.Thread, int]:
        return (threading.current_thread(), self.where.get(threading.get_ident(), -1))


def _helper(monkeypatch: pytest.MonkeyPatch, fake_factory) -> tuple[nsopen.NetnsSockets, _FakeNs]:
    helper = nsopen.NetnsSockets()
    fake = fake_factory(helper._home)
    monkeypatch.setattr(nsopen.nsutil, "setns", fake.setns)
    monkeypatch.setattr(nsopen, "Rtnl", fake.rtnl)
    return helper, fake


def test_the_helper_opens_inside_and_comes_home_without_moving_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    helper, fake = _helper(monkeypatch, lambda home: _FakeNs(home))
    try:
        first = helper.open(1000)
        second = helper.open(1001)
        assert first[1] == 1000 and second[1] == 1001  # made inside each
        assert first[0] is second[0] is not threading.current_thread()  # by one thread, not the caller's
        assert fake.where[first[0].ident] == fake.home_fd  # which went back home
        with pytest.raises(KernelError, match="Bad file"):
            helper.open(-5)
        assert helper.open(1002)[1] == 1002
    finally:
        helper.close()
    with pytest.raises(KernelError, match="closed"):
        helper.open(1000)


def test_a_helper_that_cannot_come_home_ends_and_the_next_call_gets_a_new_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    helper, fake = _helper(monkeypatch, lambda home: _FakeNs(home, fail_home_after=1))
    try:
        first = helper.open(1000)  # made (right), but the way back fails: that thread ends
        assert first[1] == 1000
        fake.fail_home_after = None
        second = helper.open(1001)
        assert second[1] == 1001 and second[0] is not first[0]
    finally:
        helper.close()


def test_a_helper_that_cannot_even_start_home_refuses_without_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    helper, fake = _helper(monkeypatch, lambda home: _FakeNs(home, fail_home_after=0))
    try:
        with pytest.raises(KernelError, match="memory"):
            helper.open(1000)
        fake.fail_home_after = None
        assert helper.open(1000)[1] == 1000
    finally:
        helper.close()


# --- MACs chosen by the daemon ---------------------------------------------------------

def test_random_macs_are_unicast_and_locally_administered() -> None:
    macs = {_random_mac() for _ in range(200)}
    assert len(macs) == 200
    for mac in macs:
        first = int(mac[:2], 16)
        assert len(mac) == 17 and first & 0x01 == 0 and first & 0x02 == 2
    assert struct.calcsize("=6B") == 6
