"""Parsing of Cache-Control, Pragma, Vary, Age, delta-seconds and HTTP-dates; nothing here raises."""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

from fwdproxy.http_model import Headers

DELTA_SECONDS_MAX = 2147483648
"""§1.2.2: a delta-seconds too large to represent saturates to 2^31."""

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class CacheControl:
    """The directives of every Cache-Control field line, in order; names lower-cased, values unquoted."""

    directives: tuple[tuple[str, str | None], ...] = ()
    """(name, value) pairs; value None when the directive had no "=", raw text when it was malformed."""

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not self.directives:
            return False
        lname = name.lower()
        return any(n == lname for n, _ in self.directives)

    def values(self, name: str) -> list[str | None]:
        """The value of every occurrence of the directive."""
        lname = name.lower()
        return [v for n, v in self.directives if n == lname]

    def seconds(self, name: str, *, invalid: int | None) -> int | None:
        """The smallest delta-seconds among the occurrences (§4.2.1: duplicates resolve conservatively).

        An occurrence without a valid value counts as ``invalid`` (None skips it).
        Returns None when the directive is absent or no occurrence counts.
        """
        found = [parse_delta_seconds(v) if v is not None else None for v in self.values(name)]
        counted = [invalid if s is None else s for s in found]
        present = [s for s in counted if s is not None]
        return min(present) if present else None


def parse_cache_control(headers: Headers) -> CacheControl:
    """§5.2: every Cache-Control field line; names case-insensitive, token or quoted-string values."""
    out: list[tuple[str, str | None]] = []
    for line in headers.get_all("cache-control"):
        out.extend(_parse_directives(line))
    return CacheControl(tuple(out))


def request_cache_control(headers: Headers) -> CacheControl:
    """§5.2.1 plus §5.4: Pragma: no-cache counts as Cache-Control: no-cache only without Cache-Control."""
    if "cache-control" in headers:
        return parse_cache_control(headers)
    pragma = [d for line in headers.get_all("pragma") for d in _parse_directives(line)]
    return CacheControl((("no-cache", None),)) if any(n == "no-cache" for n, _ in pragma) else CacheControl()


def _parse_directives(line: str) -> list[tuple[str, str | None]]:
    """One field line: ``#( token [ "=" ( token / quoted-string ) ] )``; junk becomes an invalid value."""
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and (line[i] in _OWS or line[i] == ","):
            i += 1
        start = i
        while i < n and line[i] in _TOKEN_CHARS:
            i += 1
        name = line[start:i].lower()
        value: str | None = None
        if i < n and line[i] == "=":
            i += 1
            if i < n and line[i] == '"':
                value, i = _quoted_string(line, i)
            else:
                vstart = i
                while i < n and line[i] in _TOKEN_CHARS:
                    i += 1
                value = line[vstart:i]
        junk_start = i
        while i < n and line[i] in _OWS:
            i += 1
        if i < n and line[i] != ",":
            # Something the grammar does not allow ("max-age =60", "max-age=6 0"): keep the name, but
            # make the value unparseable so callers treat it conservatively.
            end = _skip_to_comma(line, i)
            value = line[junk_start:end].strip(_OWS) if value is None else value + line[junk_start:end]
            i = end
        if name:
            out.append((name, value))
    return out


def _quoted_string(line: str, i: int) -> tuple[str, int]:
    """RFC 9110 §5.6.4 quoted-string starting at line[i] == '"'; returns (unescaped text, next index)."""
    chars: list[str] = []
    i += 1
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            chars.append(line[i + 1])
            i += 2
        elif c == '"':
            return "".join(chars), i + 1
        else:
            chars.append(c)
            i += 1
    return '"' + "".join(chars), i  # unterminated: keep the quote so the value stays invalid


def _skip_to_comma(line: str, i: int) -> int:
    in_quote = False
    while i < len(line):
        c = line[i]
        if in_quote and c == "\\":
            i += 1
        elif c == '"':
            in_quote = not in_quote
        elif c == "," and not in_quote:
            return i
        i += 1
    return i


def parse_delta_seconds(value: str) -> int | None:
    """§1.2.2: 1*DIGIT, saturating at 2147483648; anything else ("7200.0", "-1", " 5") is None."""
    if not value or not value.isascii() or not value.isdigit():
        return None
    digits = value.lstrip("0")
    if len(digits) > 10:  # also keeps int() away from Python's huge-integer limit
        return DELTA_SECONDS_MAX
    return min(int(digits or "0"), DELTA_SECONDS_MAX)


def parse_age(headers: Headers) -> int | None:
    """§5.1: the first member of the first Age line; an invalid value is ignored (None)."""
    lines = headers.get_all("age")
    if not lines:
        return None
    return parse_delta_seconds(lines[0].split(",", 1)[0].strip(_OWS))


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_LONG_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_D = "|".join(_DAYS)
_M = "|".join(_MONTHS)
_TIME = r"(\d\d):(\d\d):(\d\d)"
# RFC 9110 §5.6.7, the three formats a recipient MUST accept. Matching ignores case (robustness: a
# wrong-case "THU" still names a day), but not spacing, commas, digit counts or the GMT zone.
_IMF_FIXDATE = re.compile(rf"(?:{_D}), (\d\d) ({_M}) (\d{{4}}) {_TIME} GMT", re.IGNORECASE | re.ASCII)
_RFC850 = re.compile(
    rf"(?:{'|'.join(_LONG_DAYS)}), (\d\d)-({_M})-(\d\d) {_TIME} GMT", re.IGNORECASE | re.ASCII
)
_ASCTIME = re.compile(rf"(?:{_D}) ({_M}) ([ \d]\d) {_TIME} (\d{{4}})", re.IGNORECASE | re.ASCII)


def parse_http_date(value: str, *, now: float | None = None) -> float | None:
    """RFC 9110 §5.6.7: IMF-fixdate, rfc850-date or asctime-date as epoch seconds; anything else is None.

    ``now`` resolves an rfc850 two-digit year (a date more than 50 years ahead is in the past century);
    without it, years 70-99 are 19xx and 00-69 are 20xx.
    """
    text = value.strip(_OWS)
    if m := _IMF_FIXDATE.fullmatch(text):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _RFC850.fullmatch(text):
        day, mon, yy, hh, mm, ss = m.groups()
        year = str(_rfc850_year(int(yy), now))
    elif m := _ASCTIME.fullmatch(text):
        mon, day, hh, mm, ss, year = m.groups()
    else:
        return None
    return _timestamp(int(year), _MONTHS.index(mon.lower()) + 1, int(day), int(hh), int(mm), int(ss))


def _rfc850_year(yy: int, now: float | None) -> int:
    if now is None:
        return 1900 + yy if yy >= 70 else 2000 + yy
    this_year = _year_of(now)
    year = this_year - this_year % 100 + yy
    if year > this_year + 50:
        year -= 100
    elif year <= this_year - 50:
        year += 100
    return year


def _year_of(epoch: float) -> int:
    try:
        return time.gmtime(epoch).tm_year
    except (OverflowError, OSError, ValueError):
        return 1970


def _timestamp(year: int, month: int, day: int, hh: int, mm: int, ss: int) -> float | None:
    if year < 1 or hh > 23 or mm > 59 or ss > 60:  # §5.6.7: second 60 is a leap second
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return float(calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0)))


def format_http_date(epoch: float) -> str:
    """RFC 9110 §5.6.7 IMF-fixdate, the form a sender generates."""
    t = time.gmtime(int(epoch))
    return (
        f"{_DAYS[t.tm_wday].title()}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1].title()} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def header_date(headers: Headers, name: str, *, now: float | None = None) -> float | None:
    """A date field: one value, or several identical lines (§4.2.1: conflicting lines are not trusted)."""
    lines = {line.strip(_OWS) for line in headers.get_all(name)}
    return parse_http_date(lines.pop(), now=now) if len(lines) == 1 else None


def parse_list(value: str) -> list[str]:
    """RFC 9110 §5.6.1 #list members, trimmed, empty members dropped (no quoted commas expected)."""
    return [m.strip(_OWS) for m in value.split(",") if m.strip(_OWS)]


def parse_vary(headers: Headers) -> tuple[str, ...]:
    """§4.1: the lower-cased field names of every Vary line, deduplicated, "*" kept as a member."""
    names: list[str] = []
    for line in headers.get_all("vary"):
        for member in parse_list(line):
            if member.lower() not in names:
                names.append(member.lower())
    return tuple(names)
