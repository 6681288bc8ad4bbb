"""Make any connection beyond 127.0.0.1 fail loudly: tests must never touch the network.

install() patches the socket module of the current process; sitecustomize.py beside this
file calls it in every Python process the tests start (this folder is put on PYTHONPATH).
"""

import socket

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class NetworkBlocked(RuntimeError):
    """Not an OSError on purpose: code that handles network errors must not swallow it."""


def _host(address) -> str:
    return address[0] if isinstance(address, tuple) else str(address)


def _guard_connect(connect):
    def guarded(sock, address):
        if sock.family != getattr(socket, "AF_UNIX", None) and _host(address) not in LOCAL_HOSTS:
            raise NetworkBlocked(f"a test tried to open a network connection to {address}")
        return connect(sock, address)

    return guarded


def _guard_getaddrinfo(getaddrinfo):
    def guarded(host, *args, **kwargs):
        if host is not None and host not in LOCAL_HOSTS:
            raise NetworkBlocked(f"a test tried to resolve the host name {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    return guarded


def install() -> None:
    if getattr(socket, "_netguard_installed", False):
        return
    socket.socket.connect = _guard_connect(socket.socket.connect)
    socket.socket.connect_ex = _guard_connect(socket.socket.connect_ex)
    socket.getaddrinfo = _guard_getaddrinfo(socket.getaddrinfo)
    socket._netguard_installed = True
