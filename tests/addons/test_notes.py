"""Flow notes: one typed record under one flow.metadata key, and no addon keeps its own keys."""

from __future__ import annotations

import re

from mitmproxy.test import tflow

from fwdproxy_addons import _flowinfo
from fwdproxy_addons._notes import KEY, FlowNotes, notes, peek
from tests.support import REPO


def test_one_record_under_one_key() -> None:
    flow = tflow.tflow()
    assert peek(flow) is None and flow.metadata == {}
    noted = notes(flow)
    assert isinstance(noted, FlowNotes) and notes(flow) is noted and peek(flow) is noted
    _flowinfo.note_request(flow)
    _flowinfo.note_local(flow)  # no response yet: nothing noted
    noted.error = "refused"
    assert list(flow.metadata) == [KEY]
    assert noted.asked == ("http://address:22/path", "address")
    assert not noted.local
    assert _flowinfo.asked_url(flow) == "http://address:22/path"


def test_no_addon_touches_flow_metadata_but_the_notes() -> None:
    offenders = [
        f"{path.name}:{n}"
        for path in sorted((REPO / "addons").glob("*.py"))
        if path.name != "_notes.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.metadata\b", line)
    ]
    assert offenders == []
