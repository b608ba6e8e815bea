"""Logging setup: plain text for people, JSON lines for log shippers.

Extra fields passed as `logger.info("...", extra={"node": n})` appear as keys in JSON
and as `key=value` pairs in text, so structured context survives either format.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from pathlib import Path

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread else "?"
    logging.getLogger("vnode").error("uncaught exception in thread %s", name,
                                     exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


def _uncaught(exc_type: type[BaseException], exc: BaseException, tb: object) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)  # type: ignore[arg-type]
        return
    logging.getLogger("vnode").critical("uncaught exception", exc_info=(exc_type, exc, tb))  # type: ignore[arg-type]


def setup(*, fmt: str = "text", level: str = "info", log_dir: Path | None = None) -> logging.handlers.QueueListener | None:
    """Log to stderr and, with `log_dir`, to a rotating vnode.log there (served read-only on
    the kubelet API's /logs/). File writes happen on a listener thread, never on the loop."""
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    listener = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        to_file = logging.handlers.RotatingFileHandler(log_dir / "vnode.log", maxBytes=10 * 1024 * 1024, backupCount=5)
        to_file.setFormatter(formatter)
        log_queue: queue.SimpleQueue = queue.SimpleQueue()
        root.addHandler(logging.handlers.QueueHandler(log_queue))
        listener = logging.handlers.QueueListener(log_queue, to_file)
        listener.start()
    # What Python itself would print to stderr (warnings, an exception escaping a thread or
    # the main program) goes through the same handler, so a JSON log stays all JSON.
    logging.captureWarnings(True)
    threading.excepthook = _thread_exception
    sys.excepthook = _uncaught
    # aiohttp and asyncio are chatty at debug; keep them at warning.
    for noisy in ("aiohttp", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return listener
