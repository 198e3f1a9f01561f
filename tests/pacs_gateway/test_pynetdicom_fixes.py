"""The fixes of pacs_gateway/pynetdicom_fixes.py, each shown needed in the pinned pynetdicom.

pynetdicom's reactor can take a C-STORE response meant for ``send_c_store``. The race tests open
its window wide, as a busy machine's scheduler does: the reactor stays between its open
checkpoint and its look at the queue for 0.2 s, and the sender, having sent, waits 0.5 s before
it looks for the response. With the fix every response reaches its sender; without it,
pynetdicom loses them. pynetdicom also leaves open a socket whose peer reset the connection, and
aborts every association of a process whose sockets are numbered over 1023."""

from __future__ import annotations

import contextlib
import inspect
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage
from pynetdicom.transport import AssociationSocket

from pacs_gateway import pynetdicom_fixes
from pacs_gateway.scp import ScpSettings, start_scp
from pacs_gateway.spool import Spool

WINDOW_S = 0.2
SENDER_DELAY_S = 0.5


class _SlowCheckpoint(threading.Event):
    """A checkpoint that, when it lets the reactor through, holds it there WINDOW_S before
    the reactor goes on to the queue: a sender pausing it meanwhile sees ``_is_paused`` set."""

    def __init__(self) -> None:
        super().__init__()
        self.set()

    def wait(self, timeout: float | None = None) -> bool:
        was_open = self.is_set()
        opened = super().wait(timeout)
        if was_open:
            time.sleep(WINDOW_S)
        return opened


@pytest.fixture
def store_scp() -> Iterator[int]:
    ae = AE(ae_title="STORESCP")
    ae.add_supported_context(CTImageStorage)
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)],
    )
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


def _store_through_the_window(port: int, count: int) -> list[int | None]:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
    ae.dimse_timeout = 3
    assoc: Any = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    assert assoc.is_established
    assoc._reactor_checkpoint = _SlowCheckpoint()
    get_msg = assoc.dimse.get_msg

    def sender_descheduled_after_sending(block: bool = False) -> Any:
        if block:  # send_c_store's wait for its response; the reactor polls without blocking
            time.sleep(SENDER_DELAY_S)
        return get_msg(block)

    assoc.dimse.get_msg = sender_descheduled_after_sending
    time.sleep(WINDOW_S / 2)  # the reactor is now inside the window
    statuses: list[int | None] = []
    try:
        for _ in range(count):
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else None)
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def test_a_response_the_reactor_takes_while_send_c_store_waits_reaches_the_sender(
    store_scp: int,
) -> None:
    pynetdicom_fixes.install()
    assert _store_through_the_window(store_scp, 3) == [0, 0, 0]


def test_without_the_fix_pynetdicom_loses_that_response(store_scp: int) -> None:
    """The race the fix exists for; if this starts failing, pynetdicom has fixed it and the fix
    can go."""
    pynetdicom_fixes.uninstall()
    try:
        statuses = _store_through_the_window(store_scp, 3)
    finally:
        pynetdicom_fixes.install()
    assert None in statuses, statuses


@pytest.mark.parametrize("module", ["pacs_gateway.scu", "pacs_gateway.scp"])
def test_the_gateways_association_modules_install_the_fixes(module: str) -> None:
    """In a fresh interpreter: importing the module puts the fixes in place."""
    code = (
        "from pacs_gateway import pynetdicom_fixes as f; before = f.installed(); "
        f"import {module}; print(before, f.installed())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(
    "theirs,ours",
    [
        (pynetdicom_fixes._SERVE_REQUEST, pynetdicom_fixes._serve_request),
        (pynetdicom_fixes._SHUTDOWN_SOCKET, pynetdicom_fixes._shutdown_socket),
    ],
    ids=["_serve_request", "_shutdown_socket"],
)
def test_each_fix_keeps_the_signature_of_the_method_it_replaces(theirs: Any, ours: Any) -> None:
    assert list(inspect.signature(theirs).parameters) == list(inspect.signature(ours).parameters)


def _socket_reset_by_its_peer() -> socket.socket:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # an RST: the client's socket is no longer connected
    with contextlib.suppress(OSError):
        client.recv(1)
    return client


def test_a_socket_whose_peer_reset_the_connection_is_closed() -> None:
    pynetdicom_fixes.install()
    holder = AssociationSocket.__new__(AssociationSocket)
    holder.socket = _socket_reset_by_its_peer()
    holder._shutdown_socket()
    assert holder.socket.fileno() == -1


def test_without_the_fix_pynetdicom_leaves_that_socket_open() -> None:
    pynetdicom_fixes.uninstall()
    holder = AssociationSocket.__new__(AssociationSocket)
    holder.socket = sock = _socket_reset_by_its_peer()
    try:
        holder._shutdown_socket()
        assert sock.fileno() != -1
    finally:
        sock.close()
        pynetdicom_fixes.install()


@pytest.fixture
def over_1023_descriptors() -> Iterator[None]:
    """Enough open files that every new socket's descriptor is numbered over 1023 (the soft
    limit raised for the test if it is lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _store_to_the_gateway(tmp_path: Path) -> int | None:
    server = start_scp(ScpSettings(ae_title="GW", port=0), Spool(tmp_path / "spool"))
    try:
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
        assoc: Any = ae.associate("127.0.0.1", server.server_address[1], ae_title="GW")
        if not assoc.is_established:
            return None
        status = assoc.send_c_store(ds)
        assoc.release()
        return int(status.Status) if "Status" in status else None
    finally:
        server.shutdown()


def test_a_process_with_over_1023_files_open_still_stores_through_the_gateway(
    tmp_path: Path, over_1023_descriptors: None
) -> None:
    pynetdicom_fixes.install()
    assert _store_to_the_gateway(tmp_path) == 0


def test_without_the_fix_pynetdicom_aborts_every_association_there(
    tmp_path: Path, over_1023_descriptors: None
) -> None:
    pynetdicom_fixes.uninstall()
    try:
        assert _store_to_the_gateway(tmp_path) is None
    finally:
        pynetdicom_fixes.install()


def test_readable_tells_data_a_silent_socket_and_a_closed_one() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert pynetdicom_fixes.readable(a) is False
        b.sendall(b"x")
        assert pynetdicom_fixes.readable(a) is True
    assert pynetdicom_fixes.readable(a) is None  # closed
