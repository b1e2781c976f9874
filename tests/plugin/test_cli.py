import pytest

from plugin.cli import build_parser, main


@pytest.mark.parametrize("command", ["setup", "export"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "LABEL_STUDIO_API_KEY" in out and f"python -m plugin {command}" in out


def test_missing_connection_settings_are_an_error_not_a_traceback(monkeypatch, capsys, tmp_path, label_config):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    config = tmp_path / "config.xml"
    config.write_text(label_config)
    assert main(["setup", "--config", str(config)]) == 2
    assert capsys.readouterr().err.startswith("error: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")


def test_a_bad_config_is_reported_before_connecting(capsys, tmp_path):
    config = tmp_path / "config.xml"
    config.write_text("<View><Text name='t' value='$t'/></View>")
    assert main(["setup", "--config", str(config)]) == 2
    assert "exactly one <Image>" in capsys.readouterr().err


def test_export_needs_project_and_out():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export"])
