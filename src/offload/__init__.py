"""Call blocking code from async Python without freezing the event loop."""

from __future__ import annotations

from ._exceptions import OffloadError as OffloadError
from ._exceptions import Overloaded as Overloaded
from ._exceptions import PoolClosed as PoolClosed
from ._exceptions import SerializationError as SerializationError
from ._exceptions import WorkerCrashed as WorkerCrashed
from ._monitor import BlockingEvent as BlockingEvent
from ._monitor import Monitor as Monitor
from ._monitor import monitor as monitor
