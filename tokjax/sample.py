"""CLI: sample from the latest checkpoint of a run.

  python -m tokjax.sample --workdir DIR [--prompt=TEXT [--prompt=TEXT2 ...]] [--num_samples=N] \
      [--sampler.name=maskgit --sampler.precision=float64 --sampler.ar.top_p=0.9 ...] \
      [--cpu_devices=2 [--mesh=fsdp_tp]]

With --infill "To be, or ____ to be" the model fills the holes instead
(--hole_len=8, or one length per hole: --hole_len=8,3), writing
WORKDIR/infill_STEP.json. Starts from the run's saved sampler settings; each --sampler.KEY flag given
overrides one of them. The sampler is the objective's default unless
--sampler.name picks another that fits it. Prints the samples and writes them,
with the sampler settings, to WORKDIR/samples_STEP.json. Only the parameters
are restored, not the optimizer state.
"""
from absl import app, flags
from ml_collections import config_flags

from tokjax import generation, runtime, sharding
from tokjax.config import sampler_config
from tokjax.restore import load_run

flags.DEFINE_string("workdir", None, "The training run's workdir.")
flags.DEFINE_multi_string("prompt", None, "Text prefix to continue (default: the run's); "
                          "repeat the flag to sample several prompts, of any lengths, in "
                          "one batch (num_samples rows each).")
flags.DEFINE_integer("num_samples", None, "Number of samples (default: the run's).")
flags.DEFINE_string("infill", None, "Text whose --placeholder holes the model fills, e.g. "
                    "'To be, or ____ to be' (md4, maskgit, mlm, fim, cm3, span_corruption).")
flags.DEFINE_string("placeholder", "____", "Marks a hole in --infill.")
flags.DEFINE_list("hole_len", ["8"], "Tokens per hole for masked-token models: one length "
                  "for every hole, or one per hole, e.g. 8,3 (fim, cm3, span_corruption stop "
                  "at their sentinel or EOS).")
flags.DEFINE_integer("cpu_devices", 0, "On CPU: split the host into this many XLA devices, "
                     "one per core being fastest, and spread the sample rows over them (the "
                     "run's data axes; see tokjax.runtime.configure_cpu_devices). 0: one device.")
flags.DEFINE_enum("mesh", None, sorted(sharding.MESH_PRESETS), "A mesh preset to sample on "
                  "instead of the run's own. With --cpu_devices=2, fsdp_tp is tensor parallel "
                  "(each device reads half of every weight): the faster layout for batch 1 at "
                  "8 layers x 512.")
config_flags.DEFINE_config_dict("sampler", sampler_config(), "Sampler settings to override.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  runtime.initialize(cpu_devices=f.cpu_devices)
  overrides = dict(config_flags.get_override_values(f["sampler"]))
  if f.prompt and len(f.prompt) == 1:
    overrides["prompt"] = f.prompt[0]
  if f.num_samples is not None:
    overrides["num_samples"] = f.num_samples
  exp, params, step = load_run(f.workdir, overrides, mesh=f.mesh)
  if f.infill is None:
    generation.write_samples(exp, params, f.workdir, step, f"samples_{step}.json",
                             prompts=f.prompt if f.prompt and len(f.prompt) > 1 else None)
  else:
    generation.write_samples(exp, params, f.workdir, step, f"infill_{step}.json", f.infill,
                             placeholder=f.placeholder, hole_len=f.hole_len)


if __name__ == "__main__":
  app.run(main)
