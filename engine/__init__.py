"""engine: in-silico experiments on why pre-trained networks transfer."""
__version__ = "0.1.0"


def build_data(pair, beta, *, seed=0, n_train=None, n_test=None, data_root=None, out=None,
               force=False, block_shuffle=None, **options):
    """Build (or reuse) a correlated side-by-side dataset; returns its directory. See engine.data.build.
    block_shuffle: B to shuffle each image's BxB blocks with one fixed permutation (1 = pixels)."""
    from engine.data.build import build_data as _build
    return _build(pair, beta, seed=seed, n_train=n_train, n_test=n_test, data_root=data_root,
                  out=out, force=force, block_shuffle=block_shuffle, **options)
