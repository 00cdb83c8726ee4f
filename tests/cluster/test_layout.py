"""The key layouts, without Redis: the single-node names are unchanged, the cluster names are
the same names with the prefix as a hash tag, all in one slot, and no script makes a name."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from bridge.config import Config, ConfigError
from bridge.redis import leases, registry
from bridge.redis.cluster import _Cluster, publishing
from bridge.redis.keys import Keys
from bridge.redis.publisher import ANNOUNCE_LUA, TRANSITION_LUA

#: Every member of Keys that makes a name, and how this test calls it.
NAMES = {
    "commands": lambda k, o, t: k.commands,
    "commands_dead": lambda k, o, t: k.commands_dead,
    "terminal_channel": lambda k, o, t: k.terminal_channel(t),
    "terminal_stream": lambda k, o, t: k.terminal_stream(t),
    "terminal_active": lambda k, o, t: k.terminal_active(t),
    "order": lambda k, o, t: k.order(o),
    "terminal_channel_pattern": lambda k, o, t: k.terminal_channel_pattern,
    "terminal_stream_prefix": lambda k, o, t: k.terminal_stream_prefix,
    "order_state": lambda k, o, t: k.order_state(o),
    "command_record": lambda k, o, t: k.command_record(o),
    "pending_cancel": lambda k, o, t: k.pending_cancel(o),
    "pending_cancels": lambda k, o, t: k.pending_cancels,
    "receipt_claim": lambda k, o, t: k.receipt_claim(o),
    "lease": lambda k, o, t: k.lease(o),
    "fence_counter": lambda k, o, t: k.fence_counter,
    "command_retrying": lambda k, o, t: k.command_retrying(o),
    "webhook_seen": lambda k, o, t: k.webhook_seen(o),
    "daemon": lambda k, o, t: k.daemon(o),
    "session": lambda k, o, t: k.session(o),
    "sessions_index": lambda k, o, t: k.sessions_index,
}
NOT_NAMES = {"prefix", "layout", "root", "cluster", "terminal_of_stream"}


def names(keys: Keys, order: str = "till7-000123", terminal: str = "0000004d") -> dict[str, str]:
    return {member: make(keys, order, terminal) for member, make in NAMES.items()}


def test_the_list_of_names_is_complete() -> None:
    """A name added to Keys must be added here, so the layout tests cover it."""
    public = {m for m in dir(Keys) if not m.startswith("_")}
    assert public - NOT_NAMES == set(NAMES)


def test_the_single_node_layout_is_unchanged() -> None:
    """The default layout: byte for byte the names tills have always used."""
    assert Keys("pos") == Keys("pos", "single")
    assert names(Keys("pos")) == {
        "commands": "pos:commands",
        "commands_dead": "pos:commands:dead",
        "terminal_channel": "pos:terminal:0000004D",
        "terminal_stream": "pos:terminal:0000004D:events",
        "terminal_active": "pos:terminal:0000004D:active",
        "order": "pos:order:till7-000123",
        "terminal_channel_pattern": "pos:terminal:*",
        "terminal_stream_prefix": "pos:terminal:",
        "order_state": "pos:state:till7-000123",
        "command_record": "pos:cmd:till7-000123",
        "pending_cancel": "pos:cancel:till7-000123",
        "pending_cancels": "pos:cancels",
        "receipt_claim": "pos:receipt:till7-000123",
        "lease": "pos:lease:till7-000123",
        "fence_counter": "pos:fence",
        "command_retrying": "pos:retrying:till7-000123",
        "webhook_seen": "pos:webhook:seen:till7-000123",
        "daemon": "pos:daemon:till7-000123",
        "session": "pos:session:till7-000123",
        "sessions_index": "pos:sessions",
    }


def test_the_cluster_layout_puts_the_prefix_in_braces() -> None:
    single, cluster = names(Keys("pos")), names(Keys("pos", "cluster"))
    assert cluster == {m: "{pos}" + name.removeprefix("pos") for m, name in single.items()}
    assert Keys("pos", "cluster").order("till7-1") == "{pos}:order:till7-1"
    assert Keys("pos", "cluster").terminal_channel("0000004d") == "{pos}:terminal:0000004D"


PREFIXES = st.text("ABCXYZabcxyz0189_.-", min_size=1, max_size=32)
# order ids and terminal ids as the bridge accepts them, and hostile ones (braces included):
# the first {...} of a name is the prefix's, so nothing after it can move the name's slot
IDS = st.text("abcXYZ019/_-", min_size=1, max_size=50) | st.text(min_size=1, max_size=60)


@given(prefix=PREFIXES, order=IDS, terminal=st.text("ABC0189-", min_size=1, max_size=32))
def test_every_cluster_name_is_in_the_prefix_slot(prefix: str, order: str, terminal: str) -> None:
    """So every script, MULTI and multi-key read of the bridge is legal and atomic in a
    cluster, whichever order and terminal it touches."""
    keys = Keys(prefix, "cluster")
    slot = key_slot(prefix.encode())
    for member, name in names(keys, order, terminal).items():
        assert name.startswith("{" + prefix + "}:"), member
        assert key_slot(name.encode()) == slot, (member, name)


@given(prefix=PREFIXES, terminal=st.text("ABC0189-", min_size=1, max_size=32))
def test_a_stream_name_gives_back_its_terminal(prefix: str, terminal: str) -> None:
    for layout in ("single", "cluster"):
        keys = Keys(prefix, layout)  # type: ignore[arg-type]  # a str, one of the two layouts
        assert keys.terminal_of_stream(keys.terminal_stream(terminal)) == terminal.upper()
        assert keys.terminal_of_stream(keys.terminal_active(terminal)) is None
        assert keys.terminal_of_stream(keys.commands) is None


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b"])
def test_a_prefix_that_cannot_be_a_hash_tag_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="hash tag"):
        Keys(prefix, "cluster")
    with pytest.raises(ValueError, match="layout"):
        Keys("pos", "sharded")  # type: ignore[arg-type]  # not a layout: the point of the test


def _scripts() -> dict[str, str]:
    found = {
        path.name: path.read_text()
        for path in resources.files("bridge.redis").iterdir()
        if path.name.endswith(".lua")
    }
    for module in (leases, registry):
        name = module.__name__.rpartition(".")[2]
        found.update(
            {f"{name}.{n}": v for n, v in vars(module).items() if n.isupper() and "redis.call" in v}
        )
    return found


def test_no_script_makes_a_key_name() -> None:
    """Every key a script touches comes in as KEYS[n] (made by Keys, hashed by the cluster
    client to route the call); the only other name, the channel, comes in as an argument."""
    scripts = _scripts()
    assert {
        "transition.lua",
        "announce.lua",
        "leases._ACQUIRE",
        "leases._OPEN",
        "leases._RENEW",
        "leases._RELEASE",
        "registry._END",
    } <= set(scripts)
    calls = 0
    for name, source in scripts.items():
        assert "..':'" not in source.replace(" ", ""), name  # no name glued together
        for command, first in re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", source):
            calls += 1
            if command == "PUBLISH":
                assert first.startswith("ARGV["), (name, command, first)
            else:
                assert first.startswith("KEYS["), (name, command, first)
    assert calls >= 20


def test_scripts_publish_sharded_in_the_cluster_layout() -> None:
    single, cluster = Keys("pos"), Keys("pos", "cluster")
    for script in (TRANSITION_LUA, ANNOUNCE_LUA):
        assert publishing(script, single) is script
        sharded = publishing(script, cluster)
        assert "'PUBLISH'" not in sharded and sharded.count("redis.call('SPUBLISH',") == 1
        assert sharded.replace("'SPUBLISH'", "'PUBLISH'") == script
    with pytest.raises(ValueError, match="exactly one"):
        publishing("return 1", cluster)


def _config(**redis: object) -> Config:
    return Config.from_mapping(
        {
            "multisafepay": {
                "terminal_groups": [{"name": "shop", "api_key": "k" * 20, "terminals": ["T1"]}]
            },
            "redis": redis,
        }
    )


def test_the_config_chooses_the_layout() -> None:
    assert _config().redis.layout == "single"
    assert _config(layout="cluster", url="redis://10.0.0.5:7000").redis.layout == "cluster"
    for url in ("unix:///run/redis.sock", "redis://10.0.0.5:7000/2"):
        with pytest.raises(ConfigError, match="Cluster"):
            _config(layout="cluster", url=url)
    with pytest.raises(ConfigError, match="layout"):
        _config(layout="sharded")


@pytest.mark.anyio
@given(
    keys=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=3),
    group=st.sampled_from(["pos-bridge", "STREAMS"]),
)
async def test_a_stream_read_finds_its_slot_without_asking_a_node(
    keys: list[str], group: str
) -> None:
    """``XREAD``/``XREADGROUP`` are routed from their ``STREAMS`` keys, parsed here: redis-py
    would ask its default node (``COMMAND GETKEYS``), and after a failover that node may be
    the killed master (the intake then read nothing again). No node exists here, so asking
    one fails the test; a group named ``STREAMS`` does not fool the parsing."""
    client = _Cluster(host="127.0.0.1", port=1)  # never connected
    tagged = [f"{{pos}}:{k}" for k in keys]
    ids = [">"] * len(tagged)
    reads = [
        ("XREADGROUP", "GROUP", group, "c", "COUNT", 10, "BLOCK", 100, "STREAMS", *tagged, *ids),
        ("XREAD", "COUNT", 1, "STREAMS", *tagged, *["0"] * len(tagged)),
        (b"XREADGROUP", b"GROUP", group.encode(), b"c", b"STREAMS", *map(str.encode, tagged),
         *(b">" for _ in tagged)),
    ]  # fmt: skip
    for read in reads:
        assert await client._determine_slot(*read) == key_slot(b"pos")
