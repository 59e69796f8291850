"""A translation-like task made on the spot: dates as people write them -> ISO 8601.

"tue 5 march 1996", "march 5, 1996", "5/3/96" and "05.03.1996" all become
"1996-03-05". Each output character comes from one part of the input (the
year's digits from the year, the month's from its name or number, the day's
from the day), so a trained attention model's heatmap shows the alignment,
and it moves with the format. Deterministic: one seed, one list, on every
machine (no locale, no clock).
"""

import datetime

import numpy as np

MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# Each format writes a date the way people do; two-digit years are 1950-2049.
FORMATS = (
    lambda d: f"{WEEKDAYS[d.weekday()]} {d.day} {MONTHS[d.month - 1]} {d.year}",   # tue 5 march 1996
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",                           # 5 march 1996
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",                          # march 5, 1996
    lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {d.year}",                       # 5 mar 1996
    lambda d: f"{d.day}/{d.month}/{d.year % 100:02d}",                             # 5/3/96
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",                               # 05.03.1996
)


def date_pairs(n, seed=0, first_year=1950, last_year=2049):
    """`n` (source, target) pairs with distinct sources, e.g. ("march 5, 1996", "1996-03-05"):
    uniform dates between the two years, each in a format drawn uniformly from FORMATS.
    Split the list by position for held-out data that shares no source with training."""
    if not 1950 <= first_year <= last_year <= 2049:
        raise ValueError(f"years must satisfy 1950 <= first_year <= last_year <= 2049 (two-digit years are "
                         f"read as 1950-2049), got {first_year} and {last_year}")
    rng = np.random.default_rng(seed)
    low, high = datetime.date(first_year, 1, 1).toordinal(), datetime.date(last_year, 12, 31).toordinal()
    pairs, seen, draws = [], set(), 0
    while len(pairs) < n:  # rejection sampling, which gives up on a request near the number of sources
        draws += 1
        if draws > 20 * n + 1000:
            raise ValueError(f"could not draw {n} distinct sources from the {high - low + 1} days of "
                             f"{first_year}-{last_year}; ask for fewer, or widen the years")
        date = datetime.date.fromordinal(int(rng.integers(low, high + 1)))
        source = FORMATS[rng.integers(len(FORMATS))](date)
        if source not in seen:
            seen.add(source)
            pairs.append((source, date.isoformat()))
    return pairs
