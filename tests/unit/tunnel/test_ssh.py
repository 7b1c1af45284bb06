"""A channel the shadow pod's sshd would not open, as the client sees it."""

from __future__ import annotations

import errno

import pytest

from ktpy.net.socks5 import ReplyCode
from ktpy.net.socks_server import reply_code_for
from ktpy.tunnel.ssh import open_failure


@pytest.mark.parametrize(
    ("reason", "text", "error", "code"),
    [
        # OpenSSH's descriptions: strerror() of the failed connect, or getaddrinfo's.
        (2, "Connection refused", errno.ECONNREFUSED, ReplyCode.CONNECTION_REFUSED),
        (2, "No route to host", errno.EHOSTUNREACH, ReplyCode.HOST_UNREACHABLE),
        (2, "Network is unreachable", errno.ENETUNREACH, ReplyCode.NETWORK_UNREACHABLE),
        (2, "Connection timed out", errno.EHOSTUNREACH, ReplyCode.HOST_UNREACHABLE),
        (2, "getaddrinfo: Name or service not known", errno.EHOSTUNREACH,
         ReplyCode.HOST_UNREACHABLE),
        (1, "administratively prohibited", errno.EACCES, ReplyCode.NOT_ALLOWED),
        (4, "resource shortage", errno.EIO, ReplyCode.GENERAL_FAILURE),
    ],
)  # fmt: skip
def test_each_refusal_becomes_the_matching_error_and_socks_reply(
    reason: int, text: str, error: int, code: ReplyCode
) -> None:
    exc = open_failure(reason, text, "10.96.0.1:80")
    assert exc.errno == error
    assert "10.96.0.1:80" in str(exc)
    assert reply_code_for(exc) is code
