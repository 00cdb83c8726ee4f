"""Where ``bench --profile FILE`` puts each phase's recording."""

from __future__ import annotations

from bridge.bench.profiler import phase_path


def test_the_drive_is_the_file_itself_and_other_phases_sit_beside_it() -> None:
    assert phase_path("/tmp/out.svg", "drive") == "/tmp/out.svg"
    assert phase_path("/tmp/out.svg", "open") == "/tmp/out-open.svg"
    assert phase_path("prof.txt", "hold") == "prof-hold.txt"
    assert phase_path("a/b/prof.json", "close") == "a/b/prof-close.json"
    # the peer's recordings: its own name first, then its phases beside it
    peer = phase_path("/tmp/out.svg", "peer")
    assert peer == "/tmp/out-peer.svg"
    assert phase_path(peer, "open") == "/tmp/out-peer-open.svg"
