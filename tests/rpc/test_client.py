"""The RPC client (:mod:`fluidml_tvm.rpc.client`): every network failure is one line in bounded
time (tracker or server not listening, no server with the key, every board busy, a session that
outlives its timeout), against a REAL tracker and server on 127.0.0.1 (``conftest.py``)."""

from __future__ import annotations

import time

import pytest
from rpc_helpers import BOUND, HOST, KEY, free_port_range, wait_free

from fluidml_tvm import cli, rpc
from fluidml_tvm.errors import FluidMLError


def test_parse_address():
    assert rpc.parse_address("127.0.0.1:9190") == ("127.0.0.1", 9190)
    assert rpc.parse_address(" [::1]:9090 ") == ("::1", 9090)
    for bad in ("localhost", "host:", ":9090", "host:0", "host:65536", "host:port"):
        with pytest.raises(FluidMLError, match="--rpc-server wants HOST:PORT") as info:
            rpc.parse_address(bad, "--rpc-server")
        assert "\n" not in str(info.value)


def _fails_fast(match: str, **connect_kwargs) -> str:
    t0 = time.monotonic()
    with pytest.raises(FluidMLError, match=match) as info:
        rpc.connect(**connect_kwargs)
    assert time.monotonic() - t0 < BOUND
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_tracker_unreachable():
    port = free_port_range()  # nothing listens there
    _fails_fast("cannot reach the RPC tracker", tracker=f"{HOST}:{port}", key=KEY)


def test_cli_tracker_unreachable_exits_2(bert, capsys):
    port = free_port_range()
    t0 = time.monotonic()
    assert cli.main(["run", bert["lib"], "--rpc-tracker", f"{HOST}:{port}", "--rpc-key", KEY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fluidml-tvm: error: cannot reach the RPC tracker") and "\n" not in err
    assert time.monotonic() - t0 < BOUND


def test_server_unreachable():
    port = free_port_range()
    _fails_fast("cannot reach the RPC server", server=f"{HOST}:{port}")


def test_bad_address_and_missing_key():
    _fails_fast("HOST:PORT", server="localhost")
    _fails_fast("--rpc-key", tracker=f"{HOST}:9190")
    _fails_fast("either", tracker=f"{HOST}:9190", server=f"{HOST}:9090", key=KEY)


def test_no_server_with_that_key(tracker, board):
    msg = _fails_fast("no RPC server with key 'no-such-board'", tracker=tracker,
                      key="no-such-board")
    assert KEY in msg  # the keys the tracker does know


def test_no_free_device_within_the_wait(tracker, board):
    wait_free(tracker)
    held = rpc.connect(tracker=tracker, key=KEY, session_timeout=30)  # the only board, now busy
    try:
        _fails_fast("no free device for key 'fluidml-test' within 1.5 s", tracker=tracker,
                    key=KEY, wait=1.5)
    finally:
        held.close()
    wait_free(tracker)


def test_session_timeout(tracker, board, bert):
    wait_free(tracker)
    session = rpc.connect(tracker=tracker, key=KEY, session_timeout=2)
    connected = time.monotonic()
    with pytest.raises(FluidMLError, match="timed out after 2 s") as info:
        model = rpc.load_remote(bert["lib"], session)  # normally well within the 2 s
        time.sleep(max(0.0, connected + 2.5 - time.monotonic()))  # the server ends it at 2 s
        model.run(bert["feeds"])
    assert time.monotonic() - connected < 2.5 + BOUND
    assert "\n" not in str(info.value)
    session.close()
    wait_free(tracker)
