"""tokjax: one sharded JAX/Flax transformer for every token-corruption objective."""
