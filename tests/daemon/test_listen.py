"""The daemon's listeners (``[http]``, ``[webhook]``): a busy port is one clear error at start."""

from __future__ import annotations

import pytest

from bridge.daemon import asgi
from bridge.errors import UserError
from bridge.sockets import bind


def test_a_busy_port_names_the_section_and_the_address() -> None:
    with bind("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as info:
            asgi.listen("webhook", f"127.0.0.1:{port}", "127.0.0.1", port)
    assert str(info.value).startswith(f"webhook: cannot listen on 127.0.0.1:{port}: ")


def test_a_free_port_is_bound_and_listening() -> None:
    with asgi.listen("http", "127.0.0.1:0", "127.0.0.1", 0) as sock:
        assert sock.getsockname()[1] > 0
