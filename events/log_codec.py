"""Binary encoding of log records: msgpack arrays of the validated fixed-point events.

Both ends are ours, so the log stores what the reducer needs (ints, no decimal
strings to parse again). Every int in an event fits int64 (validated on input).
"""

import msgspec

from ringfence.core.model import LogRecord

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(LogRecord)

encode_record = _encoder.encode
decode_record = _decoder.decode
DecodeError = msgspec.DecodeError  # also raised (as ValidationError subclass) on a wrong shape
