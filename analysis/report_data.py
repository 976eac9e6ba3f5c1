"""The Report record: everything a report shows, computed before anything is rendered."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .compute_to_target import Target
from .load import Results


@dataclass
class Report:
    results: Results
    target: Target
    metrics: pd.DataFrame  # every run (reference included): compute to target + knobs
    ranking: pd.DataFrame  # runs other than the reference, ranked
    configs: pd.DataFrame  # configurations pooled over seeds, ranked
    importance: pd.DataFrame
    knobs: list[str]  # configuration columns that vary across the ranked runs
    notes: list[str] = field(default_factory=list)

    @property
    def references(self) -> pd.DataFrame:
        return self.metrics[self.metrics["role"] == "reference"]

    @property
    def several_experiments(self) -> bool:
        return len(self.results.sources) > 1

    @property
    def multi_seed(self) -> bool:
        return not self.configs.empty and bool((self.configs["runs"] > 1).any())


def run_label(report: Report, row: pd.Series | dict) -> str:
    """A run's name in tables: its trial id, prefixed by its experiment when there are several."""
    return (
        f"{row['experiment']}/{row['trial_id']}"
        if report.several_experiments
        else str(row["trial_id"])
    )
