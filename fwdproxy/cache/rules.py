"""Cache rules: ``[[cache.rule]]`` tables that clamp or fix the freshness of matching URLs, and presets."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fwdproxy.cache.key import normalize_url
from fwdproxy.units import table_duration

IMMUTABLE_DEFAULT_TTL = 365 * 86400.0
"""An immutable rule without max_ttl keeps entries fresh for a year: long enough for any CI cache, short
enough that a registry that did rewrite an artifact is eventually seen."""

_KEYS = ("name", "match", "regex", "min_ttl", "max_ttl", "immutable")


@dataclass(frozen=True, slots=True)
class Rule:
    """One cache rule; the first rule whose pattern matches a URL applies to it."""

    pattern: str
    """A glob over the whole URL (``*`` spans ``/``), or a regular expression when ``regex`` is set."""
    regex: bool = False
    """True: ``pattern`` is a regular expression searched in the URL (anchor it with ^ and $)."""
    min_ttl: float | None = None
    """Lower bound for the computed freshness lifetime, seconds."""
    max_ttl: float | None = None
    """Upper bound for the computed freshness lifetime, seconds; the fixed lifetime of an immutable rule."""
    immutable: bool = False
    """Fresh for max_ttl (default a year) whatever the origin says about freshness or revalidation."""
    name: str = ""
    """Shown in logs and stored with the entry; defaults to the pattern."""
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        source = self.pattern if self.regex else fnmatch.translate(self.pattern)
        object.__setattr__(self, "_compiled", re.compile(source))
        if not self.name:
            object.__setattr__(self, "name", self.pattern)

    @property
    def lifetime(self) -> float:
        """The fixed freshness lifetime of an immutable rule."""
        return self.max_ttl if self.max_ttl is not None else IMMUTABLE_DEFAULT_TTL

    def matches(self, url: str) -> bool:
        """Whether the rule applies to this URL (compared in normalised form, see key.normalize_url)."""
        normal = normalize_url(url)
        if self.regex:
            return self._compiled.search(normal) is not None
        return self._compiled.match(normal) is not None


def match_rule(rules: Sequence[Rule], url: str) -> Rule | None:
    """The first rule that matches the URL, or None."""
    return next((r for r in rules if r.matches(url)), None)


def parse_rules(tables: object) -> tuple[Rule, ...]:
    """``[[cache.rule]]`` tables (a list of dicts from TOML) as rules, in order.

    Raises:
        ValueError: naming the table (counted from 0) and key, e.g. ``cache.rule[2].max_ttl: ...``.
    """
    if not isinstance(tables, Sequence) or isinstance(tables, str):
        raise ValueError(f"cache.rule: {tables!r} is not a list of tables; write [[cache.rule]] sections")
    return tuple(_parse_rule(i, t) for i, t in enumerate(tables))


def _parse_rule(index: int, table: object) -> Rule:
    where = f"cache.rule[{index}]"
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: {table!r} is not a table; write match = ... under [[cache.rule]]")
    for key in table:
        if key not in _KEYS:
            raise ValueError(f"{where}.{key}: unknown key; use one of {', '.join(_KEYS)}")
    if ("match" in table) == ("regex" in table):
        raise ValueError(f"{where}: give exactly one of match (a URL glob) or regex")
    key = "match" if "match" in table else "regex"
    pattern = table[key]
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(
            f'{where}.{key}: {pattern!r} is not a pattern; try e.g. "https://example.org/files/*"'
        )
    if key == "regex":
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{where}.regex: {pattern!r} is not a regular expression: {e}") from e
    name = table.get("name", "")
    if not isinstance(name, str):
        raise ValueError(f"{where}.name: {name!r} is not a string")
    immutable = table.get("immutable", False)
    if not isinstance(immutable, bool):
        raise ValueError(f"{where}.immutable: {immutable!r} is not true or false")
    min_ttl, max_ttl = table.get("min_ttl"), table.get("max_ttl")
    min_ttl = None if min_ttl is None else table_duration(min_ttl, f"{where}.min_ttl")
    max_ttl = None if max_ttl is None else table_duration(max_ttl, f"{where}.max_ttl")
    if min_ttl is not None and max_ttl is not None and min_ttl > max_ttl:
        raise ValueError(f"{where}.min_ttl: {min_ttl:g}s is more than max_ttl {max_ttl:g}s; swap or lower it")
    return Rule(pattern, key == "regex", min_ttl, max_ttl, immutable, name)


def _ci(name: str, pattern: str, *, regex: bool = False) -> Rule:
    return Rule(pattern, regex=regex, immutable=True, name=f"ci-{name}")


METADATA_MAX_TTL = 300.0
"""Registry metadata (indexes, version lists, tags) under --preset ci is fresh for at most five minutes, then
revalidated (a 304 is cheap): a CI job sees a release published minutes ago, however long a heuristic
freshness from Last-Modified would have been. The origin's own shorter freshness still applies."""


def _meta(name: str, pattern: str) -> Rule:
    return Rule(pattern, regex=True, max_ttl=METADATA_MAX_TTL, name=f"ci-{name}-metadata")


_MAVEN_HOSTS = r"(?:repo1\.maven\.org|repo\.maven\.apache\.org)"
_NPM_HOSTS = r"registry\.(?:npmjs\.org|yarnpkg\.com)"
_GEM_HOSTS = r"(?:rubygems\.org|index\.rubygems\.org)"
_CONDA_BASES = r"(?:conda\.anaconda\.org|repo\.anaconda\.com/pkgs)"
_DISTS = r"^https?://[^/?#]+/(?:[^?#]*/)?dists/[^?#]+/"
_DIGEST = r"sha256:[0-9a-f]{64}"

PRESET_CI: tuple[Rule, ...] = (
    # Content-addressed or never-rewritten artifacts: a given URL always names the same bytes, so they are
    # immutable. The order matters where patterns overlap: by-hash files before the dists/ metadata.
    _ci("pypi", "https://files.pythonhosted.org/packages/*"),
    _ci("npm", rf"^https://{_NPM_HOSTS}/[^?#]+/-/[^/?#]+\.tgz$", regex=True),
    _ci("debian", r"^https?://[^/?#]+/(?:[^?#]*/)?pool/[^?#]+\.(?:deb|udeb|dsc|tar\.[a-z0-9]+)$", regex=True),
    # apt's Acquire-By-Hash: index files named by their own digest (Release lists them).
    _ci("debian-by-hash", rf"{_DISTS}by-hash/(?:MD5Sum|SHA1|SHA256|SHA512)/[0-9a-f]{{32,128}}$", regex=True),
    _ci("crates", "https://static.crates.io/crates/*"),
    # The Go module proxy protocol: a version's .info, .mod and .zip never change once served.
    _ci("go", r"^https://proxy\.golang\.org/[^?#]+/@v/[^/?#]+\.(?:zip|mod|info)$", regex=True),
    # groupId/artifactId/version/artifactId-version[-classifier].ext: only files inside a version
    # directory whose name starts with artifactId-version, so maven-metadata.xml and listings never match;
    # SNAPSHOT versions are rewritten in place, so they are left out.
    _ci(
        "maven",
        rf"^https://{_MAVEN_HOSTS}/maven2/(?:[^/?#]+/)+(?P<a>[^/?#]+)/(?P<v>(?![^/]*SNAPSHOT)[^/?#]+)/(?P=a)-(?P=v)[^/?#]*$",
        regex=True,
    ),
    # RubyGems refuses to re-push a name-version, so the .gem and its gemspec never change.
    _ci(
        "rubygems",
        rf"^https://{_GEM_HOSTS}/(?:gems/[^/?#]+\.gem|quick/Marshal\.4\.8/[^/?#]+\.gemspec\.rz)$",
        regex=True,
    ),
    # channel/subdir/name-version-build.conda (or .tar.bz2): a build string is never reused.
    _ci(
        "conda",
        rf"^https://{_CONDA_BASES}/(?:[^/?#]+/)+[^/?#]+-[^-/?#]+-[^-/?#]+\.(?:conda|tar\.bz2)$",
        regex=True,
    ),
    # OCI distribution spec: blobs and manifests fetched by digest are content-addressed.
    _ci("oci", rf"^https://[^/?#]+/v2/[^?#]+/(?:blobs|manifests)/{_DIGEST}$", regex=True),
    # Metadata: indexes, version lists, tags. Fresh for METADATA_MAX_TTL at most, then revalidated.
    _meta("pypi", r"^https://pypi\.org/(?:simple/[^?#]*|pypi/[^/?#]+(?:/[^/?#]+)?/json)$"),
    _meta("npm", rf"^https://{_NPM_HOSTS}/(?:@[^/?#]+(?:/|%2[fF]))?[^-/?#@][^/?#]*$"),
    _meta(
        "debian",
        rf"{_DISTS}(?:InRelease|Release(?:\.gpg)?|(?:[^?#]*/)?(?:Packages|Sources|Contents-[^/?#]+|"
        r"Translation-[^/?#]+|Components-[^/?#]+\.yml|icons-[^/?#]+\.tar)(?:\.(?:gz|xz|bz2|lz4|zst))?)$",
    ),
    _meta("crates", r"^https://index\.crates\.io/[^?#]+$"),
    _meta("go", r"^https://proxy\.golang\.org/[^?#]+/(?:@v/list|@latest)$"),
    _meta(
        "maven",
        rf"^https://{_MAVEN_HOSTS}/maven2/(?:[^/?#]+/)+maven-metadata\.xml(?:\.(?:md5|sha1|sha256|sha512))?$",
    ),
    _meta(
        "rubygems",
        rf"^https://{_GEM_HOSTS}/(?:info/[^/?#]+|versions|names|(?:latest_|prerelease_)?specs\.4\.8\.gz)$",
    ),
    _meta("conda", rf"^https://{_CONDA_BASES}/(?:[^/?#]+/)+(?:current_)?repodata\.json(?:\.(?:bz2|zst))?$"),
    _meta("oci", r"^https://[^/?#]+/v2/[^?#]+/(?:manifests/[^/?#:]+|tags/list)$"),
)
"""The ``--preset ci`` rules."""

PRESETS: Mapping[str, tuple[Rule, ...]] = {"ci": PRESET_CI}
