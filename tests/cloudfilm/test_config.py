from __future__ import annotations

from pathlib import Path

import pytest

from cloudfilm.config import ConfigError, load_settings, parse_hostport


def test_flags_beat_environment_beat_toml_beat_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('hospital = "FROMTOML"\nhttp_port = 9000\nae_title = "TOMLAE"\n')
    env = {"CLOUDFILM_HTTP_PORT": "9100", "CLOUDFILM_FSYNC": "false"}
    s = load_settings({"ae_title": "FLAGAE", "dicom_port": None}, config_file=toml, env=env)
    assert s.hospital == "FROMTOML"
    assert s.http_port == 9100
    assert s.ae_title == "FLAGAE"
    assert s.fsync is False
    assert s.dicom_port == 11112


def test_data_dir_toml_is_read_when_no_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "cloudfilm.toml").write_text('hospital = "H7"\n')
    assert load_settings({"data_dir": str(tmp_path)}, env={}).hospital == "H7"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hospital": "bad id!"}, "hospital id"),
        ({"ae_title": "A" * 17}, "AE title"),
        ({"http_port": "eighty"}, "http_port"),
        ({"nonsense": 1}, "unknown setting"),
        ({"upload_compress_processes": -1}, "upload_compress_processes"),
    ],
)
def test_bad_settings_are_named_in_the_error(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides, env={})


def test_unknown_key_in_toml_is_an_error(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="colour"):
        load_settings({}, config_file=toml, env={})


@pytest.mark.parametrize("value", ["127.0.0.1", ":80", "h:99999", "h:x"])
def test_hostport_must_be_host_colon_port(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_hostport(value, "--http")


def test_hostport_parses() -> None:
    assert parse_hostport("127.0.0.1:0", "--http") == ("127.0.0.1", 0)


def test_the_gateways_codec_and_cloud_timeout_come_from_the_environment() -> None:
    env = {
        "CLOUDFILM_UPLOAD_COMPRESSION": "htj2k",
        "CLOUDFILM_CLOUD_READ_TIMEOUT_S": "7.5",
        "CLOUDFILM_UPLOAD_COMPRESS_PROCESSES": "0",
    }
    s = load_settings({}, env=env)
    assert s.upload_compression == "htj2k"
    assert s.upload_compress_processes == 0
    assert s.cloud_read_timeout_s == 7.5
    with pytest.raises(ConfigError, match="jpeg-ls, htj2k, rle or none"):
        load_settings({}, env={"CLOUDFILM_UPLOAD_COMPRESSION": "jpeg2000"})
