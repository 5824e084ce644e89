"""One consistent CLI (issue 21): --version, every option with help and its default shown, one --device (choices
and default auto) and one --window syntax in every subcommand that has them, descriptions everywhere."""
from __future__ import annotations

import argparse

import pytest

from covseg_fast import __version__
from covseg_fast.cli.main import build_parser, main

DEVICE_SUBCOMMANDS = ("screen", "train", "evaluate", "crossval", "bench")
WINDOW_SUBCOMMANDS = ("screen", "train", "evaluate", "crossval")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"covseg {__version__}"


def test_every_subcommand_has_a_description_and_every_option_help_with_its_default():
    for name, p in subparsers().items():
        assert p.description, f"covseg {name}: no description"
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"covseg {name} {a.option_strings or a.dest}: no help text"
        text = p.format_help()
        for a in p._actions:
            shown = a.default not in (None, False, argparse.SUPPRESS) and a.option_strings
            if shown:
                assert "default" in p._get_formatter()._get_help_string(a), (name, a.option_strings)
        assert "(default: %(default)s)" not in text


@pytest.mark.parametrize("name", DEVICE_SUBCOMMANDS)
def test_device_has_one_default_and_one_help_everywhere(name):
    (device,) = [a for a in subparsers()[name]._actions if "--device" in a.option_strings]
    assert device.default == "auto"
    assert device.help == subparsers()["screen"]._option_string_actions["--device"].help


@pytest.mark.parametrize("name", WINDOW_SUBCOMMANDS)
@pytest.mark.parametrize("argv", [["--window", "-1100", "250"], ["--window=-1100,250"], ["--window", "-1100,250"]])
def test_one_window_syntax_everywhere(name, argv):
    p = subparsers()[name]
    (window,) = [a for a in p._actions if "--window" in a.option_strings]
    ns = argparse.Namespace()
    window(p, ns, argv[1:] if len(argv) > 1 else [argv[0].split("=", 1)[1]], "--window")
    assert ns.window == (-1100.0, 250.0)


def test_whole_command_lines_with_both_window_spellings_parse():
    for argv in (["screen", "x.nii.gz", "--window", "-1100", "250"], ["screen", "x.nii.gz", "--window=-1100,250"]):
        assert build_parser().parse_args(argv).window == (-1100.0, 250.0)


def test_checkpoint_required_suggests_demo(tmp_path, caplog):
    assert main(["screen", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "--checkpoint is required" in caplog.text and "--demo" in caplog.text


@pytest.mark.parametrize("argv", [["train", "--data", "d", "--out", "o", "--device", "gpu"],
                                  ["bench", "--model", "msa_unet", "--device", "tpu"]])
def test_bad_device_is_a_usage_error_everywhere(argv, caplog):
    assert main(argv) == 2
    assert "expected auto, cpu, cuda or cuda:N" in caplog.text
