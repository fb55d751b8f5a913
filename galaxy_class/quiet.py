"""Keep TensorFlow's C++ start-up and converter log lines out of notebook outputs, and let everything else through.

TensorFlow writes them to file descriptor 2 from C++, before and regardless of TF_CPP_MIN_LOG_LEVEL
(absl logs everything until it is initialised), so a notebook reader on GitHub sees `E0000 ... cuInit`
and oneDNN notes. Here descriptor 2 is replaced by a pipe whose lines are filtered by a thread.
"""

import contextlib
import logging
import os
import re
import sys
import threading

# glog/absl lines ("I0000 00:00:1795618144.407888   16804 port.cc:153] ..."), absl's pre-init notice, the
# continuation line of cpu_feature_guard's note, and the TFLite converter's bare summary line.
NOISE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions:"
    rb"|fully_quantize: \d"
    rb"|INFO: Created TensorFlow Lite)"
)
_installed = None  # (the original stderr descriptor, the thread that forwards to it) while the filter is on
_TERMINAL = None  # whether stderr was a terminal before the filter replaced it by a pipe


def stderr_is_terminal():
    """Whether stderr is a terminal (where a progress bar belongs), even while the filter stands in for it."""
    return _TERMINAL if _installed else sys.stderr.isatty()


def hide_native_logs():
    """From now on, drop TensorFlow's native log lines written to stderr in this process; other lines pass.

    Call it before TensorFlow is imported. TensorFlow's Python logger is also kept to errors. True if this call
    installed the filter, False if it was already on.
    """
    global _installed, _TERMINAL
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _installed:
        return False
    # A filter, not a level: the converter sets the logger's level itself and logs "Assets written to ..." at INFO.
    logging.getLogger("tensorflow").addFilter(_errors_only)
    _TERMINAL = os.isatty(2)
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=_forward, args=(read_end, original), daemon=True, name="native-log-filter")
    thread.start()
    _installed = original, thread
    return True


def _errors_only(record):
    return record.levelno >= logging.ERROR


@contextlib.contextmanager
def native_logs_hidden():
    """`hide_native_logs` for the block (a command-line run); on leaving it, a filter this call installed is
    removed again: stderr is restored once every line written to it has been forwarded."""
    installed = hide_native_logs()
    try:
        yield
    finally:
        if installed:
            _restore()


def _restore():
    global _installed
    original, thread = _installed
    sys.stderr.flush()
    os.dup2(original, 2)  # closes the pipe's last write end: the thread drains it and ends
    thread.join(timeout=5)
    if not thread.is_alive():  # else a child still holds the pipe: the thread keeps writing to `original`
        os.close(original)
    logging.getLogger("tensorflow").removeFilter(_errors_only)
    _installed = None


def _forward(read_end, original):
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
            if b"\r" in pending:  # a progress bar redrawing its line: pass it on as it comes
                cut = pending.rindex(b"\r") + 1
                kept, pending = kept + pending[:cut], pending[cut:]
            try:
                if kept:
                    os.write(original, kept)
            except OSError:  # keep draining the pipe, so that writers to stderr never block
                pass
        if pending and not NOISE.match(pending):
            os.write(original, pending)
