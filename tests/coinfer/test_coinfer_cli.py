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


def test_set_overrides_typed_values():
  c = main.load_config(
    "coinfer/configs/quick.py", ["init.epochs=7", "stream.method=dp", "individual.subset=[[2, 4]]"]
  )
  assert c.init.epochs == 7 and c.stream.method == "dp" and list(c.individual.subset) == [[2, 4]]


@pytest.mark.parametrize(
  "item, needle",
  [
    ("init.epochs", "KEY=VALUE"),
    ("init.nope=3", "no key 'init.nope'"),
    ("nope.epochs=3", "nope"),
    ("init.epochs=abc", "init.epochs=abc"),
    ("init.epochs=0", "init.epochs"),  # validated after the override
  ],
)
def test_set_rejects_bad_overrides(item, needle):
  with pytest.raises(main.ConfigError, match=needle):
    main.load_config("coinfer/configs/quick.py", [item])
