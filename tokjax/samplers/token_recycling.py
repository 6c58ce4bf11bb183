"""Token Recycling's drafter: an adjacency matrix of recent candidates and a static draft tree.

"Turning Trash into Treasure: Accelerating Inference of Large Language Models
with Token Recycling" (Luo et al. 2024): the top-k candidate tokens
that the target's logits rank after token t ("trash" once t's successor is
chosen) are kept in row t of an adjacency matrix int32[vocab, width], refreshed
from every position the target scores. Each round a static tree template is
filled by breadth-first walks of that matrix from the last committed token,
and the target verifies the whole tree in one forward with a tree attention
mask (each node sees the committed prefix, its ancestors and itself).

Acceptance here is exact for sampling too, not only greedy: a draft token is a
point mass, and a node's children are verified by recursive rejection (the
multi-step speculative sampling of "SpecInfer: Accelerating Large Language
Model Serving with Tree-based Speculative Inference and Verification", Miao
et al. 2024, with deterministic drafts): child c is accepted with
probability r(c) under the current residual r (initially p); on rejection
r(c) is set to 0 and r renormalised; when every child is rejected the token
is drawn from the final r, which reproduces p.

This module holds the pure tree pieces; `speculative` runs the rounds.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.models import kv_cache


class DraftTree(NamedTuple):
  """A static tree template, nodes in breadth-first order, node 0 the root
  (the last committed token).

  Attributes:
    parents: parent node of each node (-1 for the root).
    depths: depth of each node (root 0).
    ranks: each node's index among its siblings (0: the matrix's first
      candidate, its parent's likeliest successor).
  """

  parents: tuple[int, ...]
  depths: tuple[int, ...]
  ranks: tuple[int, ...]

  @property
  def size(self) -> int:
    """T, the number of nodes, root included."""
    return len(self.parents)

  @property
  def depth(self) -> int:
    """D, the deepest node's depth: the most draft tokens a round can accept."""
    return max(self.depths)

  @property
  def width(self) -> int:
    """The most children of any node (the adjacency matrix's columns)."""
    return max(self.ranks) + 1

  def children(self) -> np.ndarray:
    """int32[T, width]: each node's children in rank order, -1 where it has fewer."""
    table = np.full((self.size, self.width), -1, np.int32)
    for node, (parent, rank) in enumerate(zip(self.parents, self.ranks)):
      if parent >= 0:
        table[parent, rank] = node
    return table

  def ancestors(self) -> np.ndarray:
    """bool[T, T]: [i, j] iff node j is node i or one of its ancestors."""
    table = np.eye(self.size, dtype=bool)
    for node, parent in enumerate(self.parents):
      if parent >= 0:
        table[node] |= table[parent]  # Breadth-first: the parent's row is complete.
    return table


@functools.cache
def draft_tree(width: int, depth: int) -> DraftTree:
  """The template: the root has `width` children; a node at depth d >= 1 that
  is its parent's r-th child has max(width - d - r, 1 if r == 0 else 0)
  children, down to depth `depth`: likelier branches go deeper, as in the
  paper's (larger, hand-designed) static tree; width=4, depth=4 gives 24
  nodes, width=3, depth=3 gives 9.

  Raises:
    ValueError: width or depth < 1.
  """
  if width < 1 or depth < 1:
    raise ValueError(f"tree_width and tree_depth must be >= 1, got {width} and {depth}.")
  parents, depths, ranks = [-1], [0], [0]
  node = 0
  while node < len(parents):
    d, r = depths[node], ranks[node]
    if d < depth:
      count = width if d == 0 else max(width - d - r, 1 if r == 0 else 0)
      for rank in range(count):
        parents.append(node)
        depths.append(d + 1)
        ranks.append(rank)
    node += 1
  return DraftTree(tuple(parents), tuple(depths), tuple(ranks))


def init_adjacency(vocab: int, width: int) -> jax.Array:
  """int32[vocab, width]: before any target logits, candidates 0..width-1 everywhere."""
  return jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (vocab, width))


def update_adjacency(adjacency: jax.Array, tokens: jax.Array, logits: jax.Array) -> jax.Array:
  """The matrix with row tokens[b, i] set to the top-width ids of logits[b, i].

  Args:
    adjacency: int32[vocab, width].
    tokens: int32[batch, n] the tokens whose successors `logits` score.
    logits: float[batch, n, vocab] the target's logits at those tokens.

  Returns:
    int32[vocab, width]; where a token occurs twice, one occurrence's row wins.
  """
  width = adjacency.shape[1]
  top = jax.lax.top_k(logits, width)[1].astype(jnp.int32)
  return adjacency.at[tokens.reshape(-1)].set(top.reshape(-1, width))


def fill_tree(tree: DraftTree, adjacency: jax.Array, root: jax.Array) -> jax.Array:
  """int32[batch, T]: the tree's tokens; node i is adjacency[token of its parent, rank i].

  root: int32[batch] the last committed token of each row.
  """
  parents, ranks, depths = (np.asarray(a) for a in (tree.parents, tree.ranks, tree.depths))
  tokens = jnp.zeros((root.shape[0], tree.size), jnp.int32).at[:, 0].set(root)
  for d in range(1, tree.depth + 1):  # Parents are filled one level up.
    level = np.flatnonzero(depths == d)
    tokens = tokens.at[:, level].set(adjacency[tokens[:, parents[level]], ranks[level]])
  return tokens


def tree_kv_mask(tree: DraftTree, start: jax.Array, cache_len: int) -> jax.Array:
  """bool[batch, T, cache_len]: node i (written at slot start + i) sees the
  committed slots below `start`, and the slots of its ancestors and itself.

  start: int32[batch] the root's slot (= its position) in each row.
  """
  offset = jnp.arange(cache_len, dtype=jnp.int32)[None, :] - start[:, None]  # [batch, cache_len]
  inside = (offset >= 0) & (offset < tree.size)
  ancestors = jnp.asarray(tree.ancestors())[:, jnp.clip(offset, 0, tree.size - 1)]
  return (offset < 0)[:, None, :] | (inside[:, None, :] & ancestors.transpose(1, 0, 2))


def walk_tree(tree: DraftTree, tokens: jax.Array, scores: jax.Array, uniforms: jax.Array,
              greedy: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Verifies a filled tree, root to leaf, by recursive rejection (see the module docstring).

  Args:
    tokens: int32[batch, T] the tree's tokens.
    scores: float[batch, T, vocab] at node i, the target's distribution p of
      the token after it: probabilities, or with greedy the logits.
    uniforms: float[D, width, batch] U(0, 1) draws (unused with greedy).
    greedy: follow the child equal to argmax p (temperature 0).

  Returns:
    (path int32[batch, D] the accepted nodes by depth (0 past the end),
    accepted int32[batch] their number, residual float[batch, vocab] the
    distribution (unnormalised; with greedy the logits) of the token after
    the last accepted node).
  """
  children = jnp.asarray(tree.children())
  batch, rows = tokens.shape[0], jnp.arange(tokens.shape[0])
  node = jnp.zeros((batch,), jnp.int32)
  alive = jnp.ones((batch,), bool)
  path = jnp.zeros((batch, tree.depth), jnp.int32)
  residual = scores[:, 0]
  for level in range(tree.depth):
    chosen = jnp.full((batch,), -1, jnp.int32)
    best = jnp.argmax(residual, axis=-1)
    for j in range(tree.width):
      child = children[node, j]
      token = tokens[rows, jnp.maximum(child, 0)]
      open_ = alive & (child >= 0) & (chosen < 0)
      if greedy:
        chosen = jnp.where(open_ & (token == best), child, chosen)
        continue
      mass = residual[rows, token] / jnp.sum(residual, axis=-1)
      accept = open_ & (uniforms[level, j] < mass)
      chosen = jnp.where(accept, child, chosen)
      rejected = open_ & ~accept
      residual = jnp.where(rejected[:, None], residual.at[rows, token].set(0), residual)
    moved = chosen >= 0
    path = path.at[:, level].set(jnp.maximum(chosen, 0))
    node = jnp.where(moved, chosen, node)
    residual = jnp.where(moved[:, None], scores[rows, node], residual)
    alive = moved
  return path, jnp.sum(path > 0, axis=1, dtype=jnp.int32), residual


def pack_path(cache: dict, path: jax.Array, accepted: jax.Array, pos: jax.Array) -> dict:
  """Moves the accepted nodes' keys and values to slot == position.

  The tree was written at slots root + node (root = pos - 1); accepted node
  path[b, i] of depth i + 1 belongs at slot pos[b] + i. Slots past the
  accepted ones are copied onto themselves.

  Args:
    path: int32[batch, D] accepted nodes by depth (`walk_tree`).
    accepted: int32[batch] how many.
    pos: int32[batch] the root's slot + 1.
  """
  index = jnp.arange(path.shape[1], dtype=jnp.int32)[None, :]
  src = jnp.where(index < accepted[:, None], pos[:, None] - 1 + path, pos[:, None] + index)
  return kv_cache.move_slots(cache, src, pos)
