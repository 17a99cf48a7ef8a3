"""Issue 24 point 6: ``--ray ADDRESS`` where no cluster answers fails at once with a typed error (the address is
checked, then a TCP connection tried with a short timeout) instead of ``ray.init`` retrying for minutes behind its
C++ client's warnings (832 s for 256.256.256.256:6379; still retrying after 240 s for localhost:1)."""
from __future__ import annotations

import socket

import pytest

from onnx_cnnviz.dataset.pipeline import check_reachable, connect, host_and_port
from onnx_cnnviz.errors import InputError
from tests.tiny_models import gap_classifier, save, write_png

from ..cli import invoke


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("address, expected", [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)), ("localhost:6379", ("localhost", 6379)),
    ("ray://head:10001", ("head", 10001)), ("ray://head", ("head", 10001)), ("[::1]:6379", ("::1", 6379)),
    ("auto", None), ("local", None), ("http://head:8265", None),
])
def test_addresses_are_parsed(address, expected):
    assert host_and_port(address) == expected


@pytest.mark.parametrize("address, message", [
    ("256.256.256.256:6379", "no IPv4 address"), ("localhost:99999", "port in 1..65535"),
    ("localhost:0", "port in 1..65535"),
])
def test_impossible_addresses_are_refused(address, message):
    with pytest.raises(InputError, match=message):
        check_reachable(address)


def test_an_address_where_nothing_listens_is_refused_before_ray_starts():
    ray = pytest.importorskip("ray")
    address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(InputError, match="nothing answers at 127.0.0.1 port .*connection refused"):
        connect(address)
    assert not ray.is_initialized()


def test_a_listening_address_passes_the_check():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")


@pytest.mark.parametrize("address", ["256.256.256.256:6379", "localhost:PORT"])
def test_cli_ray_unreachable_is_one_typed_line(address, tmp_path):
    pytest.importorskip("ray")
    model = save(gap_classifier(), tmp_path / "m.onnx")
    pic = write_png(tmp_path / "a.png")
    address = address.replace("PORT", str(closed_port()))
    result = invoke("evaluate", model, pic, "--preprocess", "imagenet", "--out", tmp_path / "o", "--ray", address)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cnnviz: error: "), result.stderr
    assert "Ray" in lines[0] and not (tmp_path / "o" / "results.jsonl").exists()
