"""The report's reader of run.json / config.json (issue 17): invalid, too deeply nested or non-object
JSON is a ReportError naming the file, never read as {} (that would silently change the figures)."""
from __future__ import annotations

import pytest

from reports.errors import ReportError
from reports.inputs import read_json


@pytest.mark.parametrize("content,message", [("[1, 2]", "holds a JSON list, not an object"),
                                             ('{"a": ' + "[" * 100000 + "]" * 100000 + "}", "not valid JSON"),
                                             ('{"cost_usd": 1', "not valid JSON"), ('"text"', "JSON str")])
def test_damaged_json_side_files_are_one_line(tmp_path, content, message):
    p = tmp_path / "run.json"
    p.write_text(content)
    with pytest.raises(ReportError, match=message) as err:
        read_json(str(p))
    assert "run.json" in str(err.value) and "\n" not in str(err.value)
    assert read_json(str(tmp_path / "absent.json")) == {}
