"""Telemetry wire types: observations and the discovery of devices and points. No I/O.

An :class:`Observation` is one value of one point at one instant. It is encoded as a msgpack
array (``array_like``), so a list of them costs little more than the values themselves:
``["b1/ahu-1/sat", 1718000000.0, 13.2, "good"]``.

:func:`observation_columns` turns a list of observations into four field lists with one C-level
pass per field: what bulk validation and bulk inserts work on, with no Python code per row.

Discovery describes what a connector found in the field: :class:`DeviceInfo` (a physical or
logical device) and :class:`PointInfo` (one readable, maybe writable, value of a device). The
link's batch messages that carry these types are defined with the link, not here.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from operator import attrgetter
from typing import NamedTuple

import msgspec

__all__ = [
    "DeviceInfo",
    "Discovery",
    "Observation",
    "ObservationColumns",
    "PointInfo",
    "PointKind",
    "Quality",
    "Value",
    "decode_observations",
    "encode_observations",
    "observation_columns",
]

Value = float | int | bool | str


class Quality(enum.StrEnum):
    """How far a value can be trusted (the same three grades as OPC and BACnet's status flags)."""

    GOOD = "good"
    UNCERTAIN = "uncertain"  # stale, substituted or out of the sensor's calibrated range
    BAD = "bad"  # communication failure, sensor fault; the value is a placeholder


class Observation(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One value of one point at one instant (``ts`` in unix seconds).

    Its fields are atoms (it can never be part of a reference cycle), so it is not tracked by
    the garbage collector: the many observations a cloud holds while a group commits do not
    make every collection walk them.
    """

    point_id: str
    ts: float
    value: Value
    quality: str = Quality.GOOD.value


class ObservationColumns(NamedTuple):
    """The fields of a list of observations, one list per field, in the same order."""

    point_ids: list[str]
    ts: list[float]
    values: list[Value]
    qualities: list[str]


_FIELDS = tuple(attrgetter(name) for name in Observation.__struct_fields__)


def observation_columns(observations: Sequence[Observation]) -> ObservationColumns:
    """The observations as columns (``map`` of an ``attrgetter`` per field: no Python per row)."""
    point_id, ts, value, quality = _FIELDS
    return ObservationColumns(
        list(map(point_id, observations)),
        list(map(ts, observations)),
        list(map(value, observations)),
        list(map(quality, observations)),
    )


class PointKind(enum.StrEnum):
    """What a point's value means; ``numeric`` covers every analog reading."""

    NUMERIC = "numeric"
    BOOLEAN = "boolean"
    ENUM = "enum"
    TEXT = "text"
    COUNTER = "counter"  # monotonic total (energy, volume): consumers derive rates from it


class DeviceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A device a connector found: a controller, meter, sensor, or a logical unit such as an AHU."""

    device_id: str
    name: str
    kind: str  # e.g. "ahu", "vav", "meter", "zone-sensor"
    vendor: str = ""
    model: str = ""
    location: str = ""
    attributes: dict[str, str] = msgspec.field(default_factory=dict)


class PointInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One value of a device: its identity, meaning and unit symbol (``°C``, ``kW``, ``ppm``...)."""

    point_id: str
    device_id: str
    name: str
    kind: str = PointKind.NUMERIC.value
    unit: str = ""
    writable: bool = False
    description: str = ""


class Discovery(msgspec.Struct, frozen=True, kw_only=True):
    """What a connector currently sees: its devices and their points."""

    devices: tuple[DeviceInfo, ...] = ()
    points: tuple[PointInfo, ...] = ()


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Observation])


def encode_observations(observations: list[Observation] | tuple[Observation, ...]) -> bytes:
    """Encode observations as one msgpack array of arrays."""
    return _encoder.encode(observations)


def decode_observations(data: bytes | memoryview) -> list[Observation]:
    """Decode what :func:`encode_observations` produced; raises ``msgspec.ValidationError``."""
    return _decoder.decode(data)
