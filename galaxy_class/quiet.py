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


def hide_native_logs():
    """From now on, drop TensorFlow's native log lines written to stderr in this process; other lines pass.

    Call it before TensorFlow is imported. TensorFlow's Python logger is also kept to errors.
    """
    global _installed
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _installed:
        return
    # A filter, not a level: the converter sets the logger's level itself and logs "Assets written to ..." at INFO.
    logging.getLogger("tensorflow").addFilter(lambda record: record.levelno >= logging.ERROR)
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=_forward, args=(read_end, original), daemon=True, name="native-log-filter")
    thread.start()
    _installed = original, thread


@contextlib.contextmanager
def native_logs_hidden():
    """`hide_native_logs` for the block (a command-line run); on leaving it, stderr is restored and every line
    written to it has been forwarded."""
    hide_native_logs()
    try:
        yield
    finally:
        _restore()


def _restore():
    global _installed
    if not _installed:
        return
    original, thread = _installed
    sys.stderr.flush()
    os.dup2(original, 2)  # closes the pipe's last write end: the thread drains it and ends
    thread.join(timeout=5)
    os.close(original)
    _installed = None


def _forward(read_end, original):
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
            try:
                if kept:
                    os.write(original, kept)
            except OSError:  # keep draining the pipe, so that writers to stderr never block
                pass
        if pending and not NOISE.match(pending):
            os.write(original, pending)
