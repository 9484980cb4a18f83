"""Egress through upstream proxies, end to end: distributions, failover, health, absolute form, tunnels.

One fwdproxy serves most tests: each upstream group is reached through its own host name (``rr.test``,
``wrr.test`` ...), which the test upstream proxies resolve to 127.0.0.1, so the counts of one test are
those of its host name.
"""

from __future__ import annotations

import re
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import pytest
import trustme

from tests.support import REPO, Origin, Proxy, Reply, client, fwdproxy_argv, mitmdump_argv, run_cli
from tests.support_upstream import UpstreamProxy, dead_port

BASIC_USER_PW = "Basic dXNlcjpwdw=="


@dataclass
class Fleet:
    proxy: Proxy
    origin: Origin
    tls_origin: Origin
    up: dict[str, UpstreamProxy]
    dead: dict[str, int]
    workdir: Path


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, confdir: Path, origin_ca: trustme.CA, origin_ca_file: Path
) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("egress")
    origin = Origin()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    origin_ca.issue_cert("localhost", "127.0.0.1", "secure.test").configure_cert(ctx)
    tls_origin = Origin(tls=ctx)
    up = {name: UpstreamProxy(name) for name in "ABC"}
    up["S"] = UpstreamProxy("S", delay=0.2)
    up["P"] = UpstreamProxy("P", credentials=("user", "pw"))
    dead = {name: dead_port() for name in ("D", "G", "H")}

    def url(name: str) -> str:
        return f"http://127.0.0.1:{dead[name]}" if name in dead else up[name].url

    def group(
        name: str, members: str, algorithm: str = "round-robin", extra: str = "", **weights: int
    ) -> str:
        listed = ", ".join(f'{{ url = "{url(m)}", weight = {weights.get(m, 1)} }}' for m in members)
        return f'[upstreams.{name}]\nalgorithm = "{algorithm}"\nmembers = [{listed}]\n{extra}\n'

    p_url = f"http://user:pw@127.0.0.1:{up['P'].port}"
    config = workdir / "fwdproxy.toml"
    config.write_text(
        group("rr", "ABC")
        + group("wrr", "AB", "weighted-round-robin", A=5, B=2)
        + group("ip", "ABC", "ip-hash")
        + group("lrt", "ABS", "least-response-time")
        + group("dead", "ADC")
        + group("gone", "G", extra='max_fails = 1\ncooldown = "1m"')
        + group(
            "hc",
            "AH",
            extra=f'max_fails = 2\nhealth_check = {{ interval = "0.2s", url = "{origin.url("/", host="hc.test")}" }}',
        )
        + f'[upstreams.auth]\nmembers = [{{ url = "{p_url}" }}, {{ url = "{up["B"].url}" }}]\n'
        + group("tunnel", "ABC")
        + group("cache", "A")
        + "".join(
            f'[[routes]]\nmatch = "{host}"\nupstream = "{name}"\n'
            for host, name in [
                *(
                    (f"{g}.test", g)
                    for g in ("rr", "wrr", "ip", "lrt", "dead", "gone", "hc", "auth", "cache")
                ),
                ("secure.test", "auth"),
                ("localhost", "tunnel"),
            ]
        )
    )
    argv = ["run", "--listen-port", "0", "--confdir", str(confdir), "--cache-dir", str(workdir / "cache")]
    argv += ["--upstream-ca", str(origin_ca_file), "--config", str(config)]
    argv += ["--connect-port", str(tls_origin.port), "--passthrough", "localhost"]
    proxy = Proxy(fwdproxy_argv(*argv), workdir)
    yield Fleet(proxy, origin, tls_origin, up, dead, workdir)
    proxy.stop()
    for u in up.values():
        u.close()
    origin.close()
    tls_origin.close()


def tags(fleet: Fleet, host: str, n: int, prefix: str) -> list[str]:
    """``X-Upstream`` of ``n`` sequential GETs of distinct (so uncached) URLs on one keep-alive connection."""
    with client(fleet.proxy) as c:
        responses = [c.get(fleet.origin.url(f"/?{prefix}={i}", host=host)) for i in range(n)]
    assert [r.status_code for r in responses] == [200] * n, fleet.proxy.log()[-3000:]
    return [r.headers["X-Upstream"] for r in responses]


def test_round_robin_30_requests_10_10_10(fleet: Fleet) -> None:
    seen = tags(fleet, "rr.test", 30, "rr")
    assert Counter(seen) == {"A": 10, "B": 10, "C": 10}
    assert seen[:6] == ["A", "B", "C", "A", "B", "C"]
    assert [fleet.up[m].count("rr.test") for m in "ABC"] == [10, 10, 10]


def test_weighted_5_2_over_70_is_50_20_never_more_than_3_in_a_row(fleet: Fleet) -> None:
    seen = tags(fleet, "wrr.test", 70, "wrr")
    assert Counter(seen) == {"A": 50, "B": 20}
    assert max(len(list(run)) for _, run in groupby(seen)) <= 3
    assert "".join(seen[:7]) == "ABAAABA"  # nginx's smooth interleaving, one cycle


def test_ip_hash_keeps_each_client_on_one_upstream(fleet: Fleet) -> None:
    per_client: dict[str, list[str]] = {}
    for n in range(11, 21):
        address = f"127.0.0.{n}"
        urls = [fleet.origin.url(f"/?ip={n}.{i}", host="ip.test") for i in range(3)]
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "--interface",
                address,
                "-x",
                fleet.proxy.url,
                *urls,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        per_client[address] = re.findall(r"(?im)^x-upstream: (\w+)", out.stdout)
    assert all(len(t) == 3 and len(set(t)) == 1 for t in per_client.values()), per_client
    assert len({t[0] for t in per_client.values()}) > 1, per_client
    # Stable across connections too: the same client later gets the same member.
    again = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-D", "-", "--interface", "127.0.0.11", "-x", fleet.proxy.url]
        + [fleet.origin.url("/?ip=again", host="ip.test")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert re.findall(r"(?im)^x-upstream: (\w+)", again.stdout) == per_client["127.0.0.11"][:1]


def test_least_response_time_avoids_the_slow_upstream(fleet: Fleet) -> None:
    seen = tags(fleet, "lrt.test", 50, "lrt")
    assert seen.count("S") < 10, Counter(seen)  # under 20% of 50
    assert fleet.up["S"].count("lrt.test") == seen.count("S")


def test_one_dead_of_three_all_succeed_and_it_is_ejected_after_max_fails(fleet: Fleet) -> None:
    seen = tags(fleet, "dead.test", 30, "dead")
    assert Counter(seen).keys() == {"A", "C"} and len(seen) == 30
    dead = f"http://127.0.0.1:{fleet.dead['D']}"
    ejections = re.findall(rf"upstream group 'dead': ejected {dead} .*", fleet.proxy.log())
    assert ejections == [f"upstream group 'dead': ejected {dead} for 10s after 3 failure(s) in a row"]
    assert len(re.findall(rf"upstream {dead}: .*trying another member", fleet.proxy.log())) == 3


def test_all_members_down_is_a_502_naming_the_group(fleet: Fleet) -> None:
    with client(fleet.proxy) as c:
        r = c.get(fleet.origin.url("/?gone", host="gone.test"))
    assert r.status_code == 502
    assert "no upstream proxy of group 'gone' is available" in r.text
    assert fleet.origin.hits["/?gone"] == 0


def test_active_health_checks_eject_and_restore(fleet: Fleet) -> None:
    hc_member = f"http://127.0.0.1:{fleet.dead['H']}"
    _wait_for_log(
        fleet.proxy, f"upstream group 'hc': ejected {hc_member} for 10s after 2 failure(s) in a row"
    )
    revived = UpstreamProxy("H", port=fleet.dead["H"])
    try:
        _wait_for_log(fleet.proxy, f"upstream group 'hc': restored {hc_member}")
        assert revived.count("hc.test", "GET") >= 1  # the check fetched its URL through the member
        seen = tags(fleet, "hc.test", 4, "hc")
        assert Counter(seen) == {"A": 2, "H": 2}
    finally:
        revived.close()


def test_plain_http_goes_in_absolute_form_with_credentials_for_that_member_only(fleet: Fleet) -> None:
    seen = tags(fleet, "auth.test", 4, "abs")
    assert Counter(seen) == {"P": 2, "B": 2}
    p_requests, b_requests = fleet.up["P"].requests("auth.test"), fleet.up["B"].requests("auth.test")
    lines = sorted(s.line for s in p_requests + b_requests)
    assert lines == [f"GET http://auth.test:{fleet.origin.port}/?abs={i} HTTP/1.1" for i in range(4)]
    assert [s.proxy_authorization for s in p_requests] == [BASIC_USER_PW] * 2
    assert [s.proxy_authorization for s in b_requests] == [None, None]
    at_origin = [r for r in fleet.origin.requests if r.path.startswith("/?abs")]
    assert len(at_origin) == 4 and not any("Proxy-Authorization" in r.headers for r in at_origin)


def test_intercepted_https_leaves_through_connect_with_credentials(fleet: Fleet, proxy_ca_file: Path) -> None:
    with client(fleet.proxy, verify=proxy_ca_file) as c:
        responses = [c.get(fleet.tls_origin.url(f"/?sec={i}", host="secure.test")) for i in range(2)]
    assert [r.status_code for r in responses] == [200, 200]
    target = f"CONNECT secure.test:{fleet.tls_origin.port} HTTP/1.1"
    p_seen, b_seen = fleet.up["P"].requests("secure.test"), fleet.up["B"].requests("secure.test")
    assert [(s.line, s.proxy_authorization) for s in p_seen] == [(target, BASIC_USER_PW)]
    assert [(s.line, s.proxy_authorization) for s in b_seen] == [(target, None)]
    at_origin = [r for r in fleet.tls_origin.requests if r.path.startswith("/?sec")]
    assert len(at_origin) == 2 and not any("Proxy-Authorization" in r.headers for r in at_origin)


def test_passthrough_tunnel_leaves_through_the_chosen_upstreams_connect(
    fleet: Fleet, origin_ca_file: Path
) -> None:
    # Trusting only the origin's CA proves the tunnel was not intercepted.
    with client(fleet.proxy, verify=origin_ca_file) as c:
        r = c.get(fleet.tls_origin.url("/?pt", host="localhost"))
    assert r.status_code == 200 and r.text == "hello from origin\n"
    target = f"CONNECT localhost:{fleet.tls_origin.port} HTTP/1.1"
    lines = {m: [s.line for s in fleet.up[m].requests("localhost")] for m in "ABC"}
    assert sorted(lines.values()) == [[], [], [target]], lines
    assert fleet.tls_origin.hits["/?pt"] == 1


def test_cache_hits_never_touch_an_upstream(fleet: Fleet) -> None:
    url = fleet.origin.route("/cacheable", Reply(200, {"Cache-Control": "max-age=60"}, b"stored\n"))
    url = url.replace("127.0.0.1", "cache.test")
    with client(fleet.proxy) as c:
        first, second = c.get(url), c.get(url)
    assert first.text == second.text == "stored\n"
    assert "hit" in second.headers["Cache-Status"]
    assert fleet.up["A"].count("cache.test") == 1 and fleet.origin.hits["/cacheable"] == 1


def test_cli_flags_weighted_with_credentials(start_proxy, origin: Origin) -> None:
    a, p = UpstreamProxy("A"), UpstreamProxy("P", credentials=("user", "pw"))
    try:
        proxy = start_proxy(
            "--upstream",
            f"{a.url},3",
            "--upstream",
            f"http://user:pw@127.0.0.1:{p.port}",
            "--balance",
            "weighted-round-robin",
        )
        with client(proxy) as c:
            seen = [c.get(origin.url(f"/?cli={i}", host="cli.test")).headers["X-Upstream"] for i in range(8)]
        assert Counter(seen) == {"A": 6, "P": 2}
        assert {s.proxy_authorization for s in p.seen} == {BASIC_USER_PW}
        assert {s.proxy_authorization for s in a.seen} == {None}
    finally:
        a.close()
        p.close()


def test_mitmdump_script_takes_the_fwd_options(tmp_path: Path, confdir: Path, origin: Origin) -> None:
    a, b = UpstreamProxy("A"), UpstreamProxy("B")
    config = tmp_path / "fwdproxy.toml"
    config.write_text(
        f'[upstreams.pair]\nmembers = [{{ url = "{b.url}" }}]\n[[routes]]\nmatch = "pair.test"\nupstream = "pair"\n'
    )
    argv = mitmdump_argv("-q", "--listen-host", "127.0.0.1", "--listen-port", "0")
    argv += ["-s", str(REPO / "addons" / "fwdproxy.py"), "--set", f"confdir={confdir}"]
    argv += ["--set", f"fwd_cache_dir={tmp_path / 'cache'}", "--set", f"fwd_config={config}"]
    argv += [
        "--set",
        f"fwd_upstreams={a.url}",
        "--set",
        f"fwd_upstreams={b.url}",
        "--set",
        "fwd_balance=ip-hash",
    ]
    proxy = Proxy(argv, tmp_path)
    try:
        with client(proxy) as c:
            seen = [
                c.get(origin.url(f"/?mitmdump={i}", host="any.test")).headers["X-Upstream"] for i in range(4)
            ]
            routed = c.get(origin.url("/?mitmdump=pair", host="pair.test")).headers["X-Upstream"]
        assert len(set(seen)) == 1 and routed == "B"  # ip-hash: one client, one member; the route wins
        assert a.count() + b.count() == 5
    finally:
        proxy.stop()
        a.close()
        b.close()


@pytest.mark.parametrize(
    "args, toml, message",
    [
        (
            ["--upstream", "http://127.0.0.1"],
            "",
            "--upstream 'http://127.0.0.1': 'http://127.0.0.1' has no port",
        ),
        (
            [],
            '[upstreams.e]\nmembers = [{ url = "http://127.0.0.1:1", weight = -1 }]\n',
            "upstreams.e.members[0].weight: -1 is negative",
        ),
        ([], '[[routes]]\nmatch = "*"\nupstream = "nope"\n', "routes[0].upstream: 'nope' is not a group"),
        (["--balance", "fastest"], "", "--balance: 'fastest' is not one of round-robin"),
    ],
)
def test_bad_config_stops_the_start_naming_the_key(
    tmp_path: Path, args: list[str], toml: str, message: str
) -> None:
    config = tmp_path / "f.toml"
    config.write_text(toml)
    out = run_cli("run", "--listen-port", "0", "--cache-dir", str(tmp_path), "--config", str(config), *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def _wait_for_log(proxy: Proxy, line: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in proxy.log():
        assert time.monotonic() < deadline, f"no {line!r} in:\n{proxy.log()[-3000:]}"
        time.sleep(0.05)
