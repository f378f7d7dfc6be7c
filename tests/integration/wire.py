"""Scapy test harness: what really crosses the simulated underlay.

tcpdump captures inside the underlay namespace (on every bridge port, `-i any`)
and scapy dissects the capture, so assertions are about real frames.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from scapy.all import rdpcap  # type: ignore[import-untyped]
from scapy.packet import Packet


class UnderlayCapture:
    """`with UnderlayCapture(netns) as cap: ...; cap.packets` -> scapy packets."""

    def __init__(self, netns: str, bpf: str = "", snaplen: int = 256) -> None:
        self.netns = netns
        self.bpf = bpf
        self.snaplen = snaplen
        self._dir = tempfile.TemporaryDirectory(prefix="ovl-cap-")
        self.path = Path(self._dir.name) / "underlay.pcap"
        self.packets: list[Packet] = []

    def __enter__(self) -> "UnderlayCapture":
        cmd = ["ip", "netns", "exec", self.netns, "tcpdump", "-Z", "root", "--immediate-mode", "-i", "any", "-U", "-n", "-s", str(self.snaplen),
               "-w", str(self.path)]
        if self.bpf:
            cmd.append(self.bpf)
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # tcpdump says "listening on" once the capture is live (after a note on the link type).
        assert self._proc.stderr is not None
        said = []
        while not said or "listening" not in said[-1]:
            line = self._proc.stderr.readline().decode()
            if not line:
                self._proc.kill()
                raise RuntimeError(f"tcpdump did not start: {''.join(said)}")
            said.append(line)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        time.sleep(0.2)  # let the last frames reach the file (immediate mode: no ring-block delay)
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self.packets = list(rdpcap(str(self.path))) if self.path.exists() else []
        self._dir.cleanup()
