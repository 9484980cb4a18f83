"""The DNS cache: answers for a TTL, failures for the negative TTL, one resolver call per name in flight."""

from __future__ import annotations

import asyncio
import socket

import pytest

from fwdproxy.dnscache import Addresses, DnsCache

A = ((socket.AF_INET, "192.0.2.1"),)
B = ((socket.AF_INET, "192.0.2.2"),)


class FakeResolver:
    """Answers from a script, counts calls, and can hold every answer until ``release`` is set."""

    def __init__(self, *answers: Addresses | OSError) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, host: str) -> Addresses:
        self.calls.append(host)
        await self.release.wait()
        answer = self.answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_answer_is_reused_within_ttl_and_refreshed_after() -> None:
    async def scenario() -> None:
        clock, resolver = Clock(), FakeResolver(A, B)
        dns = DnsCache(resolver, clock, ttl=60)
        assert await dns.resolve("example.test") == A
        clock.now += 59.9
        assert await dns.resolve("EXAMPLE.test.") == A  # names are case-insensitive, the root dot optional
        assert resolver.calls == ["example.test"]
        clock.now += 0.2
        assert await dns.resolve("example.test") == B
        assert resolver.calls == ["example.test", "example.test"]
        assert (dns.stats.lookups, dns.stats.hits) == (2, 1)

    run(scenario())


def test_failure_is_cached_for_the_negative_ttl_only() -> None:
    async def scenario() -> None:
        clock = Clock()
        resolver = FakeResolver(socket.gaierror(socket.EAI_NONAME, "Name or service not known"), A)
        dns = DnsCache(resolver, clock, ttl=60, negative_ttl=5)
        for _ in range(3):
            with pytest.raises(socket.gaierror, match="Name or service not known"):
                await dns.resolve("down.test")
            clock.now += 1
        assert len(resolver.calls) == 1  # the failure was reused for the 2 s that followed
        clock.now += 3  # 6 s after the failure: past the negative TTL
        assert await dns.resolve("down.test") == A
        assert len(resolver.calls) == 2

    run(scenario())


def test_concurrent_lookups_of_one_name_share_one_resolver_call() -> None:
    async def scenario() -> None:
        resolver = FakeResolver(A, B)
        resolver.release.clear()
        dns = DnsCache(resolver, Clock())
        burst = [asyncio.create_task(dns.resolve("cold.test")) for _ in range(50)]
        other = asyncio.create_task(dns.resolve("other.test"))
        await asyncio.sleep(0)
        resolver.release.set()
        assert await asyncio.gather(*burst) == [A] * 50
        assert await other == B
        assert resolver.calls == ["cold.test", "other.test"]
        assert dns.stats.lookups == 2

    run(scenario())


def test_concurrent_failure_reaches_every_waiter() -> None:
    async def scenario() -> None:
        resolver = FakeResolver(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"))
        resolver.release.clear()
        dns = DnsCache(resolver, Clock())
        burst = [asyncio.create_task(dns.resolve("flaky.test")) for _ in range(10)]
        await asyncio.sleep(0)
        resolver.release.set()
        results = await asyncio.gather(*burst, return_exceptions=True)
        assert all(isinstance(r, socket.gaierror) for r in results)
        assert len(resolver.calls) == 1

    run(scenario())


def test_a_cancelled_caller_does_not_cancel_the_shared_lookup() -> None:
    async def scenario() -> None:
        resolver = FakeResolver(A)
        resolver.release.clear()
        dns = DnsCache(resolver, Clock())
        first = asyncio.create_task(dns.resolve("shared.test"))
        second = asyncio.create_task(dns.resolve("shared.test"))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        resolver.release.set()
        assert await second == A
        assert first.cancelled()
        assert len(resolver.calls) == 1

    run(scenario())


def test_zero_ttl_caches_nothing_but_still_shares_lookups_in_flight() -> None:
    async def scenario() -> None:
        resolver = FakeResolver(A, A, A)
        resolver.release.clear()
        dns = DnsCache(resolver, Clock(), ttl=0)
        burst = [asyncio.create_task(dns.resolve("nocache.test")) for _ in range(5)]
        await asyncio.sleep(0)
        resolver.release.set()
        await asyncio.gather(*burst)
        assert len(resolver.calls) == 1
        await dns.resolve("nocache.test")
        assert len(resolver.calls) == 2

    run(scenario())


@pytest.mark.parametrize(
    "host, expected",
    [
        pytest.param("127.0.0.1", ((socket.AF_INET, "127.0.0.1"),), id="IPv4 literal"),
        pytest.param("::1", ((socket.AF_INET6, "::1"),), id="IPv6 literal"),
        pytest.param("[::1]", ((socket.AF_INET6, "::1"),), id="bracketed IPv6 literal"),
    ],
)
def test_ip_literals_never_reach_the_resolver(host: str, expected: Addresses) -> None:
    resolver = FakeResolver()
    assert run(DnsCache(resolver, Clock()).resolve(host)) == expected
    assert resolver.calls == []


def test_table_is_bounded_oldest_first() -> None:
    async def scenario() -> None:
        resolver = FakeResolver(A, A, A, A)
        dns = DnsCache(resolver, Clock(), max_names=2)
        for name in ("a.test", "b.test", "c.test"):
            await dns.resolve(name)
        await dns.resolve("c.test")
        await dns.resolve("b.test")
        assert resolver.calls == ["a.test", "b.test", "c.test"]
        await dns.resolve("a.test")  # was dropped to make room for c.test
        assert resolver.calls == ["a.test", "b.test", "c.test", "a.test"]

    run(scenario())
