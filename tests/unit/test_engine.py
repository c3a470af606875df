"""Building the S1-mini engine from settings: the optional codec_config.json beside a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream_workers.engine import _codec_config
from stream_workers.engine.s1mini import CheckpointError, tiny_codec_config


def test_codec_shapes_come_from_codec_config_json_when_present(tmp_path: Path) -> None:
    assert _codec_config(tmp_path) is None  # the published checkpoint: the published codec
    tiny = tiny_codec_config(64)
    (tmp_path / "codec_config.json").write_text(json.dumps(tiny.__dict__))
    assert _codec_config(tmp_path) == tiny


@pytest.mark.parametrize(("content", "needle"), [
    ('{"decoder_dim": 32, "surprise": 1}', "unknown codec settings surprise"),
    ("{not json", "not a readable codec config"),
    ('{"decoder_rates": 5}', "not a readable codec config"),
])
def test_a_bad_codec_config_stops_start_up_naming_the_file(tmp_path: Path, content: str, needle: str) -> None:
    (tmp_path / "codec_config.json").write_text(content)
    with pytest.raises(CheckpointError, match=needle) as err:
        _codec_config(tmp_path)
    assert "codec_config.json" in str(err.value)
