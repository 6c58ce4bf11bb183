"""tokjax: one sharded JAX/Flax transformer for every token-corruption objective."""
import contextlib
import sys


@contextlib.contextmanager
def modules_absent(*modules: str):
  """`import M` raises ImportError inside the block, for each M not imported yet.

  For dependencies that probe optional packages when imported, where the
  answer without them is the one a run needs (start-up time). Later imports
  of the modules work as usual.
  """
  blocked = [m for m in modules if m not in sys.modules]
  sys.modules.update(dict.fromkeys(blocked, None))
  try:
    yield
  finally:
    for m in blocked:
      if sys.modules.get(m, 0) is None:
        del sys.modules[m]


# flax.nnx imports IPython (0.2-0.4 s) to ask whether it runs in a notebook; a
# process that has not imported IPython is not in one, and learns so without it.
with modules_absent("IPython"):
  import flax.nnx  # noqa: E402, F401
