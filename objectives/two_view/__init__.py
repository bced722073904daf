"""The two-view (joint-embedding) family: SimCLR (and GraphCL, SimCLR on graph views), MoCo v2, MoCo v3, BYOL,
SimSiam, SwAV, DINO, VICReg, Barlow Twins, each in its own file.

One class per method, no inheritance between them; they share the pure functions of ``common.py`` (views,
features, heads, teacher, queue writes) and the losses of ``losses.py``. Each is *given* an :class:`Encoder`
(adapter, backbone and readout; ``build.py`` composes them for images, the graph recipe for graphs) and owns its
heads; each method's head sizes and image presets are in its own file (``SIZES``, ``PRESETS``, keyed by method
name), the shared bases in ``sizes.py`` and ``presets.py``.

**Batch.** ``batch["views"]``: a list of batches the adapter reads (images, graphs, ...), augmentations of the
same B examples: the two global views first, then (SwAV, DINO multi-crop) the local ones. Methods without
multi-crop use the first two. Views and features: see ``common.py``.

**Global batch.** Every loss is the global batch's mean, the same value on every process (losses.py), and
every batch statistic is global: heads use :class:`GlobalBatchNorm`, ResNets too (``ResNetConfig.global_batchnorm``),
so N processes train as one. Queues take the keys of every process (gathered, no gradient) *after* the loss used
them; every process holds the same queue. ``loss`` is a mean (``num_targets=None``).

**Teachers.** MoCo, BYOL and DINO keep an EMA copy of (adapter, backbone, projector) as ``self.teacher``
(parameters without gradient, saved in checkpoints). It runs in the objective's train/eval mode (batch statistics
in training, as the references), keeps its own BN running statistics, and its parameters move only in
:meth:`on_step_end`: ``teacher <- m * teacher + (1 - m) * student`` with ``m = cosine_momentum(step)``
(BYOL eq. 3 generalised: ``end - (end - base) * (cos(pi * step / max_steps) + 1) / 2``; ``max_steps <= 0`` or
``end == base``: constant ``base``). No shuffle BN for MoCo: with global batch statistics it has no effect.

**State.** Queues, queue pointers, DINO's centre, prototypes, teachers and the step counter (``global_step``, set
by :meth:`on_step_end`, read by the schedules at forward time) are parameters or buffers; the collapse monitor's
counters go through ``extra_state``. Resume = straight run.

Metrics every step: the loss, the schedules, and ``collapse/*`` (selfsup.monitors) on the first view's embedding.
"""
