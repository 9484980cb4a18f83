"""/proxy.pac: evaluated by a real JavaScript engine (node), as a browser would."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from fwdproxy import pac

CASES = [
    ("http://pypi.org/simple/", "pypi.org", "PROXY 127.0.0.1:8080"),
    ("https://files.pythonhosted.org/x.whl", "files.pythonhosted.org", "PROXY 127.0.0.1:8080"),
    ("wss://ws.example/chat", "ws.example", "PROXY 127.0.0.1:8080"),
    ("http://fwdproxy.local/", "fwdproxy.local", "PROXY 127.0.0.1:8080"),
    ("http://localhost:5000/", "localhost", "DIRECT"),
    ("http://LocalHost./", "LocalHost.", "DIRECT"),
    ("http://app.localhost/", "app.localhost", "DIRECT"),
    ("http://127.0.0.1:9000/", "127.0.0.1", "DIRECT"),
    ("http://127.1.2.3/", "127.1.2.3", "DIRECT"),
    ("http://[::1]:8000/", "::1", "DIRECT"),
    ("http://notlocalhost.example/", "notlocalhost.example", "PROXY 127.0.0.1:8080"),
    ("http://127.0.0.1.nip.example/", "127.0.0.1.nip.example", "PROXY 127.0.0.1:8080"),
    ("ftp://ftp.example/file", "ftp.example", "DIRECT"),
    ("http://git.corp.example/", "git.corp.example", "DIRECT"),
    ("http://corp.example/", "corp.example", "DIRECT"),
    ("http://xcorp.example/", "xcorp.example", "PROXY 127.0.0.1:8080"),
]


def evaluate(text: str, cases: list[tuple[str, str, str]]) -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to evaluate the PAC file (it is on every machine of this project's kind)")
    calls = json.dumps([[u, h] for u, h, _ in cases])
    script = (
        text
        + f"\nconsole.log(JSON.stringify({calls}.map(function (c) {{ return FindProxyForURL(c[0], c[1]); }})));"
    )
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30, check=True)
    return list(json.loads(out.stdout))


def test_pac_sends_web_traffic_through_the_proxy_and_loopback_direct() -> None:
    text = pac.render("127.0.0.1", 8080, (*pac.DIRECT_HOSTS, ".corp.example"))
    assert evaluate(text, CASES) == [want for _, _, want in CASES]


def test_pac_brackets_an_ipv6_proxy_address() -> None:
    assert evaluate(pac.render("::1", 3128), [("http://a.example/", "a.example", "")]) == ["PROXY [::1]:3128"]
