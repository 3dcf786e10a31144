"""`kkt.port` read as a device path or tcp://HOST[:PORT], and every bad value explained."""

from __future__ import annotations

import pytest

from kktd.kkt.address import (
    AddressError,
    SerialAddress,
    TcpAddress,
    describe,
    parse_address,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/dev/kkt0", SerialAddress("/dev/kkt0")),
        ("/dev/ttyS0", SerialAddress("/dev/ttyS0")),
        ("/dev/serial/by-id/usb-KKT-if00", SerialAddress("/dev/serial/by-id/usb-KKT-if00")),
        ("tcp://192.168.137.111", TcpAddress("192.168.137.111", 7778)),
        ("tcp://192.168.137.111:7778", TcpAddress("192.168.137.111", 7778)),
        ("TCP://10.0.0.5:5555", TcpAddress("10.0.0.5", 5555)),
        ("tcp://[::1]:7778", TcpAddress("::1", 7778)),
        ("tcp://[fe80::1]", TcpAddress("fe80::1", 7778)),
        ("tcp://kkt-1.shop.lan:7778", TcpAddress("kkt-1.shop.lan", 7778)),
        ("tcp://kkt", TcpAddress("kkt", 7778)),
    ],
)  # fmt: skip
def test_a_device_path_or_a_tcp_address_is_understood(value: str, expected: object) -> None:
    assert parse_address(value) == expected


@pytest.mark.parametrize(
    ("value", "explained"),
    [
        ("tcp://", "expected a host after tcp://"),
        ("tcp://:7778", "expected a host after tcp://"),
        ("tcp://10.0.0.5:", "expected a TCP port from 1 to 65535 after the host, got ''"),
        ("tcp://10.0.0.5:0", "from 1 to 65535"),
        ("tcp://10.0.0.5:70000", "from 1 to 65535"),
        ("tcp://10.0.0.5:77x", "from 1 to 65535"),
        ("tcp://192.168.1.300", "not an IPv4 address: 192.168.1.300"),
        ("tcp://::1", "an IPv6 address goes in brackets, the port after them (tcp://[::1]:7778)"),
        ("tcp://[::1", "needs its closing bracket"),
        ("tcp://[::g]:7778", "not an IPv6 address in brackets: [::g]"),
        ("tcp://[::1]7778", "expected :PORT after [::1]"),
        ("tcp://kkt_1.lan", "not a host name: kkt_1.lan"),
        ("tcp://-kkt.lan", "not a host name"),
        ("tcp://10.0.0.5:7778/", "a KKT address has no path"),
        ("tcp://admin@10.0.0.5", "has no user name"),
        ("tcp://10.0.0.5?x=1", "has no query"),
        ("udp://10.0.0.5:7778", '"udp://" is not a way to reach a KKT'),
        ("http://10.0.0.5", '"http://" is not a way to reach a KKT'),
        ("COM1", "on Linux COM1 is /dev/ttyS0"),
        ("com2:", "on Linux COM2 is /dev/ttyS1"),
        ("192.168.137.111:7778", "needs the tcp:// prefix: tcp://192.168.137.111:7778"),
        ("ttyACM0", "expected an absolute device path or tcp://HOST[:PORT]"),
    ],
)
def test_a_bad_value_says_what_was_meant(value: str, explained: str) -> None:
    with pytest.raises(AddressError) as failure:
        parse_address(value)
    assert explained in str(failure.value)


def test_the_address_prints_back_as_it_is_written_with_the_default_port_filled_in() -> None:
    assert str(parse_address("tcp://[::1]")) == "tcp://[::1]:7778"
    assert str(parse_address("tcp://kkt.lan")) == "tcp://kkt.lan:7778"
    assert str(parse_address("/dev/kkt0")) == "/dev/kkt0"


def test_the_description_names_the_transport_for_check_config() -> None:
    assert describe(parse_address("/dev/ttyS0"), 9600) == "serial port /dev/ttyS0 at 9600 baud"
    assert describe(parse_address("tcp://10.0.0.5"), 115200) == (
        "TCP to 10.0.0.5 port 7778 (baud rate does not apply)"
    )
