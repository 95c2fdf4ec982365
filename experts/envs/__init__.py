"""Per-domain environment builders: each module knows one suite's ids, preprocessing and columns."""
