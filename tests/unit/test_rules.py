"""[[cache.rule]] parsing, matching and the ci preset on real registry URLs."""

from __future__ import annotations

import pytest

from fwdproxy.cache.rules import IMMUTABLE_DEFAULT_TTL, PRESET_CI, PRESETS, Rule, match_rule, parse_rules


@pytest.mark.parametrize(
    "tables, expected",
    [
        pytest.param(
            [{"match": "https://example.org/*", "min_ttl": "10m", "max_ttl": "7d"}],
            (Rule("https://example.org/*", min_ttl=600.0, max_ttl=604800.0),),
            id="rule durations with units",
        ),
        pytest.param(
            [{"regex": r"^https://x/\d+$", "immutable": True, "max_ttl": 90}],
            (Rule(r"^https://x/\d+$", regex=True, max_ttl=90.0, immutable=True),),
            id="regex, integer seconds",
        ),
        pytest.param(
            [{"match": "a*", "name": "mine"}, {"match": "b*"}],
            (Rule("a*", name="mine"), Rule("b*")),
            id="order kept, optional name",
        ),
        pytest.param([], (), id="no rules"),
    ],
)
def test_parse_rules(tables: list[dict[str, object]], expected: tuple[Rule, ...]) -> None:
    assert parse_rules(tables) == expected


@pytest.mark.parametrize(
    "tables, message",
    [
        pytest.param(
            [{"match": "a"}, {"match": "b"}, {"match": "c", "max_ttl": "x"}],
            r"cache\.rule\[2\]\.max_ttl: 'x' is not a duration; try",
            id="bad duration names index and key",
        ),
        pytest.param(
            [{"match": "a", "min_ttl": -5}], r"cache\.rule\[0\]\.min_ttl: -5 is negative", id="negative"
        ),
        pytest.param(
            [{"match": "a", "max_ttl": [1]}], r"cache\.rule\[0\]\.max_ttl: \[1\] is not a duration", id="list"
        ),
        pytest.param(
            [{"match": "a", "ttl": 5}], r"cache\.rule\[0\]\.ttl: unknown key; use one of", id="unknown key"
        ),
        pytest.param([{"min_ttl": 5}], r"cache\.rule\[0\]: give exactly one of match", id="no pattern"),
        pytest.param(
            [{"match": "a", "regex": "b"}], r"cache\.rule\[0\]: give exactly one", id="both patterns"
        ),
        pytest.param([{"match": ""}], r"cache\.rule\[0\]\.match: '' is not a pattern", id="empty pattern"),
        pytest.param(
            [{"regex": "("}], r"cache\.rule\[0\]\.regex: '\(' is not a regular expression", id="bad regex"
        ),
        pytest.param(
            [{"match": "a", "immutable": "yes"}], r"cache\.rule\[0\]\.immutable: 'yes' is not true", id="bool"
        ),
        pytest.param(
            [{"match": "a", "name": 3}], r"cache\.rule\[0\]\.name: 3 is not a string", id="name type"
        ),
        pytest.param(
            [{"match": "a", "min_ttl": "2h", "max_ttl": "1h"}],
            r"cache\.rule\[0\]\.min_ttl: 7200s is more",
            id="min>max",
        ),
        pytest.param(["match"], r"cache\.rule\[0\]: 'match' is not a table", id="not a table"),
        pytest.param("match", r"cache\.rule: 'match' is not a list of tables", id="not a list"),
    ],
)
def test_parse_rules_errors(tables: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rules(tables)


@pytest.mark.parametrize(
    "rule, url, expected",
    [
        pytest.param(Rule("https://h/packages/*"), "https://h/packages/a/b/c.whl", True, id="glob * spans /"),
        pytest.param(
            Rule("https://h/packages/*"), "https://h/other/packages/x", False, id="glob is anchored"
        ),
        pytest.param(
            Rule("http://127.0.0.1:*/packages/*"), "http://127.0.0.1:8080/packages/x", True, id="port glob"
        ),
        pytest.param(Rule("https://h/*"), "HTTPS://H:443/x", True, id="URL normalised before matching"),
        pytest.param(Rule("https://h/a?b"), "https://h/aXb", True, id="glob ? is one character"),
        pytest.param(Rule("https://h/*.tgz"), "https://h/x.TGZ", False, id="glob is case-sensitive"),
        pytest.param(
            Rule(r"/pool/.*\.deb$", regex=True), "http://d/debian/pool/a.deb", True, id="regex searched"
        ),
        pytest.param(Rule(r"^/pool/", regex=True), "http://d/pool/a.deb", False, id="regex anchors honoured"),
    ],
)
def test_rule_matches(rule: Rule, url: str, expected: bool) -> None:
    assert rule.matches(url) is expected


def test_first_match_wins() -> None:
    rules = (Rule("https://h/a/*", name="first"), Rule("https://h/*", name="second"))
    assert match_rule(rules, "https://h/a/x") is rules[0]
    assert match_rule(rules, "https://h/b") is rules[1]
    assert match_rule(rules, "http://h/b") is None


def test_rule_defaults() -> None:
    assert Rule("x*").name == "x*"
    assert Rule("x*", immutable=True).lifetime == IMMUTABLE_DEFAULT_TTL == 365 * 86400
    assert Rule("x*", immutable=True, max_ttl=60).lifetime == 60
    assert PRESETS["ci"] is PRESET_CI
    assert all(r.immutable for r in PRESET_CI)


@pytest.mark.parametrize(
    "url, name",
    [
        pytest.param(
            "https://files.pythonhosted.org/packages/b6/02/8a3e7b5e3d9b0e5f0c3d2e0a7e3a6c3c9d5c9f9b8e7d6c5b4a3/"
            "requests-2.32.3-py3-none-any.whl",
            "ci-pypi",
            id="PyPI wheel",
        ),
        pytest.param(
            "https://files.pythonhosted.org/packages/source/r/requests/requests-2.32.3.tar.gz",
            "ci-pypi",
            id="PyPI sdist",
        ),
        pytest.param("https://registry.npmjs.org/lodash/-/lodash-4.17.21.tgz", "ci-npm", id="npm tarball"),
        pytest.param(
            "https://registry.npmjs.org/@babel/core/-/core-7.24.0.tgz", "ci-npm", id="npm scoped tarball"
        ),
        pytest.param(
            "https://registry.yarnpkg.com/react/-/react-18.3.1.tgz", "ci-npm", id="yarn registry tarball"
        ),
        pytest.param(
            "http://deb.debian.org/debian/pool/main/c/curl/curl_7.88.1-10+deb12u5_amd64.deb",
            "ci-debian",
            id="deb",
        ),
        pytest.param(
            "http://archive.ubuntu.com/ubuntu/pool/main/o/openssl/libssl3_3.0.2-0ubuntu1.15_amd64.deb",
            "ci-debian",
            id="Ubuntu deb",
        ),
        pytest.param(
            "http://deb.debian.org/debian/pool/main/d/debian-installer/x_1.0_amd64.udeb",
            "ci-debian",
            id="udeb",
        ),
        pytest.param(
            "http://deb.debian.org/debian/pool/main/c/curl/curl_7.88.1-10.dsc", "ci-debian", id="dsc"
        ),
        pytest.param(
            "https://deb.debian.org/debian/pool/main/c/curl/curl_7.88.1.orig.tar.gz",
            "ci-debian",
            id="orig tarball",
        ),
        pytest.param(
            "http://security.debian.org/debian-security/pool/updates/main/c/curl/curl_7.88.1-10+deb12u6.debian.tar.xz",
            "ci-debian",
            id="debian tarball",
        ),
        pytest.param("https://static.crates.io/crates/serde/serde-1.0.203.crate", "ci-crates", id="crate"),
        pytest.param(
            "https://proxy.golang.org/github.com/!burnt!sushi/toml/@v/v1.3.2.zip", "ci-go", id="Go module zip"
        ),
        pytest.param("https://proxy.golang.org/golang.org/x/text/@v/v0.14.0.mod", "ci-go", id="Go mod file"),
        pytest.param(
            "https://repo1.maven.org/maven2/org/apache/commons/commons-lang3/3.14.0/commons-lang3-3.14.0.jar",
            "ci-maven",
            id="Maven jar",
        ),
        pytest.param(
            "https://repo.maven.apache.org/maven2/junit/junit/4.13.2/junit-4.13.2.pom",
            "ci-maven",
            id="Maven pom",
        ),
        pytest.param(
            "https://repo1.maven.org/maven2/com/google/guava/guava/33.2.1-jre/guava-33.2.1-jre-sources.jar.sha1",
            "ci-maven",
            id="Maven classifier checksum",
        ),
    ],
)
def test_preset_ci_matches_artifacts(url: str, name: str) -> None:
    rule = match_rule(PRESET_CI, url)
    assert rule is not None and rule.name == name


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://pypi.org/simple/requests/", id="PyPI simple index"),
        pytest.param("https://pypi.org/pypi/requests/json", id="PyPI JSON API"),
        pytest.param("https://files.pythonhosted.org/", id="files host root"),
        pytest.param("https://registry.npmjs.org/lodash", id="npm packument"),
        pytest.param("https://registry.npmjs.org/@babel%2fcore", id="npm scoped packument"),
        pytest.param("https://registry.npmjs.org/-/v1/search?text=x.tgz", id="npm search"),
        pytest.param(
            "https://registry.npmjs.org/lodash/-/lodash-4.17.21.tgz?x=1", id="npm tarball with query"
        ),
        pytest.param("http://deb.debian.org/debian/dists/bookworm/InRelease", id="InRelease"),
        pytest.param(
            "http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.xz", id="Packages"
        ),
        pytest.param("http://deb.debian.org/debian/dists/bookworm/Release.gpg", id="Release.gpg"),
        pytest.param("http://deb.debian.org/debian/pool/main/c/curl/", id="pool directory listing"),
        pytest.param("https://index.crates.io/se/rd/serde", id="crates sparse index"),
        pytest.param("https://index.crates.io/config.json", id="crates index config"),
        pytest.param("https://crates.io/api/v1/crates/serde/1.0.203/download", id="crates download redirect"),
        pytest.param("https://proxy.golang.org/golang.org/x/text/@v/list", id="Go version list"),
        pytest.param("https://proxy.golang.org/golang.org/x/text/@latest", id="Go latest"),
        pytest.param("https://proxy.golang.org/golang.org/x/text/@v/v0.14.0.info", id="Go info"),
        pytest.param("https://sum.golang.org/lookup/golang.org/x/text@v0.14.0", id="Go checksum DB"),
        pytest.param(
            "https://repo1.maven.org/maven2/org/apache/commons/commons-lang3/maven-metadata.xml",
            id="maven-metadata",
        ),
        pytest.param(
            "https://repo1.maven.org/maven2/org/apache/commons/commons-lang3/maven-metadata.xml.sha1",
            id="maven-metadata checksum",
        ),
        pytest.param("https://repo1.maven.org/maven2/org/apache/commons/commons-lang3/", id="Maven listing"),
        pytest.param(
            "https://repo1.maven.org/maven2/org/apache/commons/commons-lang3/3.14.0/", id="version listing"
        ),
        pytest.param(
            "https://repo1.maven.org/maven2/com/x/lib/1.0-SNAPSHOT/lib-1.0-20240101.000000-1.jar",
            id="Maven snapshot",
        ),
        pytest.param("https://repo1.maven.org/maven2/archetype-catalog.xml", id="Maven archetype catalog"),
    ],
)
def test_preset_ci_leaves_index_and_metadata_alone(url: str) -> None:
    assert match_rule(PRESET_CI, url) is None
