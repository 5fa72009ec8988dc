"""Exception types. Every error the library raises on purpose derives from TDNError."""

from __future__ import annotations


class TDNError(Exception):
    """Base class of the errors tdn_core raises on purpose."""


class BackendUnavailable(TDNError, ImportError):
    """A backend exists but cannot run here (missing package, device or setting)."""


class UnsupportedDescriptor(TDNError, ValueError):
    """A backend cannot compute the requested tensor product (mode, group, weights...)."""


class FactorFileError(TDNError, ValueError):
    """A stored CP factor file is unreadable, inconsistent or non-finite."""


class AllocationTooLarge(TDNError, MemoryError):
    """An array would need more memory than the machine has available: refused before
    the allocation, so the process fails with a message instead of being killed."""
