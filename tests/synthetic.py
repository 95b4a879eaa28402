"""Small synthetic interaction files with learnable sequential structure, for training tests."""
from pathlib import Path

import numpy as np


def write_ratings_csv(path: Path, n_users: int = 120, n_items: int = 60, min_len: int = 8, max_len: int = 40,
                      seed: int = 0) -> Path:
    """Each user walks a fixed item cycle (item i -> i+1 mostly), so the next item is predictable.
    Header user,item,rating,timestamp (the user-file CSV format)."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        length = int(rng.integers(min_len, max_len + 1))
        item = int(rng.integers(1, n_items + 1))
        t = 1_000_000 + int(rng.integers(0, 10_000))
        for _ in range(length):
            rows.append(f"{user},{item},{int(rng.integers(1, 6))},{t}")
            step = 1 if rng.random() < 0.85 else int(rng.integers(2, 5))
            item = (item - 1 + step) % n_items + 1
            t += int(rng.integers(60, 86_400 * 3))
    path = Path(path)
    path.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
    return path
