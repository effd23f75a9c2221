"""mometas_ds: multi-objective continual pre-training of BERT encoders with the MOMETAS sampler."""
__version__ = "0.1.0"
