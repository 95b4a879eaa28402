"""The model families (torch-free): each family's module declares its options, checks, label,
model and builder, and a tiny preset. A new family is one model file, one module here listed in
``FAMILIES`` and one template; config, ``esapr --help``, result labels and the notebook forms
read their lists here."""
from __future__ import annotations

from esapr.errors import UserError
from esapr.families import bert, ease, esapr_plus, marank, meantime, sas, slist, tisas, vae
from esapr.families.base import Family

# in the order of the original paper's result table (its columns)
FAMILIES: dict[str, Family] = {m.FAMILY.code: m.FAMILY for m in (
    marank, sas, tisas, bert, meantime, vae, esapr_plus, ease, slist)}


def family(code: str) -> Family:
    if code not in FAMILIES:
        raise UserError(f"unknown model_code '{code}'; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[code]


def model_label(saved: dict) -> str:
    """A run's name in tables, from its saved options: its model_label (templates set VAE_tw,
    ...), else its family's label."""
    code = saved.get("model_code") or "?"
    return saved.get("model_label") or (FAMILIES[code].label if code in FAMILIES else str(code))
