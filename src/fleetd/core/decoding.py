"""Decoding a client's JSON body: whatever msgspec raises becomes InvalidArgument."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import msgspec

from .errors import InvalidArgument


@contextmanager
def decoding(message: str, body: str) -> Iterator[None]:
    """Turn whatever decoding a request body raises into InvalidArgument: every JSON body a client sends
    goes through here (RPC requests, DDI feedback and config data)."""
    try:
        yield
    except msgspec.ValidationError as e:  # a subclass of DecodeError: catch it first
        raise InvalidArgument(f"invalid {message}: {e}") from None
    except msgspec.DecodeError as e:
        raise InvalidArgument(f"malformed JSON in {body}: {e}") from None
    except RecursionError:
        # msgspec's guard against a stack overflow, at Python's recursion limit: arrays or objects nested
        # hundreds deep, in a field this server skips. A depth count of every body before decoding would
        # cost the telemetry hot path five times the decode; no fleetd message nests more than a few levels.
        raise InvalidArgument(f"the {body} nests arrays or objects too deeply; no fleetd message nests more "
                              "than a few levels") from None
