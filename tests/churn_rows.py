"""Request rows for the scaffold's churn service."""
import random


def rows_like(golden_rows, n, seed=0):
    "`n` rows built by mixing the fields of the golden rows (valid for the contract, varied)."
    rnd = random.Random(seed)
    keys = list(golden_rows[0])
    out = []
    for i in range(n):
        row = {k: rnd.choice(golden_rows)[k] for k in keys}
        row['customer_id'] = f'LOAD-{i:06d}'
        out.append(row)
    return out
