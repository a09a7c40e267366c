"""Probes on frozen features (numpy arrays in, metrics out; jitted inside): one interface and
a registry (`base`), one module per probe.

- `linear`: the paper's linear probe on pooled features (a small grid chosen on held-out data);
- `knn`: weighted k-NN on pooled features (DINO's);
- `lowshot`: the linear probe on a few labels per class;
- `attentive`: V-JEPA's attentive probe on the tokens.

A probe is chosen by its name in evals.final_probes / evals.periodic_probes; `run_probes`
runs the chosen ones on one set of features. Where the features come from (images, encoders,
splits) is `evaluation.py`'s job.
"""

# each registers its probe, in this order
from ijepa_jax.probes import linear  # isort: skip
from ijepa_jax.probes import knn  # isort: skip
from ijepa_jax.probes import lowshot  # isort: skip
from ijepa_jax.probes import attentive  # isort: skip
from ijepa_jax.probes.base import (NEEDS, SUBSET_STREAM, Probe, ProbeInputError, ProbeSettings,
                                   Split, StreamedTokens, TokenArray, Tokens, get, names,
                                   needs_of, register, run_probes)
from ijepa_jax.probes.knn import knn_predict
from ijepa_jax.probes.linear import fit_linear, linear_probe, standardize
from ijepa_jax.probes.lowshot import lowshot_indices, lowshot_probe

__all__ = ['NEEDS', 'SUBSET_STREAM', 'Probe', 'ProbeInputError', 'ProbeSettings', 'Split',
           'StreamedTokens', 'TokenArray', 'Tokens', 'attentive', 'fit_linear', 'get', 'knn',
           'knn_predict', 'linear', 'linear_probe', 'lowshot', 'lowshot_indices', 'lowshot_probe',
           'names', 'needs_of', 'register', 'run_probes', 'standardize']
