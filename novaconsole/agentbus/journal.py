"""The agent's record of the commands it ran: at most once, also across restarts."""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from novaconsole.agentbus.messages import BodyError, CommandReply, CommandRequest
from novaconsole.fileutil import atomic_write


class CommandJournal:
    """Command ids already run (with their reply) and running: commands run at most once.

    In memory, bounded; with ``path`` also appended to a file (fsync'd before the command
    runs), so an agent killed mid-command and restarted does not run it again either.
    """

    def __init__(self, path: Path | None = None, keep: int = 1000) -> None:
        self.path = path
        self.keep = keep
        self._replies: OrderedDict[str, CommandReply | None] = OrderedDict()
        self._lock = threading.Lock()
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                cid = str(entry["id"])
                if entry.get("state") == "started":
                    self._replies[cid] = CommandReply(
                        correlation_id=str(entry.get("correlation_id", "")),
                        ok=False,
                        command=str(entry.get("command", "")),
                        error="the agent stopped while running this command; not run again",
                    )
                else:
                    self._replies[cid] = CommandReply.from_dict(entry["reply"])
            except (ValueError, KeyError, TypeError, BodyError):
                continue  # a torn last line after a crash
        while len(self._replies) > self.keep:
            self._replies.popitem(last=False)
        self._rewrite()

    def _rewrite(self) -> None:
        if self.path is None:
            return
        lines = [
            json.dumps({"id": cid, "state": "done", "reply": reply.to_dict()})
            for cid, reply in self._replies.items()
            if reply is not None
        ]
        atomic_write(self.path, "".join(line + "\n" for line in lines), mode=0o600)

    def _append(self, entry: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def state(self, cid: str) -> tuple[str, CommandReply | None]:
        """("new"|"running"|"done", the stored reply if done)."""
        with self._lock:
            if cid not in self._replies:
                return "new", None
            reply = self._replies[cid]
            return ("done", reply) if reply is not None else ("running", None)

    def start(self, cid: str, request: CommandRequest) -> None:
        with self._lock:
            self._replies[cid] = None
            self._append(
                {
                    "id": cid,
                    "state": "started",
                    "command": request.command,
                    "correlation_id": request.correlation_id,
                }
            )

    def finish(self, cid: str, reply: CommandReply) -> None:
        with self._lock:
            self._replies[cid] = reply
            self._replies.move_to_end(cid)
            self._append({"id": cid, "state": "done", "reply": reply.to_dict()})
            if len(self._replies) > 2 * self.keep:
                while len(self._replies) > self.keep:
                    self._replies.popitem(last=False)
                self._rewrite()
