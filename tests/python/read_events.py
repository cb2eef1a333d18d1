#!/usr/bin/env python3
"""Reads the TensorBoard events files in a directory with TensorBoard's own reader and prints their scalars as
one line of JSON, {tag: [[step, value], ...]}, so tests/test_event_file.cpp checks the host's files against
what TensorBoard itself makes of them (framing, CRCs, protobuf). Needs the `tensorboard` package."""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator


def main() -> int:
    # 0 keeps every scalar: the default keeps a sample of 10,000 per tag.
    accumulator = EventAccumulator(sys.argv[1], size_guidance={SCALARS: 0})
    accumulator.Reload()
    scalars = {tag: [[event.step, event.value] for event in accumulator.Scalars(tag)]
               for tag in accumulator.Tags()[SCALARS]}
    print(json.dumps(scalars))
    return 0


if __name__ == "__main__":
    sys.exit(main())
