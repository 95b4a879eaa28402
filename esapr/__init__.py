"""esapr: sequential recommendation with ESAPR (a recency-weighted VAE) and its baselines."""
__version__ = "0.1.0"
