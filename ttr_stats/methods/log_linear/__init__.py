"""Log-linear attention: Fenwick buckets of linear-attention memories (optimizers/log_linear.py)."""
