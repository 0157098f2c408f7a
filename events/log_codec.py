"""Binary encoding of log records: msgpack arrays of the validated fixed-point events.

Both ends are ours, so the log stores what the reducer needs (ints, no decimal
strings to parse again). Every int in an event fits int64 (validated on input).
"""

import msgspec

from ringfence.core import model as m
from ringfence.core import reasons as r
from ringfence.core.model import LogRecord
from ringfence.events.json_codec import invalid

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(LogRecord)

encode_record = _encoder.encode
decode_record = _decoder.decode
DecodeError = msgspec.DecodeError  # also raised (as ValidationError subclass) on a wrong shape


def decode_logged(payload) -> m.Event | m.InvalidInput:
    """A log record as its event, or an InvalidInput (a dead letter) if it does not decode: never raises."""
    try:
        return decode_record(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        return invalid(r.UNDECODABLE_RECORD, f"log record does not decode: {error}", bytes(payload))
