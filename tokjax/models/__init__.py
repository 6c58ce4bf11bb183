"""NNX backbone shared by every objective.

Parameters carry logical axis names only; `tokjax.sharding` maps them to mesh
axes. Flax 0.12 shards annotated variables eagerly by default, which fails
without a mesh (and our names are logical, not mesh axes), so importing this
package turns eager sharding off for the importing thread.
"""
from flax import nnx

from tokjax.models.transformer import Transformer, TransformerConfig, init_cache

nnx.use_eager_sharding(False)

__all__ = ["Transformer", "TransformerConfig", "init_cache"]
