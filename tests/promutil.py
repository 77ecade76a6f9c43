"""Reading Prometheus text exposition in tests, with prometheus_client's own parser."""
from __future__ import annotations

from typing import Optional

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Family name -> type, and (sample name, sorted labels) -> value.  Raises on malformed input."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> Optional[float]:
    return samples.get((name, tuple(sorted(labels.items()))))


def matching(samples: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name`` whose labels include ``labels``."""
    return {key[1]: v for key, v in samples.items()
            if key[0] == name and all(dict(key[1]).get(k) == want for k, want in labels.items())}
