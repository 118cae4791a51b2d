"""Declaring protocols: everything a protocol file imports comes from here."""

from hpcem.protocol.declare import MPI, Citation, Input, Output, Protocol, Step
from hpcem.protocol.params import Condition, Param, when

__all__ = ["MPI", "Citation", "Condition", "Input", "Output", "Param", "Protocol", "Step", "when"]
