"""The one training loop, for every objective. Read it top to bottom by phase.

1. Mesh, model, objective, shardings  (`Experiment.create`)
2. Data: host-local batches become global arrays
3. Init: `jax.jit(init, out_shardings=...)`, so no host holds the full model
4. Step: `jax.jit` with in/out shardings and the state donated
5. Restore: the latest checkpoint, data iterator included
6. Loop: step, log one step late (with tokens/s and MFU), eval, checkpoint;
   then final eval and samples. Start-up ends when the first step has run.
   A SIGTERM (`preemption`) saves the step reached and returns early.
"""
from __future__ import annotations

import contextlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tokjax import evaluation, generation, nonfinite, preemption
from tokjax.checkpoint import Checkpointer, abstract_with_shardings
from tokjax.data import load_split, to_global, train_iterator
from tokjax.experiment import Experiment
from tokjax.device_peak import peak_flops
from tokjax.metrics import (MetricWriter, StartupClock, StepLogger, model_flops_per_token,
                            progress_bar)


def make_train_step(exp: Experiment):
  """Jitted (state, batch int32[batch, seq_len]) -> (state, metrics); state donated.

  The step's randomness is `fold_in(key(seed), step)`, so a resumed run draws
  exactly what an uninterrupted one would. A NaN/Inf loss or gradient leaves
  the parameters and optimizer state unchanged (`nonfinite`).
  """
  objective, schedule = exp.objective, exp.lr_schedule
  seed = exp.config.seed

  def step(state, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state["step"])

    def loss_fn(params):
      with exp.activation_sharding():
        return objective.loss(exp.model(params), batch, rng)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = exp.optimizer.update(grads, state["opt_state"], state["params"])
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = {
        "step": state["step"] + 1,
        **nonfinite.keep_if_finite(finite, {
            "params": optax.apply_updates(state["params"], updates), "opt_state": opt_state},
            {"params": state["params"], "opt_state": state["opt_state"]}),
    }
    metrics = dict(metrics, grad_norm=grad_norm, learning_rate=schedule(state["step"]),
                   nonfinite=(~finite).astype(jnp.int32))
    return new_state, metrics

  return jax.jit(
      step,
      in_shardings=(exp.state_shardings, exp.batch_sharding),
      out_shardings=(exp.state_shardings, None),
      donate_argnums=0,
  )


def train(config: ml_collections.ConfigDict, workdir: str, started_at: float | None = None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Returns the final validation report, or {} when a SIGTERM stopped the run
  early (after saving a checkpoint at the step reached and writing
  WORKDIR/PREEMPTED; rerun the command to resume). Writes
  WORKDIR/metrics.jsonl, WORKDIR/tensorboard, WORKDIR/checkpoints and
  WORKDIR/samples.json (and with config.data.log_example_ids, WORKDIR/example_ids).
  `started_at` (a time.time() stamp; default: now) starts the start-up clock:
  the first step's line in metrics.jsonl has `startup_s` and its phases.
  """
  clock = StartupClock(started_at)
  # Phase 1: mesh, model, objective and shardings.
  exp = Experiment.create(config, workdir=workdir)  # A BPE run keeps its tokenizer there.
  config_dict = config.to_dict()
  clock.lap("experiment")
  # MFU's numerator and denominator; only process 0 writes metrics. No MFU
  # for models that are not the transformer over the window's tokens.
  flops = (model_flops_per_token(config, exp.abstract_state["params"])
           if exp.objective.transformer_flops else None)
  peak, peak_source = ((None, "") if jax.process_index() or flops is None
                       else peak_flops(config.model.dtype))
  clock.lap("peak")

  # Phase 2: data.
  train_tokens = load_split(config.data, "train", exp.tokenizer)
  valid_tokens = load_split(config.data, "validation", exp.tokenizer)
  data_iter = train_iterator(
      train_tokens, seq_len=config.seq_len, batch_size=config.batch_size,
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), worker_count=config.data.worker_count,
  )
  clock.lap("data")

  # Phases 3-5: restore the latest checkpoint, or initialise.
  ckpt = Checkpointer(workdir, max_to_keep=config.max_checkpoints_to_keep)
  abstract = abstract_with_shardings(exp.abstract_state, exp.state_shardings)
  state, _ = ckpt.restore(abstract, config_dict, data_iter)
  state = state or exp.init_state()
  preemption.clear(workdir)
  stop = preemption.Preemption()
  train_step = make_train_step(exp)
  eval_step = evaluation.make_eval_step(exp)
  start = int(state["step"])
  clock.lap("state")

  # Phase 6: the loop.
  bar = progress_bar(config.num_train_steps, start, config.progress_bar)
  log = StepLogger(MetricWriter(workdir), bar, tokens_per_step=config.batch_size * config.seq_len,
                   flops_per_token=flops, peak_flops=peak)
  guard = nonfinite.Guard(config.nan_policy, workdir)
  # SIGTERM is caught only inside the loop.
  with stop, _example_ids_log(workdir, config.data.log_example_ids) as ids_log:
    for step in range(start, config.num_train_steps):
      with log.host():
        host_batch = next(data_iter)
        if ids_log:
          ids = data_iter.example_ids().tolist()
          ids_log.write(json.dumps({"step": step + 1, "ids": ids}) + "\n")
        state, metrics = train_step(state, to_global(host_batch, exp.batch_sharding))
      log.flush()  # The previous step's metrics, while this step runs.
      done = step + 1
      bad_step = guard.check(done, metrics["nonfinite"], host_batch)
      if bad_step is not None:
        _stop(ckpt, done, state, data_iter, config_dict, log)
        raise guard.error(bad_step, done)
      bar.update(1)
      if step == start:  # Start-up ends when the first step has run; speed is measured after it.
        jax.block_until_ready(metrics)
        clock.lap("first_step")
        log.record(done, dict(clock.scalars(), model_flops_per_token=flops, peak_flops=peak,
                              peak_source=peak_source))
        log.start_intervals(done)
      if done % config.log_every_steps == 0 or done == config.num_train_steps:
        log.record_train(done, dict(metrics, nonfinite_skipped=guard.skipped))
      if done % config.eval_every_steps == 0 and done < config.num_train_steps:
        with log.paused(metrics):
          log.record(done, _eval_scalars(evaluation.evaluate(
              exp, eval_step, state["params"], valid_tokens, max_batches=config.eval_steps,
              split="validation", seed=config.seed)))
      if done % config.checkpoint_every_steps == 0 or done == config.num_train_steps:
        with log.paused(metrics):
          ckpt.save(done, state, data_iter, config_dict)
      if stop.reached(done) and done < config.num_train_steps:
        return _preempted(ckpt, done, state, data_iter, config_dict, workdir, log)
  log.flush()  # The last interval's speed, before the final evaluation.
  bad_step = guard.check()
  if bad_step is not None:
    _stop(ckpt, int(state["step"]), state, data_iter, config_dict, log)
    raise guard.error(bad_step, int(state["step"]))
  bar.close()
  ckpt.wait()

  # Final: the validation report and samples.
  final = evaluation.evaluate(exp, eval_step, state["params"], valid_tokens,
                              max_batches=config.final_eval_steps, split="validation",
                              seed=config.seed)
  log.record(int(state["step"]), _eval_scalars(final))
  log.flush()
  if jax.process_index() == 0:
    print(evaluation.format_report(final))
  generation.write_samples(exp, state["params"], workdir, int(state["step"]))
  log.writer.close()
  ckpt.close()
  return final


def _example_ids_log(workdir: str, enabled: bool):
  """WORKDIR/example_ids/process_<index>.jsonl, opened for appending, line-buffered
  (a resumed run appends the steps it redoes); a null context when not `enabled`."""
  if not enabled:
    return contextlib.nullcontext()
  os.makedirs(os.path.join(workdir, "example_ids"), exist_ok=True)
  return open(os.path.join(workdir, "example_ids", f"process_{jax.process_index()}.jsonl"), "a",
              buffering=1)


def _stop(ckpt, step, state, data_iter, config_dict, log) -> None:
  """Ends the loop early: saves `step` (unless just saved) and closes the writers."""
  log.flush()
  log.bar.close()
  if ckpt.latest_step() != step:
    ckpt.save(step, state, data_iter, config_dict)
  ckpt.wait()
  ckpt.close()
  log.writer.close()


def _preempted(ckpt, step, state, data_iter, config_dict, workdir, log) -> dict:
  """Saves `step`, marks the workdir preempted, returns {}."""
  _stop(ckpt, step, state, data_iter, config_dict, log)
  preemption.mark(workdir, step)
  if jax.process_index() == 0:
    print(f"Preempted (SIGTERM): saved step {step}; rerun the same command to resume.")
  return {}


def _eval_scalars(report: dict) -> dict:
  return {f"eval/{k}": v for k, v in report.items() if isinstance(v, float)}
