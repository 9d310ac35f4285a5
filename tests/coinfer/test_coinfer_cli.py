"""The command line turns a bad config into one line on stderr and exit code 2."""

import pytest

from coinfer import main
from common.cli import run_main


def test_cli_reports_config_errors(tmp_path, capsys):
  bad = tmp_path / "bad.py"
  bad.write_text(
    "from coinfer.configs import quick\n"
    "def get_config():\n  c = quick.get_config()\n  c.stream.horizon = 0\n  return c\n"
  )
  with pytest.raises(SystemExit) as e:
    run_main(lambda: main.main(["init", "--config", str(bad), "--workdir", str(tmp_path / "w")]))
  assert e.value.code == 2
  assert "stream.horizon" in capsys.readouterr().err
