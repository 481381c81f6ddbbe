"""Federated scenarios: datasets with natural or simulated clients, a model and sane defaults.

=============  =====================================================  ========  ===========
name           data                                                   metric    clients
=============  =====================================================  ========  ===========
digits         sklearn 8×8 digits (default)                           accuracy  20, Dir(0.5)
healthcare     sklearn breast cancer, 6 hospitals                     auroc     natural
fraud          SYNTHETIC card transactions, 8 banks                   auprc     natural
iot            SYNTHETIC sensor windows, 120 devices                  f1        natural
mnist          local IDX files (never downloaded)                     accuracy  100, Dir(0.5)
fashion-mnist  local IDX files (never downloaded)                     accuracy  100, Dir(0.5)
cifar10        local python batches (never downloaded)                accuracy  50, Dir(0.5)
femnist        LEAF JSON shards (never downloaded), 62 classes        accuracy  natural
shakespeare    LEAF JSON shards (never downloaded), next character    accuracy  natural
=============  =====================================================  ========  ===========

femnist and shakespeare keep LEAF's own partition: one client per writer / speaking role
(:mod:`fedpress.data.leaf`).

>>> from fedpress.data import get_scenario
>>> sc = get_scenario("fraud")
>>> data = sc.load(seed=0)
>>> sc.metric, data.n_classes, sc.synthetic
('auprc', 2, True)
"""

from fedpress.data.base import Scenario, ScenarioData
from fedpress.data.files import DatasetFormatError, read_cifar_batch, read_idx
from fedpress.data.leaf import (
    SHAKESPEARE_VOCAB,
    LeafFilesNotFound,
    LeafSplit,
    load_leaf,
    read_leaf_split,
    write_leaf_json,
)
from fedpress.data.metrics import HIGHER_IS_BETTER, METRICS, compute_metric
from fedpress.data.registry import DEFAULT_SCENARIO, SCENARIOS, get_scenario, list_scenarios

__all__ = [
    "DEFAULT_SCENARIO",
    "HIGHER_IS_BETTER",
    "METRICS",
    "SCENARIOS",
    "SHAKESPEARE_VOCAB",
    "DatasetFormatError",
    "LeafFilesNotFound",
    "LeafSplit",
    "Scenario",
    "ScenarioData",
    "compute_metric",
    "get_scenario",
    "list_scenarios",
    "load_leaf",
    "read_cifar_batch",
    "read_idx",
    "read_leaf_split",
    "write_leaf_json",
]
