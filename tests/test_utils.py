"""sepconv.utils: atomic writes keep the umask's mode and leave nothing behind; machine description."""

from __future__ import annotations

import os
import stat

import pytest

from sepconv.utils.io import atomic_write_bytes, current_umask
from sepconv.utils.machine import ISA_CAPS, cpu_fields, machine_info


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o000])
def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path, umask, mask):
    os.umask(mask)
    assert current_umask() == mask
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    with open(tmp_path / "plain", "wb"):
        pass
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~mask


def test_an_atomic_write_replaces_whole_and_a_failed_one_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "r.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"half")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]  # no temporary file left


def test_machine_info_names_the_cpu_isa_and_threads():
    info = machine_info()
    assert info["cpu_isa"] and info["torch_threads"] >= 1 and info["cores"] >= 1
    if os.path.exists("/proc/cpuinfo"):
        assert cpu_fields() and info["cpu"] == cpu_fields().get("model name", info["cpu"])


def test_machine_info_names_the_isa_caps_a_record_ran_under(monkeypatch):
    for name in ISA_CAPS:
        monkeypatch.delenv(name, raising=False)
    assert machine_info()["isa_caps"] == {}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("SEPCONV_ISA", "avx2")
    assert machine_info()["isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "SEPCONV_ISA": "avx2"}
