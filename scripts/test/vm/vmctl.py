#!/usr/bin/env python3
"""Host side of the test VM (scripts/test/vm/README.md), standard library only.

  vmctl.py qga SOCKET COMMAND [ARGUMENTS-JSON] [--timeout S]
      Talk to qemu-ga over run.sh's --agent socket with the guest agent
      protocol: 0xFF to reset the agent's parser, guest-sync-delimited with a
      random id until the agent answers with that id after its 0xFF
      delimiter, then COMMAND. Prints the "return" value as JSON; exits 1
      with the agent's error ("error": {"class", "desc"}) or on a timeout.
  vmctl.py send SOCKET LINE
      Send LINE on run.sh's --ctl socket (the guest reads it with vm_recv).
  vmctl.py wait-event LOG NAME [--timeout S]
      Wait until the console LOG has "CAIRN-VM-EVENT: NAME" (the guest's
      vm_event NAME); exits 1 on a timeout or when the verdict line comes
      first.
"""

import argparse
import json
import os
import random
import socket
import sys
import time


def connect(path, deadline):
    """A connected Unix stream socket to path; retries until deadline while
    qemu has not created or is not yet listening on it."""
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


class Agent:
    """One guest agent connection. Every reply is one JSON object ending
    with a newline; guest-sync-delimited's reply comes after a 0xFF byte."""

    def __init__(self, path, deadline):
        self.deadline = deadline
        self.sock = connect(path, deadline)
        self.buf = b""

    def _read_more(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the guest agent did not answer in time")
        self.sock.settimeout(min(left, 1.0))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        if not data:
            raise ConnectionError("the guest agent's socket closed")
        self.buf += data
        return True

    def _line(self):
        """The next reply line, or None if none came within a second."""
        t = time.monotonic() + 1.0
        while b"\n" not in self.buf:
            if time.monotonic() >= t or not self._read_more():
                return None
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def sync(self):
        """guest-sync-delimited until the agent answers our id: what came
        before its 0xFF (stale replies to an earlier client) is dropped."""
        while True:
            ident = random.randrange(1, 2**31)
            self.sock.sendall(b"\xff" + json.dumps(
                {"execute": "guest-sync-delimited", "arguments": {"id": ident}}).encode() + b"\n")
            t = time.monotonic() + 1.0
            while time.monotonic() < t:
                if b"\xff" in self.buf:
                    self.buf = self.buf[self.buf.rindex(b"\xff") + 1:]
                    line = self._line()
                    if line is None:
                        break
                    reply = json.loads(line)
                    if reply.get("return") == ident:
                        return
                    continue
                if not self._read_more():
                    break
            if time.monotonic() >= self.deadline:
                raise TimeoutError("the guest agent did not answer guest-sync-delimited")

    def execute(self, command, arguments=None):
        msg = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            line = self._line()
            if line is not None and line.strip():
                return json.loads(line)
            if time.monotonic() >= self.deadline:
                raise TimeoutError(f"the guest agent did not answer {command}")


def cmd_qga(a):
    deadline = time.monotonic() + a.timeout
    agent = Agent(a.socket, deadline)
    agent.sync()
    reply = agent.execute(a.command, json.loads(a.arguments) if a.arguments else None)
    if "error" in reply:
        print(f"vmctl: {a.command}: {reply['error'].get('class')}: {reply['error'].get('desc')}", file=sys.stderr)
        return 1
    if "return" not in reply:
        print(f"vmctl: {a.command}: a reply with neither return nor error: {reply}", file=sys.stderr)
        return 1
    print(json.dumps(reply["return"]))
    return 0


def cmd_send(a):
    s = connect(a.socket, time.monotonic() + 10)
    s.sendall(a.line.encode() + b"\n")
    # Keep the connection until the guest has had the bytes: closing a
    # chardev socket at once can drop what qemu had not yet queued.
    time.sleep(0.5)
    s.close()
    return 0


def cmd_wait_event(a):
    want = f"CAIRN-VM-EVENT: {a.name}"
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        try:
            with open(a.log, "rb") as f:
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            line = line.rstrip("\r")
            if line == want:
                return 0
            if line.startswith("CAIRN-VM-RESULT: "):
                print(f"vmctl: the guest ended before {a.name}: {line}", file=sys.stderr)
                return 1
        time.sleep(0.1)
    print(f"vmctl: no '{want}' in {a.log} after {a.timeout}s", file=sys.stderr)
    return 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("qga")
    q.add_argument("socket")
    q.add_argument("command")
    q.add_argument("arguments", nargs="?")
    q.add_argument("--timeout", type=float, default=30)
    s = sub.add_parser("send")
    s.add_argument("socket")
    s.add_argument("line")
    w = sub.add_parser("wait-event")
    w.add_argument("log")
    w.add_argument("name")
    w.add_argument("--timeout", type=float, default=120)
    a = p.parse_args()
    try:
        return {"qga": cmd_qga, "send": cmd_send, "wait-event": cmd_wait_event}[a.cmd](a)
    except (OSError, TimeoutError, ValueError) as e:
        print(f"vmctl: {a.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
