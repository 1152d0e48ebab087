"""Evaluation of trained workdirs: `evaluate_workdir(workdir, ws, ...)` runs a guidance sweep.

  metrics     FD, score, class agreement, precision/recall, bootstrap (pure numpy)
  classifier  the reference classifier: network, training, checkpoints
  features    the extractor and the cached features of real splits
  sweep       sampling at each w, with the resumable per-w sample cache
  report      table, CSV, JSON and trade-off plot
  evaluate    `evaluate_workdir`: all of the above for one workdir
"""
from cfg_jax.eval.evaluate import USER_ERRORS, Evaluation, evaluate_workdir
