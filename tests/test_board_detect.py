"""Board detection reads what the firmware says the board is, from a root tree: the device tree
(``/proc/device-tree`` or ``/sys/firmware/devicetree/base``) or Jetson's L4T release file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeagent.board_detect import FALLBACK_BOARD, detect_board
from edgeagent.config import ConfigError, parse_config

PI4 = (b"Raspberry Pi 4 Model B Rev 1.4\0", b"raspberrypi,4-model-b\0brcm,bcm2711\0")
PI5 = (b"Raspberry Pi 5 Model B Rev 1.0\0", b"raspberrypi,5-model-b\0brcm,bcm2712\0")
NANO = (b"NVIDIA Jetson Nano Developer Kit\0",
        b"nvidia,p3450-0000\0nvidia,jetson-nano\0nvidia,tegra210\0")
ORIN_NANO = (b"NVIDIA Jetson Orin Nano Developer Kit\0",
             b"nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0")
L4T_R32 = b"# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64\n"
L4T_R36 = b"# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n"


def device_tree(root: Path, model: bytes, compatible: bytes,
                where: str = "sys/firmware/devicetree/base") -> Path:
    base = root / where
    base.mkdir(parents=True)
    (base / "model").write_bytes(model)
    (base / "compatible").write_bytes(compatible)
    if where != "proc/device-tree":  # as on a board: /proc/device-tree links to the sysfs one
        (root / "proc").mkdir()
        os.symlink(base, root / "proc" / "device-tree")
    return root


@pytest.mark.parametrize(("tree", "board"), [
    (PI4, "raspberry-pi-4"), (PI5, "raspberry-pi-5"), (NANO, "jetson-nano"),
    (ORIN_NANO, "jetson-orin-nano")])
def test_the_device_tree_names_the_board(tmp_path: Path, tree: tuple[bytes, bytes],
                                         board: str) -> None:
    found = detect_board(device_tree(tmp_path, *tree))
    assert (found.board, found.detected) == (board, True)
    assert tree[0].rstrip(b"\0").decode() in found.describe()


def test_a_device_tree_only_in_proc_is_enough(tmp_path: Path) -> None:
    assert detect_board(device_tree(tmp_path, *PI5, where="proc/device-tree")).board == \
        "raspberry-pi-5"


def test_the_most_specific_compatible_entry_wins(tmp_path: Path) -> None:
    # A Compute Module 4 on an unknown carrier: the SoC entry still says Pi 4.
    found = detect_board(device_tree(tmp_path, b"Raspberry Pi Compute Module 4 Rev 1.1\0",
                                     b"acme,cm4-carrier\0brcm,bcm2711\0"))
    assert found.board == "raspberry-pi-4"
    assert "brcm,bcm2711" in found.evidence


@pytest.mark.parametrize(("release", "board"), [(L4T_R32, "jetson-nano"),
                                                 (L4T_R36, "jetson-orin-nano")])
def test_a_jetson_without_a_visible_device_tree_is_known_by_its_l4t_release(
        tmp_path: Path, release: bytes, board: str) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_bytes(release)
    found = detect_board(tmp_path)
    assert (found.board, found.detected) == (board, True)
    assert "L4T R" in found.evidence


def test_an_unknown_machine_falls_back_and_says_so(tmp_path: Path) -> None:
    found = detect_board(device_tree(tmp_path, b"Pine64 RockPro64 v2.1\0",
                                     b"pine64,rockpro64\0rockchip,rk3399\0"))
    assert (found.board, found.detected) == (FALLBACK_BOARD, False)
    assert "Pine64 RockPro64" in found.describe()
    assert "set site.board" in found.describe()


def test_a_machine_without_a_device_tree_falls_back(tmp_path: Path) -> None:
    found = detect_board(tmp_path)
    assert (found.board, found.detected) == (FALLBACK_BOARD, False)
    assert "no device tree" in found.evidence


def test_auto_is_the_default_and_a_named_board_overrides_it() -> None:
    auto = parse_config("")
    assert auto.site.board == "auto"
    assert auto.site.profile().name == auto.site.detection().board
    named = parse_config('[site]\nboard = "jetson-nano"\n')
    assert named.site.detection().evidence == "site.board"
    assert named.site.profile().name == "jetson-nano"


def test_an_unknown_board_name_lists_auto_among_the_choices() -> None:
    with pytest.raises(ConfigError, match="auto, jetson-nano"):
        parse_config('[site]\nboard = "pi-zero"\n')
