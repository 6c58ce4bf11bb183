"""tokjax.checkpoint: which config changes a checkpoint survives."""
import copy

import pytest

from tiny import tiny_config
from tokjax.checkpoint import check_compatible


def _config():
  return tiny_config(data_dir="unused").to_dict()  # Nothing is read.


@pytest.mark.parametrize("key, value", [
    ("dtype", "bfloat16"), ("remat", "full"), ("attention_impl", "xla")])
def test_runtime_model_settings_may_change(key, value):
  saved, current = _config(), _config()
  current["model"][key] = value
  check_compatible(saved, current, "DIR")


def test_settings_older_checkpoints_lack_take_their_defaults():
  saved, current = _config(), _config()
  del saved["model"]["scan_layers"], saved["model"]["param_dtype"]
  check_compatible(saved, current, "DIR")
  current["model"]["scan_layers"] = True  # Stacked parameters: another state.
  with pytest.raises(ValueError, match="different config"):
    check_compatible(saved, current, "DIR")


@pytest.mark.parametrize("section, key, value", [
    ("model", "d_model", 32), ("model", "param_dtype", "bfloat16"), (None, "seq_len", 64)])
def test_state_shaping_settings_may_not(section, key, value):
  saved = _config()
  current = copy.deepcopy(saved)
  (current[section] if section else current)[key] = value
  with pytest.raises(ValueError, match=f"different config(.|\n)*{key}"):
    check_compatible(saved, current, "DIR")
