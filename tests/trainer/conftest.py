"""Trainer tests: keep OpenBLAS single-threaded.

The surrogate's fits use many small (~100 x 100) matrix operations; with OpenBLAS threads on a busy
2-core machine each one can take 10-50x longer than single-threaded. This only takes effect if
numpy has not been imported yet, which is the normal case when pytest starts.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
