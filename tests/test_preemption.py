"""SIGTERM handling: caught inside `Preemption`, the caller's handler back after."""
import os
import signal

from tokjax import preemption


def test_sigterm_is_caught_inside_and_the_previous_handler_restored(tmp_path):
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
  try:
    stop = preemption.Preemption()
    with stop:
      assert not stop.reached(1)
      os.kill(os.getpid(), signal.SIGTERM)
      assert stop.reached(2)
      assert seen == []  # Ours, not the caller's, while inside.
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == [signal.SIGTERM]
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_marker_holds_the_step_and_is_cleared(tmp_path):
  preemption.mark(str(tmp_path), 40)
  assert (tmp_path / preemption.MARKER).read_text() == "40\n"
  preemption.clear(str(tmp_path))
  assert not (tmp_path / preemption.MARKER).exists()
