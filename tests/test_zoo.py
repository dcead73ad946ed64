"""The clean zoo, a CI-sized slice: ordinary models as users write them, through the sanity
stage with the dataset's config defaults, raise no FAIL and no diagnosis. The slice holds
models that raised false alarms before the nonlinearities were read from the program (a tanh
MLP trained into saturation; ReLU features averaged by global pooling, then a dense ReLU
layer with dropout; a held-out model's squeeze-excitation gate). The whole zoo, every seed:
scripts/zoo.py."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'scripts'))
import zoo as zoo_script  # noqa: E402  scripts/zoo.py

from helpers import zoo  # noqa: E402

SLICE = [('TanhMLP', 'mnist1d'), ('GapHiddenCNN', 'digits'), ('SqueezeExciteCNN', 'digits')]


@pytest.mark.parametrize('model, dataset', SLICE)
def test_a_clean_user_model_raises_no_false_alarm(model, dataset, data_dir, tmp_path):
  run = zoo_script.run_one(model, dataset, 0, str(tmp_path), data_dir)
  assert run['alarms'] == {}, run['alarms']
  assert run['identified'] == run['layers']  # every layer's input nonlinearity read


def test_the_slice_has_a_held_out_model_and_the_zoo_is_large():
  assert any(model in zoo.HELD_OUT for model, _ in SLICE)
  assert len(zoo.MODELS) >= 30 and len(zoo.NNX) >= 3
