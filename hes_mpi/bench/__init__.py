"""Benchmarks (``hes-mpi bench ...``): one interleaving harness (:mod:`.harness`); the collectives
(:mod:`.collectives`: osu, overhead, emulation); steps and forward passes (:mod:`.steps`); the PyTorch peer
(:mod:`.torch_peer`); every goal at once (:mod:`.goals`)."""
