"""Data layer: schema, dataset folders, loaders, the synthetic shop and splits."""

from shoprank.data.dataset import Dataset, IdMap
from shoprank.data.schema import (
    CATALOG,
    INTERACTIONS,
    JUDGMENTS,
    Col,
    Event,
    TableSpec,
)

__all__ = ["CATALOG", "INTERACTIONS", "JUDGMENTS", "Col", "Dataset", "Event", "IdMap", "TableSpec"]
