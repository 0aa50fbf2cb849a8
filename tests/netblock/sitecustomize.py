"""Blocks outbound network access in every Python process the test suite starts.

The suite puts this folder on PYTHONPATH, so notebook kernels and nbgrader's
subprocesses load it at start-up too. Loopback (kernels talk to Jupyter over it)
and Unix sockets stay open. Every blocked attempt is appended to the file named by
$BERTLAB_NETLOG, so a library that swallows the error still fails the test that
triggered it.
"""
import ipaddress
import os
import socket

_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_getaddrinfo = socket.getaddrinfo
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class NetworkBlockedError(ConnectionRefusedError):
    """Raised instead of opening a connection off this machine."""


def _is_local(host) -> bool:
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in _LOCAL_NAMES:
        return True
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return addr.is_loopback or addr.is_unspecified


def _refuse(what: str):
    log = os.environ.get("BERTLAB_NETLOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {what}\n")
    raise NetworkBlockedError(f"network access is blocked in the bertlab tests: {what}")


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
        _refuse(f"connect to {address[0]}:{address[1]}")


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if not _is_local(host):
        _refuse(f"name lookup of {host}")
    return _getaddrinfo(host, *args, **kwargs)


def install():
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo


if os.environ.get("BERTLAB_BLOCK_NETWORK") == "1":
    install()
