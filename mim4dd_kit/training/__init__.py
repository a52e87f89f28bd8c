"""Shared training machinery of the plugins; imports no plugin.

- :mod:`.loop`: the one SGD training loop (``sgd_epochs``, ``sgd_steps``), the evaluation
  protocol's ``train_network`` and ``accuracy``;
- :mod:`.batched`: several networks trained together under ``torch.func.vmap``;
- :mod:`.params`: the parameters plugins' models share, without torch: the evaluation
  protocol's ``ProtocolParams`` and the unrolling losses' ``checkpoint`` option;
- :mod:`.protocol`: the evaluation protocol (``ProtocolParams`` re-exported) and
  ``build_backbone``;
- :mod:`.unroll`: unrolled inner training with a graph to the synthetic set and its
  checkpointing, ``FeaturesAndLogits``;
- :mod:`.networks`: the network a DD loss trains between image updates;
- :mod:`.stats`: class statistics (``class_means``...);
- :mod:`.chunked`: gradient-free passes in cache-sized chunks (plugins reach them through
  ``ctx.nograd_features`` and friends);
- :mod:`.features`, :mod:`.cka`, :mod:`.mi`: layer features, linear CKA and the MIM4DD
  bound shared by a regularizer and the analysis evaluators.

Plugin packages import these modules; the modules import only :mod:`mim4dd_kit.api` and
:mod:`mim4dd_kit.core`.
"""
