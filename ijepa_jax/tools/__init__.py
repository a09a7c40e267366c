"""The command-line tools, each run as `python -m ijepa_jax.tools.<name>`:

- `evaluate`: the probes on a run's checkpoint or a weights file;
- `embed`: a frozen encoder's embeddings to .npz;
- `convert`: official checkpoints into a run, a run's weights out (official, timm, hf);
- `draw_masks`: the mask sampler's picture for a config, without training;
- `plot`: the training curves of a run's metrics.jsonl;
- `prepare`: a shrunk copy of an image folder, for a faster input pipeline.

Tools only: nothing in the library imports them (tests/test_layout.py), and they import no
other tool. The library they call is the rest of `ijepa_jax`.
"""
