"""Sampling from a trained U-Net: `load(workdir)` → `Pipeline.sample(labels, w, ...)`, or
`Pipeline.sample(prompts=[...], w=...)` for a text-conditioned one (cfg_jax.conditioning).

Restores only the EMA parameters and the config, onto whatever devices are present (a TPU
slice, one GPU, or the CPU of a notebook). Samples are split over the devices of a data mesh;
a batch that does not divide by the device count is padded and the padding dropped.
"""
import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from cfg_jax import checkpoint, conditioning, diffusion, guidance, model as model_lib, sampling
from cfg_jax import sharding, tokenizer, tuning


class SamplerSettings(NamedTuple):
  """A sampler call's settings, resolved (`Pipeline.sampler_settings`)."""
  method: str
  steps: int
  v: float                 # the ancestral sampler's variance interpolation
  grid: str
  logsnr_range: tuple      # (λ_min, λ_max) of the time grid
  rho: float               # the edm grid's ρ

  def record(self):
    """The settings as an evaluation's metrics.json records them (launch/compare.py matches
    them); v and ρ only where the sampler and grid use them."""
    return {'sampler': self.method, 'steps': self.steps,
            'variance_v': self.v if self.method == 'ancestral' else None, 'grid': self.grid,
            'grid_logsnr': list(self.logsnr_range),
            'grid_rho': self.rho if self.grid == 'edm' else None}


def eps_fn_for(model, params, prediction='eps', mesh=None, w=None):
  """The ε(z, λ, c) function the samplers consume, for an ε- or v-prediction U-Net.

  w: (B,) guidance strengths for a distilled student (`model.guidance_embed`), whose one call
  gives the guided ε; None for a model guided with two calls.

  mesh: inside a jitted sampler, gather `params` whole onto every device of `mesh` first. An
  FSDP-sharded EMA is then all-gathered once per sampler call, into a copy that lives only
  for the call; left to XLA, the weights' sharding spreads into the activations (ImageNet-64,
  8-way FSDP: 73 all-gathers moving 141 GiB per device per sampling step, docs/SCALING.md).
  """
  if mesh is not None:
    params = jax.lax.with_sharding_constraint(params, sharding.replicated(mesh))

  def eps_fn(z, logsnr, cond):
    out = model.apply({'params': params}, z, logsnr, cond, **({} if w is None else {'w': w}))
    return out if prediction == 'eps' else diffusion.eps_from_v(z, out, logsnr)
  return eps_fn


TUNED = 'tuned'   # Pipeline.sample's default w: the w chosen for this checkpoint, else 0


def guidance_settings(sample_config, **overrides):
  """The guidance settings of a config's `sample` group, with non-None `overrides` on top."""
  s = sample_config
  settings = dict(rule=s.guidance_rule, interval=tuple(s.interval),
                  interval_sigma=tuple(s.interval_sigma), rescale=s.rescale,
                  threshold=s.threshold, apg_eta=s.apg_eta, apg_norm=s.apg_norm,
                  apg_momentum=s.apg_momentum, schedule=s.w_schedule,
                  table=tuple(tuple(row) for row in s.w_table))
  settings.update({k: v for k, v in overrides.items() if v is not None})
  return settings


@dataclasses.dataclass
class Pipeline:
  """A model, its (EMA) parameters and a mesh; `sample` draws guided samples.

  tuned: the guidance a sweep chose for this checkpoint (`tuning.save_choice`), used when
  `sample` is given no w; None if there is none.
  """
  config: Any
  params: Any
  mesh: jax.sharding.Mesh
  model: Any = None
  tuned: Optional[dict] = None

  def __post_init__(self):
    self.model = self.model or model_lib.from_config(self.config)
    self.distilled = bool(self.config.model.guidance_embed)
    self.num_classes = self.config.data.num_classes
    self.shape = model_lib.input_shape(self.config)
    self.set_params(self.params)
    self.sample_batch = jax.jit(self._sample_batch, static_argnames=('method', 'clip', 'grid'))

  def __repr__(self):
    return f'Pipeline({self.describe()})'

  def describe(self):
    """One line: what model this is and how it samples by default."""
    s, d = self.config.sample, self.config.distill
    how = f'{s.method} {s.steps} steps on the {s.grid} grid'
    if not self.distilled:
      kinds = tuple(self.config.condition.kinds)
      what = 'class-conditional' if kinds == ('label',) else f'{" + ".join(kinds)}-conditioned'
      return f'{what} model; {how}, 2 network rows per guided sample and step'
    made = (f'{d.stage} distillation' + (f' round {d.round}' if d.round else '')
            + f' of {d.teacher}, w in [{d.w_min:g}, {d.w_max:g}]')
    return f'distilled student ({made}); {how}, 1 network row per sample and step at any w'

  def set_params(self, params):
    """Swaps in new parameters (e.g. the EMA during training).

    Arrays already laid out over this mesh's devices keep their layout, so the FSDP-sharded
    EMA of a training run stays sharded between sampler calls instead of being kept whole on
    every device. Anything else (host arrays, arrays on other devices) is replicated over the
    mesh.
    """
    devices = set(self.mesh.devices.flat)
    replicated = sharding.replicated(self.mesh)
    on_mesh = lambda x: isinstance(x, jax.Array) and x.sharding.device_set == devices
    self.params = jax.tree.map(lambda x: x if on_mesh(x) else jax.device_put(x, replicated),
                               params)

  def _sample_batch(self, params, labels, guide, indices, key, steps, v, logsnr_range, rho,
                    null=None, *, method, clip, grid):
    """One batch on the devices: labels (the condition), indices, null and guide's per-example
    fields sharded alike; guide is a `guidance.Guidance` or None (unguided, B rows);
    logsnr_range = (λ_min, λ_max) of the time grid; null: what guidance pairs each condition
    with (∅ or a negative prompt), None for class labels (∅ = num_classes). Jitted as
    `sample_batch`."""
    w = guide.w if self.distilled else None   # a student's guidance is its input w
    return sampling.sample(
        eps_fn_for(self.model, params, self.config.diffusion.prediction, self.mesh, w=w), labels,
        None if self.distilled else guide, key, shape=self.shape,
        null_label=self.num_classes if null is None else null, steps=steps, method=method, v=v,
        clip=clip, indices=indices, grid=grid, logsnr_min=logsnr_range[0],
        logsnr_max=logsnr_range[1], rho=rho)

  def guidance(self, w, n, **settings):
    """The `guidance.Guidance` that `sample` uses for n samples: w (scalar or (n,)) with the
    config's guidance settings and `settings` on top; None for w=None (unguided). A distilled
    student takes w alone (None: 0, its conditional model)."""
    if w is None and not self.distilled:
      return None
    w = np.broadcast_to(np.asarray(0.0 if w is None else w, np.float32), (n,))
    if not np.all(np.isfinite(w)):
      raise ValueError(f'w must be finite, got {w[~np.isfinite(w)][0]}')
    if self.distilled:
      given = sorted(k for k, v in settings.items() if v is not None)
      if given:
        raise ValueError(f'a distilled student has the paper\'s guidance built in; '
                         f'{", ".join(given)} do not apply to it')
      return guidance.Guidance(w=w).per_example(n)
    return guidance.from_settings(w, **guidance_settings(self.config.sample, **settings)).per_example(n)

  def condition(self, labels=None, prompts=None, embeddings=None, negative_prompts=None):
    """(condition, null) as host arrays for N samples, from what this model's kinds need:
    labels (N,) for 'label', prompts (N strings) for 'text', embeddings = (values (N, L, D),
    mask (N, L)) for 'embedding'. null is None for class labels alone (∅ = num_classes), else
    ∅ of every kind with the text replaced by `negative_prompts` (one string, or N) if given."""
    kinds = tuple(self.config.condition.kinds)
    given = {'label': labels, 'text': prompts, 'embedding': embeddings}
    names = {'label': 'labels', 'text': 'prompts', 'embedding': 'embeddings'}
    for kind, value in given.items():
      if (value is None) == (kind in kinds):
        raise ValueError(f'this model is conditioned on {" + ".join(names[k] for k in kinds)}; '
                         f'{"give" if value is None else "it takes no"} {names[kind]}')
    if negative_prompts is not None and 'text' not in kinds:
      raise ValueError('negative prompts need a text-conditioned model; this one is conditioned '
                       f'on {" + ".join(names[k] for k in kinds)}')
    cond = {}
    if labels is not None:
      labels = np.asarray(labels, np.int32).reshape(-1)
      bad = labels[(labels < 0) | (labels > self.num_classes)]
      if bad.size:
        raise ValueError(f'label {bad[0]} is outside [0, {self.num_classes}] '
                         f'({self.num_classes} is the null label)')
      cond['label'] = labels
    if prompts is not None:
      prompts = [prompts] if isinstance(prompts, str) else list(prompts)
      cond['text'] = tokenizer.encode(prompts, self.config.model.text_max_len)
    if embeddings is not None:
      values, mask = embeddings
      c = self.config.condition
      values, mask = np.asarray(values, np.float32), np.asarray(mask, bool)
      if values.shape[1:] != (c.embedding_len, c.embedding_dim) or mask.shape != values.shape[:2]:
        raise ValueError(f'embeddings must be (N, {c.embedding_len}, {c.embedding_dim}) with a '
                         f'mask (N, {c.embedding_len}), got {values.shape} and {mask.shape}')
      cond['embedding'] = {'values': values, 'mask': mask}
    sizes = {k: len(jax.tree.leaves(v)[0]) for k, v in cond.items()}
    if len(set(sizes.values())) > 1:
      raise ValueError(f'the condition\'s parts differ in length: {sizes}')
    if kinds == ('label',):
      return cond['label'], None
    null = jax.tree.map(np.asarray, conditioning.null_like(cond, self.num_classes))
    if negative_prompts is not None:
      n = conditioning.batch_size(cond)
      negative = ([negative_prompts] * n if isinstance(negative_prompts, str)
                  else list(negative_prompts))
      if len(negative) != n:
        raise ValueError(f'{len(negative)} negative prompts for {n} samples; give one or {n}')
      null['text'] = tokenizer.encode(negative, self.config.model.text_max_len)
    return cond, null

  def sampler_settings(self, steps=None, method=None, v=None, grid=None, logsnr_range=None):
    """What `sample` runs: the arguments where given, else the config's `sample` group. Raises
    ValueError for a sampler or time grid that cannot be used."""
    s = self.config.sample
    method, grid = method or s.method, grid or s.grid
    logsnr_range = tuple(float(a) for a in (logsnr_range or (s.logsnr_min, s.logsnr_max)))
    if method not in sampling.METHODS:
      raise ValueError(f'unknown sampler {method!r}; choose one of {", ".join(sampling.METHODS)}')
    if grid not in sampling.GRIDS:
      raise ValueError(f'unknown time grid {grid!r}; choose one of {", ".join(sampling.GRIDS)}')
    if not (np.all(np.isfinite(logsnr_range)) and logsnr_range[0] < logsnr_range[1]):
      raise ValueError(f'the time grid\'s λ range must be finite and increasing, got '
                       f'{logsnr_range}')
    return SamplerSettings(method=method, steps=steps or s.steps, v=s.v if v is None else v,
                           grid=grid, logsnr_range=logsnr_range, rho=float(s.rho))

  def sample(self, labels=None, w=TUNED, *, prompts=None, negative_prompts=None, embeddings=None,
             steps=None, method=None, seed=0, v=None, clip=None, grid=None, logsnr_range=None,
             batch_size=256, progress=False, first_index=0, **guidance_overrides):
    """Samples for `labels` (N,) (or `prompts`, `embeddings`: whatever this model is
    conditioned on, see `condition`) at guidance w (scalar or (N,); None: the unguided model; by
    default the w chosen for this checkpoint by a sweep, else 0). `negative_prompts` (one
    string, or N) take the place of the empty prompt in the guided rule:
    ε̃ = (1 + w)·ε(z, c) − w·ε(z, c_neg). A distilled student runs one B-row call per step at
    any w, with its own steps and sampler. Guidance settings default to
    the config's `sample` group; override any by name (rule='apg', interval=(lo, hi),
    rescale=0.7, threshold=0.995, schedule='linear', ...; see `guidance.from_settings`).

    steps, method, v, clip, grid (time grid), logsnr_range ((λ_min, λ_max) of the grid):
    default to the config's `sample` group. Returns float32 images (N, H, W, C) in the data
    range [−1, 1] (when clipped). Sample i depends only on (seed, first_index + i, label_i, w_i),
    never on `batch_size` or the device count, so a long request drawn in chunks
    (first_index = the chunk's start) is the same.
    """
    run = self.sampler_settings(steps, method, v, grid, logsnr_range)
    clip = self.config.sample.clip if clip is None else clip
    if isinstance(w, str) and w == TUNED:
      tuned = self.tuned or {}
      w = tuned.get('w', 0.0)
      guidance_overrides = {**tuned.get('settings', {}), **guidance_overrides}
    cond, null = self.condition(labels, prompts, embeddings, negative_prompts)
    n = conditioning.batch_size(cond)
    guide = self.guidance(w, n, **guidance_overrides)
    per_example = None if guide is None else guide.replace(table=None)
    n_dev = self.mesh.size
    batch_size = max(n_dev, batch_size // n_dev * n_dev)
    batch = sharding.batch_sharding(self.mesh)
    key = jax.random.key(seed)
    out = []
    for start in tqdm.trange(0, n, batch_size, disable=not progress, desc='sample', unit='batch'):
      stop = min(start + batch_size, n)
      pad = -(stop - start) % n_dev
      rows = lambda a: np.asarray(a)[start:stop]
      put = lambda a: jax.device_put(
          np.pad(rows(a), [(0, pad)] + [(0, 0)] * (rows(a).ndim - 1), mode='edge'), batch)
      chunk = None if guide is None else jax.tree.map(put, per_example).replace(table=guide.table)
      x = self.sample_batch(self.params, jax.tree.map(put, cond), chunk,
                            put(np.arange(first_index, first_index + n)), key, run.steps, run.v,
                            tuple(np.float32(a) for a in run.logsnr_range), np.float32(run.rho),
                            jax.tree.map(put, null), grid=run.grid, method=run.method, clip=clip)
      out.append(np.asarray(multihost_utils.process_allgather(x, tiled=True))[:stop - start])
    return np.concatenate(out) if out else np.zeros((0,) + self.shape, np.float32)


def load(workdir, step=None, devices=None):
  """A Pipeline with the EMA parameters of `workdir`'s latest (or given) checkpoint, and the
  guidance chosen for it by a sweep (`tuning`), if any."""
  mngr = checkpoint.manager(workdir, read_only=True)
  steps = sorted(mngr.all_steps())
  if not steps:
    raise checkpoint.CheckpointError(f'no checkpoint in {checkpoint.checkpoint_dir(workdir)}; '
                                     'train first with launch/train.py')
  if step is not None and step not in steps:
    raise checkpoint.CheckpointError(
        f'no checkpoint at step {step} in {checkpoint.checkpoint_dir(workdir)}; it holds steps '
        f'{", ".join(map(str, steps))}')
  config = checkpoint.restore_config(mngr, step)
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1}, devices)
  model = model_lib.from_config(config)
  abstract = sharding.abstract_output(functools.partial(model_lib.init_params, model, config),
                                     jax.random.key(0), shardings=sharding.replicated(mesh))
  params = checkpoint.restore_ema_params(mngr, abstract, step)
  return Pipeline(config=config, params=params, mesh=mesh, model=model,
                  tuned=tuning.load_choice(workdir))
