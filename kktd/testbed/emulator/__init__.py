"""A Shtrih-M KKT emulator on a pty or TCP, for tests, benchmarks and trying kktd without a KKT.

Standalone: `kktd emulator --link /tmp/kkt0 --archive 100 --rate 2` (or `--tcp 7778` for a KKT
on the network) prints the `kkt.port` value that reaches it and runs until Ctrl-C. Options:
`--fn`, `--seed`, `--baud`, `--busy-every N`, `--host` (with `--tcp`), `--fixtures FILE` (JSON
lines `{"fd", "doc_type", "tlv_hex"[, "record"]}`).

In process (inside a running event loop)::

    device = KktDevice(DocumentGenerator(rng=random.Random(1)), archive=500)  # FDs 1..500
    async with PtyEmulator(device, link=tmp_path / "kkt0") as emulator:
        ...                                  # kkt.port = emulator.port (a stable symlink)
        device.issue_receipt()               # one receipt now (after a shift open if needed)
        device.issue()                       # the next FD a shop would issue
        await emulator.issue_at_rate(200.0, count=500)  # in the background; await to finish
        for document in device.documents:    # what the FN holds, in FD order
            document.fd, document.doc_type, document.raw  # raw: the FD's TLV bytes
            document.record                  # the emulator's own fields == Document.to_fields()

Other sources and state: `KktDevice(documents=load_fixtures(path))`, `device.fn`,
`device.last_fd`, `device.replace_fn("9999078900009999")` (a new FN, FDs from 1),
`device.confirm_ofd(up_to)` (FF39 backlog), `device.warning_flags`.

Fault switches, settable at any time (counters run down as they fire; `device.faults` shows
what is left, `device.clear_faults()` drops them all):

- `device.corrupt_lrc(n)`: the next n answer frames go out with a wrong LRC;
- `device.lose_acks(n)`: the next n host frames get no ACK; they are executed and the answer is
  held until the host ENQs (then ACK + the answer);
- `device.stray_ff(n)`: a stray FF before each of the next n control bytes;
- `device.busy(n)` / `device.busy_for(seconds)`: answer 0x50 without executing;
- `device.inject_garbage(data)`: bytes between the ACK and the next answer frame, which then
  follows after a pause longer than the host's byte timeout (`b"\\x02\\xff"` is a frame with
  LEN 255 and nothing after it);
- `device.garble_fn(n)`: the next n FF01 answers carry another 16-digit FN number with the LRC
  of the true answer (two flips of one bit, which the XOR LRC cannot see);
- `device.answer_wrong_fd(n)`: the next n FF3A reads serve the neighbouring FD (its 1040 differs);
- `emulator.baud = 4800`: the line throttled to 10 bits per byte at that rate;
- `emulator.vanish()` / `emulator.reappear()`: the port goes away (hangup, link removed; over
  TCP the connection closed and new ones refused) and comes back under the same name;
- `emulator.freeze()` / `emulator.thaw()`: the KKT hangs with the line open, then recovers;
- `emulator.busy_every = 11`, `emulator.bad_lrc_every = 7`: periodic faults, by host frame.

`TcpEmulator(device, port=0)` serves the same device on a TCP port (`emulator.port` is then
`tcp://127.0.0.1:PORT`), one connection at a time like the KKT itself, with the stray FF a KKT
sends after each host ACK over RNDIS/TCP (`emulator.ff_after_ack`).

`KktDevice(strict_output=True)` refuses FF01/FF39/FF0A with 0x02 while a document read is
half done. `KktDevice(ff3b=...)` shapes the FF3B answers: "split" (default, as Shtrih-M does: one
TLV per answer, a TLV longer than 252 bytes in several), "tlv" (the old shape: one whole TLV per
answer; an FD with a longer TLV cannot be added) or "blocks" (`ff3b_block` bytes each, cut
through TLVs). `DocumentGenerator(requisite_rate=0.5)` gives half the receipts a 332-byte 1084
additional requisite; `device.issue_receipt(requisite=(name, value))` one on demand.
`device.stats` and `device.executed` count what the host did (ENQs, NAKs, resent answers,
commands executed) for tests to assert on.
"""

from __future__ import annotations

from kktd.testbed.emulator.device import Faults, KktDevice
from kktd.testbed.emulator.documents import (
    DocumentGenerator,
    EmulatedDocument,
    dump_fixtures,
    load_fixtures,
)
from kktd.testbed.emulator.pty import PtyEmulator
from kktd.testbed.emulator.serving import Serving
from kktd.testbed.emulator.tcp import TcpEmulator

__all__ = [
    "DocumentGenerator",
    "EmulatedDocument",
    "Faults",
    "KktDevice",
    "PtyEmulator",
    "Serving",
    "TcpEmulator",
    "dump_fixtures",
    "load_fixtures",
]
