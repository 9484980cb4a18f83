"""The pure RFC 9111 shared-cache policy: keys, storability, freshness, lookup, validation, rules."""

from fwdproxy.cache.config import CacheConfig
from fwdproxy.cache.directives import CacheControl, parse_cache_control, request_cache_control
from fwdproxy.cache.freshness import (
    Lifetime,
    Source,
    current_age,
    freshness_lifetime,
    record_lifetime,
    recorded_lifetime,
)
from fwdproxy.cache.headers import answers_ranges, full_headers, served_headers, storable_headers
from fwdproxy.cache.invalidation import invalidated_keys
from fwdproxy.cache.key import primary_key, secondary_key, select_variant, vary_request_headers
from fwdproxy.cache.policy import LookupDecision, StaleOnError, Verdict, lookup, stale_on_error
from fwdproxy.cache.rules import PRESET_CI, PRESETS, Rule, match_rule, parse_rules
from fwdproxy.cache.status import CacheStatus, Fwd, render, render_bytes
from fwdproxy.cache.storability import StoreDecision, is_storable
from fwdproxy.cache.validation import (
    After304,
    NotModified,
    client_conditional_matches,
    conditional_request_headers,
    freshen,
    freshen_from_head,
    not_modified_response,
    on_not_modified,
    select_for_update,
)

__all__ = [
    "PRESETS",
    "PRESET_CI",
    "After304",
    "CacheConfig",
    "CacheControl",
    "CacheStatus",
    "Fwd",
    "Lifetime",
    "LookupDecision",
    "NotModified",
    "Rule",
    "Source",
    "StaleOnError",
    "StoreDecision",
    "Verdict",
    "answers_ranges",
    "client_conditional_matches",
    "conditional_request_headers",
    "current_age",
    "freshen",
    "freshen_from_head",
    "freshness_lifetime",
    "full_headers",
    "invalidated_keys",
    "is_storable",
    "lookup",
    "match_rule",
    "not_modified_response",
    "on_not_modified",
    "parse_cache_control",
    "parse_rules",
    "primary_key",
    "record_lifetime",
    "recorded_lifetime",
    "render",
    "render_bytes",
    "request_cache_control",
    "secondary_key",
    "select_for_update",
    "select_variant",
    "served_headers",
    "stale_on_error",
    "storable_headers",
    "vary_request_headers",
]
