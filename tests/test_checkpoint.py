"""tokjax.checkpoint: which config changes a checkpoint survives, and damaged checkpoints."""
import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny import tiny_config
import orbax.checkpoint as ocp

from tokjax.checkpoint import Checkpointer, CheckpointWriteError, check_compatible
from tokjax.data import train_iterator


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


def _iterator():
  tokens = (np.arange(4000) % 256).astype(np.int32)
  return train_iterator(tokens, seq_len=8, batch_size=2, seed=0, process_index=0,
                        process_count=1)


def _garble(directory):
  """Overwrites the middle of every file under `directory` with junk."""
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, "r+b") as f:
        f.seek(size // 3)
        f.write(b"\xff\x00junk" * max(1, size // 18))


def test_a_garbled_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
  config = _config()
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  data = _iterator()
  for step in (1, 2, 3):
    next(data)
    ckpt.save(step, {"params": {"w": jnp.full((4,), float(step))}}, data, config)
  abstract = {"params": {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}}
  _garble(tmp_path / "checkpoints" / "3")
  assert Checkpointer(str(tmp_path)).saved_config() == json.loads(json.dumps(config))
  params, step = Checkpointer(str(tmp_path)).restore_params(abstract["params"], config)
  assert step == 2 and np.all(np.asarray(params["w"]) == 2.0)  # Reading moves nothing.
  resumed = _iterator()
  state, step = Checkpointer(str(tmp_path)).restore(abstract, config, resumed)
  assert step == 2 and np.all(np.asarray(state["params"]["w"]) == 2.0)
  reference = _iterator()
  for _ in range(3):
    after_two = next(reference)
  np.testing.assert_array_equal(next(resumed), after_two)  # The data position of step 2.
  out = capsys.readouterr().out
  assert "checkpoints/3 cannot be read" in out and "corrupt_checkpoints" in out
  assert os.listdir(tmp_path / "checkpoints") and "3" not in os.listdir(tmp_path / "checkpoints")
  for step in (1, 2):
    _garble(tmp_path / "checkpoints" / str(step))
  with pytest.raises(RuntimeError, match="No checkpoint .* can be read"):
    Checkpointer(str(tmp_path)).restore(abstract, config, _iterator())


def test_a_full_disk_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
  config = _config()
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  data = _iterator()
  ckpt.save(1, {"params": {"w": jnp.ones((4,))}}, data, config)

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", full_disk)
  with pytest.raises(CheckpointWriteError, match=r"checkpoint 2 .*No space left.*\[1\] are intact"):
    ckpt.save(2, {"params": {"w": jnp.zeros((4,))}}, data, config)
  monkeypatch.undo()
  abstract = {"params": {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}}
  state, step = Checkpointer(str(tmp_path)).restore(abstract, config, _iterator())
  assert step == 1 and np.all(np.asarray(state["params"]["w"]) == 1.0)
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(CheckpointWriteError, match="writable --workdir"):
    Checkpointer(str(blocker / "run"))
