"""Board profiles ship with the package and are selectable by name."""

from __future__ import annotations

import pytest

from edgeagent.boards import available_boards, load_board
from edgeagent.config import parse_config


def test_the_four_target_boards_are_available() -> None:
    assert set(available_boards()) >= {"raspberry-pi-4", "raspberry-pi-5", "jetson-nano",
                                       "jetson-orin-nano"}


@pytest.mark.parametrize("name", ["raspberry-pi-4", "raspberry-pi-5", "jetson-nano",
                                  "jetson-orin-nano"])
def test_each_profile_has_power_figures_knobs_and_ports(name: str) -> None:
    board = load_board(name)
    assert 0 < board.idle_w < board.full_load_w
    assert board.serial_ports
    assert board.load_w(0) == board.idle_w
    assert board.load_w(board.cores) == pytest.approx(board.full_load_w)


def test_pi4_matches_the_measured_envelope() -> None:
    pi4 = load_board("raspberry-pi-4")
    assert (pi4.idle_w, pi4.full_load_w) == (2.7, 6.4)
    assert pi4.power_sensor.kind == "none"


def test_jetsons_have_nvpmodel_and_pis_do_not() -> None:
    assert load_board("jetson-orin-nano").knobs.nvpmodel
    assert not load_board("raspberry-pi-5").knobs.nvpmodel


def test_a_config_selects_a_board_by_name() -> None:
    config = parse_config('[site]\nboard = "jetson-orin-nano"\n[governor]\nmax_workers = 6\n')
    assert config.site.profile().cores == 6


def test_unknown_board_is_a_key_error_naming_the_known_ones() -> None:
    with pytest.raises(KeyError, match="raspberry-pi-4"):
        load_board("nope")
