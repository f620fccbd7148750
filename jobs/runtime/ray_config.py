"""The ``ray:`` config section every Ray job shares (where the driver connects, or how big an
embedded local Ray it starts); ``jobs.runtime.ray_session.init_ray`` takes its fields."""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from jobs.runtime.config import StrictModel


class RayConfig(StrictModel):
    # Ray address; None = $RAY_ADDRESS (cluster / `ray job submit`) or an embedded local Ray.
    address: Optional[str] = None
    # CPUs of the embedded local Ray (None = all of this machine).
    num_cpus: Optional[int] = Field(default=None, ge=1)
