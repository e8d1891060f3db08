"""LLDP: listen for one LLDP frame on every interface, all at once.

Raw ``AF_PACKET`` sockets (one per interface, bound to the LLDP ethertype
0x88cc, joined to the LLDP multicast group 01:80:c2:00:00:0e) are watched
by the reactor: no thread, no blocking.  The first frame of each interface
is parsed into its TLVs, as ``[type, "<hex of the value>"]`` pairs (the
form ironic-python-agent reports and Ironic's LLDP hooks read).  Listening
stops when every interface has answered or after ``timeout`` seconds.

The collector starts in the background when the agent starts; nothing
waits for it (lookup and heartbeats go on); the inventory carries what has
arrived so far.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IReactorFDSet,
    IReactorTime,
    IReadDescriptor,
)
from twisted.logger import Logger
from zope.interface import implementer

from ipa_twisted.observer import OneShotObserver

log = Logger()

ETH_P_LLDP = 0x88CC
LLDP_MULTICAST = bytes.fromhex("0180c200000e")
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_MULTICAST = 0
ETH_HEADER = 14
MAX_FRAME = 9216

TLV_END = 0


class LLDPParseError(ValueError):
    pass


def parse_lldp_tlvs(payload: bytes) -> list[tuple[int, bytes]]:
    """The TLVs of an LLDPDU (the Ethernet payload), up to End of LLDPDU."""
    tlvs: list[tuple[int, bytes]] = []
    offset = 0
    while offset + 2 <= len(payload):
        header = struct.unpack_from("!H", payload, offset)[0]
        tlv_type, length = header >> 9, header & 0x1FF
        offset += 2
        if tlv_type == TLV_END:
            return tlvs
        if offset + length > len(payload):
            raise LLDPParseError(
                f"TLV type {tlv_type} claims {length} bytes, "
                f"{len(payload) - offset} left")
        tlvs.append((tlv_type, payload[offset:offset + length]))
        offset += length
    if not tlvs:
        raise LLDPParseError("no TLV in frame")
    return tlvs


def parse_frame(frame: bytes) -> list[tuple[int, bytes]]:
    """TLVs of an Ethernet frame carrying LLDP (an 802.1Q tag is skipped)."""
    if len(frame) < ETH_HEADER:
        raise LLDPParseError("frame shorter than an Ethernet header")
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    offset = ETH_HEADER
    if ethertype == 0x8100 and len(frame) >= 18:
        ethertype = struct.unpack_from("!H", frame, 16)[0]
        offset = 18
    if ethertype != ETH_P_LLDP:
        raise LLDPParseError(f"not an LLDP frame (ethertype {ethertype:#x})")
    return parse_lldp_tlvs(frame[offset:])


def tlvs_as_wire(tlvs: Iterable[tuple[int, bytes]]) -> list[list[Any]]:
    return [[t, v.hex()] for t, v in tlvs]


def build_lldpdu(tlvs: Iterable[tuple[int, bytes]]) -> bytes:
    """An LLDPDU from TLVs (End of LLDPDU appended)."""
    out = bytearray()
    for t, v in list(tlvs) + [(TLV_END, b"")]:
        out += struct.pack("!H", (t << 9) | len(v)) + v
    return bytes(out)


def _membership(ifindex: int) -> bytes:
    # struct packet_mreq { int ifindex; ushort type; ushort alen; uchar addr[8] }
    return struct.pack("iHH8s", ifindex, PACKET_MR_MULTICAST, 6,
                       LLDP_MULTICAST)


@implementer(IReadDescriptor)
class _Listener:
    def __init__(self, collector: "LLDPCollector", name: str,
                 sock: socket.socket) -> None:
        self.collector = collector
        self.name = name
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return f"lldp {self.name}"

    def doRead(self) -> None:
        while True:
            try:
                frame = self.sock.recv(MAX_FRAME)
            except BlockingIOError:
                return
            except OSError as e:
                log.warn("LLDP on {name}: {e}", name=self.name, e=e)
                self.collector._close(self)
                return
            try:
                tlvs = parse_frame(frame)
            except LLDPParseError as e:
                log.debug("LLDP on {name}: ignoring a frame: {e}",
                          name=self.name, e=e)
                continue
            self.collector._received(self, tlvs)
            return

    def connectionLost(self, reason: object) -> None:
        self.collector._close(self)


class LLDPCollector:
    """Listens on interfaces; ``results`` fills in as frames arrive."""

    def __init__(self, reactor: Any, timeout: float) -> None:
        self._reactor: IReactorFDSet = reactor
        self._clock: IReactorTime = reactor
        self.timeout = timeout
        self.results: dict[str, list[list[Any]]] = {}
        self._listeners: dict[str, _Listener] = {}
        self._timer: Any = None
        self._done: OneShotObserver[dict[str, list[list[Any]]]] = \
            OneShotObserver()
        self.started = False
        #: interfaces listened on; once done, those that heard nothing
        #: have an empty list in ``results`` (as IPA reports them)
        self.listened: set[str] = set()

    def start(self, interfaces: Iterable[str],
              has_carrier: Callable[[str], bool] | None = None) -> None:
        """Listen on each interface (errors are logged, never raised).

        An interface without carrier cannot hear anything: it is not
        waited for (it reports an empty list), so that a machine with
        unplugged ports does not always wait the whole timeout.
        """
        self.started = True
        carrier = has_carrier or _has_carrier
        for name in interfaces:
            if name == "lo" or name in self._listeners:
                continue
            if not carrier(name):
                log.info("LLDP: {name} has no carrier; not waiting for it",
                         name=name)
                self.listened.add(name)
                continue
            try:
                sock = self._open(name)
            except OSError as e:
                log.warn("cannot listen for LLDP on {name}: {e}", name=name,
                         e=e)
                continue
            listener = _Listener(self, name, sock)
            self._listeners[name] = listener
            self.listened.add(name)
            self._reactor.addReader(listener)
        if not self._listeners:
            self._finish()
            return
        log.info("listening for LLDP on {names} for up to {t} s",
                 names=", ".join(sorted(self._listeners)), t=self.timeout)
        self._timer = self._clock.callLater(self.timeout, self._expired)

    @staticmethod
    def _open(name: str) -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                             socket.htons(ETH_P_LLDP))
        try:
            sock.bind((name, ETH_P_LLDP))
            ifindex = socket.if_nametoindex(name)
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                            _membership(ifindex))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _received(self, listener: _Listener, tlvs: list[tuple[int, bytes]]
                  ) -> None:
        self.results[listener.name] = tlvs_as_wire(tlvs)
        log.info("LLDP frame on {name}: {n} TLVs", name=listener.name,
                 n=len(tlvs))
        self._close(listener)
        if not self._listeners:
            self._finish()

    def _close(self, listener: _Listener) -> None:
        if self._listeners.get(listener.name) is listener:
            del self._listeners[listener.name]
            self._reactor.removeReader(listener)
            listener.sock.close()

    def _expired(self) -> None:
        self._timer = None
        if self._listeners:
            log.info("no LLDP frame after {t} s on {names}", t=self.timeout,
                     names=", ".join(sorted(self._listeners)))
        self.stop()

    def stop(self) -> None:
        for listener in list(self._listeners.values()):
            self._close(listener)
        self._finish()

    def _finish(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._done.fired:
            for name in self.listened:
                self.results.setdefault(name, [])
            self._done.fire(dict(self.results))

    @property
    def finished(self) -> bool:
        return self._done.fired

    def when_done(self) -> "Deferred[dict[str, list[list[Any]]]]":
        """The results once listening ends (a new Deferred per caller:
        cancelling it only ends that wait)."""
        return self._done.when_fired()


def _has_carrier(name: str, sys_net: str = "/sys/class/net") -> bool:
    try:
        with open(os.path.join(sys_net, name, "carrier")) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def interface_names(sys_net: str = "/sys/class/net") -> list[str]:
    try:
        return sorted(n for n in os.listdir(sys_net) if n != "lo")
    except OSError:
        return []
