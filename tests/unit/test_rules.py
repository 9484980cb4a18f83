"""[[cache.rule]] parsing, matching and the ci preset on real registry URLs."""

from __future__ import annotations

import pytest

from fwdproxy.cache.rules import (
    IMMUTABLE_DEFAULT_TTL,
    METADATA_MAX_TTL,
    PRESET_CI,
    PRESETS,
    Rule,
    match_rule,
    parse_rules,
)


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
    artifacts = [r for r in PRESET_CI if not r.name.endswith("-metadata")]
    metadata = [r for r in PRESET_CI if r.name.endswith("-metadata")]
    assert artifacts and all(r.immutable for r in artifacts)
    assert metadata and all(not r.immutable and r.max_ttl == METADATA_MAX_TTL == 300 for r in metadata)
    assert all(r.min_ttl is None for r in PRESET_CI)  # never fresher than the origin says, for metadata
    assert len({r.name for r in PRESET_CI}) == len(PRESET_CI)


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
        pytest.param(
            "http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/"
            "0b1c3b8f6a3e4f7d2c1e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d",
            "ci-debian-by-hash",
            id="Debian by-hash index",
        ),
        pytest.param(
            "http://archive.ubuntu.com/ubuntu/dists/noble-updates/main/i18n/by-hash/MD5Sum/"
            "d41d8cd98f00b204e9800998ecf8427e",
            "ci-debian-by-hash",
            id="Ubuntu by-hash MD5Sum",
        ),
        pytest.param("https://proxy.golang.org/golang.org/x/text/@v/v0.14.0.info", "ci-go", id="Go info"),
        pytest.param("https://rubygems.org/gems/rails-7.1.3.gem", "ci-rubygems", id="gem"),
        pytest.param(
            "https://index.rubygems.org/gems/nokogiri-1.16.2-x86_64-linux.gem", "ci-rubygems", id="gem"
        ),
        pytest.param(
            "https://rubygems.org/quick/Marshal.4.8/rack-3.0.9.gemspec.rz", "ci-rubygems", id="gemspec"
        ),
        pytest.param(
            "https://conda.anaconda.org/conda-forge/linux-64/numpy-1.26.4-py312heda63a1_0.conda",
            "ci-conda",
            id="conda-forge .conda",
        ),
        pytest.param(
            "https://repo.anaconda.com/pkgs/main/noarch/tzdata-2024a-h04d1e81_0.tar.bz2",
            "ci-conda",
            id="Anaconda .tar.bz2",
        ),
        pytest.param(
            "https://registry-1.docker.io/v2/library/alpine/blobs/sha256:"
            "4abcf20661432fb2d719aaf90656f55c287f8ca915dc1c92ec14ff61e67fbaf8",
            "ci-oci",
            id="OCI blob",
        ),
        pytest.param(
            "https://ghcr.io/v2/astral-sh/uv/manifests/sha256:"
            "0e3a81a1c3ab6c7bde4c0a2e3f1c9dd1e6cc4ea2d7b3eae0e7a4d5e8c9f0a1b2",
            "ci-oci",
            id="OCI manifest by digest",
        ),
    ],
)
def test_preset_ci_matches_artifacts(url: str, name: str) -> None:
    rule = match_rule(PRESET_CI, url)
    assert rule is not None and rule.name == name


@pytest.mark.parametrize(
    "url, name",
    [
        pytest.param("https://pypi.org/simple/requests/", "ci-pypi-metadata", id="PyPI simple index"),
        pytest.param("https://pypi.org/simple/", "ci-pypi-metadata", id="PyPI simple root"),
        pytest.param("https://pypi.org/pypi/requests/json", "ci-pypi-metadata", id="PyPI JSON API"),
        pytest.param(
            "https://pypi.org/pypi/requests/2.32.3/json", "ci-pypi-metadata", id="PyPI version JSON"
        ),
        pytest.param("https://registry.npmjs.org/lodash", "ci-npm-metadata", id="npm packument"),
        pytest.param(
            "https://registry.npmjs.org/@babel%2fcore", "ci-npm-metadata", id="npm scoped packument"
        ),
        pytest.param("https://registry.npmjs.org/@babel/core", "ci-npm-metadata", id="npm scoped, slash"),
        pytest.param(
            "http://deb.debian.org/debian/dists/bookworm/InRelease", "ci-debian-metadata", id="InRelease"
        ),
        pytest.param(
            "http://deb.debian.org/debian/dists/bookworm/Release.gpg", "ci-debian-metadata", id="Release.gpg"
        ),
        pytest.param(
            "http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.xz",
            "ci-debian-metadata",
            id="Packages",
        ),
        pytest.param(
            "http://archive.ubuntu.com/ubuntu/dists/noble/main/i18n/Translation-en.bz2",
            "ci-debian-metadata",
            id="Translation",
        ),
        pytest.param("https://index.crates.io/se/rd/serde", "ci-crates-metadata", id="crates sparse index"),
        pytest.param("https://index.crates.io/config.json", "ci-crates-metadata", id="crates index config"),
        pytest.param(
            "https://proxy.golang.org/golang.org/x/text/@v/list", "ci-go-metadata", id="Go version list"
        ),
        pytest.param("https://proxy.golang.org/golang.org/x/text/@latest", "ci-go-metadata", id="Go latest"),
        pytest.param(
            "https://repo1.maven.org/maven2/org/apache/commons/commons-lang3/maven-metadata.xml",
            "ci-maven-metadata",
            id="maven-metadata",
        ),
        pytest.param(
            "https://repo1.maven.org/maven2/org/apache/commons/commons-lang3/maven-metadata.xml.sha1",
            "ci-maven-metadata",
            id="maven-metadata checksum",
        ),
        pytest.param(
            "https://index.rubygems.org/info/rails", "ci-rubygems-metadata", id="compact index info"
        ),
        pytest.param(
            "https://index.rubygems.org/versions", "ci-rubygems-metadata", id="compact index versions"
        ),
        pytest.param("https://rubygems.org/specs.4.8.gz", "ci-rubygems-metadata", id="specs"),
        pytest.param(
            "https://conda.anaconda.org/conda-forge/linux-64/repodata.json",
            "ci-conda-metadata",
            id="conda repodata",
        ),
        pytest.param(
            "https://repo.anaconda.com/pkgs/main/noarch/current_repodata.json.zst",
            "ci-conda-metadata",
            id="conda current_repodata",
        ),
        pytest.param(
            "https://ghcr.io/v2/astral-sh/uv/manifests/latest", "ci-oci-metadata", id="OCI manifest by tag"
        ),
        pytest.param(
            "https://registry-1.docker.io/v2/library/alpine/tags/list", "ci-oci-metadata", id="OCI tags"
        ),
    ],
)
def test_preset_ci_metadata_is_revalidated_after_five_minutes(url: str, name: str) -> None:
    rule = match_rule(PRESET_CI, url)
    assert rule is not None and rule.name == name
    assert not rule.immutable and rule.max_ttl == 300


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://files.pythonhosted.org/", id="files host root"),
        pytest.param("https://pypi.org/project/requests/", id="PyPI project page"),
        pytest.param("https://registry.npmjs.org/-/v1/search?text=x.tgz", id="npm search"),
        pytest.param(
            "https://registry.npmjs.org/lodash/-/lodash-4.17.21.tgz?x=1", id="npm tarball with query"
        ),
        pytest.param("https://registry.npmjs.org/lodash?write=true", id="npm packument with query"),
        pytest.param("http://deb.debian.org/debian/pool/main/c/curl/", id="pool directory listing"),
        pytest.param(
            "http://deb.debian.org/debian/dists/bookworm/main/by-hash/SHA256/", id="by-hash listing"
        ),
        pytest.param(
            "http://deb.debian.org/debian/dists/bookworm/main/by-hash/SHA256/not-hex", id="by-hash junk"
        ),
        pytest.param("http://deb.debian.org/debian/dists/bookworm/", id="dists listing"),
        pytest.param("https://crates.io/api/v1/crates/serde/1.0.203/download", id="crates download redirect"),
        pytest.param("https://index.crates.io/se/rd/serde?x=1", id="crates index with query"),
        pytest.param("https://sum.golang.org/lookup/golang.org/x/text@v0.14.0", id="Go checksum DB"),
        pytest.param("https://proxy.golang.org/golang.org/x/text/@v/v0.14.0.txt", id="Go unknown suffix"),
        pytest.param("https://repo1.maven.org/maven2/org/apache/commons/commons-lang3/", id="Maven listing"),
        pytest.param(
            "https://repo1.maven.org/maven2/org/apache/commons/commons-lang3/3.14.0/", id="version listing"
        ),
        pytest.param(
            "https://repo1.maven.org/maven2/com/x/lib/1.0-SNAPSHOT/lib-1.0-20240101.000000-1.jar",
            id="Maven snapshot",
        ),
        pytest.param(
            "https://repo1.maven.org/maven2/com/x/lib/1.0-SNAPSHOT/maven-metadata.xml.bak", id="metadata-ish"
        ),
        pytest.param("https://repo1.maven.org/maven2/archetype-catalog.xml", id="Maven archetype catalog"),
        pytest.param("https://rubygems.org/gems/rails", id="gem page"),
        pytest.param("https://rubygems.org/api/v1/gems/rails.json", id="RubyGems API"),
        pytest.param("https://conda.anaconda.org/conda-forge/linux-64/", id="conda listing"),
        pytest.param("https://conda.anaconda.org/conda-forge/linux-64/numpy.conda", id="conda without build"),
        pytest.param("https://ghcr.io/v2/astral-sh/uv/blobs/sha256:abc", id="OCI short digest"),
        pytest.param(
            "https://ghcr.io/v2/astral-sh/uv/blobs/uploads/0e3a81a1-c3ab-6c7b-de4c-0a2e3f1c9dd1",
            id="OCI upload",
        ),
        pytest.param("https://ghcr.io/v2/", id="OCI version check"),
        pytest.param(
            "https://example.org/v2/thing/blobs/sha256:" + "a" * 64 + "?sig=x", id="signed blob URL"
        ),
    ],
)
def test_preset_ci_leaves_everything_else_alone(url: str) -> None:
    assert match_rule(PRESET_CI, url) is None
