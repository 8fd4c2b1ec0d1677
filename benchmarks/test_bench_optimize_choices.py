"""bench_optimize_choices.py: how a choice is named, and its options checked (no benchmark runs)."""

from types import SimpleNamespace

import pytest

import bench_optimize_choices as boc


def test_choice_name_says_what_runs_the_separable_layer():
    assert boc.choice_name(SimpleNamespace(candidate="onednn", layer_choices={"depthwise": "fused+relu",
                                                                              "pointwise": "fused"})) == "onednn:fused"
    assert boc.choice_name(SimpleNamespace(candidate="onednn", layer_choices={"depthwise": "packed"})) == "onednn:packed"
    assert boc.choice_name(SimpleNamespace(candidate="onnxruntime", layer_choices={})) == "onnxruntime"
    assert boc.choice_name(SimpleNamespace(candidate="channels_last", layer_choices=None)) == "channels_last"


@pytest.mark.parametrize("argv, message", [(["--repeats", "0"], "--repeats must be >= 1, got 0"),
                                           (["--threads", "0"], "--threads must be >= 1, got 0"),
                                           (["--suite", "nope"], "--suite takes")])
def test_bad_options_exit_2_naming_them(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        boc.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
