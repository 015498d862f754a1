"""ExtendAction: an option of one or more values that may also be repeated, without losing any."""

from __future__ import annotations

import argparse

from gen_theta_model.cli_args import ExtendAction


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", nargs="+", action=ExtendAction, default=["0", "1"])
    p.add_argument("--delays", type=float, nargs="+", action=ExtendAction, default=[0.0])
    return p


def test_the_default_holds_only_while_the_option_is_not_given() -> None:
    assert parser().parse_args([]).seeds == ["0", "1"]
    assert parser().parse_args(["--seeds", "5"]).seeds == ["5"]


def test_repeated_uses_add_up_in_order() -> None:
    a = parser().parse_args(["--seeds", "3", "4", "--delays", "100", "--seeds", "9", "--delays", "300"])
    assert a.seeds == ["3", "4", "9"]
    assert a.delays == [100.0, 300.0]


def test_the_default_list_is_left_as_it_was() -> None:
    p = parser()
    p.parse_args(["--seeds", "7", "--seeds", "8"])
    assert p.parse_args([]).seeds == ["0", "1"]
