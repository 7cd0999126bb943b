"""Writing pages in the Prometheus text format (0.0.4) and OpenMetrics 1.0, fast.

prometheus_client's encoders validate and escape every label of every
sample (about 5-20 µs a sample here); a scrape of a node with 50 groups
renders thousands of samples, in the node and in every child. Our families
have fixed, valid names and label sets known when the state is created, so
label strings are built once (:func:`labels`) and a sample costs one string
format. Format negotiation still uses prometheus_client's ``choose_encoder``;
this module writes what the negotiated content type says.

Every family starts with its ``# HELP`` line (the page merge relies on it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(**pairs: str) -> str:
    """``member="api",endpoint="GetJob"``: build once, reuse for every sample."""
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs.items())


def join_labels(*parts: str) -> str:
    return ",".join(p for p in parts if p)


def format_value(value: float) -> str:
    if type(value) is int:  # counts, bytes: the common case, and the cheapest
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return f"{int(value)}.0"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def is_openmetrics(content_type: str) -> bool:
    return content_type.startswith("application/openmetrics-text")


class PageWriter:
    """Families and samples, appended in order; :meth:`finish` gives the page."""

    def __init__(self, *, openmetrics: bool) -> None:
        self.openmetrics = openmetrics
        self._out: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        """Start a family. ``name`` as samples use it: ``..._total`` for a counter."""
        if self.openmetrics:
            if kind == "counter" and name.endswith("_total"):
                name = name[:-6]
            help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        else:
            help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self._out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")

    def sample(self, name: str, label_text: str, value: float) -> None:
        if label_text:
            self._out.append(f"{name}{{{label_text}}} {format_value(value)}\n")
        else:
            self._out.append(f"{name} {format_value(value)}\n")

    def histogram(self, name: str, label_text: str, les: Iterable[str], cumulative: Iterable[int], total: float) -> None:
        """The ``_bucket`` samples (``les`` already formatted, ending with ``+Inf``), ``_count`` and ``_sum``."""
        out = self._out
        prefix = f'{name}_bucket{{{label_text},le="' if label_text else f'{name}_bucket{{le="'
        count = 0
        for le, count in zip(les, cumulative, strict=True):
            out.append(f'{prefix}{le}"}} {count}\n')
        self.sample(f"{name}_count", label_text, count)
        self.sample(f"{name}_sum", label_text, total)

    def metric(self, metric: Metric) -> None:
        """A family from prometheus_client (a registry's collector), written the same way."""
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        kind = metric.type if metric.type in ("counter", "gauge", "histogram", "summary") else "untyped"
        if self.openmetrics and kind == "untyped":
            kind = "unknown"
        self.family(name, kind, metric.documentation)
        for s in metric.samples:
            if s.name.endswith("_created"):
                continue  # creation timestamps: noise for these metrics
            self.sample(s.name, ",".join(f'{k}="{escape_label_value(v)}"' for k, v in s.labels.items()), s.value)

    def finish(self) -> bytes:
        if self.openmetrics:
            self._out.append("# EOF\n")
        return "".join(self._out).encode("utf-8")

    def text(self) -> str:
        """The page so far, without the OpenMetrics end marker (for merging)."""
        return "".join(self._out)
