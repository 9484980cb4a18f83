"""The per-worker counter files of --workers N: atomic writes, reads that skip damage, finished runs removed."""

from __future__ import annotations

from pathlib import Path

from fwdproxy import workerstats
from fwdproxy.metrics import Outcome, Served, Stats, merge, sum_tiers
from fwdproxy.store import TierStats

NOW = 1_700_000_000.0


def state(requests: int) -> dict:
    stats = Stats(started=NOW)
    for _ in range(requests):
        stats.record(Served(Outcome.HIT, "a", 1), NOW)
    return stats.state()


def test_files_round_trip_and_add_up(tmp_path: Path) -> None:
    run = workerstats.run_dir(str(tmp_path), "123")
    assert run == tmp_path / "stats" / "run-123"
    workerstats.write(workerstats.path_for(run, 1), 1, 501, NOW, state(3))
    workerstats.write(workerstats.path_for(run, 2), 2, 502, NOW + 1, state(4))
    tier = TierStats(entries=2, bytes=20, limit=100, evictions=0)
    workerstats.write(workerstats.path_for(run, 2), 2, 503, NOW + 2, state(5), tier)  # replaced, not appended
    found = workerstats.read_all(run)
    assert sorted(found) == [1, 2] and found[2].pid == 503 and found[2].updated == NOW + 2
    assert found[2].memory == tier and found[1].memory is None
    assert sum_tiers([tier, tier]) == TierStats(entries=4, bytes=40, limit=200, evictions=0)
    total = merge([f.state for f in found.values()], started=NOW)
    assert total.snapshot(NOW)["requests"]["total"] == 8
    names = {p.name for p in run.iterdir()}
    assert names == {"worker-1.json", "worker-2.json"}, "no temporary files left behind"


def test_a_damaged_or_missing_file_is_left_out(tmp_path: Path) -> None:
    run = workerstats.run_dir(str(tmp_path), "1")
    assert workerstats.read_all(run) == {}
    workerstats.write(workerstats.path_for(run, 1), 1, 501, NOW, state(1))
    workerstats.path_for(run, 2).write_text('{"worker": 2, "pid"')
    workerstats.path_for(run, 3).write_text('{"worker": 3}')
    assert sorted(workerstats.read_all(run)) == [1]


def test_finished_runs_are_removed_live_ones_kept(tmp_path: Path) -> None:
    for run in ("10", "20", "odd"):
        d = workerstats.run_dir(str(tmp_path), run)
        workerstats.write(workerstats.path_for(d, 1), 1, 1, NOW, state(1))
    workerstats.remove_finished(str(tmp_path), alive=lambda pid: pid == 20)
    assert sorted(p.name for p in (tmp_path / "stats").iterdir()) == ["run-20", "run-odd"]
