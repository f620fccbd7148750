"""The input contract of a bundle: ``bundle.json``'s optional ``input`` section.

It states what the model was trained on, so a user can tell whether their data fits before
running it: which source bands fed it and in what type, how they were brought to uint8, the ground
sampling distance, and what a foreground pixel means. Training writes it (jobs/training/contract.py
derives it from the data); bundles written before it existed have none -- the contract is then
unknown, never guessed.

A mixture of data sets (training's ``data.source.kind: mixture``) gives one contract per member in
``members``; a top-level field holds the value the members agree on, else ``"mixed"``.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

# A field whose mixture members disagree (their own values are in ``members``).
MIXED = "mixed"
Mixed = Literal["mixed"]


class RadiometryContract(BaseModel):
    """How the input reached the model's uint8: ``identity`` (uint8 passed through, as photos)
    or ``stretch`` (a per-scene linear stretch between the given percentiles)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["identity", "stretch"]
    percentiles: Optional[tuple[float, float]] = None


class InputContract(BaseModel):
    """Contents of ``bundle.json`` ``input``. Unknown fields are rejected, as in ``BundleMeta``."""

    model_config = ConfigDict(extra="forbid")

    # What a foreground (1) pixel of the output means, e.g. "crack", "road".
    labels: str = Field(min_length=1)
    # numpy dtype name of the input the model was trained on ("uint8" for photos).
    dtype: Union[Mixed, str] = Field(min_length=1)
    # Bands per pixel the model was fed, before samsp's mapping to 3 (1: grey, replicated).
    channels: Union[Mixed, Annotated[int, Field(ge=1)]]
    radiometry: Union[Mixed, RadiometryContract]
    # 1-based source bands read (None: not a band selection -- photos, synthetic images).
    bands: Union[Mixed, list[Annotated[int, Field(ge=1)]], None] = None
    # The bands' descriptions where every band had one (None: unnamed).
    band_names: Union[Mixed, list[str], None] = None
    # Ground sampling distance in metres (None: photos, or a CRS not in metres).
    gsd_m: Union[Mixed, Annotated[float, Field(gt=0)], None] = None
    # A mixture's members by name, each with its own contract.
    members: Optional[dict[str, "InputContract"]] = None


def combine_contracts(labels: str, members: dict[str, dict]) -> dict:
    """One contract (as a dict) for several members' contracts: each field the members agree on,
    else ``"mixed"``; the members themselves under ``members``."""
    parts = list(members.values())
    out: dict = {"labels": labels}
    for key in ("dtype", "channels", "radiometry", "bands", "band_names", "gsd_m"):
        values = [p.get(key) for p in parts]
        out[key] = values[0] if all(v == values[0] for v in values) else MIXED
    out["members"] = {name: {**c, "labels": labels} for name, c in members.items()}
    return out
